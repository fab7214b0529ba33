"""Sensitivity-driven structured pruning of BERT-family students during distillation.

The :class:`PruningController` attaches *gates* to a model: one gate per attention head and one
per FFN neuron.  A gate is a leaf tensor of ones (``requires_grad=True``) that is multiplied into

* the per-head context vectors right before ``attention.output.dense`` (a forward pre-hook on
  that Linear reshapes its input to ``[..., heads, head_size]``), and
* the FFN activation right before the down-projection ``output.dense`` (forward pre-hook).

The gates live in the controller, not in ``model.parameters()``, so an optimizer never sees (or
weight-decays) them and the training loop needs to know nothing about them beyond calling
:meth:`PruningController.after_backward` after ``loss.backward()`` and
:meth:`PruningController.on_step` after ``optimizer.step()``.  Gates double as masks: a pruned
head/neuron has gate value 0.

Importance is the first-order Taylor estimate of Michel et al. (2019, "Are Sixteen Heads Really
Better than One?"): ``I = |dL/dgate|`` evaluated at gate = 1, which equals
``|sum_w w * dL/dw|`` over the weights the structure feeds into (its columns of
``attention.output.dense`` / FFN ``output.dense``).  The absolute value is taken per backward pass
(per batch) and averaged over the passes during which the structure was alive; a pruned structure
keeps (freezes) the score it had when it was pruned, so the final ranking still shows how
sensitive the pruned heads were.  For ranking, scores are normalised per layer by the L2 norm over
all of the layer's heads, as Michel et al. recommend (their normalisation makes scores of layers
with different gradient scales comparable); the same per-layer L2 normalisation is applied to FFN
neurons.  Only structures that are still alive are candidates for pruning.

Pruning decisions (:meth:`PruningController.on_step`) follow a cubic (default) or linear schedule
(Zhu & Gupta 2017) with ``cfg.steps`` events evenly spaced from ``cfg.start * total_steps`` (first
event) to ``cfg.end * total_steps`` (last event); event ``k`` of ``n`` prunes up to
``target * (1 - (1 - k/n)**3)`` (cubic) or ``target * k/n`` (linear).  After the last event exactly
``floor(cfg.heads * total_heads)`` heads (capped so that
``cfg.protect_heads`` heads survive) and ``floor(cfg.neurons * total_neurons)`` FFN neurons are
masked.  Both rankings are *global* across layers.  Heads: the ``protect_heads`` most important
remaining heads (global ranking) are never pruned.  Neurons: the ``neurons`` fraction is a global
budget (not per layer), with one safety floor: every layer keeps at least one FFN neuron.
:meth:`PruningController.stop` ends the schedule early (optionally undoing the last event), e.g.
when the training loop sees the eval accuracy drop more than ``max_accuracy_drop``.

:meth:`PruningController.finalize` removes the hooks and physically slices the weights.  The kept
structure is written to ``model.config.onedistill_pruning`` (``{"heads": {layer: [kept original
head indices]}, "intermediate": {layer: kept neuron count}}``) so that :func:`load_pruned` (and
``AutoModelForSequenceClassification.from_pretrained(dir, trust_remote_code=True)`` for a directory
written by :func:`save_pruned`) can rebuild the shapes before loading the weights.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "electra")
"""``config.model_type`` values whose encoder layers have the BERT layout handled here."""

CONFIG_KEY = "onedistill_pruning"
REMOTE_CODE_FILE = "modeling_onedistill_pruned.py"
_AUTO_CLASS_BY_SUFFIX = (
    ("ForSequenceClassification", "AutoModelForSequenceClassification"),
    ("ForTokenClassification", "AutoModelForTokenClassification"),
    ("ForQuestionAnswering", "AutoModelForQuestionAnswering"),
    ("ForMultipleChoice", "AutoModelForMultipleChoice"),
    ("Model", "AutoModel"),
)


# ----------------------------------------------------------------------------------------------
# Shape surgery.  Everything in this block only depends on torch, because the same source is
# copied (via ``inspect.getsource``) into the ``trust_remote_code`` modeling file written by
# :func:`save_pruned`.
# ----------------------------------------------------------------------------------------------


class _Bias(nn.Module):
    """What is left of ``attention.output.dense`` once it has no input features: its bias."""

    def __init__(self, bias: torch.Tensor):
        super().__init__()
        self.bias = nn.Parameter(bias)


class _HeadlessOutput(nn.Module):
    """``LayerNorm(x + dropout(bias))``: the attention output path with zero heads."""

    def __init__(self, dense_bias: torch.Tensor, layer_norm: nn.Module, dropout: nn.Module):
        super().__init__()
        self.dense = _Bias(dense_bias)
        self.LayerNorm = layer_norm
        self.dropout = dropout

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        bias = self.dense.bias.to(hidden_states.dtype).expand_as(hidden_states)
        return self.LayerNorm(hidden_states + self.dropout(bias))


class HeadlessAttention(nn.Module):
    """Replacement for a BERT attention block whose heads were all pruned.

    A masked model computes ``LayerNorm(x + dense(0))`` = ``LayerNorm(x + dense.bias)`` for such a
    layer; this module computes exactly that without Q/K/V projections.  Its state-dict keys
    (``output.dense.bias``, ``output.LayerNorm.*``) are a subset of the original block's keys.
    """

    def __init__(self, output: nn.Module):
        super().__init__()
        bias = output.dense.bias
        if bias is None:
            bias = torch.zeros(output.dense.out_features, device=output.dense.weight.device)
        self.output = _HeadlessOutput(bias.detach().clone(), output.LayerNorm, output.dropout)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any):
        """Return ``(LayerNorm(x + dropout(bias)), None)``; masks and kwargs are irrelevant."""
        return self.output(hidden_states), None


def _slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """New Linear keeping rows (``dim=0``, output features) or columns (``dim=1``) in ``index``."""
    weight = linear.weight
    index = index.to(weight.device)
    new_weight = weight.detach().index_select(dim, index).clone()
    has_bias = linear.bias is not None
    new = nn.Linear(
        new_weight.shape[1],
        new_weight.shape[0],
        bias=has_bias,
        device=weight.device,
        dtype=weight.dtype,
    )
    new.weight = nn.Parameter(new_weight, requires_grad=weight.requires_grad)
    if has_bias:
        bias = linear.bias.detach()
        bias = bias.index_select(0, index).clone() if dim == 0 else bias.clone()
        new.bias = nn.Parameter(bias, requires_grad=linear.bias.requires_grad)
    return new


def _keep_heads(layer: nn.Module, keep: list) -> None:
    """Physically keep only the heads ``keep`` (indices into the layer's current heads)."""
    attention = layer.attention
    if isinstance(attention, HeadlessAttention):
        if keep:
            raise ValueError("cannot keep heads of a layer that has none left")
        return
    self_attn = attention.self
    if not keep:
        layer.attention = HeadlessAttention(attention.output)
        return
    size = self_attn.attention_head_size
    index = torch.cat([torch.arange(h * size, (h + 1) * size) for h in keep])
    self_attn.query = _slice_linear(self_attn.query, index, 0)
    self_attn.key = _slice_linear(self_attn.key, index, 0)
    self_attn.value = _slice_linear(self_attn.value, index, 0)
    attention.output.dense = _slice_linear(attention.output.dense, index, 1)
    self_attn.num_attention_heads = len(keep)
    self_attn.all_head_size = len(keep) * size


def _keep_neurons(layer: nn.Module, keep: list) -> None:
    """Physically keep only the FFN neurons ``keep`` (indices into the current neurons)."""
    if not keep:
        raise ValueError("every layer must keep at least one FFN neuron")
    index = torch.as_tensor(list(keep), dtype=torch.long)
    layer.intermediate.dense = _slice_linear(layer.intermediate.dense, index, 0)
    layer.output.dense = _slice_linear(layer.output.dense, index, 1)


def apply_pruning_spec(model: nn.Module, spec: dict) -> None:
    """Give a freshly built (unpruned) model the shapes recorded in ``spec``.

    ``spec`` is ``config.onedistill_pruning``; only the number of kept heads and neurons matters
    here because the weights are loaded afterwards.
    """
    layers = model.base_model.encoder.layer
    heads = {int(k): v for k, v in spec.get("heads", {}).items()}
    inter = {int(k): v for k, v in spec.get("intermediate", {}).items()}
    for i, layer in enumerate(layers):
        if i in heads:
            _keep_heads(layer, list(range(len(heads[i]))))
        if i in inter and int(inter[i]) != layer.intermediate.dense.out_features:
            _keep_neurons(layer, list(range(int(inter[i]))))


# ----------------------------------------------------------------------------------------------
# Model inspection
# ----------------------------------------------------------------------------------------------


def _check_supported(model: nn.Module) -> None:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise NotImplementedError(
            f"structured pruning supports BERT-family encoders with model_type in "
            f"{SUPPORTED_MODEL_TYPES} (e.g. BertModel, BertForSequenceClassification, "
            f"RobertaForSequenceClassification); got {type(model).__name__} "
            f"(model_type={model_type!r})"
        )
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        raise NotImplementedError("structured pruning supports encoder-only (non-decoder) models")
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is None:
        raise NotImplementedError(f"{type(model).__name__} has no encoder.layer to prune")
    for layer in layers:
        ok = hasattr(layer, "intermediate") and hasattr(layer.output, "dense")
        if not isinstance(layer.attention, HeadlessAttention):
            ok = ok and all(hasattr(layer.attention.self, n) for n in ("query", "key", "value"))
            ok = ok and hasattr(layer.attention.output, "dense")
        if not ok:
            raise NotImplementedError(
                f"{type(layer).__name__} does not have the BERT layer layout "
                "(attention.self.{query,key,value}, attention.output.dense, intermediate.dense, "
                "output.dense)"
            )


def _layers(model: nn.Module) -> nn.ModuleList:
    _check_supported(model)
    return model.base_model.encoder.layer


def _num_heads(layer: nn.Module) -> int:
    if isinstance(layer.attention, HeadlessAttention):
        return 0
    return int(layer.attention.self.num_attention_heads)


def _spec_of(model: nn.Module) -> dict:
    """The model's pruning spec, or the identity spec of its current shapes."""
    spec = getattr(model.config, CONFIG_KEY, None)
    layers = _layers(model)
    if spec:
        heads = {int(k): list(v) for k, v in spec.get("heads", {}).items()}
        inter = {int(k): int(v) for k, v in spec.get("intermediate", {}).items()}
    else:
        heads, inter = {}, {}
    out_heads, out_inter = {}, {}
    for i, layer in enumerate(layers):
        out_heads[str(i)] = heads.get(i, list(range(_num_heads(layer))))
        out_inter[str(i)] = inter.get(i, int(layer.intermediate.dense.out_features))
    return {"heads": out_heads, "intermediate": out_inter}


# ----------------------------------------------------------------------------------------------
# Controller
# ----------------------------------------------------------------------------------------------


def _cfg_value(cfg: Any, name: str, default: Any = None) -> Any:
    value = getattr(cfg, name, default)
    if value is None:
        raise AttributeError(f"pruning config has no attribute {name!r}")
    return value


class PruningController:
    """Gates, importance, schedule and physical pruning for one model.

    Args:
        model: a BERT-family model (see :data:`SUPPORTED_MODEL_TYPES`); move it to its training
            device *before* building the controller (gates are created on the weights' device,
            but are also cast to the activation's device/dtype on the fly).
        cfg: any object with ``heads``, ``neurons``, ``protect_heads``, ``start``, ``end`` and
            ``steps`` attributes (e.g. ``onedistill.compress.config.PruneConfig``); an optional
            ``schedule`` attribute (``"cubic"``/``"linear"``) overrides ``schedule``.
        total_steps: number of optimizer steps of the run (``on_step`` counts 1..total_steps).
        schedule: ``"cubic"`` (default, prunes more early) or ``"linear"``.
        normalize: L2-normalise scores per layer before the global ranking (Michel et al.).
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: Any,
        total_steps: int,
        *,
        schedule: str = "cubic",
        normalize: bool = True,
    ):
        layers = _layers(model)
        self.model = model
        self.cfg = cfg
        self.total_steps = int(total_steps)
        self.heads_target = float(_cfg_value(cfg, "heads"))
        self.neurons_target = float(_cfg_value(cfg, "neurons"))
        self.protect_heads = int(_cfg_value(cfg, "protect_heads"))
        self.start = float(_cfg_value(cfg, "start"))
        self.end = float(_cfg_value(cfg, "end"))
        self.n_events = int(_cfg_value(cfg, "steps"))
        self.schedule = str(getattr(cfg, "schedule", None) or schedule)
        self.normalize = normalize
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not (0.0 <= self.heads_target <= 1.0 and 0.0 <= self.neurons_target <= 1.0):
            raise ValueError("cfg.heads and cfg.neurons must be fractions in [0, 1]")
        if not 0.0 <= self.start <= self.end <= 1.0:
            raise ValueError("need 0 <= cfg.start <= cfg.end <= 1")
        if self.n_events < 1 or self.protect_heads < 0:
            raise ValueError("need cfg.steps >= 1 and cfg.protect_heads >= 0")
        if self.schedule not in ("cubic", "linear"):
            raise ValueError(f"schedule must be 'cubic' or 'linear', got {self.schedule!r}")

        self._layers = layers
        self.num_heads = [_num_heads(layer) for layer in layers]
        self.head_size = [
            0 if h == 0 else int(layer.attention.self.attention_head_size)
            for h, layer in zip(self.num_heads, layers, strict=True)
        ]
        self.num_neurons = [int(layer.intermediate.dense.out_features) for layer in layers]
        device = next(model.parameters()).device

        def ones(n: int) -> torch.Tensor:
            return torch.ones(n, device=device, requires_grad=True)

        self.head_gates = [ones(h) for h in self.num_heads]
        self.neuron_gates = [ones(n) for n in self.num_neurons]
        self._head_mask = [torch.ones(h, dtype=torch.bool) for h in self.num_heads]
        self._neuron_mask = [torch.ones(n, dtype=torch.bool) for n in self.num_neurons]
        self._head_sum = [torch.zeros(h, dtype=torch.float64) for h in self.num_heads]
        self._neuron_sum = [torch.zeros(n, dtype=torch.float64) for n in self.num_neurons]
        self._head_cnt = [torch.zeros(h, dtype=torch.float64) for h in self.num_heads]
        self._neuron_cnt = [torch.zeros(n, dtype=torch.float64) for n in self.num_neurons]
        self._n_backward = 0
        self.events_done = 0
        self.finalized = False
        self.stopped = False
        self._history: list = []  # (head_mask, neuron_mask) before each scheduled event

        self._handles = []
        for i, layer in enumerate(layers):
            if self.num_heads[i] > 0:
                dense = layer.attention.output.dense
                self._handles.append(dense.register_forward_pre_hook(self._head_hook(i)))
            self._handles.append(layer.output.dense.register_forward_pre_hook(self._neuron_hook(i)))
        model._onedistill_pruning_controller = self

    # -- hooks -------------------------------------------------------------------------------

    def _head_hook(self, i: int):
        heads, size = self.num_heads[i], self.head_size[i]

        def hook(module: nn.Module, args: tuple):
            x = args[0]
            gate = self.head_gates[i].to(device=x.device, dtype=x.dtype)
            shape = x.shape
            x = (x.reshape(*shape[:-1], heads, size) * gate[:, None]).reshape(shape)
            return (x, *args[1:])

        return hook

    def _neuron_hook(self, i: int):
        def hook(module: nn.Module, args: tuple):
            x = args[0]
            gate = self.neuron_gates[i].to(device=x.device, dtype=x.dtype)
            return (x * gate, *args[1:])

        return hook

    # -- importance --------------------------------------------------------------------------

    def after_backward(self) -> None:
        """Accumulate ``|dL/dgate|`` from the gradients of the last backward, then clear them."""
        if self.finalized:
            return
        seen = False
        with torch.no_grad():
            for gates, sums, counts, masks in (
                (self.head_gates, self._head_sum, self._head_cnt, self._head_mask),
                (self.neuron_gates, self._neuron_sum, self._neuron_cnt, self._neuron_mask),
            ):
                for gate, acc, cnt, mask in zip(gates, sums, counts, masks, strict=True):
                    if gate.grad is None:
                        continue
                    seen = True
                    acc += gate.grad.detach().abs().double().cpu() * mask
                    cnt += mask
                    gate.grad = None
        if seen:
            self._n_backward += 1

    @staticmethod
    def _mean(sums: list, counts: list) -> list:
        return [s / c.clamp_min(1.0) for s, c in zip(sums, counts, strict=True)]

    @staticmethod
    def _l2_normalise(scores: list) -> list:
        out = []
        for s in scores:
            norm = torch.linalg.vector_norm(s) if s.numel() else torch.tensor(0.0)
            out.append(s / norm if norm > 0 else s.clone())
        return out

    def _scores(self, normalized: bool) -> tuple[list, list]:
        heads = self._mean(self._head_sum, self._head_cnt)
        neurons = self._mean(self._neuron_sum, self._neuron_cnt)
        if normalized and self.normalize:
            heads, neurons = self._l2_normalise(heads), self._l2_normalise(neurons)
        return heads, neurons

    def importance(self, normalized: bool = False) -> dict:
        """Per-layer head and neuron scores (pruned entries keep their score at pruning time).

        ``normalized=False`` gives the mean ``|dL/dgate|`` per backward pass;
        ``normalized=True`` gives the per-layer L2-normalised scores used for ranking.
        """
        heads, neurons = self._scores(normalized)
        return {
            "heads": [h.tolist() for h in heads],
            "neurons": [n.tolist() for n in neurons],
        }

    def set_importance(self, heads: list | None = None, neurons: list | None = None) -> None:
        """Overwrite the (mean, un-normalised) per-layer importance scores.

        Useful for an external estimate; later backward passes keep averaging into them.
        """
        self._n_backward = max(self._n_backward, 1)
        if heads is not None:
            self._head_sum, self._head_cnt = self._as_scores(heads, self.num_heads, "heads")
        if neurons is not None:
            self._neuron_sum, self._neuron_cnt = self._as_scores(
                neurons, self.num_neurons, "neurons"
            )

    @staticmethod
    def _as_scores(values: list, sizes: list, what: str) -> tuple[list, list]:
        if len(values) != len(sizes):
            raise ValueError(f"{what}: expected {len(sizes)} layers, got {len(values)}")
        sums = []
        for v, size in zip(values, sizes, strict=True):
            t = torch.as_tensor(v, dtype=torch.float64).flatten().clone()
            if t.numel() != size:
                raise ValueError(f"{what}: expected {sizes} entries per layer")
            sums.append(t)
        return sums, [torch.ones(size, dtype=torch.float64) for size in sizes]

    # -- masks -------------------------------------------------------------------------------

    def _sync_gates(self) -> None:
        with torch.no_grad():
            for gate, mask in zip(self.head_gates, self._head_mask, strict=True):
                gate.copy_(mask.to(gate.device, gate.dtype))
            for gate, mask in zip(self.neuron_gates, self._neuron_mask, strict=True):
                gate.copy_(mask.to(gate.device, gate.dtype))

    def prune(
        self,
        heads: Mapping[int, Iterable[int]] | None = None,
        neurons: Mapping[int, Iterable[int]] | None = None,
    ) -> None:
        """Mask the given heads / FFN neurons now (``{layer: [indices]}``), ignoring the schedule.

        ``protect_heads`` does not apply to explicit requests.  A layer may lose all its heads,
        but must keep at least one FFN neuron.
        """
        self._require_live()
        for layer, idx in (heads or {}).items():
            for h in idx:
                self._head_mask[int(layer)][int(h)] = False
        for layer, idx in (neurons or {}).items():
            mask = self._neuron_mask[int(layer)].clone()
            mask[list(map(int, idx))] = False
            if not mask.any():
                raise ValueError(f"layer {layer} must keep at least one FFN neuron")
            self._neuron_mask[int(layer)] = mask
        self._sync_gates()

    @property
    def head_mask(self) -> list:
        """Per-layer boolean masks of kept heads (copies)."""
        return [m.clone() for m in self._head_mask]

    @property
    def neuron_mask(self) -> list:
        """Per-layer boolean masks of kept FFN neurons (copies)."""
        return [m.clone() for m in self._neuron_mask]

    # -- schedule ----------------------------------------------------------------------------

    def event_steps(self) -> list:
        """The optimizer steps (1-based) at which pruning events fire (first at cfg.start)."""
        first, last = self.start * self.total_steps, self.end * self.total_steps
        n = self.n_events
        steps = []
        for k in range(1, n + 1):
            t = last if n == 1 else first + (last - first) * (k - 1) / (n - 1)
            steps.append(min(self.total_steps, max(1, math.ceil(t - 1e-9))))
        return steps

    def target_fractions(self, event: int) -> tuple[float, float]:
        """(head fraction, neuron fraction) to be pruned once ``event`` (1-based) has fired."""
        if event <= 0:
            return 0.0, 0.0
        p = min(event, self.n_events) / self.n_events
        ramp = p if self.schedule == "linear" else 1.0 - (1.0 - p) ** 3
        return self.heads_target * ramp, self.neurons_target * ramp

    def on_step(self, step: int) -> bool:
        """Call after each optimizer step; returns True when this step masked new structures."""
        if self.finalized or self.stopped:
            return False
        due = sum(1 for t in self.event_steps() if t <= step)
        if due <= self.events_done:
            return False
        self.events_done = due
        self._history.append((self.head_mask, self.neuron_mask))
        head_frac, neuron_frac = self.target_fractions(due)
        changed = self._prune_to(head_frac, neuron_frac)
        if changed:
            s = self.summary()
            logger.info(
                "pruning event %d/%d at step %d: heads %d/%d, neurons %d/%d kept",
                due,
                self.n_events,
                step,
                s["total_heads_kept"],
                s["total_heads"],
                s["total_neurons_kept"],
                s["total_neurons"],
            )
        return changed

    def _prune_to(self, head_frac: float, neuron_frac: float) -> bool:
        if self._n_backward == 0:
            logger.warning("pruning without any accumulated importance: ranking is arbitrary")
        head_scores, neuron_scores = self._scores(normalized=True)
        changed = False

        total = sum(self.num_heads)
        kept = [
            (float(head_scores[i][h]), i, h)
            for i in range(len(self.num_heads))
            for h in range(self.num_heads[i])
            if self._head_mask[i][h]
        ]
        target_pruned = min(math.floor(head_frac * total + 1e-9), total - self.protect_heads)
        n_prune = target_pruned - (total - len(kept))
        if n_prune > 0:
            by_importance = sorted(kept, key=lambda t: (-t[0], t[1], t[2]))
            candidates = by_importance[self.protect_heads :]
            for _, i, h in sorted(candidates, key=lambda t: (t[0], t[1], t[2]))[:n_prune]:
                self._head_mask[i][h] = False
                changed = True

        total_n = sum(self.num_neurons)
        remaining = [int(m.sum()) for m in self._neuron_mask]
        n_prune = math.floor(neuron_frac * total_n + 1e-9) - (total_n - sum(remaining))
        if n_prune > 0:
            candidates = sorted(
                (float(neuron_scores[i][j]), i, j)
                for i in range(len(self.num_neurons))
                for j in torch.nonzero(self._neuron_mask[i]).flatten().tolist()
            )
            for _, i, j in candidates:
                if n_prune == 0:
                    break
                if remaining[i] <= 1:
                    continue
                self._neuron_mask[i][j] = False
                remaining[i] -= 1
                n_prune -= 1
                changed = True
        self._sync_gates()
        return changed

    def stop(self, revert_last_event: bool = False) -> bool:
        """Fire no further pruning events; optionally restore the masks of before the last event.

        Returns True when masks were restored.  The restored heads/neurons got no gradient while
        masked (only optimizer momentum / weight decay may have moved their weights).
        """
        self._require_live()
        self.stopped = True
        if not (revert_last_event and self._history):
            return False
        heads, neurons = self._history.pop()
        self._head_mask, self._neuron_mask = heads, neurons
        self._sync_gates()
        return True

    # -- reporting ---------------------------------------------------------------------------

    def summary(self) -> dict:
        """Kept structure per layer, totals and the global head ranking (JSON-serialisable)."""
        norm, _ = self._scores(normalized=True)
        raw, _ = self._scores(normalized=False)
        ranking = [
            {
                "layer": i,
                "head": h,
                "score": float(norm[i][h]),
                "raw": float(raw[i][h]),
                "kept": bool(self._head_mask[i][h]),
            }
            for i in range(len(self.num_heads))
            for h in range(self.num_heads[i])
        ]
        ranking.sort(key=lambda r: (-r["score"], not r["kept"], r["layer"], r["head"]))
        heads_kept = [int(m.sum()) for m in self._head_mask]
        neurons_kept = [int(m.sum()) for m in self._neuron_mask]
        return {
            "heads_per_layer": list(self.num_heads),
            "heads_kept": heads_kept,
            "neurons_per_layer": list(self.num_neurons),
            "neurons_kept": neurons_kept,
            "total_heads": sum(self.num_heads),
            "total_heads_kept": sum(heads_kept),
            "total_neurons": sum(self.num_neurons),
            "total_neurons_kept": sum(neurons_kept),
            "events_done": self.events_done,
            "events_total": self.n_events,
            "stopped": self.stopped,
            "backward_passes": self._n_backward,
            "head_ranking": ranking,
        }

    # -- checkpointing -----------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Importance accumulators, masks and schedule position (CPU tensors, torch.save-able)."""
        return {
            "version": 1,
            "num_heads": list(self.num_heads),
            "num_neurons": list(self.num_neurons),
            "head_importance": [t.clone() for t in self._head_sum],
            "neuron_importance": [t.clone() for t in self._neuron_sum],
            "head_counts": [t.clone() for t in self._head_cnt],
            "neuron_counts": [t.clone() for t in self._neuron_cnt],
            "head_mask": [m.clone() for m in self._head_mask],
            "neuron_mask": [m.clone() for m in self._neuron_mask],
            "backward_passes": self._n_backward,
            "events_done": self.events_done,
            "stopped": self.stopped,
            "history": [(h, n) for h, n in self._history],
            "total_steps": self.total_steps,
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore a :meth:`state_dict` taken from a controller on the same architecture."""
        self._require_live()
        if list(state["num_heads"]) != self.num_heads or list(state["num_neurons"]) != (
            self.num_neurons
        ):
            raise ValueError("pruning state was saved for a model with different layer shapes")

        def f64(key: str) -> list:
            return [torch.as_tensor(t, dtype=torch.float64).clone() for t in state[key]]

        self._head_sum, self._neuron_sum = f64("head_importance"), f64("neuron_importance")
        self._head_cnt, self._neuron_cnt = f64("head_counts"), f64("neuron_counts")
        self._head_mask = [torch.as_tensor(m, dtype=torch.bool).clone() for m in state["head_mask"]]
        self._neuron_mask = [
            torch.as_tensor(m, dtype=torch.bool).clone() for m in state["neuron_mask"]
        ]
        self._n_backward = int(state["backward_passes"])
        self.events_done = int(state["events_done"])
        self.stopped = bool(state.get("stopped", False))
        self._history = [
            (
                [torch.as_tensor(m, dtype=torch.bool).clone() for m in h],
                [torch.as_tensor(m, dtype=torch.bool).clone() for m in n],
            )
            for h, n in state.get("history", [])
        ]
        if int(state["total_steps"]) != self.total_steps:
            logger.warning(
                "pruning state was saved for %s total steps, resuming with %s",
                state["total_steps"],
                self.total_steps,
            )
        self._sync_gates()

    # -- finalisation ------------------------------------------------------------------------

    def _require_live(self) -> None:
        if self.finalized:
            raise RuntimeError("the pruning controller was already finalized")

    def remove_hooks(self) -> None:
        """Detach the gates from the model without pruning (the model becomes unmasked)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if getattr(self.model, "_onedistill_pruning_controller", None) is self:
            del self.model._onedistill_pruning_controller

    def finalize(self) -> nn.Module:
        """Remove hooks and gates and physically prune the model; returns the (same) model.

        Parameters are replaced by smaller ones, so re-create any optimizer afterwards.
        """
        self._require_live()
        from torch.nn.utils import parametrize

        for layer in self._layers:
            for module in layer.modules():
                if isinstance(module, nn.Linear) and parametrize.is_parametrized(module):
                    raise RuntimeError("disable fake quantization before finalizing pruning")
        self.remove_hooks()
        old = _spec_of(self.model)
        spec = {"heads": {}, "intermediate": {}}
        for i, layer in enumerate(self._layers):
            keep_h = torch.nonzero(self._head_mask[i]).flatten().tolist()
            keep_n = torch.nonzero(self._neuron_mask[i]).flatten().tolist()
            if len(keep_h) != self.num_heads[i]:
                _keep_heads(layer, keep_h)
            if len(keep_n) != self.num_neurons[i]:
                _keep_neurons(layer, keep_n)
            spec["heads"][str(i)] = [old["heads"][str(i)][h] for h in keep_h]
            spec["intermediate"][str(i)] = len(keep_n)
        setattr(self.model.config, CONFIG_KEY, spec)
        self.head_gates = [g.detach() for g in self.head_gates]
        self.neuron_gates = [g.detach() for g in self.neuron_gates]
        self.finalized = True
        return self.model


# ----------------------------------------------------------------------------------------------
# Save / load
# ----------------------------------------------------------------------------------------------


def _remote_code(base_class: str) -> str:
    parts = [
        f'"""Pruned {base_class} written by onedistill (load with trust_remote_code=True).',
        "",
        "The kept heads / FFN widths are read from ``config.onedistill_pruning``.",
        '"""',
        "",
        "from typing import Any",
        "",
        "import torch",
        "from torch import nn",
        f"from transformers import {base_class}",
        "",
    ]
    for obj in (
        _Bias,
        _HeadlessOutput,
        HeadlessAttention,
        _slice_linear,
        _keep_heads,
        _keep_neurons,
        apply_pruning_spec,
    ):
        parts += ["", inspect.getsource(obj)]
    parts += [
        "",
        f"class Pruned{base_class}({base_class}):",
        f'    """{base_class} whose layers are re-shaped from ``config.onedistill_pruning``."""',
        "",
        "    def __init__(self, config, *args, **kwargs):",
        "        super().__init__(config, *args, **kwargs)",
        f"        spec = getattr(config, {CONFIG_KEY!r}, None)",
        "        if spec:",
        "            apply_pruning_spec(self, spec)",
        "",
    ]
    return "\n".join(parts)


def save_pruned(
    model: nn.Module, tokenizer: Any, out_dir: str | Path, remote_code: bool = True
) -> Path:
    """Save a (finalized) pruned model, its tokenizer and a ``trust_remote_code`` modeling file.

    The directory reloads with :func:`load_pruned` / :func:`load_student`, and (if
    ``remote_code``) with ``AutoModelFor...from_pretrained(out_dir, trust_remote_code=True)``.
    """
    if getattr(model, "_onedistill_pruning_controller", None) is not None:
        raise RuntimeError(
            "call PruningController.finalize() before saving (a masked model is not pruned)"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = model.config
    setattr(config, CONFIG_KEY, _spec_of(model))
    base_class = type(model).__name__
    auto = next((a for s, a in _AUTO_CLASS_BY_SUFFIX if base_class.endswith(s)), None)
    if remote_code and auto is not None and base_class.startswith("Pruned"):
        base_class = base_class[len("Pruned") :]  # re-saving a model loaded via remote code
    if remote_code and auto is not None:
        import transformers

        if not hasattr(transformers, base_class):
            raise NotImplementedError(f"cannot write remote code for {base_class}")
        (out / REMOTE_CODE_FILE).write_text(_remote_code(base_class), encoding="utf-8")
        module = REMOTE_CODE_FILE[: -len(".py")]
        config.auto_map = {auto: f"{module}.Pruned{base_class}"}
        config.architectures = [base_class]
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def _read_state_dict(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    single = model_dir / "model.safetensors"
    if single.exists():
        return load_file(str(single))
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state = {}
        for shard in shards:
            state.update(load_file(str(model_dir / shard)))
        return state
    raise FileNotFoundError(f"no model.safetensors in {model_dir}")


def load_pruned(model_dir: str | Path) -> nn.Module:
    """Rebuild a model saved by :func:`save_pruned` and load its weights strictly (eval mode)."""
    import transformers
    from transformers import AutoConfig

    model_dir = Path(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    spec = getattr(config, CONFIG_KEY, None)
    if not spec:
        raise ValueError(f"{model_dir} has no {CONFIG_KEY} entry in its config: not a pruned model")
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    if cls is None:
        raise NotImplementedError(f"unknown architecture {arch!r} in {model_dir}/config.json")
    model = cls(config)
    _check_supported(model)
    apply_pruning_spec(model, spec)
    state = _read_state_dict(model_dir)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise RuntimeError(
            f"pruned checkpoint does not match the rebuilt model: missing={missing}, "
            f"unexpected={unexpected}"
        )
    if tied:
        model.tie_weights()
    return model.eval()


def load_student(model_dir: str | Path) -> nn.Module:
    """Load a student classifier, pruned (detected from the config) or plain (eval mode)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(model_dir)
    if getattr(config, CONFIG_KEY, None):
        return load_pruned(model_dir)
    return AutoModelForSequenceClassification.from_pretrained(model_dir).eval()


# ----------------------------------------------------------------------------------------------
# Plot
# ----------------------------------------------------------------------------------------------


def plot_sensitivity(summary: Mapping, path: str | Path) -> Path:
    """Plot heads kept per layer and the sorted head-importance ranking to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    per_layer, kept = summary["heads_per_layer"], summary["heads_kept"]
    ranking = summary["head_ranking"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4), width_ratios=(1, 2))
    layers = list(range(len(per_layer)))
    ax1.bar(layers, per_layer, color="#dddddd", label="original")
    ax1.bar(layers, kept, color="#3b75af", label="kept")
    ax1.set_xlabel("layer")
    ax1.set_ylabel("attention heads")
    ax1.set_title(f"Heads kept: {summary['total_heads_kept']}/{summary['total_heads']}")
    ax1.set_xticks(layers)
    ax1.legend()
    colors = ["#3b75af" if r["kept"] else "#c44e52" for r in ranking]
    ax2.bar(range(len(ranking)), [r["score"] for r in ranking], color=colors)
    if len(ranking) <= 48:
        ax2.set_xticks(range(len(ranking)))
        ax2.set_xticklabels(
            [f"L{r['layer']}H{r['head']}" for r in ranking], rotation=90, fontsize=7
        )
    ax2.set_ylabel("importance (L2-normalised per layer)")
    ax2.set_title("Head sensitivity ranking (blue kept, red pruned)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
