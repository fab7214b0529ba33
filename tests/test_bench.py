"""Benchmarks, target plans and the run-dir command (tiny random BERT built in the test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import make_tiny_bert, sentiment_rows, sharpen
from onedistill.compress.bench import (
    bench_artifact,
    bench_onnx,
    bench_torch,
    onnx_size_mb,
    representative_texts,
)
from onedistill.compress.commands import bench_command, compress_run_dir
from onedistill.compress.config import CompressionConfig
from onedistill.compress.export import export_onnx
from onedistill.compress.plan import compress_student
from onedistill.compress.runtime import load_student

ROWS = sentiment_rows(40, seed=2)
TEXTS = [r["text"] for r in ROWS]
LABELS = [int(r["label"] == "positive") for r in ROWS]
FAST = {"threads": 1, "repeats": 5, "throughput_batches": 1}


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    return sharpen(make_tiny_bert(tmp_path_factory.mktemp("bench") / "student"))


def _quiet_console():
    from rich.console import Console

    return Console(file=open("/dev/null", "w"), width=200)  # noqa: SIM115


def test_bench_onnx_and_torch_report_sane_figures(student, tmp_path):
    model, tok = load_student(student)
    path = export_onnx(model, tok, tmp_path / "m.onnx")
    texts = representative_texts(8)
    for result in (
        bench_onnx(path, tok, texts, threads=1, repeats=5, throughput_batches=1),
        bench_torch(model, tok, texts, threads=1, repeats=5, throughput_batches=1),
    ):
        for key in ("latency_ms_p50", "latency_ms_p95", "throughput_per_s", "size_mb"):
            assert isinstance(result[key], float) and result[key] > 0, key
        assert result["latency_ms_p95"] >= result["latency_ms_p50"]
        assert result["peak_rss_mb"] > 0 and result["rss_delta_mb"] >= 0
        assert result["threads"] == 1 and "RSS" in result["memory_method"]
    assert result["runtime"] == "torch"
    assert onnx_size_mb(path) == pytest.approx(path.stat().st_size / 1e6)


def test_bench_artifact_dispatches_on_what_it_is_given(student, tmp_path):
    model, tok = load_student(student)
    tok.save_pretrained(tmp_path)
    onnx_path = export_onnx(model, tok, tmp_path / "model.onnx")
    as_file = bench_artifact(onnx_path, texts=TEXTS[:4], threads=1, repeats=3)
    as_dir = bench_artifact(tmp_path, texts=TEXTS[:4], threads=1, repeats=3)  # compressed-style
    hf_dir = bench_artifact(student, texts=TEXTS[:4], threads=1, repeats=3)
    assert as_file["kind"] == as_dir["kind"] == "onnx" and as_file["runtime"] == "onnxruntime"
    assert hf_dir["kind"] == "hf-dir" and hf_dir["runtime"] == "torch"
    # The whole HF directory counts: weights, config and tokenizer files.
    assert hf_dir["size_mb"] == pytest.approx(
        sum(p.stat().st_size for p in student.iterdir() if p.is_file()) / 1e6
    )
    gpu = bench_artifact(onnx_path, target="gpu", texts=TEXTS[:4])
    assert gpu["measured"] is False and gpu["latency_ms_p50"] == "not measured"
    with pytest.raises(ValueError, match="expected an .onnx or .ort"):
        bench_artifact(student / "config.json")
    texts_file = tmp_path / "texts.txt"
    texts_file.write_text("\n".join(TEXTS[:3]) + "\n")
    out = bench_command(
        str(onnx_path), "cpu", 1, str(texts_file), repeats=3, console=_quiet_console()
    )
    assert out["latency_ms_p50"] > 0


def test_representative_texts_are_reproducible_and_varied():
    a, b = representative_texts(20, seed=3), representative_texts(20, seed=3)
    assert a == b and len(a) == 20
    lengths = {len(t.split()) for t in a}
    assert min(lengths) < 10 < max(lengths)


def _check_row_keys(row: dict) -> None:
    for key in (
        "name",
        "path",
        "precision",
        "accuracy",
        "macro_f1",
        "agreement_with_student",
        "size_mb",
        "latency_ms_p50",
        "latency_ms_p95",
        "throughput_per_s",
        "parity",
        "chosen",
        "rejected_reason",
    ):
        assert key in row, key


def test_mobile_plan_writes_ort_and_flags_size_budget(student, tmp_path):
    cfg = CompressionConfig(target="mobile", mobile_size_budget_mb=0.01)
    report = compress_student(student, tmp_path / "m", cfg, TEXTS, LABELS, TEXTS[:16], **FAST)
    ort_row = next(r for r in report["artifacts"] if r.get("format") == "ORT")
    _check_row_keys(ort_row)
    ort_file = tmp_path / "m" / ort_row["file"]
    assert ort_file.suffix == ".ort" and ort_file.stat().st_size > 0
    assert report["status"] == "failed" and report["chosen"] is None
    assert not (tmp_path / "m" / "model.ort").exists()  # over budget: not the default output
    assert any("over mobile_size_budget_mb" in e for e in report["errors"])
    assert not ort_row["chosen"] and "0.01 MB" in ort_row["rejected_reason"]
    assert ort_row["parity"]["passed"]  # the .ort file itself was run and compared
    assert report["quantization"]["isa"].startswith("arm")  # weights chosen for the phone
    assert report["mobile"]["within_size_budget"] is False

    ok = compress_student(
        student,
        tmp_path / "ok",
        CompressionConfig(target="mobile", mobile_size_budget_mb=30.0),
        TEXTS,
        LABELS,
        TEXTS[:16],
        **FAST,
    )
    assert ok["status"] == "ok" and ok["chosen_file"] == "model.ort"
    assert (tmp_path / "ok" / "model.ort").is_file()


def test_gpu_plan_is_written_with_latency_not_measured(student, tmp_path):
    report = compress_student(
        student, tmp_path / "g", CompressionConfig(target="gpu"), TEXTS, LABELS, [], **FAST
    )
    fp16 = next(r for r in report["artifacts"] if r["name"] == "fp16")
    assert (tmp_path / "g" / "model.fp16.onnx").is_file() and (
        tmp_path / "g" / "model.onnx"
    ).is_file()
    assert report["parity"]["fp16"]["passed"]  # FP16 parity checked on the CPU provider
    assert fp16["latency_ms_p50"] == "not measured" and "not measured" in fp16["latency_note"]
    assert report["gpu_plan"]["latency"] == "not measured"
    assert "CUDAExecutionProvider" in report["gpu_plan"]["execution_provider"]
    assert report["chosen"] == "fp16"


def _fake_run(root: Path, student_src: Path) -> Path:
    import shutil

    run = root / "run"
    shutil.copytree(student_src, run / "student")
    with (run / "eval.jsonl").open("w") as f:
        for text, label in zip(TEXTS, LABELS, strict=True):
            f.write(json.dumps({"text": text, "pair": None, "label": label}) + "\n")
    with (run / "calibration.jsonl").open("w") as f:
        for r in sentiment_rows(24, seed=5):
            f.write(json.dumps({"text": r["text"]}) + "\n")
    (run / "report.json").write_text(
        json.dumps(
            {
                "teacher": {"accuracy": 0.9, "latency_ms_p50": 12.0, "details": {}},
                "compression": {"params_ratio": 0.25, "speedup_p50": 3.0},
            }
        )
    )
    resolved = {
        "run": {"out": str(run), "threads": 1},
        "eval": {"latency_repeats": 5, "throughput_batches": 1},
        "compression": {"target": "cpu", "max_accuracy_drop": 1.0},
    }
    (run / "config.resolved.yaml").write_text(yaml.safe_dump(resolved))
    return run


def test_compress_run_dir_builds_and_refuses_to_overwrite(student, tmp_path):
    run = _fake_run(tmp_path, student)
    console = _quiet_console()
    section = compress_run_dir(str(run), {"quantization": "dynamic"}, console=console)
    assert (run / "compressed" / "model.onnx").is_file()
    assert (run / "compressed" / "model.int8-dynamic.onnx").is_file()
    assert (run / "compressed" / "tokenizer_config.json").is_file()
    report = json.loads((run / "report.json").read_text())
    assert report["teacher"]["accuracy"] == 0.9  # the rest of the report is kept
    comp = report["compression"]
    assert comp["params_ratio"] == 0.25  # the pipeline's ratios under the same key survive
    assert comp["status"] == "ok" and comp["target"] == "cpu" and comp["dir"] == "compressed"
    assert comp["chosen"] in {r["name"] for r in comp["artifacts"]}
    assert sum(r["chosen"] for r in comp["artifacts"]) == 1
    for row in comp["artifacts"]:
        _check_row_keys(row)
        assert Path(row["path"]).parent == run / "compressed"  # staging paths were rewritten
        assert row["chosen"] or row["rejected_reason"]
        assert row["accuracy_drop_vs_teacher_points"] == pytest.approx(
            (0.9 - row["accuracy"]) * 100
        )
    assert comp["quantization"]["weight_type"] in ("QInt8", "QUInt8")
    assert comp["quantization"]["cpu_flags_seen"] is not None
    assert comp["parity"]["fp32"]["passed"] and comp["parity"]["fp32"]["max_abs_diff"] <= 1e-4
    assert "onnxruntime" in comp["load_snippet"] and str(run / "compressed") in comp["load_snippet"]
    assert section.items() <= comp.items()
    assert (
        json.loads((run / "compressed" / "compression.json").read_text())["chosen"]
        == comp["chosen"]
    )

    marker = run / "compressed" / "marker.txt"
    marker.write_text("old")
    with pytest.raises(FileExistsError, match="force"):
        compress_run_dir(str(run), console=console)
    assert marker.is_file()  # refused without touching it

    compress_run_dir(str(run), {"quantization": "none"}, force=True, console=console)
    aside = list(run.glob("compressed.prev-*"))
    assert len(aside) == 1 and (aside[0] / "marker.txt").read_text() == "old"
    assert not (run / "compressed" / "marker.txt").exists()
    assert json.loads((run / "report.json").read_text())["compression"]["chosen"] == "fp32"


def test_compress_run_dir_reports_bad_settings_and_missing_files(student, tmp_path):
    run = _fake_run(tmp_path, student)
    with pytest.raises(ValueError, match="compression.target"):
        compress_run_dir(str(run), {"target": "tpu"}, console=_quiet_console())
    (run / "eval.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="eval.jsonl"):
        compress_run_dir(str(run), console=_quiet_console())
    assert not (run / "compressed").exists()
