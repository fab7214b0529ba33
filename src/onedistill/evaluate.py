"""Measure teacher and student the same way: quality on eval data, size and CPU speed."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from torch import nn

from onedistill.encode import tokenize


def quality(logits: np.ndarray, labels: np.ndarray, reference: np.ndarray | None = None) -> dict:
    """Accuracy, macro-F1, ROC-AUC (binary only) and agreement with ``reference`` predictions."""
    preds = logits.argmax(-1)
    out = {
        "accuracy": float(accuracy_score(labels, preds)),
        "macro_f1": float(f1_score(labels, preds, average="macro")),
    }
    if logits.shape[-1] == 2 and len(np.unique(labels)) == 2:
        shifted = logits - logits.max(-1, keepdims=True)
        probs = np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True)
        out["roc_auc"] = float(roc_auc_score(labels, probs[:, 1]))
    if reference is not None:
        out["agreement"] = float((preds == reference.argmax(-1)).mean())
    return out


def count_params(model: nn.Module) -> int:
    """Total number of parameters in ``model``, trainable or frozen."""
    return sum(p.numel() for p in model.parameters())


def size_on_disk_mb(path: Path) -> float:
    """Bytes of weights and config that ship with a model, in MB (10^6 bytes)."""
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files) / 1e6


@torch.inference_mode()
def cpu_speed(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    pairs: Sequence[str] | None,
    max_length: int,
    accepted: set[str],
    threads: int,
    repeats: int = 50,
    throughput_batches: int = 5,
    batch_size: int = 32,
) -> dict:
    """Latency at batch 1 (p50/p95 over ``repeats`` real texts) and throughput at batch 32.

    Inputs are tokenized beforehand: the figures are the model's compute, which is what a
    smaller student changes. Runs after a warm-up with a fixed thread count.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    model.eval()
    try:

        def call(inputs: dict) -> None:
            out = model(**inputs)
            _ = out[0] if isinstance(out, tuple) else out

        singles = [
            tokenize(
                tokenizer,
                [texts[i % len(texts)]],
                [pairs[i % len(pairs)]] if pairs else None,
                max_length,
                accepted,
            )
            for i in range(repeats)
        ]
        for inputs in singles[:5]:
            call(inputs)
        times = []
        for inputs in singles:
            start = time.perf_counter()
            call(inputs)
            times.append((time.perf_counter() - start) * 1000)

        batch = tokenize(
            tokenizer,
            [texts[i % len(texts)] for i in range(batch_size)],
            [pairs[i % len(pairs)] for i in range(batch_size)] if pairs else None,
            max_length,
            accepted,
        )
        call(batch)
        batch_times = []
        for _ in range(throughput_batches):
            start = time.perf_counter()
            call(batch)
            batch_times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous_threads)
    return {
        "latency_ms_p50": float(np.percentile(times, 50)),
        "latency_ms_p95": float(np.percentile(times, 95)),
        "throughput_per_s": float(batch_size / statistics.median(batch_times)),
        "threads": threads,
    }
