"""INT8 quantization of the exported graph: weight-type choice, dynamic, static, mixed, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from conftest import make_tiny_bert, sentiment_rows, sharpen
from onedistill.compress.export import check_parity, export_verified
from onedistill.compress.quantize import (
    QuantizationError,
    TextCalibrationReader,
    choose_int8_scheme,
    evaluate_onnx,
    quantize_dynamic_int8,
    quantize_mixed,
    quantize_static_int8,
    quantized_op_counts,
)
from onedistill.compress.runtime import (
    encode,
    load_student,
    ort_session,
    session_feeds,
    torch_threads,
)

ROWS = sentiment_rows(48, seed=1)
TEXTS = [r["text"] for r in ROWS]
LABELS = [int(r["label"] == "positive") for r in ROWS]


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    model, tok = load_student(sharpen(make_tiny_bert(root / "student")))
    path = root / "model.fp32.onnx"
    export_verified(model, tok, path, TEXTS, threads=1)
    return path, model, tok


def _run(path: Path, feeds: dict) -> np.ndarray:
    sess = ort_session(path, threads=1)
    return sess.run(None, session_feeds(sess, feeds))[0]


def test_weight_type_follows_instruction_set():
    vnni = choose_int8_scheme({"avx2", "avx512f", "avx512_vnni"}, "x86_64")
    assert (vnni["weight_type"], vnni["reduce_range"], vnni["isa"]) == ("QInt8", False, "x86-vnni")
    assert vnni["cpu_flags_seen"] == ["avx2", "avx512_vnni", "avx512f"]
    assert "VNNI" in vnni["reason"]

    avx2 = choose_int8_scheme({"sse2", "avx2"}, "x86_64")
    assert (avx2["weight_type"], avx2["reduce_range"]) == ("QInt8", True)
    assert avx2["fallback_weight_type"] == "QUInt8" and "VPMADDUBSW" in avx2["reason"]

    arm = choose_int8_scheme({"asimd", "asimddp"}, "aarch64")
    assert (arm["weight_type"], arm["reduce_range"], arm["isa"]) == ("QInt8", False, "arm-dotprod")

    forced = choose_int8_scheme({"avx2"}, "x86_64", weight_type="quint8", reduce_range=False)
    assert (forced["weight_type"], forced["reduce_range"]) == ("QUInt8", False)
    assert "set in the config" in forced["reason"]

    # Per-channel without VNNI needs reduce_range (ONNX Runtime's guide), even if it was off.
    avx512 = choose_int8_scheme({"avx2", "avx512f", "avx512bw"}, "x86_64", per_channel=True)
    assert avx512["isa"] == "x86-avx512-no-vnni" and avx512["reduce_range"]


def test_dynamic_int8_saved_and_reloaded_gives_identical_outputs(fp32, tmp_path):
    path, model, tok = fp32
    info = quantize_dynamic_int8(path, tmp_path / "q.onnx")
    assert info["quantized_ops"].get("MatMulInteger", 0) > 0
    assert info["quantized_ops"].get("QAttention") == 2  # the fused attention got quantized too
    assert info["weight_type"] in ("QInt8", "QUInt8") and info["reason"]
    feeds = encode(tok, TEXTS[:8])
    first = _run(tmp_path / "q.onnx", feeds)
    again = _run(tmp_path / "q.onnx", feeds)  # a fresh session from the saved file
    np.testing.assert_array_equal(first, again)
    copy = tmp_path / "copy.onnx"
    onnx.save(onnx.load(str(tmp_path / "q.onnx")), str(copy))
    np.testing.assert_array_equal(first, _run(copy, feeds))
    # Quantization did change the numbers (so "identical" above is not trivially FP32).
    assert np.abs(first - _run(path, feeds)).max() > 1e-5
    parity = check_parity(tmp_path / "q.onnx", model, tok, TEXTS, "int8", threads=1)
    assert parity["passed"] and parity["agreement"] >= 0.99


def _add_relu_model(path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    bias = helper.make_tensor("b", TensorProto.FLOAT, [4], [0.1, -0.2, 0.3, -0.4])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "b"], ["s"]), helper.make_node("Relu", ["s"], ["y"])],
        "add_relu",
        [x],
        [y],
        [bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_nothing_quantizable_raises_clear_error(tmp_path, fp32):
    _, _, tok = fp32
    src = _add_relu_model(tmp_path / "add_relu.onnx")
    with pytest.raises(QuantizationError) as err:
        quantize_dynamic_int8(src, tmp_path / "out.onnx")
    msg = str(err.value)
    assert "add_relu.onnx" in msg and "nothing to quantize" in msg
    assert "Add x1" in msg and "Relu x1" in msg
    assert not (tmp_path / "out.onnx").exists()
    with pytest.raises(QuantizationError, match="add_relu.onnx"):
        quantize_static_int8(src, tmp_path / "out.onnx", TEXTS, tok)


def test_static_int8_runs_with_calibration_reader(fp32, tmp_path):
    path, model, tok = fp32
    reader = TextCalibrationReader(
        tok, TEXTS[:20], ["input_ids", "attention_mask", "token_type_ids"], batch_size=8
    )
    assert len(reader.batches) == 3 and [b["input_ids"].shape[0] for b in reader.batches] == [
        8,
        8,
        4,
    ]
    assert reader.get_next() is not None and reader.get_next() is not None
    assert reader.get_next() is not None and reader.get_next() is None

    info = quantize_static_int8(path, tmp_path / "s.onnx", TEXTS, tok, samples=20, batch_size=8)
    assert info["format"] == "QDQ" and info["calibration"] == {
        "texts": 20,
        "batches": 3,
        "method": "MinMax",
        "seed": 0,
    }
    assert info["quantized_ops"]["QuantizeLinear"] > 0 and info["quantized_ops"]["DequantizeLinear"]
    parity = check_parity(
        tmp_path / "s.onnx", model, tok, TEXTS, "int8", raise_on_fail=False, threads=1
    )
    assert 0.0 < parity["max_abs_diff"] < 5.0  # ran, and moved the logits a bit


def test_mixed_precision_excludes_sensitive_nodes_and_reports_them(fp32, tmp_path):
    path, _, tok = fp32
    feeds = encode(tok, TEXTS[:8])
    if "token_type_ids" not in feeds:
        feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])

    def eval_fn(p: Path) -> float:
        # A constructed accuracy: each INT8 node costs one point, so the 2-point budget leaves
        # at most two quantized nodes and the search has to keep the rest in FP32.
        counts = quantized_op_counts(p)
        quantized = sum(counts.get(op, 0) for op in ("MatMulInteger", "QAttention"))
        quantized += counts.get("QEmbedLayerNormalization", 0)
        return 1.0 - 0.01 * quantized

    info = quantize_mixed(
        path, tmp_path / "mixed.onnx", eval_fn, 2.0, sample_feeds=feeds, fp32_accuracy=1.0
    )
    assert info["met"] and Path(info["path"]).is_file()
    assert info["accuracy_drop_points"] <= 2.0 + 1e-9
    kept = info["kept_fp32"]
    assert len(kept) == info["candidates"] - info["quantized_nodes"] and len(kept) >= 1
    assert info["quantized_nodes"] == 2
    # The most sensitive nodes are the ones kept, and they really are FP32 in the output graph.
    scored = [s for s in info["sensitivity"] if s["quantized"]]
    assert [s["node"] for s in scored[: len(kept)]] == kept
    assert all(a["error"] >= b["error"] for a, b in zip(scored, scored[1:], strict=False))
    out_nodes = {n.name: n.op_type for n in onnx.load(info["path"]).graph.node}
    for name in kept:
        # Dynamic quantization rewrites every Gemm as "<name>_MatMul" + Add, kept or not.
        op = out_nodes.get(name) or out_nodes.get(f"{name}_MatMul")
        assert op in ("MatMul", "Attention", "EmbedLayerNormalization")
    assert len(info["attempts"]) >= 2 and info["attempts"][0]["within"] is False


def test_evaluate_onnx_matches_manual_metrics(fp32):
    path, model, tok = fp32
    result = evaluate_onnx(path, tok, TEXTS, LABELS, batch_size=7, threads=1)
    with torch.inference_mode(), torch_threads(1):
        enc = tok(TEXTS, padding=True, return_tensors="pt")
        preds = model(**enc).logits.argmax(-1).tolist()
    assert result["predictions"] == preds  # batching by length kept the input order
    assert result["accuracy"] == pytest.approx(np.mean(np.array(preds) == np.array(LABELS)))
    assert 0.0 <= result["macro_f1"] <= 1.0 and result["n"] == len(TEXTS)
