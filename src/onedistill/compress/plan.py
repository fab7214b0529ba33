"""Target plans: turn a distilled student into checked deployment artifacts for cpu, gpu or mobile.

Every artifact is measured against the uncompressed student before it can be chosen: FP32
parity for the exported graph, prediction agreement and eval accuracy for INT8 / FP16, and
size for mobile. An artifact that breaks a budget is never the default output; the report says
why. Accuracy is always measured on the real eval data (INT8 moves logits by 0.02-0.25 on
MiniLM-size models, so it cannot be assumed).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onedistill.compress.bench import bench_onnx, bench_torch, onnx_size_mb
from onedistill.compress.config import CompressionConfig
from onedistill.compress.export import (
    ParityError,
    check_parity,
    convert_fp16,
    convert_to_ort,
    export_verified,
    format_parity,
    load_snippet,
    optimize_onnx,
)
from onedistill.compress.quantize import (
    QuantizationError,
    choose_int8_scheme,
    evaluate_onnx,
    quantize_dynamic_int8,
    quantize_mixed,
    quantize_static_int8,
    sample_texts,
)
from onedistill.compress.runtime import (
    BERT_LIKE,
    classification_metrics,
    encode,
    load_student,
    torch_logits,
    torch_threads,
)

logger = logging.getLogger(__name__)

#: Flags of a typical phone CPU (ARMv8.2+ with dot product) for the mobile INT8 choice.
MOBILE_FLAGS = {"asimd", "asimddp"}


class _Context:
    """What every step of a plan needs: the student, the data, the budgets and the bench setup."""

    def __init__(
        self,
        *,
        model: Any,
        tokenizer: Any,
        cfg: CompressionConfig,
        out: Path,
        eval_texts: list[str],
        eval_labels: list[int],
        eval_pairs: list[str | None] | None,
        parity_texts: list[str],
        parity_pairs: list[str | None] | None,
        calib_texts: list[str],
        calib_pairs: list[str | None] | None,
        bench_texts: list[str],
        student_preds: np.ndarray,
        student_accuracy: float,
        threads: int,
        repeats: int,
        throughput_batches: int,
        teacher: dict | None,
    ):
        self.model, self.tokenizer, self.cfg, self.out = model, tokenizer, cfg, out
        self.eval_texts, self.eval_labels, self.eval_pairs = eval_texts, eval_labels, eval_pairs
        self.parity_texts, self.parity_pairs = parity_texts, parity_pairs
        self.calib_texts, self.calib_pairs = calib_texts, calib_pairs
        self.bench_texts = bench_texts
        self.student_preds, self.student_accuracy = student_preds, student_accuracy
        self.threads, self.repeats, self.throughput_batches = threads, repeats, throughput_batches
        self.teacher = teacher or {}
        #: The unoptimized export (it passed FP32 parity too); static INT8 starts from it.
        self.raw_path: Path | None = None

    def parity(self, path: Path, kind: str) -> dict:
        atol = self.cfg.fp16_parity_atol if kind == "fp16" else self.cfg.fp32_parity_atol
        return check_parity(
            path,
            self.model,
            self.tokenizer,
            self.parity_texts,
            kind,  # type: ignore[arg-type]
            atol=atol,
            agreement_min=self.cfg.int8_agreement_min,
            pairs=self.parity_pairs,
            max_length=self.cfg.max_length,
            threads=self.threads,
            raise_on_fail=False,
        )

    def evaluate(self, path: Path) -> dict:
        return evaluate_onnx(
            path,
            self.tokenizer,
            self.eval_texts,
            self.eval_labels,
            max_length=self.cfg.max_length,
            pairs=self.eval_pairs,
            threads=self.threads,
        )

    def bench(self, path: Path, providers: list[str] | None = None) -> dict:
        return bench_onnx(
            path,
            self.tokenizer,
            self.bench_texts,
            self.threads,
            self.repeats,
            throughput_batches=self.throughput_batches,
            max_length=self.cfg.max_length,
            providers=providers,
        )

    def row(
        self,
        name: str,
        path: Path,
        precision: str,
        parity: dict | None,
        *,
        bench: bool = True,
        extra: dict | None = None,
    ) -> dict:
        """Measure one artifact and judge it (``within_budget``, ``budget_failures``)."""
        ev = self.evaluate(path)
        preds = np.asarray(ev["predictions"])
        agree = float((preds == self.student_preds).mean())
        drop = (self.student_accuracy - ev["accuracy"]) * 100.0
        row: dict[str, Any] = {
            "name": name,
            "file": path.name,
            "path": str(path),
            "precision": precision,
            "accuracy": ev["accuracy"],
            "macro_f1": ev["macro_f1"],
            "accuracy_drop_points": drop,
            "agreement_with_student": agree,
            "size_mb": onnx_size_mb(path),
            "parity": _parity_summary(parity),
            "chosen": False,
            "rejected_reason": None,
        }
        if bench:
            b = self.bench(path)
            row.update({k: b[k] for k in _BENCH_KEYS})
        else:
            row.update({k: "not measured" for k in _BENCH_KEYS})
        if "accuracy" in self.teacher:
            row["accuracy_drop_vs_teacher_points"] = (
                float(self.teacher["accuracy"]) - ev["accuracy"]
            ) * 100.0
        t_lat = self.teacher.get("latency_ms_p50")
        if isinstance(t_lat, (int, float)) and isinstance(row["latency_ms_p50"], float):
            row["speedup_vs_teacher"] = t_lat / row["latency_ms_p50"]
        row.update(extra or {})
        reasons = []
        if parity is not None and not parity["passed"]:
            reasons.append(
                f"{parity['kind'].upper()} parity gate failed ({parity['gate']}): agreement "
                f"{parity['gate_agreement']:.2%} on {parity['gate_rows']}, max |diff| "
                f"{parity['max_abs_diff']:.3g}"
            )
        if precision != "fp32" and agree < self.cfg.int8_agreement_min:
            reasons.append(
                f"agrees with the student on {agree:.2%} of eval predictions, below "
                f"int8_agreement_min {self.cfg.int8_agreement_min:.2%}"
            )
        if drop > self.cfg.max_accuracy_drop + 1e-9:
            reasons.append(
                f"eval accuracy {ev['accuracy']:.2%} is {drop:.2f} points below the student's "
                f"{self.student_accuracy:.2%} (max_accuracy_drop {self.cfg.max_accuracy_drop})"
            )
        row["within_budget"] = not reasons
        row["budget_failures"] = reasons
        return row


_BENCH_KEYS = (
    "latency_ms_p50",
    "latency_ms_p95",
    "throughput_per_s",
    "peak_rss_mb",
    "rss_delta_mb",
)


def agreement_rate(a: np.ndarray, b: np.ndarray) -> float:
    """Share of positions where two prediction arrays agree."""
    return float((np.asarray(a) == np.asarray(b)).mean())


def _parity_summary(parity: dict | None) -> dict | None:
    if parity is None:
        return None
    keep = (
        "passed",
        "gate",
        "gate_rows",
        "gate_agreement",
        "max_abs_diff",
        "mean_abs_diff",
        "agreement",
        "rows",
    )
    out = {k: parity.get(k) for k in keep}
    out["shapes"] = parity.get("shapes")
    out["texts"] = parity.get("texts")
    return out


def _labels_of(model: Any) -> dict[int, str]:
    return {int(k): v for k, v in (getattr(model.config, "id2label", None) or {}).items()}


def compress_student(
    student_dir: str | Path,
    out_dir: str | Path,
    cfg: CompressionConfig,
    eval_texts: Sequence[str],
    eval_labels: Sequence[int],
    calib_texts: Sequence[str],
    teacher_metrics: dict | None = None,
    *,
    eval_pairs: Sequence[str | None] | None = None,
    calib_pairs: Sequence[str | None] | None = None,
    threads: int = 2,
    repeats: int = 30,
    throughput_batches: int = 3,
    snippet_dir: str | None = None,
    seed: int = 0,
) -> dict:
    """Build, check and choose the deployment artifact of a student for ``cfg.target``.

    Plans:

    * **cpu**: FP32 ONNX (transformer-optimized when that passes parity), dynamic INT8 and
      static INT8; each is evaluated and timed, and the fastest one within budget (agreement gate
      and ``max_accuracy_drop`` versus the student) becomes ``model.onnx``. When no INT8 artifact
      meets the budget, mixed precision keeps the most sensitive nodes in FP32 until one does.
      FP32 is always a candidate, so a slow INT8 on an old CPU is not picked.
    * **gpu**: FP16 ONNX (``model.fp16.onnx``, FP16 parity checked on the CPU) planned for the
      TensorRT execution provider when present, CUDA otherwise; latency is "not measured" where
      no GPU provider exists.
    * **mobile**: INT8 (weights chosen for ARM) in ONNX Runtime's ORT format (``model.ort``),
      checked against ``mobile_size_budget_mb``; over budget is a failure in the report.

    Args:
        student_dir: The student's Hugging Face directory (model + tokenizer).
        out_dir: Output directory (created; earlier ``model*`` artifacts in it are removed).
        cfg: The compression config.
        eval_texts: Labelled eval texts (accuracy is measured on these).
        eval_labels: Their class ids.
        calib_texts: Training texts for static calibration and sensitivity batches.
        teacher_metrics: Optional teacher figures (``accuracy``, ``latency_ms_p50``) to compare.
        eval_pairs: Second texts of pair tasks.
        calib_pairs: Second texts of the calibration rows.
        threads: Threads for ONNX Runtime / torch in every measurement.
        repeats: Timed batch-1 calls per artifact.
        throughput_batches: Timed batch-32 calls per artifact.
        snippet_dir: Directory the load snippet refers to (default: ``out_dir``).
        seed: Seed of the text samples.

    Returns:
        The report section: ``status``, ``target``, ``chosen``, ``artifacts`` (one row each:
        name, path, precision, accuracy, macro_f1, agreement_with_student, size_mb, latency
        p50/p95, throughput, parity figures, chosen, rejected_reason), ``student``,
        ``quantization``, ``parity``, ``export``, ``load_snippet``, ``notes``, ``errors``...

    Raises:
        ValueError: Without eval texts (accuracy must be measured, never assumed).
        ParityError: If no exporter produces an FP32 graph that matches the student.
    """
    eval_texts, eval_labels = list(eval_texts), [int(y) for y in eval_labels]
    if not eval_texts:
        raise ValueError("compression needs labelled eval texts: INT8 accuracy must be measured")
    if len(eval_texts) != len(eval_labels):
        raise ValueError(f"{len(eval_texts)} eval texts but {len(eval_labels)} labels")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # A stale model.ort / model.onnx from an earlier run must never pass for this run's choice.
    for pattern in ("model*.onnx", "model*.ort", "model*.required_operators.config"):
        for stale in out.glob(pattern):
            stale.unlink()
    (out / "compression.json").unlink(missing_ok=True)
    work = out / ".work"
    work.mkdir(exist_ok=True)
    try:
        return _compress(
            Path(student_dir),
            out,
            work,
            cfg,
            eval_texts,
            eval_labels,
            list(calib_texts),
            teacher_metrics,
            list(eval_pairs) if eval_pairs is not None else None,
            list(calib_pairs) if calib_pairs is not None else None,
            threads,
            repeats,
            throughput_batches,
            snippet_dir,
            seed,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _compress(
    student_dir: Path,
    out: Path,
    work: Path,
    cfg: CompressionConfig,
    eval_texts: list[str],
    eval_labels: list[int],
    calib_texts: list[str],
    teacher_metrics: dict | None,
    eval_pairs: list[str | None] | None,
    calib_pairs: list[str | None] | None,
    threads: int,
    repeats: int,
    throughput_batches: int,
    snippet_dir: str | None,
    seed: int,
) -> dict:
    model, tokenizer = load_student(student_dir)
    tokenizer.save_pretrained(out)
    # config.json carries id2label for whoever loads model.onnx; no weights are written, so the
    # directory is not mistaken for a Hugging Face model.
    model.config.save_pretrained(out)

    notes: list[str] = []
    errors: list[str] = []
    idx = sample_texts(eval_texts, 256, seed)
    parity_texts = [eval_texts[i] for i in idx]
    parity_pairs = [eval_pairs[i] for i in idx] if eval_pairs is not None else None
    bench_texts = [eval_texts[i] for i in sample_texts(eval_texts, 64, seed)]

    with torch_threads(threads):
        student_logits = torch_logits(model, tokenizer, eval_texts, eval_pairs, 32, cfg.max_length)
    student_preds = student_logits.argmax(-1)
    student_metrics = classification_metrics(eval_labels, student_preds.tolist())
    # The torch row uses the default attention (SDPA), as a user of the student would.
    student_bench = bench_torch(
        student_dir,
        None,
        bench_texts,
        threads,
        repeats,
        throughput_batches=throughput_batches,
        max_length=cfg.max_length,
    )
    ctx = _Context(
        model=model,
        tokenizer=tokenizer,
        cfg=cfg,
        out=out,
        eval_texts=eval_texts,
        eval_labels=eval_labels,
        eval_pairs=eval_pairs,
        parity_texts=parity_texts,
        parity_pairs=parity_pairs,
        calib_texts=calib_texts,
        calib_pairs=calib_pairs,
        bench_texts=bench_texts,
        student_preds=student_preds,
        student_accuracy=student_metrics["accuracy"],
        threads=threads,
        repeats=repeats,
        throughput_batches=throughput_batches,
        teacher=teacher_metrics,
    )

    fp32_path = out / "model.fp32.onnx"
    raw_path = work / "model.raw.onnx"
    export = export_verified(
        model,
        tokenizer,
        fp32_path,
        parity_texts,
        opset=cfg.opset,
        atol=cfg.fp32_parity_atol,
        optimize=cfg.optimize_graph,
        raw_path=raw_path,
        max_length=cfg.max_length,
        threads=threads,
    )
    ctx.raw_path = raw_path if export["raw_parity"]["passed"] else None
    parity: dict[str, dict] = {"fp32": _parity_summary(export["parity"])}
    report: dict[str, Any] = {
        "status": "ok",
        "target": cfg.target,
        "out_dir": str(out),
        "chosen": None,
        "chosen_file": None,
        "artifacts": [],
        "student": {
            "path": str(student_dir),
            **student_metrics,
            **{k: student_bench[k] for k in (*_BENCH_KEYS, "size_mb")},
            "runtime": "torch (fp32)",
        },
        "teacher": teacher_metrics,
        "eval_rows": len(eval_texts),
        "budget": {
            "max_accuracy_drop_points": cfg.max_accuracy_drop,
            "int8_agreement_min": cfg.int8_agreement_min,
            "fp32_parity_atol": cfg.fp32_parity_atol,
            "fp16_parity_atol": cfg.fp16_parity_atol,
            "mobile_size_budget_mb": cfg.mobile_size_budget_mb if cfg.target == "mobile" else None,
        },
        "export": {
            "exporter": export["exporter"],
            "attempts": export["export_attempts"],
            "opset": cfg.opset,
            "graph_optimization": export["graph_optimization"],
        },
        "quantization": None,
        "mixed_precision": None,
        "parity": parity,
        "measurement": {
            "threads": threads,
            "repeats": repeats,
            "latency": student_bench["latency_method"],
            "memory": student_bench["memory_method"],
        },
        "notes": notes,
        "errors": errors,
        "config": cfg.model_dump(mode="json"),
    }

    fp32_row = ctx.row("fp32", fp32_path, "fp32", export["parity"])
    rows = [fp32_row]
    if cfg.target == "cpu":
        chosen = _plan_cpu(ctx, fp32_path, rows, report, parity)
    elif cfg.target == "gpu":
        chosen = _plan_gpu(ctx, fp32_path, raw_path, rows, report, parity)
    else:
        chosen = _plan_mobile(ctx, fp32_path, rows, report, parity)

    if chosen is not None:
        chosen["chosen"] = True
        chosen["rejected_reason"] = None
        report["chosen"] = chosen["name"]
        final = out / ("model.ort" if cfg.target == "mobile" else "model.onnx")
        if Path(chosen["path"]) != final:
            shutil.copyfile(chosen["path"], final)
        report["chosen_file"] = final.name
        report["chosen_path"] = str(final)
    elif report["status"] == "ok":
        report["status"] = "failed"
    report["artifacts"] = rows
    # Without a chosen artifact the snippet still runs: on the verified FP32 graph.
    report["load_snippet"] = load_snippet(
        report["chosen_file"] or "model.fp32.onnx",
        snippet_dir or str(out),
        _labels_of(model),
        cfg.max_length,
    )
    (out / "compression.json").write_text(
        json.dumps(report, indent=2, default=str), encoding="utf-8"
    )
    return report


def _fastest(rows: list[dict]) -> dict | None:
    """The fastest row within budget (rows without a measured latency rank last)."""
    ok = [r for r in rows if r["within_budget"]]
    if not ok:
        return None

    def key(r: dict) -> float:
        lat = r["latency_ms_p50"]
        return lat if isinstance(lat, float) else float("inf")

    return min(ok, key=key)


def _reject_others(rows: list[dict], chosen: dict | None, otherwise: str | None = None) -> None:
    """Fill ``rejected_reason`` of every row but the chosen one.

    Args:
        rows: All rows.
        chosen: The chosen row (None when nothing was chosen).
        otherwise: Reason for rows within budget when nothing was chosen.
    """
    for r in rows:
        if r is chosen:
            continue
        if not r["within_budget"]:
            r["rejected_reason"] = "; ".join(r["budget_failures"])
        elif chosen is None:
            r["rejected_reason"] = otherwise or "not the target's artifact type"
        else:
            r["rejected_reason"] = (
                f"within budget but slower than {chosen['name']} "
                f"({_ms(r['latency_ms_p50'])} vs {_ms(chosen['latency_ms_p50'])} p50)"
            )


def _ms(v: Any) -> str:
    return f"{v:.3g} ms" if isinstance(v, float) else str(v)


def _int8_candidates(
    ctx: _Context,
    fp32_path: Path,
    methods: list[str],
    scheme_kwargs: dict,
    rows: list[dict],
    report: dict,
    parity: dict,
    calib_texts: list[str],
    calib_pairs: list[str | None] | None,
) -> list[dict]:
    """Build, check and measure the INT8 artifacts of ``methods``; append their rows."""
    cfg, out = ctx.cfg, ctx.out
    made = []
    for method in methods:
        path = out / f"model.int8-{method}.onnx"
        src = fp32_path
        try:
            if method == "dynamic":
                info = quantize_dynamic_int8(fp32_path, path, **scheme_kwargs)
            else:
                # QDQ on the unfused export: the fused Attention / EmbedLayerNormalization ops
                # are not QDQ-quantizable, and on MiniLM-L6 here static INT8 from the unfused
                # graph was faster (14.2 vs 16.0 ms p50) and closer (98.0% vs 96.5% agreement).
                src = ctx.raw_path if ctx.raw_path and ctx.raw_path.is_file() else fp32_path
                info = quantize_static_int8(
                    src,
                    path,
                    calib_texts,
                    ctx.tokenizer,
                    calibration_pairs=calib_pairs,
                    samples=cfg.calibration_samples,
                    max_length=cfg.max_length,
                    per_channel=cfg.per_channel,
                )
        except QuantizationError as exc:
            report["errors"].append(f"int8-{method}: {exc}")
            continue
        p = ctx.parity(path, "int8")
        parity[f"int8-{method}"] = _parity_summary(p)
        info["quantized_from"] = fp32_path.name if src == fp32_path else "unoptimized export"
        row = ctx.row(f"int8-{method}", path, "int8", p, extra={"quantization": _q(info)})
        rows.append(row)
        made.append(row)
        fallback = info.get("fallback_weight_type")
        if method == "dynamic" and not row["within_budget"] and fallback:
            # ONNX Runtime's guide: U8U8 has no VPMADDUBSW saturation on x86 without VNNI.
            alt = out / "model.int8-dynamic-u8u8.onnx"
            info2 = quantize_dynamic_int8(
                fp32_path,
                alt,
                **{**scheme_kwargs, "weight_type": fallback.lower(), "reduce_range": False},
            )
            p2 = ctx.parity(alt, "int8")
            parity["int8-dynamic-u8u8"] = _parity_summary(p2)
            row2 = ctx.row("int8-dynamic-u8u8", alt, "int8", p2, extra={"quantization": _q(info2)})
            rows.append(row2)
            made.append(row2)
            report["notes"].append(
                f"dynamic INT8 with {info['weight_type']} missed the budget; retried with "
                f"{fallback} weights (no saturation on CPUs without VNNI)"
            )
    return made


def _q(info: dict) -> dict:
    keep = (
        "method",
        "weight_type",
        "reduce_range",
        "per_channel",
        "quantized_ops",
        "format",
        "quantized_from",
    )
    return {k: info[k] for k in keep if k in info}


def _mixed(
    ctx: _Context,
    fp32_path: Path,
    scheme_kwargs: dict,
    rows: list[dict],
    report: dict,
    parity: dict,
    calib_texts: list[str],
) -> dict | None:
    """Mixed precision when full INT8 missed the budget; returns its row (or None)."""
    cfg, out = ctx.cfg, ctx.out
    sample = calib_texts[:16] or ctx.eval_texts[:16]
    feeds = encode(ctx.tokenizer, sample, max_length=cfg.max_length)
    if "token_type_ids" not in feeds:
        feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
    path = out / "model.int8-mixed.onnx"
    try:
        scored: dict[str, dict] = {}

        def scores(p: Path) -> dict:
            # Accuracy and agreement come from one pass over eval per candidate graph.
            if str(p) not in scored:
                scored[str(p)] = ctx.evaluate(Path(p))
            return scored[str(p)]

        info = quantize_mixed(
            fp32_path,
            path,
            lambda p: scores(p)["accuracy"],
            cfg.max_accuracy_drop,
            agreement_fn=lambda p: agreement_rate(scores(p)["predictions"], ctx.student_preds),
            agreement_min=cfg.int8_agreement_min,
            sample_feeds=feeds,
            fp32_accuracy=ctx.student_accuracy,
            weight_type=scheme_kwargs.get("weight_type", "auto"),
            reduce_range=scheme_kwargs.get("reduce_range"),
            per_channel=scheme_kwargs.get("per_channel", False),
            flags=scheme_kwargs.get("flags"),
        )
    except QuantizationError as exc:
        report["errors"].append(f"int8-mixed: {exc}")
        return None
    report["mixed_precision"] = {
        k: info[k]
        for k in (
            "met",
            "kept_fp32",
            "quantized_nodes",
            "candidates",
            "sensitivity",
            "attempts",
            "accuracy",
            "accuracy_drop_points",
        )
    }
    if not info["met"]:
        report["notes"].append(
            "mixed precision could not meet max_accuracy_drop with any node count below all-FP32"
        )
        return None
    p = ctx.parity(path, "int8")
    parity["int8-mixed"] = _parity_summary(p)
    row = ctx.row(
        "int8-mixed",
        path,
        "int8+fp32",
        p,
        extra={"quantization": _q(info), "kept_fp32": info["kept_fp32"]},
    )
    rows.append(row)
    return row


def _calib(ctx: _Context, report: dict) -> tuple[list[str], list[str | None] | None]:
    texts, pairs = ctx.calib_texts, ctx.calib_pairs
    if not texts:
        report["notes"].append(
            "no calibration texts given: static INT8 calibrated on eval texts (ranges only; "
            "labels unused)"
        )
        return ctx.eval_texts, ctx.eval_pairs
    return texts, pairs


def _plan_cpu(
    ctx: _Context, fp32_path: Path, rows: list[dict], report: dict, parity: dict
) -> dict | None:
    cfg = ctx.cfg
    scheme_kwargs = {
        "weight_type": cfg.weight_type,
        "reduce_range": cfg.reduce_range,
        "per_channel": cfg.per_channel,
    }
    report["quantization"] = choose_int8_scheme(**scheme_kwargs)
    methods = {
        "auto": ["dynamic", "static"],
        "dynamic": ["dynamic"],
        "static": ["static"],
        "none": [],
    }[cfg.quantization]
    calib_texts, calib_pairs = _calib(ctx, report) if "static" in methods else ([], None)
    made = _int8_candidates(
        ctx, fp32_path, methods, scheme_kwargs, rows, report, parity, calib_texts, calib_pairs
    )
    if (
        made
        and not any(r["within_budget"] for r in made)
        and cfg.mixed_precision
        and cfg.quantization in ("auto", "dynamic")
    ):
        _mixed(ctx, fp32_path, scheme_kwargs, rows, report, parity, ctx.calib_texts)
    chosen = _fastest(rows)
    _reject_others(rows, chosen)
    if chosen is not None and chosen["name"] == "fp32" and methods:
        report["notes"].append("no INT8 artifact was both within budget and faster than FP32")
    return chosen


def _plan_gpu(
    ctx: _Context,
    fp32_path: Path,
    raw_path: Path,
    rows: list[dict],
    report: dict,
    parity: dict,
) -> dict | None:
    import onnxruntime as ort

    cfg, out = ctx.cfg, ctx.out
    fp16_path = out / "model.fp16.onnx"
    how = "plain FP16 conversion of the FP32 graph (inputs int64, logits float32)"
    fused = None
    model_type = getattr(ctx.model.config, "model_type", "")
    if cfg.optimize_graph and model_type in BERT_LIKE and raw_path.is_file():
        fused = optimize_onnx(raw_path, fp16_path, ctx.model, use_gpu=True, float16=True)
        if fused["applied"]:
            how = "ONNX Runtime transformer optimizer for GPU, then FP16 (logits float32)"
    if not (fused and fused["applied"]):
        convert_fp16(fp32_path, fp16_path)
    try:
        p = ctx.parity(fp16_path, "fp16")
        if not p["passed"] and fused and fused["applied"]:
            report["notes"].append(
                "GPU-optimized FP16 graph failed parity; fell back to plain FP16 conversion:\n"
                + format_parity(p)
            )
            convert_fp16(fp32_path, fp16_path)
            how = "plain FP16 conversion of the FP32 graph (inputs int64, logits float32)"
            p = ctx.parity(fp16_path, "fp16")
        parity["fp16"] = _parity_summary(p)
        checked = True
    except Exception as exc:  # noqa: BLE001 - the CPU provider may lack an FP16 kernel
        p, checked = None, False
        parity["fp16"] = {"checked": False, "reason": f"ONNX Runtime CPU cannot run it: {exc}"}
    available = ort.get_available_providers()
    if "TensorrtExecutionProvider" in available:
        ep = "TensorrtExecutionProvider"
    elif "CUDAExecutionProvider" in available:
        ep = "CUDAExecutionProvider"
    else:
        ep = None
    plan = {
        "execution_provider": ep
        or "TensorrtExecutionProvider if installed, else CUDAExecutionProvider",
        "file": "model.onnx",
        "conversion": how,
        "fp32_fallback_file": "model.fp32.onnx",
        "tensorrt_note": "TensorRT builds its own engine from the graph; trt_fp16_enable=True "
        "with model.fp32.onnx is the alternative when the FP16 graph has unsupported nodes",
        "providers_available_here": available,
        "latency": "measured" if ep else "not measured",
        "latency_reason": None if ep else "no GPU execution provider in this onnxruntime build",
        "parity_checked_on": "CPU execution provider" if checked else "not checked",
    }
    report["gpu_plan"] = plan
    if checked:
        row = ctx.row("fp16", fp16_path, "fp16", p, bench=False)
    else:
        row = {
            "name": "fp16",
            "file": fp16_path.name,
            "path": str(fp16_path),
            "precision": "fp16",
            "accuracy": None,
            "macro_f1": None,
            "agreement_with_student": None,
            "size_mb": onnx_size_mb(fp16_path),
            "parity": parity["fp16"],
            "within_budget": True,
            "budget_failures": [],
            "chosen": False,
            "rejected_reason": None,
            **{k: "not measured" for k in _BENCH_KEYS},
        }
        report["notes"].append("FP16 parity could not be checked here; verify on the GPU")
    if ep:
        providers = [ep, "CUDAExecutionProvider", "CPUExecutionProvider"]
        b = ctx.bench(fp16_path, providers=list(dict.fromkeys(providers)))
        row.update({k: b[k] for k in _BENCH_KEYS})
    else:
        row["latency_note"] = "not measured: " + plan["latency_reason"]
        # The FP32 row was timed on the CPU; it is a fallback here, not a GPU figure.
        rows[0]["latency_note"] = "measured on the CPU execution provider"
    rows.append(row)
    chosen = row if row["within_budget"] else (rows[0] if rows[0]["within_budget"] else None)
    _reject_others(rows, chosen)
    if chosen is not None and chosen is not row:
        report["notes"].append("FP16 missed the budget; model.onnx is the FP32 graph")
    elif chosen is row:
        rows[0]["rejected_reason"] = "FP32 fallback; the GPU plan uses FP16"
    return chosen


def _plan_mobile(
    ctx: _Context, fp32_path: Path, rows: list[dict], report: dict, parity: dict
) -> dict | None:
    cfg, out = ctx.cfg, ctx.out
    # The phone decides the weight type, not this host: ARM has no U8S8 saturation issue.
    scheme_kwargs = {
        "weight_type": cfg.weight_type,
        "reduce_range": cfg.reduce_range,
        "per_channel": cfg.per_channel,
        "flags": MOBILE_FLAGS,
        "machine": "aarch64",
    }
    report["quantization"] = choose_int8_scheme(
        MOBILE_FLAGS, "aarch64", cfg.weight_type, cfg.reduce_range, cfg.per_channel
    )
    host = choose_int8_scheme()
    if host["isa"] != "x86-vnni" and not host["isa"].startswith("arm"):
        report["notes"].append(
            f"this host ({host['isa']}) may saturate full-range U8S8 kernels, so accuracy "
            "measured here can understate the phone's"
        )
    methods = {"auto": ["dynamic"], "dynamic": ["dynamic"], "static": ["static"], "none": []}[
        cfg.quantization
    ]
    calib_texts, calib_pairs = _calib(ctx, report) if "static" in methods else ([], None)
    mixed_kwargs = {k: v for k, v in scheme_kwargs.items() if k != "machine"}
    made = _int8_candidates(
        ctx,
        fp32_path,
        methods,
        scheme_kwargs,
        rows,
        report,
        parity,
        calib_texts,
        calib_pairs,
    )
    if made and not any(r["within_budget"] for r in made) and cfg.mixed_precision:
        if cfg.quantization in ("auto", "dynamic"):
            _mixed(ctx, fp32_path, mixed_kwargs, rows, report, parity, ctx.calib_texts)
    # Mobile wants the smallest good artifact: INT8 first, FP32 only with quantization: none.
    int8_ok = [r for r in rows if r["precision"] != "fp32" and r["within_budget"]]
    source = int8_ok[0] if int8_ok else (rows[0] if cfg.quantization == "none" else None)
    if source is None:
        report["status"] = "failed"
        report["errors"].append("no INT8 artifact met the accuracy budget for mobile")
        _reject_others(rows, None, otherwise="mobile ships INT8 in ORT format only")
        return None
    # Named after its source; only a chosen (within every budget) file becomes model.ort.
    ort_info = convert_to_ort(
        source["path"], out / f"model.{source['name']}.ort", target_platform="arm"
    )
    ort_path = Path(ort_info["path"])
    p = ctx.parity(ort_path, "int8" if source["precision"] != "fp32" else "fp32")
    parity["ort"] = _parity_summary(p)
    row = ctx.row(
        "ort-" + source["name"],
        ort_path,
        source["precision"],
        p,
        extra={
            "format": "ORT",
            "converted_from": source["file"],
            "required_operators_config": Path(ort_info["config_path"]).name
            if ort_info["config_path"]
            else None,
            "latency_note": "measured on this host's CPU as a stand-in for the phone",
        },
    )
    size_ok = row["size_mb"] <= cfg.mobile_size_budget_mb
    report["mobile"] = {
        "size_mb": row["size_mb"],
        "size_budget_mb": cfg.mobile_size_budget_mb,
        "within_size_budget": size_ok,
        "target_platform": "arm",
    }
    if not size_ok:
        msg = (
            f"{row['file']} is {row['size_mb']:.2f} MB, over mobile_size_budget_mb "
            f"{cfg.mobile_size_budget_mb:.2f} MB"
        )
        row["within_budget"] = False
        row["budget_failures"].append(msg)
        report["errors"].append(msg)
        report["status"] = "failed"
    rows.append(row)
    chosen = row if row["within_budget"] else None
    _reject_others(
        rows,
        chosen,
        otherwise=f"mobile ships the ORT format file, and {row['file']} failed its budget",
    )
    for r in rows:
        if r is not chosen and r["within_budget"] and chosen is not None:
            r["rejected_reason"] = f"mobile ships the ORT format file {row['file']} (model.ort)"
    return chosen


__all__ = ["compress_student", "ParityError"]
