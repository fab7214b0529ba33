import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from typer.testing import CliRunner

from conftest import make_tiny_bert, sentiment_rows, write_csv
from onedistill.cli import app
from onedistill.config import DistillConfig, LossConfig, parse_config
from onedistill.pipeline import OutputExistsError, run, select_hard_examples
from onedistill.teacher import TeacherCache
from onedistill.train import Distiller, TrainData, collate, epoch_order


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    make_tiny_bert(root / "teacher", layers=2, width=32, heads=4)
    make_tiny_bert(root / "student", layers=2, width=16, heads=2, seed=1)
    write_csv(root / "train.csv", sentiment_rows(120))
    write_csv(root / "eval.csv", sentiment_rows(40, seed=1))
    return root


def config(ws: Path, out: Path, **distill) -> dict:
    return {
        "run": {"out": str(out), "cache_dir": str(ws / "cache"), "progress": False},
        "data": {"train": str(ws / "train.csv"), "eval": str(ws / "eval.csv"), "max_length": 16},
        "teacher": {"model": str(ws / "teacher")},
        "student": {"model": str(ws / "student")},
        "distill": {"epochs": 2, "batch_size": 16, "early_stopping_patience": 0, **distill},
        "eval": {"latency_repeats": 3, "throughput_batches": 1},
    }


def test_cli_end_to_end_on_tiny_bert(workspace, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            "run",
            "--teacher",
            str(workspace / "teacher"),
            "--student",
            str(workspace / "student"),
            "--train",
            str(workspace / "train.csv"),
            "--eval",
            str(workspace / "eval.csv"),
            "--text-column",
            "text",
            "--label-column",
            "label",
            "--out",
            str(out),
            "--epochs",
            "2",
        ],
        env={"ONEDISTILL_CACHE": str(workspace / "cache")},
    )
    assert result.exit_code == 0, result.output
    for name in ("report.json", "report.md", "metrics.jsonl", "config.resolved.yaml"):
        assert (out / name).is_file(), name

    report = json.loads((out / "report.json").read_text())
    for who in ("teacher", "student"):
        for key in (
            "accuracy",
            "macro_f1",
            "params",
            "size_mb",
            "latency_ms_p50",
            "latency_ms_p95",
            "throughput_per_s",
        ):
            assert isinstance(report[who][key], (int, float)), (who, key)
    assert 0.0 <= report["student"]["agreement"] <= 1.0
    assert set(report["compression"]) >= {"params_ratio", "size_ratio", "speedup_p50"}
    assert report["mapping"]["student_to_teacher"] == {"1": 1, "2": 2}
    assert report["wall_time_s"] > 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("kd" in r and "hidden" in r and "quant" in r and "ce" in r for r in rows)

    # The student loads with plain transformers, with its tokenizer and label names.
    model = AutoModelForSequenceClassification.from_pretrained(out / "student")
    tok = AutoTokenizer.from_pretrained(out / "student")
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert model(**tok(["a good movie"], return_tensors="pt")).logits.shape == (1, 2)

    # The learned projection (16 -> 32) is not part of the saved student.
    weights = load_file(out / "student" / "model.safetensors")
    assert not any("projection" in k for k in weights)
    fresh = AutoModelForSequenceClassification.from_pretrained(workspace / "student", num_labels=2)
    assert sum(v.numel() for v in weights.values()) == sum(
        v.numel() for v in fresh.state_dict().values()
    )


def test_rerun_uses_cached_teacher_outputs(workspace, tmp_path):
    first = run(parse_config(config(workspace, tmp_path / "a", epochs=1)))
    # The SDK entry point takes a plain dict and runs the same pipeline.
    import onedistill

    second = onedistill.distill(config(workspace, tmp_path / "b", epochs=1))
    assert second["teacher"]["details"]["examples_computed"] == 0
    assert second["teacher"]["details"]["examples_from_cache"] == 160
    assert first["teacher"]["accuracy"] == second["teacher"]["accuracy"]


def test_existing_output_is_not_overwritten(workspace, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--resume"):
        run(parse_config(config(workspace, out, epochs=1)))
    assert (out / "keep.txt").read_text() == "mine"
    run(parse_config(config(workspace, out, epochs=1)), overwrite=True)
    moved = list(tmp_path.glob("run.prev-*"))
    assert len(moved) == 1 and (moved[0] / "keep.txt").read_text() == "mine"


def test_resume_matches_uninterrupted_run(workspace, tmp_path, monkeypatch):
    full = run(parse_config(config(workspace, tmp_path / "full", epochs=3)))

    original = Distiller._checkpoint

    def crash_after_first(self, epoch, *args, **kwargs):
        original(self, epoch, *args, **kwargs)
        if epoch == 0:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(Distiller, "_checkpoint", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        run(parse_config(config(workspace, tmp_path / "killed", epochs=3)))
    monkeypatch.setattr(Distiller, "_checkpoint", original)
    resumed = run(parse_config(config(workspace, tmp_path / "killed", epochs=3)), resume=True)

    a = load_file(tmp_path / "full" / "student" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "student" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    assert [h["eval_accuracy"] for h in full["training"]["history"]] == [
        h["eval_accuracy"] for h in resumed["training"]["history"]
    ]


def test_data_errors_come_before_model_loading(workspace, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("sentence,label\nfine film,positive\nbad film,negative\n")
    cfg = config(workspace, tmp_path / "out")
    cfg["data"]["train"] = str(bad)
    cfg["teacher"]["model"] = str(tmp_path / "no-such-model")
    with pytest.raises(Exception, match="column 'text' not found") as info:
        run(parse_config(cfg))
    assert "sentence" in str(info.value)


def test_teacher_cache_aligned_under_shuffling(tmp_path):
    cache = TeacherCache(tmp_path, "k")
    ids = [f"id{i}" for i in range(50)]
    logits = np.arange(100, dtype=np.float32).reshape(50, 2)
    pooled = np.repeat(np.arange(50, dtype=np.float16)[:, None, None], 3, axis=1)
    # Identical texts share an id: a repeated id in a batch, or one cached earlier, must not
    # shift the rows of the examples stored after it.
    first = ids[::2] + [ids[0]]
    cache.add(
        first, np.concatenate([logits[::2], logits[:1]]), np.concatenate([pooled[::2], pooled[:1]])
    )
    assert cache.missing(ids[1::2] + [ids[2], ids[1]]) == list(range(25))
    cache.add(
        ids[1::2] + [ids[2]],
        np.concatenate([logits[1::2], logits[2:3]]),
        np.concatenate([pooled[1::2], pooled[2:3]]),
    )
    reloaded = TeacherCache(tmp_path, "k")
    order = list(reversed(ids))
    got = reloaded.get(order)
    np.testing.assert_array_equal(got.logits, logits[::-1])
    np.testing.assert_array_equal(got.pooled[:, 0, 0], np.arange(50)[::-1])

    # The loader gathers each example's own teacher outputs, whatever the shuffle.
    from conftest import make_tokenizer

    tok = make_tokenizer(tmp_path / "tok")
    texts = [f"good movie {'fun ' * (i % 5)}" for i in range(50)]
    data = TrainData(texts, None, np.zeros(50, np.int64), logits, pooled.astype(np.float32))
    order = epoch_order(data.sample, seed=3, epoch=1)
    assert sorted(order.tolist()) == list(range(50)) and order.tolist() != list(range(50))
    batch = collate(data, order[:16], tok, 16, {"input_ids", "attention_mask"})
    np.testing.assert_array_equal(batch["teacher_logits"].numpy(), logits[order[:16]])
    np.testing.assert_array_equal(batch["teacher_hidden"][:, 0, 0].numpy(), order[:16])
    expected = tok([texts[i] for i in order[:16]], padding=True, return_tensors="pt")["input_ids"]
    assert torch.equal(batch["input_ids"], expected)


def test_gradient_accumulation_equals_one_large_batch(tmp_path, monkeypatch):
    from conftest import make_tokenizer

    # Plain SGD makes the update exactly -lr * gradient, so equal updates mean equal gradients
    # (Adam's normalisation would amplify rounding noise in near-zero gradients).
    def sgd(self):
        params = list(self.student.parameters()) + list(self.loss.projections.parameters())
        return torch.optim.SGD(params, lr=1.0)

    monkeypatch.setattr(Distiller, "_optimizer", sgd)

    tok = make_tokenizer(tmp_path / "tok")
    rows = sentiment_rows(8)
    labels = np.array([1 if r["label"] == "positive" else 0 for r in rows])
    data = TrainData(
        [r["text"] for r in rows],
        None,
        labels,
        np.random.default_rng(0).normal(size=(8, 2)).astype(np.float32),
        np.random.default_rng(1).normal(size=(8, 1, 32)).astype(np.float32),
    )

    def one_step(batch_size: int, accum: int) -> dict:
        model_dir = make_tiny_bert(tmp_path / f"m{batch_size}", width=16, heads=2)
        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
        )
        cfg = DistillConfig(
            epochs=1,
            batch_size=batch_size,
            grad_accum=accum,
            warmup_ratio=0.0,
            max_grad_norm=1e9,
            loss=LossConfig(w_kd=0.6, w_hidden=0.3, w_quant=0.1, w_ce=0.2),
        )
        torch.manual_seed(0)
        trainer = Distiller(
            model,
            tok,
            cfg,
            lr=1e-3,
            teacher_width=32,
            pairs=[2],
            max_length=16,
            seed=0,
            checkpoint_dir=tmp_path / f"ck{batch_size}",
            metrics_path=tmp_path / f"m{batch_size}.jsonl",
            evaluate=lambda m: {"accuracy": 0.0},
            show_progress=False,
        )
        trainer.fit(data)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    big = one_step(8, 1)
    small = one_step(1, 8)
    for key in big:
        torch.testing.assert_close(big[key], small[key], rtol=1e-4, atol=1e-5)


def test_hard_examples_are_highest_teacher_loss():
    logits = np.array([[5.0, -5.0], [0.0, 0.0], [-5.0, 5.0], [4.0, -4.0]], np.float32)
    labels = np.array([0, 0, 0, -1])  # row 2 is confidently wrong, row 3 is unlabelled
    hard, info = select_hard_examples(logits, labels, 0.34)
    assert hard.tolist() == [2]
    assert info["count"] == 1 and info["teacher_wrong_among_hard"] == 1.0
    # By entropy, the example the teacher is least sure of (row 1, a 50/50 call) is hardest.
    hard, info = select_hard_examples(logits, labels, 0.34, by="entropy")
    assert hard.tolist() == [1] and info["by"] == "entropy"


def test_length_grouped_order_covers_every_example_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 60, size=1000)
    sample = np.concatenate([np.arange(1000), np.arange(10)])  # ten oversampled examples
    order = epoch_order(sample, seed=1, epoch=0, lengths=lengths, group=32)
    assert sorted(order.tolist()) == sorted(sample.tolist())
    again = epoch_order(sample, seed=1, epoch=0, lengths=lengths, group=32)
    assert np.array_equal(order, again)

    # Steps hold similar lengths: far less padding than a plain shuffle.
    def padding(o):
        return sum(lengths[o[k : k + 32]].max() * len(o[k : k + 32]) for k in range(0, len(o), 32))

    plain = epoch_order(sample, seed=1, epoch=0)
    assert padding(order) < 0.7 * padding(plain)


def test_run_with_pruning_and_cpu_compression(workspace, tmp_path):
    cfg = config(workspace, tmp_path / "run", epochs=1)
    cfg["compression"] = {
        "target": "cpu",
        "prune": {"heads": 0.5, "neurons": 0.1, "protect_heads": 1, "epochs": 1, "steps": 2},
    }
    report = run(parse_config(cfg))
    out = tmp_path / "run"
    pruned = report["student_pruned"]["pruning"]
    assert pruned["total_heads_kept"] < pruned["total_heads"]
    assert pruned["total_neurons_kept"] < pruned["total_neurons"]
    assert report["student_pruned"]["params"] < report["student"]["params"]
    # Pruned weights are removed, and the model reloads from disk with its smaller shapes.
    from onedistill.compress.prune import load_student

    reloaded = load_student(out / "student-pruned")
    assert sum(p.numel() for p in reloaded.parameters()) == report["student_pruned"]["params"]
    assert (out / "figures" / "pruning.png").is_file()
    # The compression stage built and checked artifacts from the pruned student.
    assert (out / "compressed" / "model.onnx").is_file()
    artifacts = report["compression"]["artifacts"]
    assert any(a.get("chosen") for a in artifacts)
    md = (out / "report.md").read_text()
    assert "## Compression" in md and "student pruned (torch)" in md


def test_prune_guard_undoes_an_event_that_costs_too_much(tmp_path):
    from types import SimpleNamespace

    from onedistill.compress.prune import PruningController
    from onedistill.pipeline import PruneGuard

    path = make_tiny_bert(tmp_path / "m", layers=2, width=32, heads=4)
    model = AutoModelForSequenceClassification.from_pretrained(path)
    cfg = SimpleNamespace(
        heads=0.5, neurons=0.0, protect_heads=0, start=0.5, end=0.5, steps=1, max_accuracy_drop=1.0
    )
    pruner = PruningController(model, cfg, total_steps=4)
    scores = iter([0.90, 0.80])  # before pruning, then after the event: 10 points lost
    guard = PruneGuard(pruner, lambda m: {"accuracy": next(scores)}, model, max_drop=0.01)
    tok = AutoTokenizer.from_pretrained(path)
    for step in range(1, 5):
        model(**tok(["good movie"], return_tensors="pt")).logits.sum().backward()
        guard.after_backward()
        guard.on_step(step)
    assert guard.reverted_at == 2
    assert pruner.stopped
    assert pruner.summary()["total_heads_kept"] == pruner.summary()["total_heads"]


def test_compress_command_prunes_and_exports_a_finished_run(workspace, tmp_path):
    out = tmp_path / "run"
    run(parse_config(config(workspace, out, epochs=1)))
    runner = CliRunner()
    env = {"ONEDISTILL_CACHE": str(workspace / "cache")}
    result = runner.invoke(app, ["compress", str(out), "--prune"], env=env)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["student_pruned"]["params"] < report["student"]["params"]
    assert (out / "compressed" / "model.onnx").is_file()
    assert report["compression"]["params_ratio"] > 0  # the run's own figures survive the merge
    # A second compress refuses to replace what the first one made.
    again = runner.invoke(app, ["compress", str(out)], env=env)
    assert again.exit_code == 2
    assert "already exists" in again.output

    bench = runner.invoke(app, ["bench", str(out / "compressed" / "model.onnx")])
    assert bench.exit_code == 0, bench.output
    assert "p50" in bench.output or "latency" in bench.output
