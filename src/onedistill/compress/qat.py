"""Quantization-aware distillation: fake-quantized INT8 weights with a straight-through estimator.

:func:`enable_fake_quant` registers a :mod:`torch.nn.utils.parametrize` parametrization on the
``weight`` of every ``nn.Linear`` (the classifier head is skipped by default).  In the forward pass
the layer sees the weight rounded to the symmetric INT8 grid; in the backward pass the rounding is
treated as the identity (straight-through estimator), so the float *master* weights are trained.
:func:`disable_fake_quant` removes the parametrizations and leaves those float weights in place.

Quantization scheme (chosen to match ONNX Runtime dynamic quantization of the exported student):

* symmetric, zero point 0, integer range ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]`` =
  ``[-127, 127]`` for INT8, step ``scale = absmax / 127``.  This is what
  ``onnxruntime.quantization.quantize_dynamic(weight_type=QuantType.QInt8)`` does for weights
  (``WeightSymmetric`` defaults to True for QInt8, using the symmetric range ``[-127, 127]``),
  rounding half to even like :func:`torch.round`.
* per output channel by default (one scale per row of the torch weight, i.e. per column of the
  ONNX ``MatMul`` weight), which corresponds to ``quantize_dynamic(..., per_channel=True)``.
  ONNX Runtime's own default is ``per_channel=False`` (one scale per tensor); pass
  ``per_channel=False`` here if the export step keeps that default, and ``bits=7`` if it uses
  ``reduce_range=True``.  Biases stay in float, as in ONNX Runtime.

While fake quantization is enabled the state-dict keys of the wrapped layers become
``...parametrizations.weight.original``; disable it before saving a checkpoint with
``save_pretrained``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

DEFAULT_SKIP = ("classifier",)


def _qmax(bits: int) -> int:
    if not 2 <= bits <= 16:
        raise ValueError(f"bits must be in [2, 16], got {bits}")
    return 2 ** (bits - 1) - 1


def quant_scale(weight: torch.Tensor, bits: int = 8, per_channel: bool = True) -> torch.Tensor:
    """Symmetric quantization step: ``absmax / qmax`` per output row (or per tensor), detached.

    Returns a tensor broadcastable against ``weight``.  All-zero rows get a tiny positive step so
    they quantize to exactly zero.
    """
    w = weight.detach()
    if per_channel and w.dim() > 1:
        absmax = w.abs().reshape(w.shape[0], -1).amax(dim=1)
        absmax = absmax.reshape(-1, *([1] * (w.dim() - 1)))
    else:
        absmax = w.abs().amax()
    tiny = torch.finfo(w.dtype).tiny if w.is_floating_point() else 1e-12
    return (absmax / _qmax(bits)).clamp_min(tiny)


def fake_quantize(weight: torch.Tensor, bits: int = 8, per_channel: bool = True) -> torch.Tensor:
    """The dequantized weight ``clamp(round(w / s), -qmax, qmax) * s`` (no gradient tricks)."""
    scale = quant_scale(weight, bits, per_channel)
    qmax = _qmax(bits)
    return torch.clamp(torch.round(weight / scale), -qmax, qmax) * scale


class _StraightThrough(torch.autograd.Function):
    """Forward: fake-quantized weight.  Backward: identity (straight-through estimator)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, bits: int, per_channel: bool) -> torch.Tensor:
        return fake_quantize(weight, bits, per_channel)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return grad_output, None, None


class FakeQuantize(nn.Module):
    """Parametrization module: ``weight -> fake_quantize(weight)`` with a straight-through grad."""

    def __init__(self, bits: int = 8, per_channel: bool = True):
        super().__init__()
        _qmax(bits)
        self.bits = bits
        self.per_channel = per_channel

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """Fake-quantized ``weight`` (gradient passes straight through)."""
        return _StraightThrough.apply(weight, self.bits, self.per_channel)

    def extra_repr(self) -> str:
        """Shown in ``print(model)``."""
        return f"bits={self.bits}, per_channel={self.per_channel}"


@dataclass
class FakeQuantHandle:
    """What :func:`enable_fake_quant` changed; pass it to :func:`disable_fake_quant`."""

    model: nn.Module
    modules: dict = field(default_factory=dict)
    bits: int = 8
    per_channel: bool = True
    active: bool = True

    def __enter__(self) -> FakeQuantHandle:
        return self

    def __exit__(self, *exc) -> None:
        disable_fake_quant(self)


def _skipped(name: str, skip: Iterable[str]) -> bool:
    parts = name.split(".")
    return any(name == s or s in parts for s in skip)


def quantized_linears(model: nn.Module, skip: Iterable[str] = DEFAULT_SKIP) -> dict:
    """``{name: nn.Linear}`` of the layers that fake quantization covers.

    A layer is skipped when its qualified name, or any dotted component of it, is in ``skip``
    (default: the ``classifier`` head, including RoBERTa's ``classifier.dense/out_proj``), or
    when it has no weights (e.g. a zero-width layer).
    """
    skip = tuple(skip)
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and module.in_features > 0
        and module.out_features > 0
        and not _skipped(name, skip)
    }


def enable_fake_quant(
    model: nn.Module,
    *,
    bits: int = 8,
    per_channel: bool = True,
    skip: Iterable[str] = DEFAULT_SKIP,
) -> FakeQuantHandle:
    """Make every (non-skipped) ``nn.Linear`` of ``model`` use fake-quantized INT8 weights.

    Args:
        model: any module; typically the student being distilled.
        bits: integer width (8 for INT8; 7 mimics ONNX Runtime ``reduce_range=True``).
        per_channel: one scale per output channel (default) or one per tensor.
        skip: layer names (or name components) left in float; ``()`` quantizes the classifier too.

    Returns:
        A handle for :func:`disable_fake_quant` (also usable as a context manager).
    """
    handle = FakeQuantHandle(model=model, bits=bits, per_channel=per_channel)
    for name, module in quantized_linears(model, skip).items():
        if parametrize.is_parametrized(module, "weight"):
            if any(isinstance(p, FakeQuantize) for p in module.parametrizations.weight):
                raise RuntimeError(f"fake quantization is already enabled on {name!r}")
        parametrize.register_parametrization(module, "weight", FakeQuantize(bits, per_channel))
        handle.modules[name] = module
    return handle


def disable_fake_quant(handle: FakeQuantHandle) -> nn.Module:
    """Remove fake quantization, keeping the trained float master weights. Idempotent."""
    if handle.active:
        for module in handle.modules.values():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        handle.active = False
    return handle.model


def _float_weight(module: nn.Linear) -> torch.Tensor:
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


def quantization_loss(
    model: nn.Module,
    *,
    bits: int = 8,
    per_channel: bool = True,
    skip: Iterable[str] = DEFAULT_SKIP,
) -> torch.Tensor:
    """Differentiable mean of ``((w - fake_quantize(w)) / step) ** 2`` over all quantized weights.

    Measured on the float master weights (also while fake quantization is enabled), in units of
    the quantization step, so it lies in ``[0, 0.25]`` (about ``1/12`` for weights spread
    uniformly between grid points) and is 0 for weights on the grid.  The step is detached: the
    gradient pulls each weight toward its nearest grid point.
    """
    qmax = _qmax(bits)
    total, count = None, 0
    for module in quantized_linears(model, skip).values():
        w = _float_weight(module)
        x = w / quant_scale(w, bits, per_channel)
        err = (x - torch.clamp(torch.round(x.detach()), -qmax, qmax)).pow(2).sum()
        total = err if total is None else total + err
        count += w.numel()
    if total is None:
        return torch.zeros(())
    return total / count


def quantization_error(
    model: nn.Module,
    *,
    bits: int = 8,
    per_channel: bool = True,
    skip: Iterable[str] = DEFAULT_SKIP,
) -> float:
    """Mean squared weight rounding error in units of the quantization step (see above)."""
    with torch.no_grad():
        return float(quantization_loss(model, bits=bits, per_channel=per_channel, skip=skip))
