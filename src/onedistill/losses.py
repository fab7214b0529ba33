"""The hybrid distillation loss, as a weighted sum of named terms.

``total = w_kd * kd + w_hidden * hidden + w_quant * quant + w_ce * ce``

Each term is returned on its own so the trainer can log it; a silently mis-scaled term is the
most common way distillation code goes wrong, so every term is tested against hand values.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Soft-target term: ``T^2 * KL(p_teacher^T || p_student^T)``.

    The KL divergence is summed over classes and averaged over examples (``batchmean``), and
    multiplied by ``T^2`` so that its gradient keeps the same scale as the temperature changes
    (Hinton, Vinyals and Dean, 2015, "Distilling the Knowledge in a Neural Network").
    The direction is teacher-to-student: the teacher distribution is the reference.

    Args:
        student_logits: ``[batch, classes]``.
        teacher_logits: ``[batch, classes]``, no gradient needed.
        temperature: ``T > 0``; both distributions are softened by it.
    """
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1)
    return temperature**2 * kl.mean()


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Average of token vectors over real (non-padding) tokens: ``[B, L, D] -> [B, D]``."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def hidden_loss(student: Tensor, teacher: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Hidden-state term: ``1 - cos(h_s, h_t)``, averaged over real tokens or examples.

    Args:
        student: projected student states, ``[B, L, D]`` (tokens) or ``[B, D]`` (pooled).
        teacher: teacher states of the same shape.
        attention_mask: ``[B, L]`` for token states; padding positions are ignored, so adding
            padding never changes the value.
    """
    cos = F.cosine_similarity(student, teacher.detach(), dim=-1, eps=1e-8)
    if attention_mask is None or student.dim() == 2:
        return (1.0 - cos).mean()
    mask = attention_mask.to(cos.dtype)
    return ((1.0 - cos) * mask).sum() / mask.sum().clamp(min=1.0)


def int8_step(weight: Tensor) -> Tensor:
    """Per-output-channel step of symmetric INT8 quantization: ``max|w_row| / 127``."""
    return weight.detach().abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0


def quant_loss(weights: Iterable[Tensor]) -> Tensor:
    """Quantization-aware term: ``||W - Q8(W)||^2`` in units of the INT8 step.

    ``Q8`` is symmetric per-output-channel INT8 rounding, held constant in the backward pass,
    so the gradient pulls each weight toward its nearest grid point. Measuring the error in
    quantization steps makes the term independent of each layer's weight scale: it is 0 on the
    grid and about 1/12 for weights spread evenly between grid points. Averaged over elements
    and then over matrices.
    """
    terms = []
    for w in weights:
        step = int8_step(w)
        q = (torch.round(w.detach() / step).clamp(-127, 127) * step).detach()
        terms.append((((w - q) / step) ** 2).mean())
    if not terms:
        raise ValueError("quant_loss needs at least one weight matrix")
    return torch.stack(terms).mean()


def linear_weights(model: nn.Module) -> list[Tensor]:
    """Weights of every ``nn.Linear`` in ``model``: the matrices INT8 export will quantize."""
    return [m.weight for m in model.modules() if isinstance(m, nn.Linear)]


def temperature_at(start: float, end: float | None, progress: float) -> float:
    """Linear temperature schedule from ``start`` to ``end`` over training (progress in [0, 1])."""
    if end is None:
        return start
    progress = min(max(progress, 0.0), 1.0)
    return start + (end - start) * progress


@dataclass
class LossTerms:
    """One step's loss: the weighted total and each raw (unweighted) term."""

    total: Tensor
    terms: dict[str, float]


class HybridLoss(nn.Module):
    """Weighted sum of the KD, hidden-state, quantization and label terms.

    Owns the learned projections ``P`` that map student hidden states to the teacher's width;
    they are trained with the student but are not part of the saved student.
    """

    def __init__(
        self,
        w_kd: float,
        w_hidden: float,
        w_quant: float,
        w_ce: float,
        student_dim: int,
        teacher_dim: int,
        pairs: int,
    ):
        super().__init__()
        self.w_kd, self.w_hidden, self.w_quant, self.w_ce = w_kd, w_hidden, w_quant, w_ce
        # Identity-like start when widths match; a random projection otherwise.
        self.projections = nn.ModuleList(
            nn.Linear(student_dim, teacher_dim, bias=False) for _ in range(pairs)
        )
        if student_dim == teacher_dim:
            for p in self.projections:
                nn.init.eye_(p.weight)

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None,
        labels: Tensor | None,
        temperature: float,
        student_hidden: list[Tensor] | None = None,
        teacher_hidden: list[Tensor] | None = None,
        attention_mask: Tensor | None = None,
        quant_weights: list[Tensor] | None = None,
    ) -> LossTerms:
        """Compute every enabled term.

        ``labels`` may hold -1 for unlabelled (transfer) examples; CE uses labelled rows only.
        ``student_hidden[i]`` is projected by ``projections[i]`` before matching
        ``teacher_hidden[i]``.
        """
        zero = student_logits.new_zeros(())
        total = zero
        terms: dict[str, float] = {}

        if self.w_kd > 0 and teacher_logits is not None:
            kd = kd_loss(student_logits, teacher_logits, temperature)
            total = total + self.w_kd * kd
            terms["kd"] = kd.item()

        if self.w_hidden > 0 and student_hidden:
            parts = [
                hidden_loss(proj(s), t, attention_mask)
                for proj, s, t in zip(self.projections, student_hidden, teacher_hidden, strict=True)
            ]
            hidden = torch.stack(parts).mean()
            total = total + self.w_hidden * hidden
            terms["hidden"] = hidden.item()

        if self.w_quant > 0 and quant_weights:
            quant = quant_loss(quant_weights)
            total = total + self.w_quant * quant
            terms["quant"] = quant.item()

        if self.w_ce > 0 and labels is not None:
            labelled = labels >= 0
            if labelled.any():
                ce = F.cross_entropy(student_logits[labelled], labels[labelled])
                # Scale by the labelled share so a mixed batch weighs each example equally.
                ce_weighted = ce * labelled.float().mean()
                total = total + self.w_ce * ce_weighted
                terms["ce"] = ce.item()

        terms["total"] = total.item()
        terms["temperature"] = temperature
        return LossTerms(total=total, terms=terms)
