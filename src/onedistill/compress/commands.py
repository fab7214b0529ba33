"""Plain-function bodies of the ``bench`` and ``compress`` CLI commands (the CLI wires them in).

Both return the result dict and print a rich table; errors are raised as exceptions with
messages meant for the terminal (FileNotFoundError, FileExistsError, ValueError).
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import shutil
from pathlib import Path
from typing import Any

from onedistill.compress.config import CompressionConfig
from onedistill.compress.runtime import is_hf_model_dir, read_jsonl


def _console(console: Any | None) -> Any:
    if console is not None:
        return console
    from rich.console import Console

    return Console()


def read_texts_file(path: str | Path) -> list[str]:
    """Texts from a file, one per row.

    ``.jsonl``: the ``text`` field; ``.csv`` / ``.tsv``: the ``text`` column; anything else: one
    text per non-empty line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"texts file not found: {path}")
    if path.suffix == ".jsonl":
        rows = read_jsonl(path)
        texts = [r["text"] for r in rows if isinstance(r, dict) and r.get("text")]
    elif path.suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ",")
            if "text" not in (reader.fieldnames or []):
                raise ValueError(f"{path}: no 'text' column (columns: {reader.fieldnames})")
            texts = [r["text"] for r in reader if r.get("text")]
    else:
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        texts = [t for t in texts if t]
    if not texts:
        raise ValueError(f"{path}: no texts found")
    return texts


def _fmt(v: Any, spec: str) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return format(v, spec)
    return "-" if v is None else str(v)


def bench_command(
    artifact: str,
    target: str = "cpu",
    threads: int = 2,
    texts_file: str | None = None,
    *,
    repeats: int = 50,
    console: Any | None = None,
) -> dict:
    """Benchmark one artifact (``.onnx`` / ``.ort`` file, compressed dir or HF model dir).

    Args:
        artifact: Path of the artifact.
        target: ``cpu``, ``gpu`` or ``mobile`` (see ``bench.bench_artifact``).
        threads: Intra-op threads.
        texts_file: Inputs (``.txt`` lines, ``.jsonl`` / ``.csv`` with ``text``); default: built-in
            representative texts.
        repeats: Timed batch-1 calls.
        console: A rich console to print to (default: a new one).

    Returns:
        The benchmark figures.
    """
    from rich.table import Table

    from onedistill.compress.bench import bench_artifact

    if target not in ("cpu", "gpu", "mobile"):
        raise ValueError(f"target must be cpu, gpu or mobile, got {target!r}")
    texts = read_texts_file(texts_file) if texts_file else None
    result = bench_artifact(artifact, target, texts, threads=threads, repeats=repeats)  # type: ignore[arg-type]
    table = Table(title=f"{artifact} ({result.get('kind')}, target {target})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("latency p50 (batch 1)", _fmt(result.get("latency_ms_p50"), ".2f"), "ms"),
        ("latency p95 (batch 1)", _fmt(result.get("latency_ms_p95"), ".2f"), "ms"),
        (
            f"throughput (batch {result.get('batch_size', 32)})",
            _fmt(result.get("throughput_per_s"), ".1f"),
            "ex/s",
        ),
        ("peak RSS", _fmt(result.get("peak_rss_mb"), ".1f"), "MB"),
        ("RSS delta", _fmt(result.get("rss_delta_mb"), ".1f"), "MB"),
        ("size on disk", _fmt(result.get("size_mb"), ".2f"), "MB"),
        ("threads", _fmt(result.get("threads", threads), "d"), ""),
    ]
    for name, value, unit in rows:
        table.add_row(name, f"{value} {unit}".strip())
    con = _console(console)
    con.print(table)
    if result.get("reason"):
        con.print(f"[yellow]{result['reason']}[/yellow]")
    return result


# ------------------------------------------------------------------------------------ run dir


def _deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _load_cfg(raw: dict, overrides: dict | None, source: str) -> CompressionConfig:
    from pydantic import ValidationError

    section = raw.get("compression") or {}
    if not isinstance(section, dict):
        raise ValueError(f"{source}: compression must be a mapping, got {type(section).__name__}")
    merged = _deep_merge(section, overrides or {})
    try:
        return CompressionConfig.model_validate(merged)
    except ValidationError as exc:
        lines = [
            f"compression.{'.'.join(str(p) for p in e['loc'])}: {e['msg']} "
            f"(received {e.get('input')!r})"
            for e in exc.errors()
        ]
        raise ValueError(
            f"{source}: invalid compression settings\n  " + "\n  ".join(lines)
        ) from None


def _eval_rows(path: Path) -> tuple[list[str], list[str | None] | None, list[int]]:
    rows = read_jsonl(path)
    texts, pairs, labels = [], [], []
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or "text" not in row or "label" not in row:
            raise ValueError(f"{path}: row {n} needs 'text' and 'label' (got {row!r:.80})")
        try:
            labels.append(int(row["label"]))
        except (TypeError, ValueError):
            raise ValueError(
                f"{path}: row {n} label {row['label']!r} is not a class id (int)"
            ) from None
        texts.append(str(row["text"]))
        pairs.append(row.get("pair"))
    if not texts:
        raise ValueError(f"{path} has no rows: compression needs labelled eval data")
    return texts, (pairs if any(p is not None for p in pairs) else None), labels


def _calib_rows(path: Path) -> tuple[list[str], list[str | None] | None]:
    if not path.is_file():
        return [], None
    rows = [r for r in read_jsonl(path) if isinstance(r, dict) and r.get("text")]
    pairs = [r.get("pair") for r in rows]
    return [str(r["text"]) for r in rows], (pairs if any(p is not None for p in pairs) else None)


def _teacher_metrics(report: dict) -> dict | None:
    """Teacher accuracy / latency from the run's report.json, wherever the pipeline put them."""
    teacher = report.get("teacher")
    if not isinstance(teacher, dict):
        return None
    found: dict[str, Any] = {}
    for scope in (teacher, *(v for v in teacher.values() if isinstance(v, dict))):
        for key in ("accuracy", "macro_f1", "latency_ms_p50", "latency_ms_p95", "size_mb"):
            if key not in found and isinstance(scope.get(key), (int, float)):
                found[key] = scope[key]
    return found or None


def _replace_prefix(obj: Any, old: str, new: str) -> Any:
    if isinstance(obj, str):
        return new + obj[len(old) :] if obj.startswith(old) else obj
    if isinstance(obj, dict):
        return {k: _replace_prefix(v, old, new) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_replace_prefix(v, old, new) for v in obj]
    return obj


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def _aside_name(run: Path) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate = run / f"compressed.prev-{stamp}"
    n = 1
    while candidate.exists():
        candidate = run / f"compressed.prev-{stamp}-{n}"
        n += 1
    return candidate


def compress_run_dir(
    run_dir: str,
    cfg_overrides: dict | None = None,
    *,
    force: bool = False,
    console: Any | None = None,
    threads: int | None = None,
    repeats: int | None = None,
    student_subdir: str = "student",
) -> dict:
    """Compress the student of a finished run into ``RUN_DIR/compressed/`` and report it.

    Reads ``student/``, ``eval.jsonl`` (``text``, ``pair``, ``label``), ``calibration.jsonl``
    (``text``; optional), ``config.resolved.yaml`` (its ``compression`` section, plus
    ``run.threads`` and ``eval.latency_repeats`` / ``eval.throughput_batches``) and
    ``report.json`` (teacher figures). The artifacts are built in a staging directory and moved
    into place only when the plan finished, so a failure never leaves a half-written
    ``compressed/``. The report section is merged into ``report.json``'s ``compression`` dict
    (keys the pipeline wrote there, such as ``params_ratio``, are kept).

    Args:
        run_dir: The finished run directory.
        cfg_overrides: Compression settings over the resolved config's (e.g. ``{"target":
            "mobile"}``).
        force: Replace an existing ``compressed/``, moving it aside to
            ``compressed.prev-<timestamp>`` first.
        console: A rich console to print the summary to.
        threads: Measurement threads (default: ``run.threads`` of the run, else 2).
        repeats: Timed batch-1 calls (default: ``eval.latency_repeats``, else 30).
        student_subdir: Which saved student to compress (``student-pruned`` after pruning).

    Returns:
        The compression report section (``status`` "failed" when a budget could not be met).

    Raises:
        FileNotFoundError: The run directory lacks ``student/`` or ``eval.jsonl``.
        FileExistsError: ``compressed/`` exists and ``force`` is False.
        ValueError: Invalid settings or eval rows.
    """
    from onedistill.compress.plan import compress_student
    from onedistill.config import read_yaml

    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory not found: {run}")
    student = run / student_subdir
    if not is_hf_model_dir(student):
        raise FileNotFoundError(
            f"{student} is not a saved student (config.json and weights); is the run finished?"
        )
    eval_path = run / "eval.jsonl"
    if not eval_path.is_file():
        raise FileNotFoundError(
            f"{eval_path} not found: compression measures accuracy on the run's eval rows"
        )
    final = run / "compressed"
    if final.exists() and not force:
        raise FileExistsError(
            f"{final} already exists; pass force=True (--force) to move it aside to "
            "compressed.prev-<timestamp> and build it again"
        )
    cfg_path = run / "config.resolved.yaml"
    raw = read_yaml(cfg_path) if cfg_path.is_file() else {}
    cfg = _load_cfg(raw, cfg_overrides, str(cfg_path))
    run_cfg = raw.get("run") if isinstance(raw.get("run"), dict) else {}
    eval_cfg = raw.get("eval") if isinstance(raw.get("eval"), dict) else {}
    threads = threads or int(run_cfg.get("threads") or 2)
    repeats = repeats or int(eval_cfg.get("latency_repeats") or 30)
    throughput_batches = int(eval_cfg.get("throughput_batches") or 3)

    eval_texts, eval_pairs, eval_labels = _eval_rows(eval_path)
    calib_texts, calib_pairs = _calib_rows(run / "calibration.jsonl")
    report_path = run / "report.json"
    run_report = (
        json.loads(report_path.read_text(encoding="utf-8")) if report_path.is_file() else {}
    )

    staging = run / f".compressed.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        section = compress_student(
            student,
            staging,
            cfg,
            eval_texts,
            eval_labels,
            calib_texts,
            _teacher_metrics(run_report),
            eval_pairs=eval_pairs,
            calib_pairs=calib_pairs,
            threads=threads,
            repeats=repeats,
            throughput_batches=throughput_batches,
            snippet_dir=str(final),
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not calib_texts:
        section["notes"].append(f"{run / 'calibration.jsonl'} missing or empty")
    moved_aside = None
    if final.exists():
        moved_aside = _aside_name(run)
        final.rename(moved_aside)
    staging.rename(final)
    section = _replace_prefix(section, str(staging), str(final))
    section["dir"] = "compressed"
    section["previous_moved_to"] = moved_aside.name if moved_aside else None
    _write_json_atomic(final / "compression.json", section)
    # The pipeline already writes compression ratios (params_ratio, speedup_p50...) under this
    # key; merge so they survive, with this run's figures winning any clash.
    existing = run_report.get("compression")
    run_report["compression"] = {**(existing if isinstance(existing, dict) else {}), **section}
    _write_json_atomic(report_path, run_report)
    print_compression_summary(section, console)
    return section


def print_compression_summary(section: dict, console: Any | None = None) -> None:
    """A rich table of the artifacts of a compression report section."""
    from rich.table import Table

    con = _console(console)
    table = Table(title=f"compression for {section['target']} ({section['status']})")
    for col, justify in (
        ("artifact", "left"),
        ("precision", "left"),
        ("accuracy", "right"),
        ("drop (pts)", "right"),
        ("agreement", "right"),
        ("size MB", "right"),
        ("p50 ms", "right"),
        ("p95 ms", "right"),
        ("ex/s", "right"),
        ("", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    student = section.get("student") or {}
    table.add_row(
        "student (torch)",
        "fp32",
        _fmt(student.get("accuracy"), ".2%"),
        "",
        "",
        _fmt(student.get("size_mb"), ".2f"),
        _fmt(student.get("latency_ms_p50"), ".2f"),
        _fmt(student.get("latency_ms_p95"), ".2f"),
        _fmt(student.get("throughput_per_s"), ".0f"),
        "reference",
    )
    for r in section["artifacts"]:
        status = "[green]chosen[/green]" if r["chosen"] else (r.get("rejected_reason") or "")
        table.add_row(
            r["file"],
            r["precision"],
            _fmt(r.get("accuracy"), ".2%"),
            _fmt(r.get("accuracy_drop_points"), ".2f"),
            _fmt(r.get("agreement_with_student"), ".2%"),
            _fmt(r.get("size_mb"), ".2f"),
            _fmt(r.get("latency_ms_p50"), ".2f"),
            _fmt(r.get("latency_ms_p95"), ".2f"),
            _fmt(r.get("throughput_per_s"), ".0f"),
            status,
        )
    con.print(table)
    for err in section.get("errors", []):
        con.print(f"[red]error:[/red] {err}")
    for note in section.get("notes", []):
        con.print(f"[yellow]note:[/yellow] {note}")
