"""INT8 quantization of the exported FP32 ONNX graph with ONNX Runtime, and its evaluation.

Always quantizes the exported FP32 ONNX file (never a torch-quantized model): ONNX Runtime's
quantizer knows the fused transformer ops (QAttention, QEmbedLayerNormalization) and its kernels.

Weight type and ``reduce_range`` follow ONNX Runtime's quantization guide ("Data type selection"
and "When to use reduce-range" in docs/performance/model-optimizations/quantization.md):

* U8S8 (uint8 activations, **QInt8 weights**) is the fast format on x86-64.
* On AVX2 / AVX-512 *without* VNNI, ONNX Runtime computes U8S8 with ``VPMADDUBSW``, whose 16-bit
  pairwise sums can saturate; ``reduce_range`` (7-bit weights) is designed to avoid that, and
  U8U8 (QUInt8 weights) has no saturation at all if accuracy still drops.
* With VNNI (``avx512_vnni`` / ``avx_vnni``) and on ARM there is no saturation issue, so full
  8-bit QInt8 weights and no reduce_range. On this project's reference CPU (Zen 4, VNNI) QInt8
  was measured 1.4-2.2x faster than QUInt8.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from onedistill.compress.runtime import (
    classification_metrics,
    encode,
    onnx_logits,
    ort_session,
    session_feeds,
)

logger = logging.getLogger(__name__)

#: Op types whose weights INT8 quantization changes; a graph without any has nothing to quantize.
QUANTIZABLE_OP_TYPES = (
    "MatMul",
    "Gemm",
    "Conv",
    "ConvTranspose",
    "Attention",
    "MultiHeadAttention",
    "EmbedLayerNormalization",
    "LSTM",
    "GRU",
)

#: Op types that only appear in a graph that ONNX Runtime actually quantized.
QUANTIZED_OP_TYPES = (
    "MatMulInteger",
    "ConvInteger",
    "DynamicQuantizeLinear",
    "DynamicQuantizeMatMul",
    "QuantizeLinear",
    "DequantizeLinear",
    "QLinearMatMul",
    "QLinearConv",
    "QGemm",
    "QAttention",
    "QEmbedLayerNormalization",
    "DynamicQuantizeLSTM",
)

#: CPU flags that matter for the choice, reported as "seen".
_RELEVANT_FLAGS = (
    "avx2",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512vnni",
    "avx_vnni",
    "amx_int8",
    "asimddp",
    "i8mm",
)
_VNNI_FLAGS = {"avx512_vnni", "avx512vnni", "avx_vnni", "amx_int8"}


class QuantizationError(RuntimeError):
    """A model cannot be quantized (nothing quantizable, or ONNX Runtime quantized nothing)."""


# ------------------------------------------------------------------------------ weight type choice


def cpu_flags() -> set[str]:
    """Instruction-set flags of this CPU from ``/proc/cpuinfo`` (empty where it is unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def choose_int8_scheme(
    flags: set[str] | None = None,
    machine: str | None = None,
    weight_type: Literal["auto", "qint8", "quint8"] = "auto",
    reduce_range: bool | None = None,
    per_channel: bool = False,
) -> dict:
    """Pick the INT8 weight type and ``reduce_range`` for a CPU, following ONNX Runtime's guide.

    Args:
        flags: CPU flags (default: this machine's, from ``/proc/cpuinfo``).
        machine: ``platform.machine()`` value (default: this machine's).
        weight_type: ``auto`` or a forced ``qint8`` / ``quint8``.
        reduce_range: None for automatic, or forced.
        per_channel: Per-channel weight scales (needs reduce_range on x86 without VNNI).

    Returns:
        ``weight_type`` ("QInt8" / "QUInt8"), ``reduce_range``, ``per_channel``, ``isa`` (what was
        detected), ``reason``, ``cpu_flags_seen``, ``machine`` and ``fallback_weight_type`` (what
        to retry with if the agreement gate fails, or None).
    """
    flags = cpu_flags() if flags is None else set(flags)
    machine = (machine or platform.machine() or "").lower()
    is_arm = machine.startswith(("arm", "aarch64")) or "asimd" in flags
    is_x86 = not is_arm and (machine in ("x86_64", "amd64", "i686", "i386") or "sse2" in flags)
    if is_arm:
        isa = "arm-dotprod" if "asimddp" in flags else "arm"
    elif flags & _VNNI_FLAGS:
        isa = "x86-vnni"
    elif "avx512bw" in flags or "avx512f" in flags:
        isa = "x86-avx512-no-vnni"
    elif "avx2" in flags:
        isa = "x86-avx2-no-vnni"
    elif is_x86:
        isa = "x86-unknown" if not flags else "x86-pre-avx2"
    else:
        isa = "unknown"

    fallback = None
    if isa == "x86-vnni":
        wt, rr = "QInt8", False
        reason = (
            "VNNI present: VPDPBUSD accumulates u8 x s8 in 32 bits, so U8S8 (QInt8 weights) "
            "cannot saturate and ONNX Runtime's guide says reduce_range is not needed; QInt8 is "
            "the fast format (QUInt8 measured 1.4-2.2x slower on the reference Zen 4)."
        )
    elif is_arm:
        wt, rr = "QInt8", False
        reason = (
            "ARM: ONNX Runtime's guide reports no saturation issue, so QInt8 weights at full range."
        )
    elif isa.startswith("x86"):
        wt, rr, fallback = "QInt8", True, "QUInt8"
        reason = (
            f"{isa}: ONNX Runtime computes U8S8 with VPMADDUBSW, whose 16-bit pairwise sums can "
            "saturate; its guide recommends reduce_range (7-bit weights) for U8S8 on AVX2/AVX-512 "
            "without VNNI, and U8U8 (QUInt8 weights, no saturation) if accuracy still drops."
        )
    else:
        wt, rr = "QInt8", False
        reason = "unrecognised CPU: ONNX Runtime's default QInt8 weights without reduce_range."

    if weight_type != "auto":
        wt = {"qint8": "QInt8", "quint8": "QUInt8"}[weight_type]
        reason = f"weight type {wt} set in the config (automatic choice: {reason})"
        fallback = None
    if reduce_range is not None:
        if reduce_range != rr:
            reason += f" reduce_range={reduce_range} set in the config."
        rr = reduce_range
    elif per_channel and isa.startswith("x86") and isa != "x86-vnni" and not rr:
        rr = True
        reason += " per_channel on x86 without VNNI needs reduce_range (ONNX Runtime's guide)."
    return {
        "weight_type": wt,
        "reduce_range": bool(rr),
        "per_channel": bool(per_channel),
        "isa": isa,
        "machine": machine,
        "reason": reason,
        "cpu_flags_seen": sorted(f for f in _RELEVANT_FLAGS if f in flags),
        "fallback_weight_type": fallback,
    }


# ----------------------------------------------------------------------------------- graph checks


def _op_counts(model: Any) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def quantizable_nodes(path: str | Path) -> list[tuple[str, str]]:
    """``(name, op_type)`` of the nodes INT8 quantization can change, in graph order."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return [
        (n.name or f"{n.op_type}_{i}", n.op_type)
        for i, n in enumerate(model.graph.node)
        if n.op_type in QUANTIZABLE_OP_TYPES
    ]


def _require_quantizable(path: Path) -> None:
    """Raise :class:`QuantizationError` naming the model when it has nothing to quantize."""
    import onnx

    if not path.is_file():
        raise FileNotFoundError(f"no ONNX model at {path}")
    model = onnx.load(str(path), load_external_data=False)
    if any(n.op_type in QUANTIZABLE_OP_TYPES for n in model.graph.node):
        return
    ops = ", ".join(f"{op} x{c}" for op, c in sorted(_op_counts(model).items())) or "no nodes"
    raise QuantizationError(
        f"nothing to quantize in {path.name} ({path}): INT8 quantization changes the weights of "
        f"{', '.join(QUANTIZABLE_OP_TYPES[:5])}... nodes, and this graph has none (its ops: "
        f"{ops}). Deploy the FP32 model instead."
    )


def quantized_op_counts(path: str | Path) -> dict[str, int]:
    """How many nodes of each quantized op type (MatMulInteger, QAttention, Q/DQ...) a graph has."""
    import onnx

    counts = _op_counts(onnx.load(str(path), load_external_data=False))
    return {op: c for op, c in sorted(counts.items()) if op in QUANTIZED_OP_TYPES}


def _require_quantized(src: Path, out: Path) -> dict[str, int]:
    counts = quantized_op_counts(out)
    if not counts:
        out.unlink(missing_ok=True)
        raise QuantizationError(
            f"ONNX Runtime quantized nothing in {src.name} ({src}): its MatMul/Gemm/Conv nodes "
            "were all skipped (excluded, unsupported by this method, or without float types). "
            "No INT8 artifact was written."
        )
    return counts


@contextlib.contextmanager
def _quiet_quantizer():
    """ONNX Runtime's quantizer logs advice on the root logger; keep it out of users' terminals."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _prepare(src: Path, work: Path) -> Path:
    """Name every node and run symbolic shape inference, written to ``work``.

    The quantizer needs tensor types for every MatMul output; plain ONNX shape inference knows
    nothing of the fused contrib ops (Attention, SkipLayerNormalization...), ONNX Runtime's
    symbolic shape inference does. Unnamed nodes cannot be excluded by name, hence the names.
    """
    import onnx

    model = onnx.load(str(src))
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        with _quiet_quantizer():
            inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
        model = inferred or model
    except Exception as exc:  # noqa: BLE001 - DefaultTensorType below still covers missing types
        logger.info("symbolic shape inference failed on %s: %s", src, exc)
    out = work / "prepared.onnx"
    onnx.save(model, str(out))
    return out


def _quant_type(name: str):
    from onnxruntime.quantization import QuantType

    return {"QInt8": QuantType.QInt8, "QUInt8": QuantType.QUInt8}[name]


def _default_tensor_type() -> dict:
    import onnx

    # Used only where even symbolic shape inference left a tensor untyped (float is the only
    # element type a quantizable FP32 graph's activations can have).
    return {"DefaultTensorType": onnx.TensorProto.FLOAT}


# ------------------------------------------------------------------------------------ dynamic INT8


def quantize_dynamic_int8(
    fp32_onnx: str | Path,
    out_path: str | Path,
    *,
    weight_type: Literal["auto", "qint8", "quint8"] = "auto",
    reduce_range: bool | None = None,
    per_channel: bool = False,
    nodes_to_exclude: Sequence[str] = (),
    nodes_to_quantize: Sequence[str] | None = None,
    flags: set[str] | None = None,
    machine: str | None = None,
) -> dict:
    """Dynamic INT8 quantization (weights offline, activations per call) with ONNX Runtime.

    Args:
        fp32_onnx: The exported (optionally optimized) FP32 graph.
        out_path: Where the INT8 graph goes.
        weight_type: ``auto`` chooses from the CPU (see :func:`choose_int8_scheme`).
        reduce_range: None chooses from the CPU.
        per_channel: Per-channel weight scales.
        nodes_to_exclude: Node names kept in FP32.
        nodes_to_quantize: Only these nodes (None: all quantizable).
        flags: CPU flags to decide for (default: this CPU); ``mobile`` passes ARM's.
        machine: ``platform.machine()`` to decide for.

    Returns:
        The scheme (``weight_type``, ``reduce_range``, ``reason``, ``cpu_flags_seen``...), plus
        ``path``, ``method``, ``quantized_ops``, ``nodes_excluded`` and ``size_mb``.

    Raises:
        QuantizationError: If the graph has nothing quantizable or ONNX Runtime quantized nothing.
    """
    src, out = Path(fp32_onnx), Path(out_path)
    _require_quantizable(src)
    scheme = choose_int8_scheme(flags, machine, weight_type, reduce_range, per_channel)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="onedistill-q-") as tmp:
        prepared = _prepare(src, Path(tmp))
        counts = _dynamic(prepared, out, scheme, nodes_to_exclude, nodes_to_quantize, src)
    return {
        **scheme,
        "method": "dynamic",
        "path": str(out),
        "quantized_ops": counts,
        "nodes_excluded": list(nodes_to_exclude),
        "size_mb": out.stat().st_size / 1e6,
    }


def _dynamic(
    prepared: Path,
    out: Path,
    scheme: dict,
    nodes_to_exclude: Sequence[str] = (),
    nodes_to_quantize: Sequence[str] | None = None,
    source: Path | None = None,
) -> dict[str, int]:
    """ONNX Runtime's ``quantize_dynamic`` on a graph already through :func:`_prepare`."""
    from onnxruntime.quantization import quantize_dynamic

    def with_gemm_aliases(names: Sequence[str]) -> list[str]:
        # Dynamic quantization first rewrites each Gemm as MatMul (+ Add) named "<gemm>_MatMul",
        # so a Gemm is only matched by that name.
        return [alias for n in names for alias in (n, f"{n}_MatMul")]

    nodes_to_exclude = with_gemm_aliases(nodes_to_exclude)
    if nodes_to_quantize:
        nodes_to_quantize = with_gemm_aliases(nodes_to_quantize)
    with _quiet_quantizer():
        quantize_dynamic(
            prepared,
            out,
            weight_type=_quant_type(scheme["weight_type"]),
            per_channel=scheme["per_channel"],
            reduce_range=scheme["reduce_range"],
            nodes_to_exclude=list(nodes_to_exclude),
            nodes_to_quantize=list(nodes_to_quantize) if nodes_to_quantize else None,
            extra_options=_default_tensor_type(),
        )
    return _require_quantized(source or prepared, out)


# ------------------------------------------------------------------------------------- static INT8


class TextCalibrationReader:
    """ONNX Runtime ``CalibrationDataReader`` over tokenized text batches.

    Each batch is padded to its own longest row, the way inference sees it, so calibration
    ranges are not stretched by padding that real traffic would not have.
    """

    def __init__(
        self,
        tokenizer: Any,
        texts: Sequence[str],
        input_names: Sequence[str],
        *,
        pairs: Sequence[str | None] | None = None,
        batch_size: int = 8,
        max_length: int = 128,
    ):
        self.batches: list[dict[str, np.ndarray]] = []
        texts = list(texts)
        for start in range(0, len(texts), batch_size):
            enc = encode(
                tokenizer,
                texts[start : start + batch_size],
                list(pairs)[start : start + batch_size] if pairs is not None else None,
                max_length,
            )
            if "token_type_ids" in input_names and "token_type_ids" not in enc:
                enc["token_type_ids"] = np.zeros_like(enc["input_ids"])
            self.batches.append({n: enc[n] for n in input_names})
        self._it = iter(self.batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch, or None when calibration data is exhausted."""
        return next(self._it, None)

    def rewind(self) -> None:
        """Start over from the first batch."""
        self._it = iter(self.batches)


def _graph_inputs(path: Path) -> list[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def sample_texts(texts: Sequence[str], n: int, seed: int = 0) -> list[int]:
    """Indices of a seeded random sample of at most ``n`` texts (all, in order, when fewer)."""
    if len(texts) <= n:
        return list(range(len(texts)))
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(len(texts), size=n, replace=False).tolist())


def quantize_static_int8(
    fp32_onnx: str | Path,
    out_path: str | Path,
    calibration_texts: Sequence[str],
    tokenizer: Any,
    *,
    calibration_pairs: Sequence[str | None] | None = None,
    samples: int = 128,
    max_length: int = 128,
    batch_size: int = 8,
    per_channel: bool = False,
    reduce_range: bool = False,
    op_types: Sequence[str] = ("MatMul", "Gemm"),
    nodes_to_exclude: Sequence[str] = (),
    seed: int = 0,
) -> dict:
    """Static INT8 quantization (QDQ format, S8S8) calibrated on a sample of training texts.

    S8S8 QDQ is ONNX Runtime's recommended first choice for static quantization on CPU; the
    MinMax calibrator takes per-tensor ranges over the calibration batches.

    Args:
        fp32_onnx: The FP32 graph.
        out_path: Where the INT8 graph goes.
        calibration_texts: Training texts (a seeded sample of ``samples`` is used).
        tokenizer: The student's tokenizer.
        calibration_pairs: Second texts for pair tasks.
        samples: Calibration texts used.
        max_length: Truncation.
        batch_size: Texts per calibration batch.
        per_channel: Per-channel weight scales.
        reduce_range: 7-bit weights.
        op_types: Op types to quantize.
        nodes_to_exclude: Node names kept in FP32.
        seed: Seed of the sample.

    Returns:
        ``path``, ``method``, ``format``, ``activation_type``, ``weight_type``, ``calibration``
        (texts, batches, method), ``quantized_ops`` and ``size_mb``.

    Raises:
        QuantizationError: Nothing quantizable, no calibration texts, or nothing quantized.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    src, out = Path(fp32_onnx), Path(out_path)
    _require_quantizable(src)
    idx = sample_texts(calibration_texts, samples, seed)
    if not idx:
        raise QuantizationError(f"static quantization of {src} needs calibration texts; got none")
    texts = [calibration_texts[i] for i in idx]
    pairs = [calibration_pairs[i] for i in idx] if calibration_pairs is not None else None
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="onedistill-q-") as tmp:
        prepared = _prepare(src, Path(tmp))
        reader = TextCalibrationReader(
            tokenizer,
            texts,
            _graph_inputs(prepared),
            pairs=pairs,
            batch_size=batch_size,
            max_length=max_length,
        )
        with _quiet_quantizer():
            quantize_static(
                prepared,
                out,
                reader,
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=list(op_types),
                nodes_to_exclude=list(nodes_to_exclude),
                per_channel=per_channel,
                reduce_range=reduce_range,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options=_default_tensor_type(),
            )
    counts = _require_quantized(src, out)
    return {
        "method": "static",
        "path": str(out),
        "format": "QDQ",
        "activation_type": "QInt8",
        "weight_type": "QInt8",
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        "calibration": {
            "texts": len(texts),
            "batches": len(reader.batches),
            "method": "MinMax",
            "seed": seed,
        },
        "quantized_ops": counts,
        "size_mb": out.stat().st_size / 1e6,
    }


# ---------------------------------------------------------------------------------- mixed precision


def quantize_mixed(
    fp32_onnx: str | Path,
    out_path: str | Path,
    eval_fn: Callable[[Path], float],
    max_accuracy_drop: float,
    *,
    sample_feeds: dict[str, np.ndarray],
    fp32_accuracy: float | None = None,
    weight_type: Literal["auto", "qint8", "quint8"] = "auto",
    reduce_range: bool | None = None,
    per_channel: bool = False,
    flags: set[str] | None = None,
    start_excluded: int = 1,
    agreement_fn: Callable[[Path], float] | None = None,
    agreement_min: float = 0.0,
) -> dict:
    """Dynamic INT8 with the most error-sensitive nodes kept in FP32 ("mixed precision").

    1. Sensitivity: each quantizable node is quantized *alone* and the mean |logit error| on
       ``sample_feeds`` against the FP32 graph is its score.
    2. The most sensitive nodes are excluded (kept FP32) in growing numbers, 1, 2, 4, 8...,
       until ``eval_fn`` shows an accuracy drop within ``max_accuracy_drop`` points; a binary
       search between the last failing and the first passing count then finds the fewest.

    Args:
        fp32_onnx: The FP32 graph.
        out_path: Where the mixed graph goes (written only when the budget is met).
        eval_fn: Accuracy in [0, 1] of the ONNX model at a path (on eval data).
        max_accuracy_drop: Allowed drop versus ``fp32_accuracy``, in points.
        sample_feeds: One tokenized batch (session inputs) for the sensitivity scores.
        fp32_accuracy: Accuracy of the FP32 graph (None: ``eval_fn(fp32_onnx)``).
        weight_type: As in :func:`quantize_dynamic_int8`.
        reduce_range: As in :func:`quantize_dynamic_int8`.
        per_channel: As in :func:`quantize_dynamic_int8`.
        flags: CPU flags to decide the weight type for.
        start_excluded: Smallest number of nodes kept FP32 (1: full INT8 already failed).
        agreement_fn: Share of eval predictions the ONNX model at a path shares with the
            student; when given, a mixed graph must also reach ``agreement_min`` (the INT8
            gate), not only the accuracy budget.
        agreement_min: Smallest agreement accepted.

    Returns:
        ``met``, ``path`` (None when not met), ``kept_fp32`` (node names that stayed FP32),
        ``quantized_nodes``, ``candidates``, ``sensitivity`` (node, op type, error; most
        sensitive first; ``quantized`` False for nodes dynamic quantization leaves FP32 anyway),
        ``attempts``, ``fp32_accuracy``, ``accuracy``,
        ``accuracy_drop_points`` and the weight-type scheme.

    Raises:
        QuantizationError: If the graph has nothing quantizable.
    """
    src, out = Path(fp32_onnx), Path(out_path)
    _require_quantizable(src)
    scheme = choose_int8_scheme(flags, None, weight_type, reduce_range, per_channel)
    with tempfile.TemporaryDirectory(prefix="onedistill-mixed-") as tmp_dir:
        tmp = Path(tmp_dir)
        prepared = _prepare(src, tmp)
        ref_session = ort_session(prepared, threads=1)
        ref = ref_session.run(None, session_feeds(ref_session, sample_feeds))[0]
        candidates = quantizable_nodes(prepared)

        sensitivity = []
        for name, op_type in candidates:
            probe = tmp / "probe.onnx"
            try:
                _dynamic(prepared, probe, scheme, nodes_to_quantize=[name])
            except QuantizationError:
                # Dynamic quantization leaves this node FP32 anyway: there is nothing to keep.
                sensitivity.append(
                    {"node": name, "op_type": op_type, "error": None, "quantized": False}
                )
                continue
            sess = ort_session(probe, threads=1)
            got = sess.run(None, session_feeds(sess, sample_feeds))[0]
            err = float(np.abs(got - ref).mean())
            sensitivity.append({"node": name, "op_type": op_type, "error": err, "quantized": True})
        ranked = sorted(sensitivity, key=lambda s: (not s["quantized"], -(s["error"] or 0.0)))
        order = [s["node"] for s in ranked if s["quantized"]]

        base_acc = eval_fn(src) if fp32_accuracy is None else fp32_accuracy
        attempts: list[dict] = []
        results: dict[int, tuple[bool, float, Path | None]] = {}

        def attempt(k: int) -> bool:
            if k in results:
                return results[k][0]
            path = tmp / f"mixed-{k}.onnx"
            try:
                _dynamic(prepared, path, scheme, nodes_to_exclude=order[:k])
            except QuantizationError:
                results[k] = (False, float("nan"), None)
                attempts.append({"kept_fp32": k, "accuracy": None, "note": "nothing quantized"})
                return False
            acc = float(eval_fn(path))
            drop = (base_acc - acc) * 100.0
            ok = drop <= max_accuracy_drop + 1e-9
            row = {"kept_fp32": k, "accuracy": acc, "accuracy_drop_points": drop}
            if agreement_fn is not None:
                agree = float(agreement_fn(path))
                ok = ok and agree >= agreement_min
                row["agreement_with_student"] = agree
            results[k] = (ok, acc, path)
            attempts.append(row | {"within": ok})
            return ok

        n_max = max(len(order) - 1, 0)  # at least one node stays INT8, else it is just FP32
        lo, hi = start_excluded - 1, None
        k = max(start_excluded, 1)
        while k <= n_max:
            if attempt(k):
                hi = k
                break
            lo = k
            k = n_max if k * 2 > n_max and k < n_max else k * 2
        if hi is not None:
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if attempt(mid):
                    hi = mid
                else:
                    lo = mid
            _, acc, path = results[hi]
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out)
    met = hi is not None
    return {
        **scheme,
        "method": "dynamic-mixed",
        "met": met,
        "path": str(out) if met else None,
        "kept_fp32": order[:hi] if met else [],
        "quantized_nodes": (len(order) - hi) if met else 0,
        "candidates": len(order),
        "sensitivity": ranked,
        "attempts": attempts,
        "fp32_accuracy": base_acc,
        "accuracy": results[hi][1] if met else None,
        "accuracy_drop_points": (base_acc - results[hi][1]) * 100.0 if met else None,
        "max_accuracy_drop": max_accuracy_drop,
        "quantized_ops": quantized_op_counts(out) if met else {},
    }


# --------------------------------------------------------------------------------------- evaluation


def evaluate_onnx(
    path: str | Path,
    tokenizer: Any,
    texts: Sequence[str],
    labels: Sequence[int],
    batch_size: int = 32,
    max_length: int = 128,
    *,
    pairs: Sequence[str | None] | None = None,
    threads: int | None = None,
) -> dict:
    """Accuracy and macro F1 of an ONNX (or .ort) classifier on labelled texts.

    Returns:
        ``accuracy``, ``macro_f1``, ``predictions`` (list of class ids, input order) and ``n``.
    """
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    session = ort_session(path, threads=threads)
    logits = onnx_logits(session, tokenizer, texts, pairs, batch_size, max_length)
    preds = logits.argmax(-1).tolist() if len(texts) else []
    return {**classification_metrics(labels, preds), "predictions": preds, "n": len(texts)}
