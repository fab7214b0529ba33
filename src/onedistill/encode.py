"""Tokenizing and batching shared by teacher, student and evaluation."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn


def accepted_inputs(model: nn.Module) -> set[str]:
    """Names the model's forward accepts, so each model is fed only what it understands.

    MPNet, for example, has no ``token_type_ids``; passing them raises a TypeError.
    """
    params = inspect.signature(model.forward).parameters
    return {n for n in ("input_ids", "attention_mask", "token_type_ids") if n in params}


def tokenize(
    tokenizer,
    texts: Sequence[str],
    pairs: Sequence[str] | None,
    max_length: int,
    accepted: set[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Tokenize a batch, padded to its longest row, keeping only ``accepted`` inputs."""
    enc = tokenizer(
        list(texts),
        list(pairs) if pairs is not None else None,
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    keep = accepted if accepted is not None else set(enc.keys())
    return {k: v for k, v in enc.items() if k in keep}


def length_sorted_batches(
    tokenizer, texts: Sequence[str], batch_size: int, max_length: int
) -> Iterator[np.ndarray]:
    """Indices in batches of similar length.

    Sorting by length before batching cuts padding, which matters on a CPU: a short review
    padded to the longest one in a random batch costs several times its own compute.
    """
    lengths = np.array(
        [
            len(ids)
            for ids in tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
        ]
    )
    order = np.argsort(-lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]
