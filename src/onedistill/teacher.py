"""The teacher: a frozen classifier whose outputs are computed once and cached on disk.

A teacher is either a sequence classifier with its own head (``finetune: none`` or ``full``),
or a sentence encoder with a linear head trained here on its frozen, mean-pooled, normalised
embeddings (``finetune: head``), the usual way to turn a sentence-embedding model into a
classifier.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from onedistill.encode import accepted_inputs, length_sorted_batches, tokenize
from onedistill.losses import mean_pool
from onedistill.models import ModelError, fingerprint
from onedistill.progress import progress_bar

log = logging.getLogger(__name__)


class TeacherClassifier(nn.Module):
    """Teacher as one module: ``inputs -> (logits, hidden_states)``.

    ``hidden_states`` holds the embedding output and every layer's output (``L + 1`` tensors).
    """

    def __init__(self, backbone: nn.Module, head: nn.Linear | None):
        super().__init__()
        self.backbone = backbone
        self.head = head  # None when the backbone is itself a sequence classifier
        self.accepted = accepted_inputs(backbone)

    @property
    def num_layers(self) -> int:
        """Number of transformer layers in the backbone (``L``)."""
        return self.backbone.config.num_hidden_layers

    @property
    def width(self) -> int:
        """Hidden size of the backbone."""
        return self.backbone.config.hidden_size

    def forward(
        self, **inputs: torch.Tensor
    ) -> tuple[torch.Tensor | None, tuple[torch.Tensor, ...]]:
        """Logits (``None`` for a bare encoder without a head yet) and all hidden states."""
        inputs = {k: v for k, v in inputs.items() if k in self.accepted}
        out = self.backbone(**inputs, output_hidden_states=True)
        if self.head is None:
            # A bare encoder before its head is trained: only the states are wanted.
            return getattr(out, "logits", None), out.hidden_states
        pooled = F.normalize(mean_pool(out.hidden_states[-1], inputs["attention_mask"]), dim=-1)
        return self.head(pooled), out.hidden_states

    def freeze(self) -> TeacherClassifier:
        """Switch to eval mode and turn off gradients for every parameter; returns self."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def assert_frozen(self) -> None:
        """Fail loudly if anything switched the teacher to training or gave it gradients."""
        if self.training or any(p.requires_grad for p in self.parameters()):
            raise RuntimeError("the teacher must stay frozen in eval mode during distillation")


class LogitsOnly(nn.Module):
    """Wraps a teacher so latency and export see a plain ``inputs -> logits`` module."""

    def __init__(self, teacher: TeacherClassifier):
        super().__init__()
        self.teacher = teacher

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        """The teacher's logits, dropping its hidden states."""
        return self.teacher(**inputs)[0]


def load_backbone(model_dir: Path | str, finetune: str, label_names: list[str]) -> nn.Module:
    """Load the teacher network for the chosen fine-tuning mode, checking its labels."""
    n = len(label_names)
    config = AutoConfig.from_pretrained(model_dir)
    finetune = resolve_finetune(model_dir, finetune, n)
    if finetune == "head":
        return AutoModel.from_pretrained(model_dir)
    if finetune == "none":
        has_head = any("ForSequenceClassification" in a for a in (config.architectures or []))
        if not has_head:
            raise ModelError(
                f"teacher {model_dir} has no classification head (architectures: "
                f"{config.architectures}); set teacher.finetune to 'head' or 'full'"
            )
        if config.num_labels != n:
            raise ModelError(
                f"teacher {model_dir} predicts {config.num_labels} classes but the data has {n} "
                f"({label_names}); set teacher.finetune to 'head' or 'full' to train a new head"
            )
        return AutoModelForSequenceClassification.from_pretrained(model_dir)
    return AutoModelForSequenceClassification.from_pretrained(
        model_dir,
        num_labels=n,
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
    )


def resolve_finetune(model_dir: Path | str, finetune: str, num_labels: int) -> str:
    """``auto``: keep a classifier's own head when it fits the labels, else train a head."""
    if finetune != "auto":
        return finetune
    config = AutoConfig.from_pretrained(model_dir)
    has_head = any("ForSequenceClassification" in a for a in (config.architectures or []))
    return "none" if has_head and config.num_labels == num_labels else "head"


@dataclass
class TeacherOutputs:
    """Cached teacher outputs for one list of examples, in that list's order."""

    logits: np.ndarray  # [N, C] float32
    pooled: np.ndarray  # [N, L + 1, D] float16: mean-pooled states of every layer


class TeacherCache:
    """Teacher outputs on disk, keyed by example id.

    The key of the cache directory covers the teacher weights, its tokenizer, ``max_length``
    and, for ``finetune: head``, nothing about the head: logits are recomputed from the cached
    pooled embeddings, so retraining the head never invalidates the expensive encoder pass.
    """

    FORMAT = 2

    def __init__(self, root: Path, key: str):
        self.dir = root / "teacher-outputs" / key
        self.dir.mkdir(parents=True, exist_ok=True)
        self._ids: dict[str, int] = {}
        self._logits = np.zeros((0, 0), np.float32)
        self._pooled = np.zeros((0, 0, 0), np.float16)
        index = self.dir / "index.json"
        if index.is_file():
            meta = json.loads(index.read_text())
            if meta.get("format") == self.FORMAT:
                self._ids = meta["rows"]
                self._logits = np.load(self.dir / "logits.npy")
                self._pooled = np.load(self.dir / "pooled.npy")
            else:
                log.warning("Ignoring teacher cache %s written in an older format", self.dir)

    def missing(self, ids: Sequence[str]) -> list[int]:
        """Positions in ``ids`` of the examples not cached yet (first occurrence of each)."""
        seen: set[str] = set()
        todo = []
        for i, k in enumerate(ids):
            if k not in self._ids and k not in seen:
                seen.add(k)
                todo.append(i)
        return todo

    def add(self, ids: Sequence[str], logits: np.ndarray, pooled: np.ndarray) -> None:
        """Append outputs for new ids (rows in ``ids`` order) and persist the cache.

        Each id gets the row number it is stored at; an id already cached, or repeated in
        ``ids``, keeps its first row. (Identical texts share an id, so they share outputs.)
        """
        keep: dict[str, int] = {}
        for i, k in enumerate(ids):
            if k not in self._ids and k not in keep:
                keep[k] = i
        if not keep:
            return
        rows = np.fromiter(keep.values(), dtype=np.int64)
        start = len(self._logits)
        for offset, k in enumerate(keep):
            self._ids[k] = start + offset
        self._logits = logits[rows] if start == 0 else np.concatenate([self._logits, logits[rows]])
        self._pooled = pooled[rows] if start == 0 else np.concatenate([self._pooled, pooled[rows]])
        # Write arrays before the index so a killed write leaves the old, consistent cache.
        np.save(self.dir / "logits.tmp.npy", self._logits)
        np.save(self.dir / "pooled.tmp.npy", self._pooled)
        (self.dir / "logits.tmp.npy").replace(self.dir / "logits.npy")
        (self.dir / "pooled.tmp.npy").replace(self.dir / "pooled.npy")
        meta = {"format": self.FORMAT, "rows": self._ids}
        (self.dir / "index.tmp.json").write_text(json.dumps(meta))
        (self.dir / "index.tmp.json").replace(self.dir / "index.json")

    def get(self, ids: Sequence[str]) -> TeacherOutputs:
        """Cached outputs for ``ids``, in that order; every id must already be cached."""
        rows = np.array([self._ids[k] for k in ids], dtype=np.int64)
        return TeacherOutputs(logits=self._logits[rows], pooled=self._pooled[rows])


@torch.no_grad()
def run_teacher(
    teacher: TeacherClassifier,
    tokenizer,
    texts: Sequence[str],
    pairs: Sequence[str] | None,
    max_length: int,
    batch_size: int,
    description: str = "teacher",
    show_progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Teacher logits and per-layer mean-pooled states, in input order."""
    teacher.assert_frozen()
    n = len(texts)
    logits = None
    pooled = None
    batches = list(length_sorted_batches(tokenizer, texts, batch_size, max_length))
    with progress_bar(description, total=n, enabled=show_progress) as advance:
        for idx in batches:
            inputs = tokenize(
                tokenizer,
                [texts[i] for i in idx],
                [pairs[i] for i in idx] if pairs is not None else None,
                max_length,
                teacher.accepted,
            )
            out_logits, hidden = teacher(**inputs)
            layers = torch.stack([mean_pool(h, inputs["attention_mask"]) for h in hidden], dim=1)
            if out_logits is None:
                out_logits = torch.zeros((len(idx), 0))
            if logits is None:
                logits = np.zeros((n, out_logits.shape[-1]), np.float32)
                pooled = np.zeros((n, layers.shape[1], layers.shape[2]), np.float16)
            logits[idx] = out_logits.float().numpy()
            pooled[idx] = layers.to(torch.float16).numpy()
            advance(len(idx))
    return logits, pooled


def cache_key(model_dir: Path | str, finetune: str, max_length: int) -> str:
    """Cache directory name; changes with the model's weights or path, finetune or max_length."""
    raw = f"{fingerprint(model_dir)}|{model_dir}|{finetune}|{max_length}"
    return hashlib.sha1(raw.encode()).hexdigest()[:16]


def fit_head(
    pooled_last: np.ndarray, labels: np.ndarray, num_labels: int, seed: int
) -> tuple[nn.Linear, dict]:
    """Train a multinomial logistic-regression head on normalised embeddings.

    The regularisation strength is picked on a seeded 10% hold-out of the training data, then
    the head is refit on all of it. Returns the head as an ``nn.Linear`` and what was chosen.
    """
    x = pooled_last.astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    cut = max(1, len(x) // 10)
    hold, fit = order[:cut], order[cut:]
    scores = {}
    for c in (0.5, 2.0, 8.0, 32.0):
        clf = LogisticRegression(C=c, max_iter=2000)
        clf.fit(x[fit], labels[fit])
        scores[c] = float(clf.score(x[hold], labels[hold]))
    best_c = max(scores, key=lambda c: (scores[c], -c))
    clf = LogisticRegression(C=best_c, max_iter=2000).fit(x, labels)

    head = nn.Linear(x.shape[1], num_labels)
    coef = torch.tensor(clf.coef_, dtype=torch.float32)
    bias = torch.tensor(clf.intercept_, dtype=torch.float32)
    with torch.no_grad():
        if num_labels == 2 and coef.shape[0] == 1:
            # sklearn keeps one row for two classes; split it so softmax equals its sigmoid.
            head.weight.copy_(torch.cat([-coef / 2, coef / 2]))
            head.bias.copy_(torch.cat([-bias / 2, bias / 2]))
        else:
            head.weight.copy_(coef)
            head.bias.copy_(bias)
    info = {"kind": "logistic_regression", "C": best_c, "holdout_accuracy": scores}
    return head, info


def load_tokenizer(model_dir: Path | str):
    """The model's tokenizer, raising ``ModelError`` instead of the library's many errors."""
    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except Exception as exc:  # tokenizers raise many types; all mean "no usable tokenizer"
        raise ModelError(f"cannot load a tokenizer from {model_dir}: {exc}") from exc
