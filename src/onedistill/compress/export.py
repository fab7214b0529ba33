"""FP32 ONNX export of a sequence classifier, graph optimization, and parity against PyTorch.

Exporter choice (torch 2.13): the legacy TorchScript exporter (``dynamo=False``) is the default
here. Both exporters pass parity on BERT-family classifiers, but the legacy one exports at opset
17 natively (the dynamo exporter starts at 18 and down-converts), runs several times faster, and,
with the eager attention implementation, produces the only graph whose attention ONNX Runtime's
transformer optimizer fuses (Attention / EmbedLayerNormalization, and so QAttention once
quantized). The dynamo exporter (``torch.export`` + onnxscript, ``dynamic_shapes``) is the
fallback when the legacy exporter fails or its graph fails parity, so a future torch without the
legacy exporter still works.

The legacy exporter traces: Python branches on tensor values (e.g. "is the mask all ones?") are
frozen at the values of the example batch. The example is therefore a padded batch (so the
mask path is kept), and every export is checked by :func:`check_parity` on padded batches of
several shapes before it is handed over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from onedistill.compress.runtime import (
    BERT_LIKE,
    encode,
    load_student,
    max_positions,
    model_input_names,
    onnx_logits,
    ort_session,
    quiet,
    session_feeds,
    torch_logits,
    torch_threads,
)

logger = logging.getLogger(__name__)

Kind = Literal["fp32", "fp16", "int8"]
Exporter = Literal["auto", "legacy", "dynamo"]

#: Padded example batch for tracing: two rows of different lengths, so the mask path is traced.
_EXAMPLE_TEXTS = ("a short example", "a somewhat longer example sentence that traces the export")


class ParityError(RuntimeError):
    """An ONNX artifact disagrees with the PyTorch student beyond its gate.

    Attributes:
        result: The full :func:`check_parity` result (per-shape figures).
    """

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


def _wrapper(model: Any, names: Sequence[str]):
    """A module whose positional inputs are ``names`` and whose only output is the logits.

    Exporters name graph inputs after positional arguments, and HF models return a
    ``ModelOutput``; a fixed signature makes the graph's interface independent of both.
    """
    import torch

    if list(names) == ["input_ids", "attention_mask", "token_type_ids"]:

        class Logits3(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.m(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    token_type_ids=token_type_ids,
                ).logits

        return Logits3(model).eval()

    class Logits2(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).logits

    return Logits2(model).eval()


def _example_inputs(tokenizer: Any, names: Sequence[str]):
    import torch

    enc = encode(tokenizer, list(_EXAMPLE_TEXTS), max_length=64)
    if "token_type_ids" in names and "token_type_ids" not in enc:
        enc["token_type_ids"] = np.zeros_like(enc["input_ids"])
    return tuple(torch.from_numpy(enc[n]) for n in names)


def _export_legacy(wrapper: Any, args: tuple, names: list[str], out: Path, opset: int) -> None:
    import torch

    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["logits"] = {0: "batch"}
    with warnings.catch_warnings():
        # TracerWarnings about Python booleans are expected; parity on padded batches of several
        # shapes is what proves the trace generalises.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            args,
            str(out),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def _export_dynamo(
    wrapper: Any, args: tuple, names: list[str], out: Path, opset: int, max_len: int | None
) -> None:
    import torch

    batch = torch.export.Dim("batch", max=4096)
    seq = torch.export.Dim("sequence", max=max_len or 4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            args,
            str(out),
            input_names=names,
            output_names=["logits"],
            dynamic_shapes={n: {0: batch, 1: seq} for n in names},
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )


def _set_metadata(path: Path, props: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    existing = {p.key: p.value for p in model.metadata_props}
    existing.update(props)
    del model.metadata_props[:]
    for k, v in existing.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(model, str(path))


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (exporter, source, labels written at export)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def export_onnx(
    model_dir_or_model: str | Path | Any,
    tokenizer: Any | None,
    out_path: str | Path,
    opset: int = 17,
    *,
    exporter: Exporter = "auto",
) -> Path:
    """Export a sequence classifier to an FP32 ONNX file with dynamic batch and sequence axes.

    Inputs are ``input_ids``, ``attention_mask`` and, when the model's forward accepts it and the
    tokenizer produces it, ``token_type_ids`` (int64, shape ``[batch, sequence]``); the output is
    ``logits`` (``[batch, num_labels]``). The exporter used is stored in the file's metadata under
    ``onedistill.exporter``.

    Args:
        model_dir_or_model: A model directory (loaded with eager attention) or a loaded model.
        tokenizer: The tokenizer; None loads it from ``model_dir_or_model`` (a directory).
        out_path: Where the ``.onnx`` file goes (parent directories are created).
        opset: ONNX opset, at least 17.
        exporter: ``legacy`` (TorchScript), ``dynamo`` (torch.export) or ``auto`` (legacy, then
            dynamo if the legacy exporter raises). See the module docstring for why.

    Returns:
        The path of the written file.

    Raises:
        ValueError: If ``opset`` is below 17.
        RuntimeError: If every exporter tried failed (the message lists each error).
    """
    import torch

    if opset < 17:
        raise ValueError(f"opset must be at least 17 (LayerNormalization is opset 17), got {opset}")
    if isinstance(model_dir_or_model, (str, Path)):
        model, loaded_tok = load_student(model_dir_or_model)
        tokenizer = tokenizer or loaded_tok
        source = str(model_dir_or_model)
    else:
        model, source = model_dir_or_model.eval(), type(model_dir_or_model).__name__
        if tokenizer is None:
            raise ValueError("pass the tokenizer when exporting a loaded model")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = model_input_names(model, tokenizer)
    wrapper = _wrapper(model, names)
    args = _example_inputs(tokenizer, names)
    order = ["legacy", "dynamo"] if exporter == "auto" else [exporter]
    errors: list[str] = []
    used = None
    for name in order:
        try:
            with torch.no_grad(), quiet():
                if name == "legacy":
                    _export_legacy(wrapper, args, names, out, opset)
                else:
                    _export_dynamo(wrapper, args, names, out, opset, max_positions(model))
            used = name
            break
        except Exception as exc:  # noqa: BLE001 - any exporter failure means "try the next one"
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
            logger.warning("ONNX export with the %s exporter failed: %s", name, exc)
    if used is None:
        raise RuntimeError("ONNX export failed with every exporter:\n  " + "\n  ".join(errors))
    id2label = getattr(model.config, "id2label", None) or {}
    _set_metadata(
        out,
        {
            "onedistill.exporter": used,
            "onedistill.source": source,
            "onedistill.inputs": ",".join(names),
            "onedistill.id2label": json.dumps({str(k): v for k, v in id2label.items()}),
        },
    )
    return out


def _heads_and_width(model: Any) -> tuple[int, int]:
    """Attention heads and hidden size for the optimizer; 0 (auto-detect) for pruned models.

    Auto-detection fails on small models, so the config values are passed when every layer has
    the same head count; a pruned model's layers differ, so one number would be wrong for some.
    """
    cfg = model.config
    if getattr(cfg, "onedistill_pruning", None):
        return 0, 0
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_heads", None) or 0
    width = getattr(cfg, "hidden_size", None) or getattr(cfg, "dim", None) or 0
    return int(heads), int(width)


def optimize_onnx(
    fp32_path: str | Path,
    out_path: str | Path,
    model: Any,
    *,
    use_gpu: bool = False,
    float16: bool = False,
) -> dict:
    """Run ONNX Runtime's transformer optimizer on a BERT-like graph.

    Args:
        fp32_path: The exported FP32 graph.
        out_path: Where the optimized graph goes.
        model: The torch model (its config gives the model type, heads and width).
        use_gpu: Optimize for the CUDA execution provider.
        float16: Also convert to FP16 (inputs and outputs stay int64 / float32).

    Returns:
        ``applied`` (False when the model type is not BERT-like or the optimizer raised),
        ``fused_ops`` (op type -> count), ``num_heads``, ``hidden_size`` and ``reason``.
    """
    model_type = getattr(model.config, "model_type", "")
    if model_type not in BERT_LIKE:
        return {"applied": False, "reason": f"model type {model_type!r} is not BERT-like"}
    from onnxruntime.transformers.optimizer import optimize_model

    heads, width = _heads_and_width(model)
    try:
        with quiet(), _quiet_logger("onnxruntime.transformers"):
            opt = optimize_model(
                str(fp32_path),
                model_type="bert",
                num_heads=heads,
                hidden_size=width,
                use_gpu=use_gpu,
            )
            if float16:
                opt.convert_float_to_float16(keep_io_types=True)
            fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
            opt.save_model_to_file(str(out_path))
    except Exception as exc:  # noqa: BLE001 - optimization is optional; the FP32 graph stands
        return {"applied": False, "reason": f"optimizer failed: {type(exc).__name__}: {exc}"}
    return {
        "applied": True,
        "fused_ops": fused,
        "num_heads": heads,
        "hidden_size": width,
        "use_gpu": use_gpu,
        "float16": float16,
        "reason": "fused transformer ops" if fused else "optimizer found nothing to fuse",
    }


def convert_fp16(src: str | Path, dst: str | Path) -> Path:
    """Convert an FP32 ONNX graph to FP16, keeping int64 inputs and float32 logits."""
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    with quiet(), _quiet_logger("onnxruntime.transformers"):
        om = OnnxModel(onnx.load(str(src)))
        om.convert_float_to_float16(keep_io_types=True)
        om.save_model_to_file(str(dst))
    return Path(dst)


@contextlib.contextmanager
def _quiet_logger(name: str):
    """Mute warnings of ONNX Runtime's tools while they run.

    The transformer optimizer's modules log under bare names (``fusion_embedlayer``...) because
    ONNX Runtime puts their folder on ``sys.path``, so logging is muted wholesale and restored
    afterwards.
    """
    previous = logging.root.manager.disable
    # ERROR too: without a GPU, optimizing for one logs an ERROR although the Python-level
    # fusions still run (the plan reports what was fused).
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(previous)


# --------------------------------------------------------------------------------------- parity


def _special_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Token ids the tokenizer puts before and after a single text (e.g. [CLS] / [SEP])."""
    marker = -7
    try:
        full = tokenizer.build_inputs_with_special_tokens([marker])
        i = full.index(marker)
        return list(full[:i]), list(full[i + 1 :])
    except (ValueError, TypeError, AttributeError):
        return [], []


def _grid_batch(
    tokenizer: Any, pool: np.ndarray, batch: int, length: int, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], int]:
    """A batch of ``batch`` rows padded to exactly ``length`` tokens.

    Row 0 fills the whole length (so the batch really is that long); the others are shorter
    when ``length`` allows, so the attention mask has zeros. Returns the batch and how many rows
    carry padding.
    """
    pre, post = _special_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = np.full((batch, length), pad, dtype=np.int64)
    mask = np.zeros((batch, length), dtype=np.int64)
    padded = 0
    for r in range(batch):
        if r == 0 or length == 1:
            n = length
        elif r == 1:
            n = max(1, length // 2)
        else:
            n = int(rng.integers(1, length + 1))
        body_len = max(n - len(pre) - len(post), 0)
        start = int(rng.integers(0, len(pool)))
        body = np.take(pool, np.arange(start, start + body_len), mode="wrap").tolist()
        row = (pre + body + post)[:n]
        if tokenizer.padding_side == "left":
            ids[r, length - n :], mask[r, length - n :] = row, 1
        else:
            ids[r, :n], mask[r, :n] = row, 1
        padded += int(n < length)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": np.zeros_like(ids),
    }, padded


def _token_pool(tokenizer: Any, texts: Sequence[str]) -> np.ndarray:
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
    flat = [t for row in ids for t in row]
    if not flat:
        special = set(tokenizer.all_special_ids)
        flat = [i for i in range(min(tokenizer.vocab_size, 1000)) if i not in special]
    return np.asarray(flat, dtype=np.int64)


def agreement(a_logits: np.ndarray, b_logits: np.ndarray) -> float:
    """Share of rows whose argmax class is the same in both logit arrays."""
    a, b = np.asarray(a_logits), np.asarray(b_logits)
    if a.shape != b.shape:
        raise ValueError(f"logit shapes differ: {a.shape} vs {b.shape}")
    if a.shape[0] == 0:
        return float("nan")
    return float((a.argmax(-1) == b.argmax(-1)).mean())


def _gate_text(kind: Kind, atol: float, agreement_min: float) -> str:
    if kind == "fp32":
        return f"max |logit diff| <= {atol:.0e}"
    if kind == "fp16":
        return f"max |logit diff| <= {atol:.0e} and agreement >= {agreement_min:.1%}"
    return f"prediction agreement >= {agreement_min:.1%}"


def check_parity(
    onnx_path: str | Path,
    torch_model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    kind: Kind = "fp32",
    *,
    atol: float = 1e-4,
    agreement_min: float = 0.99,
    batch_sizes: Sequence[int] = (1, 3, 8),
    lengths: Sequence[int] = (1, 7, 128),
    pairs: Sequence[str | None] | None = None,
    max_length: int = 128,
    max_texts: int = 256,
    threads: int | None = None,
    raise_on_fail: bool = True,
    seed: int = 0,
    int8_gate_rows: Literal["texts", "all"] = "texts",
) -> dict:
    """Compare an ONNX artifact with the PyTorch model on padded batches and on real texts.

    Two sets of inputs are run through both runtimes:

    * a grid of ``batch_sizes`` x ``lengths`` batches built from the texts' tokens, each padded to
      exactly that length with some rows shorter (attention-mask zeros); lengths beyond the
      model's position embeddings are clipped to the longest allowed;
    * up to ``max_texts`` of ``texts`` tokenized as at inference (padded per batch of 32).

    Gates: ``fp32``: max |logit diff| <= ``atol`` over all rows; ``fp16``: that and agreement;
    ``int8``: prediction agreement >= ``agreement_min`` (INT8 logits move too much for a useful
    absolute tolerance). Agreement (INT8, FP16) is taken on the real texts when there are any:
    the grid's synthetic rows (a lone [CLS], token salad) have near-tied logits whose flips say
    nothing about agreement on deployment traffic; their figures are still reported per shape.

    Args:
        onnx_path: ``.onnx`` or ``.ort`` file.
        torch_model: The uncompressed model (eval mode).
        tokenizer: Its tokenizer.
        texts: Real inputs (eval or calibration texts).
        kind: Which gate applies.
        atol: Absolute logit tolerance for ``fp32`` / ``fp16``.
        agreement_min: Smallest prediction agreement for ``int8`` / ``fp16``.
        batch_sizes: Batch sizes of the grid.
        lengths: Sequence lengths of the grid.
        pairs: Second texts for pair tasks (aligned with ``texts``).
        max_length: Truncation of the real texts.
        max_texts: Use at most this many texts.
        threads: Intra-op threads of ONNX Runtime and of torch (None: their defaults).
        raise_on_fail: Raise :class:`ParityError` when the gate fails.
        seed: Seed of the grid's row lengths and token choice.
        int8_gate_rows: ``texts`` (default) or ``all`` rows for the INT8 / FP16 agreement gate.

    Returns:
        ``passed``, ``gate``, ``gate_rows``, ``gate_agreement``, ``max_abs_diff``,
        ``mean_abs_diff``, ``agreement``, ``rows``, ``shapes`` (one entry per grid batch) and
        ``texts`` (the real-text figures).

    Raises:
        ParityError: If the gate fails and ``raise_on_fail``; the message lists every shape.
    """
    with torch_threads(threads):
        result = _check_parity(
            onnx_path, torch_model, tokenizer, texts, kind, atol, agreement_min, batch_sizes,
            lengths, pairs, max_length, max_texts, threads, seed, int8_gate_rows,
        )  # fmt: skip
    if not result["passed"] and raise_on_fail:
        raise ParityError(format_parity(result), result)
    return result


def _check_parity(
    onnx_path: str | Path,
    torch_model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    kind: Kind,
    atol: float,
    agreement_min: float,
    batch_sizes: Sequence[int],
    lengths: Sequence[int],
    pairs: Sequence[str | None] | None,
    max_length: int,
    max_texts: int,
    threads: int | None,
    seed: int,
    int8_gate_rows: str,
) -> dict:
    import torch

    rng = np.random.default_rng(seed)
    session = ort_session(onnx_path, threads=threads)
    names = model_input_names(torch_model, tokenizer)
    limit = max_positions(torch_model)
    pool = _token_pool(tokenizer, list(texts)[:max_texts])
    shapes: list[dict] = []
    all_ref: list[np.ndarray] = []
    all_out: list[np.ndarray] = []
    clipped = False
    for length in lengths:
        n_tokens = min(int(length), limit) if limit else int(length)
        clipped |= n_tokens != length
        for bs in batch_sizes:
            batch, padded = _grid_batch(tokenizer, pool, int(bs), n_tokens, rng)
            with torch.inference_mode():
                ref = torch_model(**{n: torch.from_numpy(batch[n]) for n in names}).logits
            ref = ref.float().numpy()
            out = session.run(None, session_feeds(session, batch))[0].astype(np.float32)
            diff = np.abs(out - ref)
            shapes.append(
                {
                    "batch": int(bs),
                    "length": n_tokens,
                    "padded_rows": padded,
                    "max_abs_diff": float(diff.max()),
                    "agreement": agreement(out, ref),
                }
            )
            all_ref.append(ref)
            all_out.append(out)
    sample = list(texts)[:max_texts]
    text_part = None
    if sample:
        pair_sample = list(pairs)[:max_texts] if pairs is not None else None
        ref = torch_logits(torch_model, tokenizer, sample, pair_sample, 32, max_length)
        out = onnx_logits(session, tokenizer, sample, pair_sample, 32, max_length)
        diff = np.abs(out - ref)
        text_part = {
            "rows": len(sample),
            "max_abs_diff": float(diff.max()),
            "agreement": agreement(out, ref),
        }
        all_ref.append(ref)
        all_out.append(out)
    ref_all, out_all = np.concatenate(all_ref), np.concatenate(all_out)
    diff_all = np.abs(out_all - ref_all)
    result = {
        "kind": kind,
        "path": str(onnx_path),
        "gate": _gate_text(kind, atol, agreement_min),
        "max_abs_diff": float(diff_all.max()),
        "mean_abs_diff": float(diff_all.mean()),
        "agreement": agreement(out_all, ref_all),
        "rows": int(ref_all.shape[0]),
        "shapes": shapes,
        "texts": text_part,
        "lengths_clipped_to_max_positions": bool(clipped),
    }
    gate_agreement = result["agreement"]
    result["gate_rows"] = "all rows"
    if kind != "fp32" and text_part is not None and int8_gate_rows == "texts":
        gate_agreement = text_part["agreement"]
        result["gate_rows"] = "real texts"
        result["gate"] = result["gate"].replace("agreement", "agreement on the real texts")
    for s in shapes:
        # Per shape, only the parts of the gate that apply per row set: the logit tolerance
        # (fp32, fp16), or agreement when the INT8 gate is on all rows.
        if kind == "int8":
            s["passed"] = (
                None if result["gate_rows"] == "real texts" else s["agreement"] >= agreement_min
            )
        else:
            s["passed"] = bool(s["max_abs_diff"] <= atol)
    result["gate_agreement"] = gate_agreement
    result["passed"] = _passes(kind, result["max_abs_diff"], gate_agreement, atol, agreement_min)
    return result


def _passes(kind: Kind, max_diff: float, agree: float, atol: float, agreement_min: float) -> bool:
    if kind == "fp32":
        return bool(max_diff <= atol)
    if kind == "fp16":
        return bool(max_diff <= atol and agree >= agreement_min)
    return bool(agree >= agreement_min)


def format_parity(result: dict) -> str:
    """A readable, per-shape table of a :func:`check_parity` result."""
    verdict = "passed" if result["passed"] else "FAILED"
    lines = [
        f"{result['kind'].upper()} parity {verdict} for {result['path']} "
        f"(gate: {result['gate']}; gated agreement {result['gate_agreement']:.2%} on "
        f"{result['gate_rows']}; overall max |diff| {result['max_abs_diff']:.3g}, agreement "
        f"{result['agreement']:.2%} over {result['rows']} rows)",
        "  batch  length  padded rows  max |diff|  agreement",
    ]
    for s in result["shapes"]:
        mark = "  <-- fails gate" if s.get("passed") is False else ""
        lines.append(
            f"  {s['batch']:>5}  {s['length']:>6}  {s['padded_rows']:>11}  "
            f"{s['max_abs_diff']:>10.3g}  {s['agreement']:>9.2%}{mark}"
        )
    t = result.get("texts")
    if t:
        lines.append(
            f"  real texts ({t['rows']} rows, natural padding): max |diff| "
            f"{t['max_abs_diff']:.3g}, agreement {t['agreement']:.2%}"
        )
    return "\n".join(lines)


def export_verified(
    model: Any,
    tokenizer: Any,
    out_path: str | Path,
    texts: Sequence[str],
    *,
    opset: int = 17,
    atol: float = 1e-4,
    optimize: bool = True,
    raw_path: str | Path | None = None,
    max_length: int = 128,
    threads: int | None = None,
) -> dict:
    """Export, check FP32 parity, optionally optimize; keep the optimized graph only if it passes.

    Tries the legacy exporter, then the dynamo exporter when the first one raises or fails parity.

    Args:
        model: The student (eager attention preferred, see :func:`load_student`).
        tokenizer: Its tokenizer.
        out_path: Final FP32 graph (optimized when that passed parity).
        texts: Real texts for the parity check.
        opset: ONNX opset.
        atol: FP32 parity tolerance.
        optimize: Try ONNX Runtime's transformer optimizer (BERT-like models only).
        raw_path: Where to keep the unoptimized export (default: next to ``out_path``, removed).
        max_length: Truncation of the parity texts.
        threads: Threads of the export and parity runs (ONNX Runtime and torch).

    Returns:
        ``path``, ``raw_path`` (None if not kept), ``exporter``, ``export_attempts``, ``parity``
        (of the graph kept), ``raw_parity`` and ``graph_optimization``.

    Raises:
        ParityError: If no exporter produced a graph that passes FP32 parity.
    """
    out = Path(out_path)
    keep_raw = raw_path is not None
    raw = Path(raw_path) if keep_raw else out.with_name(out.stem + ".raw.onnx")
    attempts: list[dict] = []
    parity = None
    last_error: ParityError | None = None
    for exporter in ("legacy", "dynamo"):
        try:
            with torch_threads(threads):
                export_onnx(model, tokenizer, raw, opset, exporter=exporter)
        except RuntimeError as exc:
            attempts.append({"exporter": exporter, "ok": False, "error": str(exc)})
            continue
        parity = check_parity(
            raw, model, tokenizer, texts, "fp32", atol=atol, max_length=max_length,
            threads=threads, raise_on_fail=False,
        )  # fmt: skip
        attempts.append({"exporter": exporter, "ok": parity["passed"], "parity": _brief(parity)})
        if parity["passed"]:
            break
        last_error = ParityError(format_parity(parity), parity)
        logger.warning("%s export failed FP32 parity:\n%s", exporter, format_parity(parity))
    else:
        if last_error is not None:
            raise last_error
        raise RuntimeError("ONNX export failed: " + "; ".join(str(a) for a in attempts))
    info: dict[str, Any] = {
        "exporter": attempts[-1]["exporter"],
        "export_attempts": attempts,
        "raw_parity": parity,
        "parity": parity,
        "graph_optimization": {"applied": False, "reason": "optimize_graph is off"},
    }
    if optimize:
        opt_path = out.with_name(out.stem + ".opt.onnx")
        opt = optimize_onnx(raw, opt_path, model)
        if opt["applied"]:
            opt_parity = check_parity(
                opt_path, model, tokenizer, texts, "fp32", atol=atol, max_length=max_length,
                threads=threads, raise_on_fail=False,
            )  # fmt: skip
            opt["parity"] = _brief(opt_parity)
            if opt_parity["passed"]:
                shutil.move(str(opt_path), str(out))
                info["parity"] = {**opt_parity, "path": str(out)}
            else:
                opt["applied"] = False
                opt["reason"] = "optimized graph failed FP32 parity; kept the exported graph"
                opt_path.unlink(missing_ok=True)
        info["graph_optimization"] = opt
    if not info["graph_optimization"].get("applied"):
        shutil.copyfile(raw, out)
    if not keep_raw:
        raw.unlink(missing_ok=True)
    info["path"] = str(out)
    info["raw_path"] = str(raw) if keep_raw else None
    return info


def _brief(parity: dict) -> dict:
    """The headline figures of a parity result (for attempt logs)."""
    return {k: parity[k] for k in ("passed", "gate", "max_abs_diff", "agreement", "rows")}


def load_snippet(
    artifact: str = "model.onnx",
    model_dir: str = ".",
    id2label: dict | None = None,
    max_length: int = 128,
    provider: str = "CPUExecutionProvider",
) -> str:
    """A short Python program that loads the artifact with onnxruntime and the saved tokenizer."""
    labels = {int(k): v for k, v in (id2label or {}).items()}
    artifact_path = f"{model_dir}/{artifact}"
    return (
        "import numpy as np\n"
        "import onnxruntime as ort\n"
        "from transformers import AutoTokenizer\n"
        "\n"
        f"tokenizer = AutoTokenizer.from_pretrained({model_dir!r})\n"
        f"session = ort.InferenceSession({artifact_path!r}, providers=[{provider!r}])\n"
        "names = {i.name for i in session.get_inputs()}\n"
        "enc = tokenizer(['an example sentence'], padding=True, truncation=True,\n"
        f"                max_length={max_length}, return_tensors='np')\n"
        "feeds = {k: v.astype(np.int64) for k, v in enc.items() if k in names}\n"
        "logits = session.run(['logits'], feeds)[0]\n"
        f"labels = {labels!r}\n"
        "print([labels.get(int(i), int(i)) for i in logits.argmax(-1)])\n"
    )


def convert_to_ort(
    onnx_path: str | Path, out_path: str | Path, target_platform: str = "arm"
) -> dict:
    """Convert an ONNX file to ONNX Runtime's ORT format (for mobile runtimes).

    Uses ``onnxruntime.tools.convert_onnx_models_to_ort`` with the fixed optimization style
    (optimizations baked in, which is what a full mobile build runs fastest) and also keeps the
    ``required_operators.config`` that a reduced-operator ONNX Runtime build needs.

    Args:
        onnx_path: The ONNX model.
        out_path: The ``.ort`` file to write.
        target_platform: ``arm`` (phones) or ``amd64``; it decides which layout optimizations
            are safe to bake in.

    Returns:
        ``path``, ``config_path`` (None if not produced), ``target_platform`` and ``size_mb``.
    """
    import tempfile

    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    src, out = Path(onnx_path), Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="onedistill-ort-") as tmp:
        staged = Path(tmp) / "in" / "model.onnx"
        staged.parent.mkdir()
        shutil.copyfile(src, staged)
        with quiet(), _quiet_logger("ort_format_model"):
            convert_onnx_models_to_ort(
                staged,
                output_dir=Path(tmp) / "out",
                optimization_styles=[OptimizationStyle.Fixed],
                target_platform=target_platform,
            )
        produced = sorted((Path(tmp) / "out").glob("*.ort"))
        if not produced:
            raise RuntimeError(f"ORT format conversion of {src} produced no .ort file")
        shutil.move(str(produced[0]), str(out))
        configs = sorted((Path(tmp) / "out").glob("*.config"))
        config_path = None
        if configs:
            config_path = out.with_suffix(".required_operators.config")
            shutil.move(str(configs[0]), str(config_path))
    return {
        "path": str(out),
        "config_path": str(config_path) if config_path else None,
        "target_platform": target_platform,
        "size_mb": out.stat().st_size / 1e6,
    }
