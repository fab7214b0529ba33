"""FP32 ONNX export and parity against PyTorch (tiny random BERT built in the test)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from conftest import make_tiny_bert, sentiment_rows, sharpen
from onedistill.compress.export import (
    ParityError,
    agreement,
    check_parity,
    export_onnx,
    export_verified,
    load_snippet,
    read_metadata,
)
from onedistill.compress.runtime import encode, load_student, ort_session, session_feeds

TEXTS = [r["text"] for r in sentiment_rows(40)]


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    path = sharpen(make_tiny_bert(tmp_path_factory.mktemp("export") / "student"))
    model, tok = load_student(path)
    return path, model, tok


@pytest.fixture(scope="module")
def exported(student, tmp_path_factory):
    _, model, tok = student
    out = tmp_path_factory.mktemp("onnx") / "model.fp32.onnx"
    info = export_verified(model, tok, out, TEXTS, threads=1)
    return out, info


def test_export_interface_has_named_inputs_and_symbolic_axes(exported):
    path, info = exported
    sess = ort_session(path, threads=1)
    inputs = {i.name: i.shape for i in sess.get_inputs()}
    assert list(inputs) == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(shape == ["batch", "sequence"] for shape in inputs.values())
    (out,) = sess.get_outputs()
    assert out.name == "logits" and out.shape == ["batch", 2]
    assert info["exporter"] == "legacy"
    assert read_metadata(path)["onedistill.exporter"] == "legacy"
    # Eager attention + explicit head count: the optimizer fuses attention, and it passed parity.
    assert info["graph_optimization"]["applied"]
    assert info["graph_optimization"]["fused_ops"].get("Attention") == 2


def test_fp32_parity_grid_padded_batches_within_tolerance(exported, student):
    path, _ = exported
    _, model, tok = student
    result = check_parity(path, model, tok, TEXTS, "fp32", atol=1e-4, threads=1)
    assert result["passed"]
    assert result["max_abs_diff"] <= 1e-4
    shapes = {(s["batch"], s["length"]) for s in result["shapes"]}
    assert shapes == {(b, n) for b in (1, 3, 8) for n in (1, 7, 128)}
    padded = [s for s in result["shapes"] if s["padded_rows"] > 0]
    assert {(s["batch"], s["length"]) for s in padded} >= {(3, 7), (8, 7), (3, 128), (8, 128)}
    assert all(s["max_abs_diff"] <= 1e-4 for s in result["shapes"])
    assert result["texts"]["rows"] == len(TEXTS) and result["texts"]["agreement"] == 1.0


def test_padding_is_masked_not_traced_away(exported, student):
    """A padded row gives the logits of the same text alone: the mask reached the graph."""
    path, _ = exported
    _, _, tok = student
    sess = ort_session(path, threads=1)
    short, long = "good fun", "the plot was very dull and the cast was not good at all"
    batch = sess.run(None, session_feeds(sess, encode(tok, [short, long])))[0]
    alone = sess.run(None, session_feeds(sess, encode(tok, [short])))[0]
    assert encode(tok, [short, long])["attention_mask"][0].min() == 0
    np.testing.assert_allclose(batch[0], alone[0], atol=1e-5)
    # ... and padding does change the logits when the mask is ignored, so the check can fail.
    enc = encode(tok, [short, long])
    enc["attention_mask"] = np.ones_like(enc["attention_mask"])
    unmasked = sess.run(None, session_feeds(sess, enc))[0]
    assert np.abs(unmasked[0] - alone[0]).max() > 1e-4


def _tampered(src: Path, dst: Path, negate: bool) -> Path:
    """A copy with negated logits (argmax flips) or +1e-3 on every class (argmax kept)."""
    model = onnx.load(str(src))
    graph = model.graph
    old = graph.output[0].name
    graph.node[-1].output[0] = "pre_logits"
    for node in graph.node:
        node.input[:] = ["pre_logits" if i == old else i for i in node.input]
    if negate:
        graph.node.append(onnx.helper.make_node("Neg", ["pre_logits"], [old]))
    else:
        graph.initializer.append(onnx.numpy_helper.from_array(np.float32([1e-3, 1e-3]), "nudge"))
        graph.node.append(onnx.helper.make_node("Add", ["pre_logits", "nudge"], [old]))
    onnx.save(model, str(dst))
    return dst


def test_parity_failure_raises_with_per_shape_figures(exported, student, tmp_path):
    path, _ = exported
    _, model, tok = student
    bad = _tampered(path, tmp_path / "nudged.onnx", negate=False)
    with pytest.raises(ParityError) as err:
        check_parity(bad, model, tok, TEXTS, "fp32", atol=1e-4, threads=1)
    msg = str(err.value)
    assert "FP32 parity FAILED" in msg and "fails gate" in msg
    assert "batch  length  padded rows" in msg and "128" in msg
    assert err.value.result["max_abs_diff"] == pytest.approx(1e-3, rel=1e-2)
    # The nudge keeps predictions, so an INT8-style agreement gate passes on the same file.
    assert check_parity(bad, model, tok, TEXTS, "int8", threads=1)["agreement"] == 1.0


def test_int8_agreement_gate_counts_flipped_predictions(exported, student, tmp_path):
    a = np.zeros((100, 2), dtype=np.float32)
    a[:, 1] = 1.0
    b = a.copy()
    b[:2] = [1.0, 0.0]  # two flipped rows
    assert agreement(a, b) == pytest.approx(0.98)

    path, _ = exported
    _, model, tok = student
    flipped = _tampered(path, tmp_path / "negated.onnx", negate=True)
    with pytest.raises(ParityError) as err:
        check_parity(flipped, model, tok, TEXTS, "int8", agreement_min=0.99, threads=1)
    result = err.value.result
    assert result["gate_rows"] == "real texts"
    assert result["texts"]["agreement"] == 0.0  # every argmax flips with negated logits
    assert "INT8 parity FAILED" in str(err.value)
    ok = check_parity(flipped, model, tok, TEXTS, "int8", agreement_min=0.0, threads=1)
    assert ok["passed"]


def test_no_token_type_ids_when_tokenizer_does_not_produce_them(tmp_path):
    path = make_tiny_bert(tmp_path / "s")
    model, tok = load_student(path)
    tok.model_input_names = ["input_ids", "attention_mask"]
    out = export_onnx(model, tok, tmp_path / "m.onnx")
    assert [i.name for i in ort_session(out).get_inputs()] == ["input_ids", "attention_mask"]
    assert check_parity(out, model, tok, TEXTS[:8], "fp32", threads=1)["passed"]


def test_dynamo_exporter_also_passes_parity(student, tmp_path):
    _, model, tok = student
    out = export_onnx(model, tok, tmp_path / "dynamo.onnx", exporter="dynamo")
    assert read_metadata(out)["onedistill.exporter"] == "dynamo"
    result = check_parity(out, model, tok, TEXTS[:8], "fp32", lengths=(1, 7, 33), threads=1)
    assert result["passed"] and result["max_abs_diff"] <= 1e-4


def test_opset_below_17_is_refused(student, tmp_path):
    _, model, tok = student
    with pytest.raises(ValueError, match="at least 17"):
        export_onnx(model, tok, tmp_path / "m.onnx", opset=13)


def test_load_snippet_runs(exported, student, tmp_path):
    path, _ = exported
    _, model, tok = student
    tok.save_pretrained(tmp_path)
    (tmp_path / "model.onnx").write_bytes(path.read_bytes())
    code = load_snippet("model.onnx", str(tmp_path), {0: "negative", 1: "positive"})
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(code, "snippet", "exec"), {})
    printed = buf.getvalue().strip()
    assert printed in ("['negative']", "['positive']")
    with torch.inference_mode():
        enc = tok(["an example sentence"], return_tensors="pt")
        want = ["negative", "positive"][int(model(**enc).logits.argmax(-1))]
    assert printed == f"[{want!r}]"
