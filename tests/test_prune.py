from __future__ import annotations

import io
import math
import types
import warnings

import numpy as np
import pytest
import torch

from conftest import make_tiny_bert
from onedistill.compress.prune import (
    HeadlessAttention,
    PruningController,
    load_pruned,
    load_student,
    plot_sensitivity,
    save_pruned,
)

TEXTS = ["good movie", "the plot was very dull and boring a mess", "fun cast", "not quite it"]


def cfg(**kw):
    base = dict(heads=0.75, neurons=0.10, protect_heads=2, start=0.2, end=0.8, steps=4)
    base.update(kw)
    return types.SimpleNamespace(**base)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("prune") / "tiny-bert")


def load_model(path):
    """The tiny BERT with larger random weights, so every head and neuron visibly matters."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
            elif name.endswith("bias") and "LayerNorm" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


@pytest.fixture(scope="module")
def batch(bert_dir):
    from transformers import AutoTokenizer

    enc = AutoTokenizer.from_pretrained(bert_dir)(TEXTS, padding=True, return_tensors="pt")
    assert (enc["attention_mask"] == 0).any()  # a padded batch
    return dict(enc)


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


@pytest.fixture(scope="module")
def pruned(bert_dir, batch, tmp_path_factory):
    """Mask heads {0: [0, 1], 1: all} and some neurons, finalize, save."""
    from transformers import AutoTokenizer

    model = load_model(bert_dir)
    dense = logits(model, batch)
    ctl = PruningController(model, cfg(), total_steps=10)
    ctl.prune(heads={0: [0, 1], 1: [0, 1, 2, 3]}, neurons={0: [3, 7, 40], 1: [0, 63]})
    masked = logits(model, batch)
    assert (masked - dense).abs().max() > 1e-2  # the masks really change the function
    ctl.finalize()
    out = save_pruned(model, AutoTokenizer.from_pretrained(bert_dir), tmp_path_factory.mktemp("p"))
    return types.SimpleNamespace(model=model, masked=masked, dir=out, ctl=ctl)


def test_finalize_physically_prunes_and_matches_masked(pruned, batch):
    layers = pruned.model.bert.encoder.layer
    attn0 = layers[0].attention
    assert attn0.self.query.out_features == attn0.self.value.out_features == 2 * 8
    assert attn0.output.dense.in_features == 16 and attn0.self.num_attention_heads == 2
    assert isinstance(layers[1].attention, HeadlessAttention)
    assert layers[0].intermediate.dense.out_features == layers[0].output.dense.in_features == 61
    assert layers[1].intermediate.dense.out_features == 62
    assert pruned.model.config.onedistill_pruning == {
        "heads": {"0": [2, 3], "1": []},
        "intermediate": {"0": 61, "1": 62},
    }
    assert not any(m._forward_pre_hooks for m in pruned.model.modules())
    torch.testing.assert_close(logits(pruned.model, batch), pruned.masked, atol=1e-5, rtol=0)


def test_load_pruned_and_load_student(pruned, batch, bert_dir):
    for model in (load_pruned(pruned.dir), load_student(pruned.dir)):
        assert isinstance(model.bert.encoder.layer[1].attention, HeadlessAttention)
        torch.testing.assert_close(logits(model, batch), pruned.masked, atol=1e-5, rtol=0)
    plain = load_student(bert_dir)  # an unpruned classifier loads through the same entry point
    assert plain.bert.encoder.layer[0].attention.self.query.out_features == 32


def test_plain_loading_of_pruned_dir_fails_loudly(pruned):
    from transformers import AutoModelForSequenceClassification

    with pytest.raises(RuntimeError, match="mismatched"):
        AutoModelForSequenceClassification.from_pretrained(pruned.dir)


def test_trust_remote_code_loading(pruned, batch):
    from transformers import AutoModelForSequenceClassification

    model, info = AutoModelForSequenceClassification.from_pretrained(
        pruned.dir, trust_remote_code=True, output_loading_info=True
    )
    assert type(model).__name__ == "PrunedBertForSequenceClassification"
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    torch.testing.assert_close(logits(model.eval(), batch), pruned.masked, atol=1e-5, rtol=0)


def test_onnx_export_matches_onnxruntime(pruned, batch, tmp_path):
    import onnxruntime as ort

    class Wrapper(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    model = load_pruned(pruned.dir)
    path = tmp_path / "pruned.onnx"
    inputs = (batch["input_ids"], batch["attention_mask"])
    axes = {"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Wrapper(model).eval(),
            inputs,
            str(path),
            dynamo=False,
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=17,
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"input_ids": inputs[0].numpy(), "attention_mask": inputs[1].numpy()}
    got = session.run(None, feed)[0]
    np.testing.assert_allclose(got, pruned.masked.numpy(), atol=1e-5, rtol=0)


def test_save_requires_finalize(bert_dir, tmp_path):
    model = load_model(bert_dir)
    PruningController(model, cfg(), total_steps=10)
    with pytest.raises(RuntimeError, match="finalize"):
        save_pruned(model, None, tmp_path)


def test_unsupported_architecture_raises():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    conf = DistilBertConfig(vocab_size=30, dim=16, n_layers=1, n_heads=2, hidden_dim=32)
    with pytest.raises(NotImplementedError, match="bert.*roberta"):
        PruningController(DistilBertForSequenceClassification(conf), cfg(), total_steps=10)


def backward(model, batch):
    out = model(**batch, labels=torch.tensor([0, 1, 1, 0]))
    out.loss.backward()


def test_importance_is_taylor_score_from_real_gradients(bert_dir, batch):
    model = load_model(bert_dir)  # eval mode: no dropout, deterministic gradients
    ctl = PruningController(model, cfg(), total_steps=10)
    assert ctl.head_gates[0] not in set(model.parameters())  # optimizers never see the gates
    backward(model, batch)
    ctl.after_backward()
    assert all(g.grad is None for g in ctl.head_gates + ctl.neuron_gates)
    imp = ctl.importance()
    for i, layer in enumerate(model.bert.encoder.layer):
        # |dL/dgate_h| == |sum over the head's columns of W_o * dL/dW_o| (gate = 1)
        w = layer.attention.output.dense.weight
        taylor = (w * w.grad).reshape(32, 4, 8).sum(dim=(0, 2)).abs()
        torch.testing.assert_close(
            torch.tensor(imp["heads"][i], dtype=torch.float64),
            taylor.double(),
            rtol=1e-4,
            atol=1e-9,
        )
        w = layer.output.dense.weight
        taylor = (w * w.grad).sum(dim=0).abs()
        torch.testing.assert_close(
            torch.tensor(imp["neurons"][i], dtype=torch.float64),
            taylor.double(),
            rtol=1e-4,
            atol=1e-9,
        )
        assert min(imp["heads"][i]) > 0

    # A second identical pass accumulates: the mean stays, the count grows.
    model.zero_grad()
    backward(model, batch)
    ctl.after_backward()
    assert ctl.summary()["backward_passes"] == 2
    np.testing.assert_allclose(ctl.importance()["heads"], imp["heads"], rtol=1e-6)

    # A zero gate removes the head's contribution: no gradient reaches its weights and its
    # score stays frozen at its value when pruned, while the other heads keep accumulating.
    ctl.prune(heads={0: [1]})
    model.zero_grad()
    backward(model, batch)
    ctl.after_backward()
    q_grad = model.bert.encoder.layer[0].attention.self.query.weight.grad
    assert q_grad[8:16].abs().max() == 0 and q_grad[:8].abs().max() > 0
    after = ctl.importance()["heads"][0]
    assert after[1] == imp["heads"][0][1]
    assert after[0] != pytest.approx(imp["heads"][0][0], rel=1e-3)  # a new network state


def test_protected_heads_survive(bert_dir):
    model = load_model(bert_dir)
    scores = [[1.0, 5.0, 1.0, 1.0], [1.0, 1.0, 1.0, 6.0]]  # top two after L2: (1, 3), (0, 1)
    ctl = PruningController(model, cfg(heads=1.0, protect_heads=2), total_steps=10)
    ctl.set_importance(heads=scores)
    ctl.on_step(10)
    kept = {(i, h) for i, m in enumerate(ctl.head_mask) for h in range(4) if m[h]}
    assert kept == {(1, 3), (0, 1)}
    ranking = ctl.summary()["head_ranking"]
    assert [(r["layer"], r["head"]) for r in ranking[:2]] == [(1, 3), (0, 1)]
    assert all(not r["kept"] for r in ranking[2:])

    # Without protection the same config prunes every head.
    ctl.remove_hooks()
    ctl = PruningController(model, cfg(heads=1.0, protect_heads=0), total_steps=10)
    ctl.set_importance(heads=scores)
    ctl.on_step(10)
    assert ctl.summary()["total_heads_kept"] == 0


@pytest.mark.parametrize("schedule", ["cubic", "linear"])
def test_schedule_reaches_targets_at_end_and_never_exceeds(bert_dir, schedule):
    model = load_model(bert_dir)
    conf = cfg(heads=0.5, neurons=0.1, protect_heads=1, schedule=schedule)
    total = 50
    ctl = PruningController(model, conf, total_steps=total)
    gen = torch.Generator().manual_seed(0)
    ctl.set_importance(
        heads=[torch.rand(4, generator=gen) for _ in range(2)],
        neurons=[torch.rand(64, generator=gen) for _ in range(2)],
    )
    assert ctl.event_steps() == [10, 20, 30, 40]
    head_target, neuron_target = math.floor(0.5 * 8), math.floor(0.1 * 128)
    pruned_h, pruned_n, fired = [], [], []
    for step in range(1, total + 1):
        if ctl.on_step(step):
            fired.append(step)
        s = ctl.summary()
        pruned_h.append(s["total_heads"] - s["total_heads_kept"])
        pruned_n.append(s["total_neurons"] - s["total_neurons_kept"])
    assert set(fired) <= {10, 20, 30, 40} and {10, 40} <= set(fired)
    assert pruned_h[8] == pruned_n[8] == 0  # nothing before cfg.start * total_steps
    assert pruned_h == sorted(pruned_h) and pruned_n == sorted(pruned_n)
    assert max(pruned_h) == pruned_h[39] == head_target
    assert max(pruned_n) == pruned_n[39] == neuron_target
    assert 0 < pruned_h[9] < head_target and 0 < pruned_n[9] < neuron_target
    if schedule == "cubic":  # cubic front-loads: after event 1 of 4 it is at 1 - (3/4)^3
        assert pruned_n[9] == math.floor(0.1 * 128 * (1 - 0.75**3))
    else:
        assert pruned_n[9] == math.floor(0.1 * 128 * 0.25)


def test_state_dict_round_trip(bert_dir, batch):
    model_a = load_model(bert_dir)
    ctl_a = PruningController(model_a, cfg(), total_steps=20)
    backward(model_a, batch)
    ctl_a.after_backward()
    assert ctl_a.on_step(ctl_a.event_steps()[0])
    buf = io.BytesIO()
    torch.save(ctl_a.state_dict(), buf)
    buf.seek(0)

    model_b = load_model(bert_dir)
    ctl_b = PruningController(model_b, cfg(), total_steps=20)
    assert logits(model_a, batch).sub(logits(model_b, batch)).abs().max() > 1e-3
    ctl_b.load_state_dict(torch.load(buf))
    assert ctl_b.importance() == ctl_a.importance()
    assert ctl_b.summary() == ctl_a.summary()
    assert all(torch.equal(a, b) for a, b in zip(ctl_a.neuron_mask, ctl_b.neuron_mask, strict=True))
    torch.testing.assert_close(logits(model_b, batch), logits(model_a, batch))
    # Resumed runs make the same later decisions.
    assert ctl_a.on_step(20) and ctl_b.on_step(20)
    assert ctl_b.summary() == ctl_a.summary()
    with pytest.raises(ValueError, match="shapes"):
        ctl_b.load_state_dict({**ctl_a.state_dict(), "num_heads": [4, 2]})


def test_summary_and_plot(bert_dir, batch, tmp_path):
    model = load_model(bert_dir)
    ctl = PruningController(model, cfg(), total_steps=10)
    backward(model, batch)
    ctl.after_backward()
    ctl.on_step(10)
    s = ctl.summary()
    assert s["total_heads"] == 8 and s["total_heads_kept"] == 8 - 6
    assert sum(s["heads_kept"]) == s["total_heads_kept"]
    assert s["total_neurons_kept"] == 128 - 12 and sum(s["neurons_kept"]) == 116
    scores = [r["score"] for r in s["head_ranking"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 8
    assert [r["kept"] for r in s["head_ranking"]] == [True] * 2 + [False] * 6
    path = plot_sensitivity(s, tmp_path / "plots" / "sensitivity.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_stop_reverts_last_event_and_freezes_schedule(bert_dir):
    model = load_model(bert_dir)
    ctl = PruningController(model, cfg(heads=0.5, protect_heads=0), total_steps=50)
    ctl.set_importance(heads=[[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    assert ctl.on_step(10)
    after_first = ctl.summary()
    assert ctl.on_step(20)
    assert ctl.summary()["total_heads_kept"] < after_first["total_heads_kept"]
    state = ctl.state_dict()
    assert ctl.stop(revert_last_event=True)
    assert ctl.summary() == {**after_first, "stopped": True, "events_done": 2}
    assert torch.equal(ctl.head_gates[0].detach(), ctl.head_mask[0].float())
    assert not ctl.on_step(40) and ctl.summary()["total_heads_kept"] == 6
    ctl.load_state_dict(state)  # the revert history survives checkpoints
    assert ctl.stop(revert_last_event=True) and ctl.summary()["total_heads_kept"] == 6
