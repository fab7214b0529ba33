"""Latency, throughput, memory and size of a model artifact (ONNX, ORT format, or HF directory).

What is measured, and how:

* **latency** (``latency_ms_p50`` / ``latency_ms_p95``): batch 1, one text per call, model call
  only (tokenization happens before the clock starts), after ``warmup`` untimed calls, with a
  fixed thread count (``SessionOptions.intra_op_num_threads`` / ``torch.set_num_threads``);
  percentiles over ``repeats`` calls cycling through the texts.
* **throughput** (``throughput_per_s``): examples per second over ``throughput_batches`` batches
  of ``batch_size`` texts (padded to each batch's longest), after one warm-up batch.
* **memory** (``peak_rss_mb``, ``rss_delta_mb``): resident set size of this process, sampled every
  2 ms by a psutil thread while the model is loaded and run; the delta is against the RSS just
  before loading. Best effort: the allocator keeps freed pages, and anything else the process
  holds counts, so compare artifacts measured the same way rather than reading it as exact.
* **size** (``size_mb``): the ``.onnx`` file plus any external-data files it references, the
  ``.ort`` file, or every file of a model directory; MB = 10^6 bytes.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from onedistill.compress.runtime import (
    dir_size_mb,
    encode,
    is_hf_model_dir,
    load_student,
    model_input_names,
    ort_session,
    quiet,
    session_feeds,
)

MEMORY_METHOD = (
    "peak RSS of this process sampled every 2 ms by a psutil thread during load and runs; "
    "delta against the RSS before loading (best effort)"
)
LATENCY_METHOD = (
    "batch 1, model call only (pre-tokenized), after warm-up, fixed intra-op threads; "
    "p50/p95 over the timed calls"
)

_SUBJECTS = (
    "the film",
    "this movie",
    "the plot",
    "the lead actor",
    "the soundtrack",
    "the new phone",
    "the service",
    "our waiter",
    "the hotel room",
    "the update",
    "customer support",
    "the battery",
)
_VERBS = ("was", "felt", "seemed", "turned out to be", "is", "remains")
_ADJECTIVES = (
    "wonderful",
    "dull",
    "surprisingly good",
    "a complete mess",
    "far too long",
    "charming",
    "disappointing",
    "excellent",
    "mediocre",
    "worth every penny",
    "painfully slow",
    "great fun",
)
_TAILS = (
    "and I would recommend it to anyone",
    "although the ending dragged on for a while",
    "but the price is hard to justify",
    "which nobody expected after the trailer",
    "so we left early",
    "and the second half was even better",
    "despite a few rough edges",
    "if you have an evening to spare",
)


def representative_texts(n: int = 64, seed: int = 0) -> list[str]:
    """Review-like English sentences of mixed length (about 5 to 60 words), reproducibly.

    Used when no real texts are given: latency depends on token count, so the mix of short and
    long inputs matters more than their meaning.
    """
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        clauses = [
            f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_ADJECTIVES)}"
            for _ in range(rng.choice((1, 1, 2, 3, 4)))
        ]
        sentence = ", ".join(clauses)
        if rng.random() < 0.6:
            sentence += " " + rng.choice(_TAILS)
        texts.append(sentence[0].upper() + sentence[1:] + ".")
    return texts


class _RssSampler:
    """Samples this process's RSS in a background thread; ``peak`` is the largest seen."""

    def __init__(self, interval_s: float = 0.002):
        import psutil

        self._proc = psutil.Process()
        self.interval_s = interval_s
        self.start_rss = self._proc.memory_info().rss
        self.peak = self.start_rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    def figures(self) -> dict[str, float]:
        return {
            "peak_rss_mb": self.peak / 1e6,
            "rss_delta_mb": (self.peak - self.start_rss) / 1e6,
        }


def onnx_size_mb(path: str | Path) -> float:
    """Size of an ``.onnx`` file plus the external-data files it references (or an ``.ort``)."""
    path = Path(path)
    total = path.stat().st_size
    if path.suffix == ".onnx":
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        locations = {
            entry.value
            for init in model.graph.initializer
            for entry in init.external_data
            if entry.key == "location"
        }
        total += sum(
            (path.parent / loc).stat().st_size for loc in locations if (path.parent / loc).is_file()
        )
    return total / 1e6


def _timed_loop(
    call: Callable[[Any], Any],
    singles: list[Any],
    batches: list[Any],
    batch_rows: list[int],
    repeats: int,
    warmup: int,
) -> dict[str, float]:
    for i in range(max(warmup, 0)):
        call(singles[i % len(singles)])
    times = []
    for i in range(repeats):
        feed = singles[i % len(singles)]
        t0 = time.perf_counter()
        call(feed)
        times.append(time.perf_counter() - t0)
    call(batches[0])  # warm-up for the larger shapes
    t0 = time.perf_counter()
    for b in batches:
        call(b)
    elapsed = time.perf_counter() - t0
    ms = np.asarray(times) * 1e3
    return {
        "latency_ms_p50": float(np.percentile(ms, 50)),
        "latency_ms_p95": float(np.percentile(ms, 95)),
        "latency_ms_mean": float(ms.mean()),
        "throughput_per_s": float(sum(batch_rows) / elapsed) if elapsed > 0 else float("nan"),
    }


def _inputs(
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int,
    throughput_batches: int,
    max_length: int,
) -> tuple[list[dict], list[dict], list[int]]:
    singles = [encode(tokenizer, [t], max_length=max_length) for t in texts]
    pool = list(texts)
    while len(pool) < batch_size * throughput_batches:
        pool += list(texts)
    batches = [
        encode(tokenizer, pool[i * batch_size : (i + 1) * batch_size], max_length=max_length)
        for i in range(throughput_batches)
    ]
    return singles, batches, [batch_size] * throughput_batches


def bench_onnx(
    path: str | Path,
    tokenizer: Any,
    texts: Sequence[str] | None = None,
    threads: int = 2,
    repeats: int = 50,
    *,
    warmup: int = 5,
    batch_size: int = 32,
    throughput_batches: int = 3,
    max_length: int = 128,
    providers: Sequence[str] | None = None,
) -> dict:
    """Benchmark an ``.onnx`` / ``.ort`` model with ONNX Runtime (see the module docstring).

    Args:
        path: The model file.
        tokenizer: Tokenizer matching the model.
        texts: Inputs (default: :func:`representative_texts`).
        threads: Intra-op threads.
        repeats: Timed batch-1 calls.
        warmup: Untimed calls first.
        batch_size: Rows per throughput batch.
        throughput_batches: Timed throughput batches.
        max_length: Truncation.
        providers: ONNX Runtime execution providers (CPU by default).

    Returns:
        ``runtime``, ``path``, ``threads``, ``latency_ms_p50``, ``latency_ms_p95``,
        ``latency_ms_mean``, ``throughput_per_s``, ``batch_size``, ``peak_rss_mb``,
        ``rss_delta_mb``, ``size_mb``, ``repeats``, ``providers`` and the method notes.
    """
    texts = list(texts) if texts else representative_texts()
    singles, batches, rows = _inputs(tokenizer, texts, batch_size, throughput_batches, max_length)
    with _RssSampler() as mem:
        session = ort_session(path, threads=threads, providers=providers)
        singles = [session_feeds(session, s) for s in singles]
        batches = [session_feeds(session, b) for b in batches]
        out_name = session.get_outputs()[0].name
        timing = _timed_loop(
            lambda feed: session.run([out_name], feed), singles, batches, rows, repeats, warmup
        )
    return {
        "runtime": "onnxruntime",
        "path": str(path),
        "providers": session.get_providers(),
        "threads": threads,
        **timing,
        "batch_size": batch_size,
        "repeats": repeats,
        **mem.figures(),
        "size_mb": onnx_size_mb(path),
        "latency_method": LATENCY_METHOD,
        "memory_method": MEMORY_METHOD,
    }


def bench_torch(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str] | None = None,
    threads: int = 2,
    repeats: int = 50,
    *,
    warmup: int = 5,
    batch_size: int = 32,
    throughput_batches: int = 3,
    max_length: int = 128,
    model_dir: str | Path | None = None,
) -> dict:
    """Benchmark a torch sequence classifier on CPU (see the module docstring).

    Args:
        model: A loaded model, or a model directory (loaded here, inside the memory window).
        tokenizer: Its tokenizer (None: loaded from the directory).
        texts: Inputs (default: :func:`representative_texts`).
        threads: ``torch.set_num_threads`` for the run (restored afterwards).
        repeats: Timed batch-1 calls.
        warmup: Untimed calls first.
        batch_size: Rows per throughput batch.
        throughput_batches: Timed throughput batches.
        max_length: Truncation.
        model_dir: Directory whose size is reported (default: ``model`` when it is a path).

    Returns:
        The same keys as :func:`bench_onnx`, with ``runtime`` "torch".
    """
    import torch

    texts = list(texts) if texts else representative_texts()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with _RssSampler() as mem:
            if isinstance(model, (str, Path)):
                model_dir = model_dir or model
                # Default (SDPA) attention, as users run it; pruned students load too.
                model, loaded_tok = load_student(model, eager_attention=False)
                tokenizer = tokenizer or loaded_tok
            model = model.eval()
            names = model_input_names(model, tokenizer)
            singles, batches, rows = _inputs(
                tokenizer, texts, batch_size, throughput_batches, max_length
            )

            def to_torch(enc: dict) -> dict:
                return {n: torch.from_numpy(enc[n]) for n in names if n in enc}

            singles = [to_torch(s) for s in singles]
            batches = [to_torch(b) for b in batches]
            with torch.inference_mode():
                timing = _timed_loop(
                    lambda feed: model(**feed).logits, singles, batches, rows, repeats, warmup
                )
    finally:
        torch.set_num_threads(previous)
    if model_dir is not None:
        size = dir_size_mb(model_dir)
    else:
        size = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
    return {
        "runtime": "torch",
        "path": str(model_dir) if model_dir is not None else None,
        "threads": threads,
        **timing,
        "batch_size": batch_size,
        "repeats": repeats,
        **mem.figures(),
        "size_mb": size,
        "size_method": "directory on disk" if model_dir is not None else "parameter bytes",
        "latency_method": LATENCY_METHOD,
        "memory_method": MEMORY_METHOD,
    }


def _find_tokenizer(path: Path) -> Any:
    """The tokenizer saved next to an ONNX file (its folder or the folder above)."""
    from transformers import AutoTokenizer

    for folder in (path.parent, path.parent.parent):
        if (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file():
            with quiet():
                return AutoTokenizer.from_pretrained(folder)
    raise FileNotFoundError(
        f"no tokenizer found next to {path} (looked in {path.parent} and {path.parent.parent}); "
        "pass one explicitly"
    )


def bench_artifact(
    path: str | Path,
    target: Literal["cpu", "gpu", "mobile"] = "cpu",
    texts: Sequence[str] | None = None,
    *,
    threads: int = 2,
    repeats: int = 50,
    tokenizer: Any | None = None,
    throughput_batches: int = 3,
) -> dict:
    """Benchmark whatever ``path`` is: ``.onnx`` / ``.ort`` file, compressed dir, or HF model dir.

    A directory holding a Hugging Face model (teacher or student) is run with torch; a directory
    without weights but with ``model.onnx`` (or ``model.ort``) is the compressed output and its
    chosen artifact is run.

    Args:
        path: The artifact.
        target: ``cpu`` runs on the CPU execution provider; ``gpu`` uses CUDA when this
            onnxruntime build has it, and otherwise returns the figures as "not measured";
            ``mobile`` runs the file on this CPU (a stand-in, noted in the result).
        texts: Inputs (default: :func:`representative_texts`).
        threads: Intra-op threads.
        repeats: Timed batch-1 calls.
        tokenizer: Tokenizer (default: found next to the file or in the directory).
        throughput_batches: Timed throughput batches.

    Returns:
        The :func:`bench_onnx` / :func:`bench_torch` figures plus ``artifact``, ``kind`` and
        ``target``; for an unavailable GPU, ``measured`` False and ``reason``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no artifact at {path}")
    texts = list(texts) if texts else representative_texts()
    if path.is_dir():
        if is_hf_model_dir(path):
            if target == "gpu":
                return _not_measured(path, "hf-dir", target, "torch GPU benchmarks are not run")
            result = bench_torch(
                path,
                tokenizer,
                texts,
                threads,
                repeats,
                throughput_batches=throughput_batches,
            )
            return {"artifact": str(path), "kind": "hf-dir", "target": target, **result}
        for name in ("model.onnx", "model.ort"):
            if (path / name).is_file():
                return bench_artifact(
                    path / name,
                    target,
                    texts,
                    threads=threads,
                    repeats=repeats,
                    tokenizer=tokenizer,
                    throughput_batches=throughput_batches,
                )
        raise ValueError(f"{path} holds neither a Hugging Face model nor model.onnx / model.ort")
    if path.suffix not in (".onnx", ".ort"):
        raise ValueError(f"{path}: expected an .onnx or .ort file, or a model directory")
    tokenizer = tokenizer or _find_tokenizer(path)
    providers = ["CPUExecutionProvider"]
    note = None
    if target == "gpu":
        import onnxruntime as ort

        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            return _not_measured(
                path,
                path.suffix[1:],
                target,
                f"no CUDA execution provider in this onnxruntime build (providers: {available})",
            )
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    elif target == "mobile":
        note = "measured on this host's CPU as a stand-in; phone latency differs"
    result = bench_onnx(
        path,
        tokenizer,
        texts,
        threads,
        repeats,
        throughput_batches=throughput_batches,
        providers=providers,
    )
    out = {"artifact": str(path), "kind": path.suffix[1:], "target": target, **result}
    if note:
        out["note"] = note
    return out


def _not_measured(path: Path, kind: str, target: str, reason: str) -> dict:
    size = dir_size_mb(path) if path.is_dir() else onnx_size_mb(path)
    return {
        "artifact": str(path),
        "kind": kind,
        "target": target,
        "measured": False,
        "reason": reason,
        "latency_ms_p50": "not measured",
        "latency_ms_p95": "not measured",
        "throughput_per_s": "not measured",
        "size_mb": size,
    }
