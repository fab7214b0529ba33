"""Shared plumbing of the compression stages: loading the student, tokenizing, running sessions.

Everything here is deliberately boring and shared, so that export parity, evaluation and
benchmarks feed the models exactly the same way (same dtypes, same truncation, same input names).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: Files that make a directory a Hugging Face model directory (not a folder of ONNX files).
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")

#: The ``config.model_type`` values ONNX Runtime's transformer optimizer handles as ``bert``.
BERT_LIKE = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert")


def is_hf_model_dir(path: str | Path) -> bool:
    """True when ``path`` is a directory holding a Hugging Face model (config plus weights)."""
    path = Path(path)
    return (
        path.is_dir()
        and (path / "config.json").is_file()
        and any((path / f).exists() for f in HF_WEIGHT_FILES)
    )


def load_student(model_dir: str | Path, eager_attention: bool = True) -> tuple[Any, Any]:
    """Load a sequence classifier and its tokenizer from a directory, in eval mode.

    Args:
        model_dir: A directory written with ``save_pretrained`` (model and tokenizer), or one
            written by :func:`onedistill.compress.prune.save_pruned`.
        eager_attention: Use the plain (eager) attention implementation. The math is the same as
            SDPA, but only the eager graph is recognised by ONNX Runtime's attention fusion, so
            exports should use it.

    Returns:
        ``(model, tokenizer)``.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    model_dir = Path(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    kwargs = {"attn_implementation": "eager"} if eager_attention else {}
    with quiet():
        if getattr(config, "onedistill_pruning", None):
            # Pruned students have per-layer head counts that from_pretrained cannot rebuild.
            from onedistill.compress.prune import load_pruned

            model = load_pruned(model_dir)
            if eager_attention and hasattr(model, "set_attn_implementation"):
                with contextlib.suppress(Exception):
                    model.set_attn_implementation("eager")
        else:
            try:
                model = AutoModelForSequenceClassification.from_pretrained(model_dir, **kwargs)
            except (ValueError, TypeError):
                # Some architectures refuse attn_implementation; the default is still exportable.
                model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    return model.eval(), tokenizer


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence progress bars, stdout chatter and warnings of the libraries called inside."""
    buf = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
        warnings.simplefilter("ignore")
        try:
            from transformers.utils import logging as hf_logging

            verbosity = hf_logging.get_verbosity()
            bars = hf_logging.is_progress_bar_enabled()
            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
        except ImportError:  # pragma: no cover - transformers is a dependency
            hf_logging = None
        try:
            yield
        finally:
            if hf_logging is not None:
                hf_logging.set_verbosity(verbosity)
                if bars:
                    hf_logging.enable_progress_bar()


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run torch with ``n`` intra-op threads inside the block (None: leave it as it is).

    On a small, shared machine torch's default pool can be 30x slower than one thread, because
    its workers spin waiting for cores that other processes hold.
    """
    if n is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def model_input_names(model: Any, tokenizer: Any) -> list[str]:
    """The inputs an exported graph takes: ids, mask and token types when both sides use them.

    ``token_type_ids`` is only an input when the model's ``forward`` accepts it *and* the tokenizer
    produces it (RoBERTa's forward accepts it, but its tokenizer never sends it).
    """
    params = inspect.signature(model.forward).parameters
    produced = set(getattr(tokenizer, "model_input_names", ["input_ids", "attention_mask"]))
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in params and "token_type_ids" in produced:
        names.append("token_type_ids")
    return names


def encode(
    tokenizer: Any,
    texts: Sequence[str],
    pairs: Sequence[str | None] | None = None,
    max_length: int = 128,
) -> dict[str, np.ndarray]:
    """Tokenize a batch, padded to its longest row and truncated to ``max_length``, as int64."""
    texts = list(texts)
    second = None
    if pairs is not None and any(p is not None for p in pairs):
        second = [p if p is not None else "" for p in pairs]
    enc = tokenizer(
        texts,
        second,
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="np",
    )
    return {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()}


def ort_session(
    path: str | Path, threads: int | None = None, providers: Sequence[str] | None = None
) -> Any:
    """An ONNX Runtime session with a fixed intra-op thread count and quiet logging.

    Args:
        path: An ``.onnx`` or ``.ort`` file.
        threads: Intra-op threads (None: ONNX Runtime's default, all cores).
        providers: Execution providers, CPU by default.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads is not None:
        so.intra_op_num_threads = int(threads)
        # One inter-op thread: a classifier graph has no parallel branches worth a second pool.
        so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(
        str(path), sess_options=so, providers=list(providers or ["CPUExecutionProvider"])
    )


def session_feeds(session: Any, enc: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The subset of a tokenizer's output that a session takes, as int64."""
    names = [i.name for i in session.get_inputs()]
    missing = [n for n in names if n not in enc]
    feeds = {n: np.asarray(enc[n], dtype=np.int64) for n in names if n in enc}
    if "token_type_ids" in missing:
        # A tokenizer that does not produce token types means "all segment 0".
        feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        missing.remove("token_type_ids")
    if missing:
        raise ValueError(f"the model needs inputs {missing} that the tokenizer does not produce")
    return feeds


def _length_order(tokenizer: Any, texts: Sequence[str], max_length: int) -> np.ndarray:
    """Indices that sort texts by token length, so batches carry little padding."""
    lengths = [
        len(ids)
        for ids in tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    ]
    return np.argsort(np.asarray(lengths), kind="stable")


def onnx_logits(
    session: Any,
    tokenizer: Any,
    texts: Sequence[str],
    pairs: Sequence[str | None] | None = None,
    batch_size: int = 32,
    max_length: int = 128,
) -> np.ndarray:
    """Logits of an ONNX Runtime session for every text, in input order."""
    texts = list(texts)
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    order = _length_order(tokenizer, texts, max_length)
    out: list[np.ndarray] = [None] * len(texts)  # type: ignore[list-item]
    out_name = _logits_name(session)
    for start in range(0, len(texts), batch_size):
        idx = order[start : start + batch_size]
        enc = encode(
            tokenizer,
            [texts[i] for i in idx],
            [pairs[i] for i in idx] if pairs is not None else None,
            max_length,
        )
        logits = session.run([out_name], session_feeds(session, enc))[0]
        for row, i in zip(np.asarray(logits, dtype=np.float32), idx, strict=True):
            out[i] = row
    return np.stack(out)


def _logits_name(session: Any) -> str:
    names = [o.name for o in session.get_outputs()]
    return "logits" if "logits" in names else names[0]


def torch_logits(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    pairs: Sequence[str | None] | None = None,
    batch_size: int = 32,
    max_length: int = 128,
) -> np.ndarray:
    """Logits of a torch sequence classifier for every text, in input order."""
    import torch

    texts = list(texts)
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    names = model_input_names(model, tokenizer)
    order = _length_order(tokenizer, texts, max_length)
    out: list[np.ndarray] = [None] * len(texts)  # type: ignore[list-item]
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            enc = encode(
                tokenizer,
                [texts[i] for i in idx],
                [pairs[i] for i in idx] if pairs is not None else None,
                max_length,
            )
            feeds = {n: torch.from_numpy(enc[n]) for n in names if n in enc}
            logits = model(**feeds).logits.float().numpy()
            for row, i in zip(logits, idx, strict=True):
                out[i] = row
    return np.stack(out)


def classification_metrics(labels: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    """Accuracy and macro F1 (over the labels present in either list)."""
    from sklearn.metrics import f1_score

    y = np.asarray(list(labels), dtype=np.int64)
    p = np.asarray(list(predictions), dtype=np.int64)
    if y.size == 0:
        return {"accuracy": float("nan"), "macro_f1": float("nan")}
    return {
        "accuracy": float((y == p).mean()),
        "macro_f1": float(f1_score(y, p, average="macro", zero_division=0)),
    }


def max_positions(model_or_config: Any) -> int | None:
    """Longest sequence the model's position embeddings allow (RoBERTa reserves 2 slots)."""
    config = getattr(model_or_config, "config", model_or_config)
    n = getattr(config, "max_position_embeddings", None)
    if n is None:
        return None
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        n -= 2
    return int(n)


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSON-lines file (blank lines skipped); errors name the file and line."""
    rows = []
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
    return rows


def dir_size_mb(path: str | Path) -> float:
    """Size of a file, or of every file under a directory, in MB (10^6 bytes)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size / 1e6
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6
