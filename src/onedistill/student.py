"""Build the student and decide which teacher layer each student layer learns from."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification

from onedistill.config import StudentConfig

log = logging.getLogger(__name__)


class MappingError(ValueError):
    """A layer mapping or skip list that does not fit the models."""


def load_pretrained_student(model_dir: Path | str, label_names: list[str]) -> nn.Module:
    """A pretrained encoder with a fresh classification head for our labels."""
    return AutoModelForSequenceClassification.from_pretrained(
        model_dir,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
        ignore_mismatched_sizes=True,
    )


_LAYER_KEY = re.compile(r"^(.*\.layer\.)(\d+)(\..*)$")


def cut_student(
    teacher_dir: Path | str, teacher_backbone: nn.Module, layers: list[int], label_names: list[str]
) -> nn.Module:
    """A student made of the teacher's embeddings and the chosen teacher layers.

    Args:
        teacher_dir: Directory of the teacher checkpoint; its config shapes the student.
        teacher_backbone: The loaded teacher network (bare encoder or classifier) whose
            embedding and layer weights are copied.
        layers: 1-based teacher layer numbers to copy, one per student layer, in order.
        label_names: Class names, in label-id order, for the student's new classification head.
    """
    config = AutoConfig.from_pretrained(teacher_dir)
    config.num_hidden_layers = len(layers)
    config.num_labels = len(label_names)
    config.id2label = dict(enumerate(label_names))
    config.label2id = {name: i for i, name in enumerate(label_names)}
    student = AutoModelForSequenceClassification.from_config(config)

    # The teacher may be a bare encoder (finetune: head) or a classifier; take its encoder.
    source = getattr(teacher_backbone, "base_model", teacher_backbone).state_dict()
    target = student.base_model
    wanted = {}
    for key, value in source.items():
        m = _LAYER_KEY.match(key)
        if m is None:
            wanted[key] = value
            continue
        teacher_layer = int(m.group(2)) + 1
        for s, t in enumerate(layers):
            if t == teacher_layer:
                wanted[f"{m.group(1)}{s}{m.group(3)}"] = value
    missing, unexpected = target.load_state_dict(wanted, strict=False)
    # The pooler may be absent from sentence encoders; everything else must be copied.
    missing = [k for k in missing if not k.startswith("pooler.")]
    if missing:
        raise RuntimeError(f"cutting the student left weights uninitialised: {missing[:5]}")
    log.info("Cut a %d-layer student from teacher layers %s", len(layers), layers)
    return student


def default_mapping(kind: str, student_layers: int, teacher_layers: int) -> list[int]:
    """1-based teacher layer for each student layer under a named strategy."""
    if student_layers > teacher_layers:
        raise MappingError(
            f"student has {student_layers} layers but the teacher only {teacher_layers}"
        )
    if kind == "uniform":
        return [round((s + 1) * teacher_layers / student_layers) for s in range(student_layers)]
    if kind == "last":
        return list(range(teacher_layers - student_layers + 1, teacher_layers + 1))
    raise MappingError(f"unknown mapping {kind!r}; use uniform, last, adaptive or a list")


def check_mapping(
    mapping: list[int], skip_layers: list[int], student_layers: int, teacher_layers: int
) -> None:
    """Validate an explicit mapping and a skip list against both models."""
    if len(mapping) != student_layers:
        raise MappingError(
            f"student.mapping has {len(mapping)} entries ({mapping}) but the student has "
            f"{student_layers} layers; give one teacher layer (1..{teacher_layers}) "
            "per student layer"
        )
    bad = [t for t in mapping if not 1 <= t <= teacher_layers]
    if bad:
        raise MappingError(
            f"student.mapping names teacher layers {bad} outside 1..{teacher_layers}"
        )
    bad = [s for s in skip_layers if not 1 <= s <= student_layers]
    if bad:
        raise MappingError(
            f"student.skip_layers names student layers {bad}; the student has layers "
            f"1..{student_layers}"
        )
    if len(set(skip_layers)) >= student_layers:
        raise MappingError(
            "student.skip_layers leaves no layer to match; remove some, or set "
            "distill.loss.w_hidden: 0 to turn hidden-state matching off"
        )


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA between two sets of representations ``[n, d1]`` and ``[n, d2]``.

    Kornblith et al., 2019, "Similarity of Neural Network Representations Revisited". Invariant
    to rotation and isotropic scaling, so layers of different widths can be compared.
    """
    x = x.double() - x.double().mean(0, keepdim=True)
    y = y.double() - y.double().mean(0, keepdim=True)
    cross = (y.T @ x).norm() ** 2
    return float(cross / ((x.T @ x).norm() * (y.T @ y).norm()).clamp(min=1e-12))


def adaptive_mapping(
    student_pooled: torch.Tensor, teacher_pooled: torch.Tensor
) -> tuple[list[int], list[list[float]]]:
    """For each student layer, the teacher layer it matches best by linear CKA.

    Args:
        student_pooled: ``[n, S + 1, d_s]`` pooled states of a calibration batch
            (index 0 is the embedding output).
        teacher_pooled: ``[n, T + 1, d_t]``.

    Returns:
        The 1-based mapping and the full ``S x T`` CKA matrix for the report.
    """
    s_layers = student_pooled.shape[1] - 1
    t_layers = teacher_pooled.shape[1] - 1
    scores = [
        [linear_cka(student_pooled[:, s], teacher_pooled[:, t]) for t in range(1, t_layers + 1)]
        for s in range(1, s_layers + 1)
    ]
    mapping = [max(range(t_layers), key=lambda t: row[t]) + 1 for row in scores]
    return mapping, scores


def resolve_mapping(
    cfg: StudentConfig, student_layers: int, teacher_layers: int
) -> list[int] | None:
    """The mapping for named or explicit strategies; None means 'adaptive, decide later'."""
    if cfg.mapping == "adaptive":
        return None
    mapping = (
        list(cfg.mapping)
        if isinstance(cfg.mapping, list)
        else default_mapping(cfg.mapping, student_layers, teacher_layers)
    )
    check_mapping(mapping, cfg.skip_layers, student_layers, teacher_layers)
    return mapping
