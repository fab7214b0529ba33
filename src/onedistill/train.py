"""The distillation loop: one backward pass per step over the hybrid loss.

Teacher outputs come from the on-disk cache, looked up by each example's position in the
training split, so a shuffled loader always pairs an example with its own teacher outputs.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from transformers import get_linear_schedule_with_warmup

from onedistill.config import DistillConfig
from onedistill.encode import accepted_inputs, length_sorted_batches, tokenize
from onedistill.losses import HybridLoss, linear_weights, mean_pool, quant_loss, temperature_at
from onedistill.progress import progress_bar

log = logging.getLogger(__name__)


class StepCallback(Protocol):
    """Hooks for stages that act during training, such as pruning."""

    def after_backward(self) -> None:
        """Called after every backward pass, while gradients are present."""

    def on_step(self, step: int) -> bool:
        """Called after every optimizer step (1-based); True when the model changed."""

    def state_dict(self) -> dict:
        """State saved in each epoch checkpoint."""

    def load_state_dict(self, state: dict) -> None:
        """Restore the state on ``--resume``."""


@dataclass
class TrainData:
    """Everything the loop reads per example, aligned by position."""

    texts: list[str]
    pairs: list[str] | None
    labels: np.ndarray  # int64, -1 for unlabelled transfer text
    teacher_logits: np.ndarray  # [N, C]
    teacher_hidden: np.ndarray | None  # [N, pairs, D_t] pooled teacher states of mapped layers
    sample: np.ndarray = field(default=None)  # type: ignore[assignment]  # indices per epoch
    lengths: np.ndarray | None = None  # token counts, for length-grouped batches

    def __post_init__(self) -> None:
        n = len(self.texts)
        for name, arr in (("labels", self.labels), ("teacher_logits", self.teacher_logits)):
            if len(arr) != n:
                raise ValueError(f"{name} has {len(arr)} rows for {n} texts")
        if self.sample is None:
            self.sample = np.arange(n)


def collate(
    data: TrainData, indices: Sequence[int], tokenizer, max_length: int, accepted: set[str]
) -> dict[str, torch.Tensor]:
    """Tokenize a batch and gather the teacher outputs of exactly these examples."""
    idx = np.asarray(indices)
    batch = tokenize(
        tokenizer,
        [data.texts[i] for i in idx],
        [data.pairs[i] for i in idx] if data.pairs is not None else None,
        max_length,
        accepted | {"attention_mask"},
    )
    batch["labels"] = torch.as_tensor(data.labels[idx], dtype=torch.long)
    batch["teacher_logits"] = torch.as_tensor(data.teacher_logits[idx], dtype=torch.float32)
    if data.teacher_hidden is not None:
        batch["teacher_hidden"] = torch.as_tensor(data.teacher_hidden[idx], dtype=torch.float32)
    batch["index"] = torch.as_tensor(idx)
    return batch


def epoch_order(
    sample: np.ndarray, seed: int, epoch: int, lengths: np.ndarray | None = None, group: int = 0
) -> np.ndarray:
    """The shuffled example order of one epoch.

    A function of seed and epoch only, so a resumed run sees exactly the batches an
    uninterrupted one would. With ``lengths`` and ``group`` (examples per optimizer step), the
    shuffled order is cut into windows of 50 steps, each window is sorted by length and its
    steps are shuffled again: batches hold texts of similar length, so far less compute goes
    into padding, while every epoch still mixes the whole data set.
    """
    rng = np.random.default_rng(seed * 1000 + epoch)
    order = sample[rng.permutation(len(sample))]
    if lengths is None or group <= 1:
        return order
    window = group * 50
    steps = []
    for start in range(0, len(order), window):
        part = order[start : start + window]
        part = part[np.argsort(lengths[part], kind="stable")]
        steps.extend(part[k : k + group] for k in range(0, len(part), group))
    full = [s for s in steps if len(s) == group]
    short = [s for s in steps if len(s) < group]
    # The one short step (end of the data) stays last so every other step has a full batch.
    return np.concatenate([full[k] for k in rng.permutation(len(full))] + short)


@torch.no_grad()
def predict(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    pairs: Sequence[str] | None,
    max_length: int,
    batch_size: int = 64,
) -> np.ndarray:
    """Logits for every text, in input order."""
    was_training = model.training
    model.eval()
    accepted = accepted_inputs(model)
    out = None
    for idx in length_sorted_batches(tokenizer, texts, batch_size, max_length):
        inputs = tokenize(
            tokenizer,
            [texts[i] for i in idx],
            [pairs[i] for i in idx] if pairs is not None else None,
            max_length,
            accepted,
        )
        logits = model(**inputs).logits.float().numpy()
        if out is None:
            out = np.zeros((len(texts), logits.shape[-1]), np.float32)
        out[idx] = logits
    model.train(was_training)
    return out


def _rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


@dataclass
class TrainResult:
    """What the loop hands back to the pipeline."""

    best_epoch: int
    best_metric: float
    history: list[dict]
    stopped_early: bool
    steps: int
    lr: float


class Distiller:
    """Trains the student against cached teacher outputs.

    Args:
        student: a Hugging Face sequence classifier.
        tokenizer: the student's tokenizer.
        pairs: ``(student_layer, slot)`` for each matched layer: the student layer (1-based)
            whose pooled state is projected and compared with ``teacher_hidden[:, slot]``.
        evaluate: ``student -> metric`` (higher is better) used for early stopping.
    """

    def __init__(
        self,
        student: nn.Module,
        tokenizer,
        cfg: DistillConfig,
        lr: float,
        teacher_width: int,
        pairs: list[int],
        max_length: int,
        seed: int,
        checkpoint_dir: Path,
        metrics_path: Path,
        evaluate: Callable[[nn.Module], dict[str, float]],
        callbacks: Sequence[StepCallback] = (),
        assert_teacher_frozen: Callable[[], None] | None = None,
        best_from_step: int = 0,
        show_progress: bool = True,
    ):
        self.student = student
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.lr = lr
        self.pairs = pairs
        self.max_length = max_length
        self.seed = seed
        self.checkpoint_dir = checkpoint_dir
        self.metrics_path = metrics_path
        self.evaluate = evaluate
        self.callbacks = list(callbacks)
        self.assert_teacher_frozen = assert_teacher_frozen or (lambda: None)
        self.best_from_step = best_from_step
        self.show_progress = show_progress
        self.accepted = accepted_inputs(student)
        self.loss = HybridLoss(
            w_kd=cfg.loss.w_kd,
            w_hidden=cfg.loss.w_hidden if pairs else 0.0,
            w_quant=cfg.loss.w_quant,
            w_ce=cfg.loss.w_ce,
            student_dim=student.config.hidden_size,
            teacher_dim=teacher_width,
            pairs=len(pairs),
        )

    def _optimizer(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for name, p in self.student.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.dim() < 2 or "LayerNorm" in name else decay).append(p)
        groups = [
            {"params": decay, "lr": self.lr, "weight_decay": self.cfg.weight_decay},
            {"params": no_decay, "lr": self.lr, "weight_decay": 0.0},
        ]
        if len(self.loss.projections):
            groups.append(
                {
                    "params": self.loss.projections.parameters(),
                    "lr": self.cfg.projection_lr,
                    "weight_decay": 0.0,
                }
            )
        return torch.optim.AdamW(groups)

    @staticmethod
    def total_steps(examples_per_epoch: int, cfg: DistillConfig) -> int:
        """Optimizer steps of a whole run."""
        return math.ceil(examples_per_epoch / (cfg.batch_size * cfg.grad_accum)) * cfg.epochs

    def _latest_checkpoint(self) -> Path | None:
        found = sorted(
            self.checkpoint_dir.glob("epoch-*.pt"), key=lambda p: int(p.stem.split("-")[1])
        )
        return found[-1] if found else None

    def fit(self, data: TrainData, resume: bool = False) -> TrainResult:
        """Train for the configured epochs (or continue from the last checkpoint).

        Evaluates after every epoch, writes a checkpoint, stops early when eval accuracy stops
        improving, and leaves the student holding the best epoch's weights.
        """
        cfg = self.cfg
        per_step = cfg.batch_size * cfg.grad_accum
        steps_per_epoch = math.ceil(len(data.sample) / per_step)
        total_steps = steps_per_epoch * cfg.epochs
        optimizer = self._optimizer()
        scheduler = get_linear_schedule_with_warmup(
            optimizer, int(cfg.warmup_ratio * total_steps), total_steps
        )
        quant_weights = linear_weights(self.student.base_model) if cfg.loss.w_quant > 0 else None

        start_epoch, step, best, best_epoch, bad_epochs = 0, 0, -math.inf, -1, 0
        history: list[dict] = []
        best_path = self.checkpoint_dir / "best.pt"
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            ckpt_path = self._latest_checkpoint()
            if ckpt_path is None:
                raise FileNotFoundError(
                    f"--resume: no checkpoint in {self.checkpoint_dir}; start without --resume"
                )
            ckpt = torch.load(ckpt_path, weights_only=False)
            self.student.load_state_dict(ckpt["student"])
            self.loss.load_state_dict(ckpt["loss"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            for cb, state in zip(self.callbacks, ckpt["callbacks"], strict=True):
                cb.load_state_dict(state)
            start_epoch, step = ckpt["epoch"] + 1, ckpt["step"]
            best, best_epoch, bad_epochs = ckpt["best"], ckpt["best_epoch"], ckpt["bad_epochs"]
            history = ckpt["history"]
            _set_rng_state(ckpt["rng"])
            log.info("Resumed from %s (epoch %d done, step %d)", ckpt_path, start_epoch, step)

        stopped_early = False
        metrics = self.metrics_path.open(
            "a", encoding="utf-8", buffering=1
        )  # line-buffered: tail -f works
        try:
            for epoch in range(start_epoch, cfg.epochs):
                if cfg.early_stopping_patience and bad_epochs >= cfg.early_stopping_patience:
                    stopped_early = True
                    break
                self.student.train()
                order = epoch_order(data.sample, self.seed, epoch, data.lengths, per_step)
                started = time.perf_counter()
                sums: dict[str, float] = {}
                desc = f"distill epoch {epoch + 1}/{cfg.epochs}"
                with progress_bar(
                    desc, total=steps_per_epoch, enabled=self.show_progress
                ) as advance:
                    for s in range(steps_per_epoch):
                        chunk = order[s * per_step : (s + 1) * per_step]
                        terms = self._step(data, chunk, optimizer, quant_weights, step, total_steps)
                        scheduler.step()
                        step += 1
                        for cb in self.callbacks:
                            cb.on_step(step)
                        for k, v in terms.items():
                            sums[k] = sums.get(k, 0.0) + v
                        if step % 10 == 0 or s == steps_per_epoch - 1:
                            row = {
                                "step": step,
                                "epoch": epoch + 1,
                                "lr": scheduler.get_last_lr()[0],
                                "epoch_elapsed_s": round(time.perf_counter() - started, 2),
                            }
                            metrics.write(json.dumps(row | terms) + "\n")
                        advance(1)

                scores = self.evaluate(self.student)
                row = {
                    "epoch": epoch + 1,
                    "step": step,
                    "epoch_time_s": round(time.perf_counter() - started, 2),
                    **{f"train_{k}": v / steps_per_epoch for k, v in sums.items()},
                    **{f"eval_{k}": v for k, v in scores.items()},
                }
                history.append(row)
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
                metric = scores["accuracy"]
                log.info(
                    "epoch %d: loss %.4f, eval accuracy %.4f, macro-F1 %.4f (%.0f s)",
                    epoch + 1,
                    row.get("train_total", float("nan")),
                    metric,
                    scores.get("macro_f1", float("nan")),
                    row["epoch_time_s"],
                )
                # Epochs that end before best_from_step (e.g. while pruning is still removing
                # structure) are neither kept as best nor counted against early stopping.
                if step >= self.best_from_step:
                    if metric > best:
                        best, best_epoch, bad_epochs = metric, epoch + 1, 0
                        torch.save(self.student.state_dict(), best_path)
                    else:
                        bad_epochs += 1
                self._checkpoint(
                    epoch, step, optimizer, scheduler, best, best_epoch, bad_epochs, history
                )
        finally:
            metrics.close()

        # Keep the best epoch's weights, not the last one's.
        if best_epoch > 0:
            self.student.load_state_dict(torch.load(best_path, weights_only=True))
        return TrainResult(best_epoch, best, history, stopped_early, step, self.lr)

    def _step(
        self,
        data: TrainData,
        chunk: np.ndarray,
        optimizer: torch.optim.Optimizer,
        quant_weights: list[torch.Tensor] | None,
        step: int,
        total_steps: int,
    ) -> dict[str, float]:
        self.assert_teacher_frozen()
        temperature = temperature_at(
            self.cfg.loss.temperature.start,
            self.cfg.loss.temperature.end,
            step / max(1, total_steps - 1),
        )
        micro = [
            chunk[i : i + self.cfg.batch_size] for i in range(0, len(chunk), self.cfg.batch_size)
        ]
        totals: dict[str, float] = {"temperature": temperature}
        for indices in micro:
            batch = collate(data, indices, self.tokenizer, self.max_length, self.accepted)
            inputs = {k: batch[k] for k in self.accepted if k in batch}
            out = self.student(**inputs, output_hidden_states=bool(self.pairs))
            student_hidden = teacher_hidden = None
            if self.pairs:
                mask = batch["attention_mask"]
                student_hidden = [mean_pool(out.hidden_states[layer], mask) for layer in self.pairs]
                teacher_hidden = [
                    batch["teacher_hidden"][:, slot] for slot in range(len(self.pairs))
                ]
            result = self.loss(
                out.logits,
                batch["teacher_logits"],
                batch["labels"],
                temperature,
                student_hidden=student_hidden,
                teacher_hidden=teacher_hidden,
            )
            # Micro-batches are weighted by size so accumulation equals one large batch.
            share = len(indices) / len(chunk)
            (result.total * share).backward()
            for cb in self.callbacks:
                cb.after_backward()
            for k, v in result.terms.items():
                if k != "temperature":
                    totals[k] = totals.get(k, 0.0) + v * share
        if quant_weights is not None:
            # The weight term does not depend on the batch: it enters once per optimizer step.
            quant = quant_loss(quant_weights)
            (self.cfg.loss.w_quant * quant).backward()
            totals["quant"] = quant.item()
            totals["total"] = totals.get("total", 0.0) + self.cfg.loss.w_quant * quant.item()
        params = [p for g in optimizer.param_groups for p in g["params"]]
        totals["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return totals

    def _checkpoint(
        self,
        epoch: int,
        step: int,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        best: float,
        best_epoch: int,
        bad_epochs: int,
        history: list[dict],
    ) -> None:
        state = {
            "epoch": epoch,
            "step": step,
            "student": self.student.state_dict(),
            "loss": self.loss.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "callbacks": [cb.state_dict() for cb in self.callbacks],
            "best": best,
            "best_epoch": best_epoch,
            "bad_epochs": bad_epochs,
            "history": history,
            "rng": _rng_state(),
        }
        path = self.checkpoint_dir / f"epoch-{epoch + 1}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)
        # Only the newest epoch checkpoint is kept: each holds weights plus optimizer moments.
        for old in self.checkpoint_dir.glob("epoch-*.pt"):
            if old != path:
                old.unlink()
