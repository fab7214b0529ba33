"""Config of the compression stages: pruning and QAT during distillation, then deployment artifacts.

This module must stay import-light (pydantic only): the main :mod:`onedistill.config` imports it,
and loading a YAML file should never pull in torch or onnxruntime.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Section(BaseModel):
    """Base of every compression section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PruneConfig(_Section):
    """Structured pruning of attention heads and FFN neurons while the student is distilled."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    heads: float = Field(
        0.75, ge=0.0, le=1.0, description="Largest fraction of all attention heads to prune."
    )
    neurons: float = Field(
        0.10, ge=0.0, le=1.0, description="Largest fraction of all FFN neurons to prune."
    )
    protect_heads: int = Field(
        2, ge=0, description="The most important heads (global ranking) that are never pruned."
    )
    start: float = Field(
        0.2, ge=0.0, le=1.0, description="Fraction of training at which the first pruning event is."
    )
    end: float = Field(
        0.8, ge=0.0, le=1.0, description="Fraction of training at which the last pruning event is."
    )
    steps: int = Field(4, ge=1, le=1000, description="Number of pruning events from start to end.")
    epochs: int = Field(
        2,
        ge=1,
        le=100,
        description="Epochs of further distillation during which the pruning schedule runs and "
        "the student recovers (after the main distillation epochs).",
    )
    max_accuracy_drop: float | None = Field(
        None,
        ge=0.0,
        le=100.0,
        description="Stop pruning once eval accuracy falls more than this many points below the "
        "unpruned student (None: prune to the full heads/neurons fractions).",
    )

    @model_validator(mode="after")
    def _ordered(self) -> PruneConfig:
        if self.end < self.start:
            raise ValueError(
                f"prune.end ({self.end}) must not be before prune.start ({self.start})"
            )
        return self


class CompressionConfig(_Section):
    """How the distilled student becomes a deployment artifact for one target, and its gates."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    target: Literal["cpu", "gpu", "mobile"] = Field(
        "cpu",
        description="cpu: fastest of FP32 / dynamic INT8 / static INT8 (ONNX Runtime) within the "
        "accuracy budget; gpu: FP16 ONNX for the TensorRT or CUDA execution provider; mobile: "
        "INT8 in ONNX Runtime's .ort format under a size budget.",
    )
    quantization: Literal["auto", "dynamic", "static", "none"] = Field(
        "auto",
        description="auto: what the target plan tries (cpu: dynamic and static, then mixed "
        "precision); dynamic/static: only that INT8 method; none: no INT8 artifact.",
    )
    max_accuracy_drop: float = Field(
        1.0,
        ge=0.0,
        le=100.0,
        description="Largest eval accuracy drop, in points, of a compressed artifact against the "
        "uncompressed student; also the target of mixed precision.",
    )
    int8_agreement_min: float = Field(
        0.99,
        ge=0.0,
        le=1.0,
        description="Smallest share of predictions an INT8 artifact must share with the student.",
    )
    fp32_parity_atol: float = Field(
        1e-4, gt=0.0, description="Largest |logit difference| allowed between FP32 ONNX and torch."
    )
    fp16_parity_atol: float = Field(
        2e-2,
        gt=0.0,
        description="Largest |logit difference| allowed between the FP16 artifact and torch.",
    )
    calibration_samples: int = Field(
        128, ge=1, le=100_000, description="Training texts used to calibrate static INT8."
    )
    opset: int = Field(17, ge=17, le=23, description="ONNX opset of the exported graph.")
    max_length: int = Field(
        128, ge=8, le=4096, description="Tokens per text for calibration, evaluation and latency."
    )
    weight_type: Literal["auto", "qint8", "quint8"] = Field(
        "auto",
        description="INT8 weight type; auto reads the CPU's instruction set (QInt8 everywhere, "
        "reduce_range on x86 without VNNI, following ONNX Runtime's guidance).",
    )
    reduce_range: bool | None = Field(
        None, description="7-bit weights against VPMADDUBSW saturation; None: chosen from the CPU."
    )
    per_channel: bool = Field(
        False, description="Per-channel weight scales (try when INT8 accuracy drops a lot)."
    )
    mixed_precision: bool = Field(
        True,
        description="When no INT8 artifact meets the budget, keep the most sensitive layers in "
        "FP32 until it does.",
    )
    mobile_size_budget_mb: float = Field(
        30.0, gt=0.0, description="Largest size of the mobile .ort artifact, in MB."
    )
    optimize_graph: bool = Field(
        True,
        description="Run ONNX Runtime's transformer optimizer (fused attention, layer norm, GELU) "
        "on BERT-like graphs; the fused graph is kept only if it passes FP32 parity.",
    )
    prune: PruneConfig | None = Field(
        None, description="Structured pruning during distillation (None: no pruning)."
    )
    qat: bool = Field(
        False,
        description="Fake-quantize the student's linear weights during distillation so INT8 "
        "loses less accuracy.",
    )
