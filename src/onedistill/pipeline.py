"""``onedistill run``: the whole job as a list of stages, read top to bottom.

config -> data -> teacher -> teacher outputs (cached) -> student + layer mapping -> distill
-> evaluate -> write student and report. Each stage is a function; ``run`` only sequences them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from onedistill.config import Config, DistillConfig, LossConfig, dump_config
from onedistill.data import DataBundle, Split, load_data
from onedistill.evaluate import count_params, cpu_speed, quality, size_on_disk_mb
from onedistill.models import cache_root, fingerprint, resolve_model
from onedistill.student import (
    adaptive_mapping,
    check_mapping,
    cut_student,
    load_pretrained_student,
    resolve_mapping,
)
from onedistill.teacher import (
    LogitsOnly,
    TeacherCache,
    TeacherClassifier,
    cache_key,
    fit_head,
    load_backbone,
    load_tokenizer,
    resolve_finetune,
    run_teacher,
)
from onedistill.train import Distiller, TrainData, TrainResult, predict

log = logging.getLogger(__name__)

DEFAULT_STUDENT_LR = 5e-5


class OutputExistsError(FileExistsError):
    """The output directory already holds a run that would be overwritten."""


@dataclass
class RunState:
    """What the stages hand to each other and to the report."""

    config: Config
    out: Path
    started: float = field(default_factory=time.perf_counter)
    stage_times: dict[str, float] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


@contextmanager
def stage(state: RunState, name: str):
    """Log a stage boundary and time it."""
    log.info("== stage: %s", name)
    start = time.perf_counter()
    yield
    state.stage_times[name] = round(time.perf_counter() - start, 2)
    log.info("== stage %s done in %.1f s", name, state.stage_times[name])


def prepare_output(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber a previous run; with ``overwrite``, move it aside instead."""
    has_run = out.exists() and any(out.iterdir())
    if resume:
        if not (out / "checkpoints").is_dir():
            raise OutputExistsError(
                f"--resume: {out} holds no checkpoints to resume from; run without --resume"
            )
        return
    if has_run:
        if not overwrite:
            raise OutputExistsError(
                f"output directory {out} already holds files; pass --resume to continue that "
                "run, choose another --out, or pass --overwrite to move the old run aside"
            )
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        aside = out.with_name(f"{out.name}.prev-{stamp}")
        out.rename(aside)
        log.warning("Moved the previous run in %s to %s", out, aside)
    out.mkdir(parents=True, exist_ok=True)


def add_file_log(out: Path) -> logging.Handler:
    """Also log to ``OUT/run.log``, so a run's history stays with its results."""
    handler = logging.FileHandler(out / "run.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("onedistill").addHandler(handler)
    return handler


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so splits, shuffles and dropout repeat."""
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# Stages


def build_teacher(
    state: RunState, data: DataBundle, teacher_dir: Path | str
) -> tuple[TeacherClassifier, Any, TeacherCache, dict]:
    """Load the teacher, train its head if asked, and fill the cache of its outputs."""
    cfg = state.config
    label_names = data.label_names
    tokenizer = load_tokenizer(teacher_dir)
    finetune = resolve_finetune(teacher_dir, cfg.teacher.finetune, len(label_names))
    info: dict[str, Any] = {"model": cfg.teacher.model, "finetune": finetune}

    if finetune == "full":
        teacher_dir = finetune_teacher(state, data, teacher_dir, tokenizer)
        info["finetuned_dir"] = str(teacher_dir)
    backbone = load_backbone(teacher_dir, finetune, label_names)
    teacher = TeacherClassifier(backbone, head=None).freeze()

    # Encoder pass over every example, cached by example id across epochs and reruns.
    root = cache_root(cfg.run.cache_dir)
    cache = TeacherCache(root, cache_key(teacher_dir, finetune, cfg.data.max_length))
    splits = [("train", data.train), ("eval", data.eval)]
    if data.transfer is not None:
        splits.append(("transfer", data.transfer))
    computed = 0
    for name, split in splits:
        todo = cache.missing(split.ids)
        if not todo:
            continue
        log.info(
            "Teacher pass over %d %s examples (%d cached)", len(todo), name, len(split) - len(todo)
        )
        logits, pooled = run_teacher(
            teacher,
            tokenizer,
            [split.texts[i] for i in todo],
            [split.pairs[i] for i in todo] if split.pairs is not None else None,
            cfg.data.max_length,
            cfg.teacher.batch_size,
            description=f"teacher {name}",
            show_progress=cfg.run.progress,
        )
        cache.add([split.ids[i] for i in todo], logits, pooled)
        computed += len(todo)
    info["cache_dir"] = str(cache.dir)
    info["examples_computed"] = computed
    info["examples_from_cache"] = sum(len(s) for _, s in splits) - computed

    if finetune == "head":
        train_out = cache.get(data.train.ids)
        head, head_info = fit_head(
            train_out.pooled[:, -1].astype(np.float32),
            data.train.labels,
            len(label_names),
            cfg.run.seed,
        )
        teacher = TeacherClassifier(backbone, head=head).freeze()
        info["head"] = head_info
        torch.save(head.state_dict(), state.out / "teacher_head.pt")
    return teacher, tokenizer, cache, info


def finetune_teacher(state: RunState, data: DataBundle, teacher_dir: Path | str, tokenizer) -> Path:
    """Fine-tune the whole teacher on the labels, once; reruns reuse the saved result."""
    cfg = state.config
    lr = cfg.teacher.lr or 2e-5
    h = hashlib.sha1()
    h.update(
        f"{fingerprint(teacher_dir)}|{teacher_dir}|{lr}|{cfg.teacher.epochs}|{cfg.run.seed}".encode()
    )
    h.update("".join(data.train.ids).encode())
    h.update(data.train.labels.tobytes())
    target = cache_root(cfg.run.cache_dir) / "finetuned-teachers" / h.hexdigest()[:16]
    if (target / "config.json").is_file():
        log.info("Using the fine-tuned teacher cached in %s", target)
        return target

    model = load_backbone(teacher_dir, "full", data.label_names)
    train_cfg = DistillConfig(
        epochs=cfg.teacher.epochs,
        batch_size=cfg.distill.batch_size,
        lr=lr,
        early_stopping_patience=0,
        loss=LossConfig(w_kd=0, w_hidden=0, w_quant=0, w_ce=1),
    )
    work = state.out / "teacher-finetune"
    trainer = Distiller(
        model,
        tokenizer,
        train_cfg,
        lr=lr,
        teacher_width=model.config.hidden_size,
        pairs=[],
        max_length=cfg.data.max_length,
        seed=cfg.run.seed,
        checkpoint_dir=work / "checkpoints",
        metrics_path=work / "metrics.jsonl",
        evaluate=eval_fn(
            model_tokenizer=tokenizer, split=data.eval, max_length=cfg.data.max_length
        ),
        show_progress=cfg.run.progress,
    )
    n = len(data.train)
    trainer.fit(
        TrainData(
            data.train.texts,
            data.train.pairs,
            data.train.labels,
            teacher_logits=np.zeros((n, len(data.label_names)), np.float32),
            teacher_hidden=None,
        )
    )
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
    shutil.rmtree(work, ignore_errors=True)
    return target


def eval_fn(model_tokenizer, split: Split, max_length: int) -> Callable[[torch.nn.Module], dict]:
    """A function that scores a model on ``split`` (accuracy, macro-F1, ROC-AUC)."""

    def evaluate(model: torch.nn.Module) -> dict:
        logits = predict(model, model_tokenizer, split.texts, split.pairs, max_length)
        return quality(logits, split.labels)

    return evaluate


def select_hard_examples(
    teacher_logits: np.ndarray, labels: np.ndarray, fraction: float, by: str = "loss"
) -> tuple[np.ndarray, dict]:
    """Indices of the hardest labelled examples, by teacher cross-entropy or entropy.

    ``loss`` picks what the teacher gets most wrong (often mislabelled or ambiguous rows);
    ``entropy`` picks where the teacher is least sure, near its decision boundary, where its
    soft labels carry the most information beyond the hard label.
    """
    labelled = np.flatnonzero(labels >= 0)
    if fraction <= 0 or len(labelled) == 0:
        return np.array([], dtype=np.int64), {"fraction": fraction, "count": 0, "by": by}
    logits = teacher_logits[labelled]
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    if by == "entropy":
        score = -(np.exp(log_probs) * log_probs).sum(-1)
    else:
        score = -log_probs[np.arange(len(labelled)), labels[labelled]]
    k = max(1, int(round(fraction * len(labelled))))
    hard = labelled[np.argsort(-score, kind="stable")[:k]]
    return hard, {
        "fraction": fraction,
        "by": by,
        "count": int(k),
        "score_threshold": float(np.sort(score)[::-1][k - 1]),
        "teacher_wrong_among_hard": float((teacher_logits[hard].argmax(-1) != labels[hard]).mean()),
    }


def build_student(
    state: RunState,
    teacher: TeacherClassifier,
    teacher_dir: Path | str,
    teacher_tok,
    data: DataBundle,
) -> tuple[torch.nn.Module, Any, list[int] | None, dict]:
    """The student model and tokenizer, and the layer mapping when it is fixed in advance."""
    cfg = state.config
    t_layers = teacher.num_layers
    if cfg.student.model is not None:
        student_dir = resolve_model(cfg.student.model, cfg.run.cache_dir)
        student = load_pretrained_student(student_dir, data.label_names)
        tokenizer = load_tokenizer(student_dir)
        s_layers = student.config.num_hidden_layers
        mapping = resolve_mapping(cfg.student, s_layers, t_layers)
        info = {"model": cfg.student.model, "kind": "pretrained"}
    else:
        s_layers = cfg.student.layers
        mapping = resolve_mapping(cfg.student, s_layers, t_layers)
        # A cut student copies the teacher layers it is mapped to; adaptive cuts uniformly.
        copy_from = mapping or resolve_mapping(
            cfg.student.model_copy(update={"mapping": "uniform"}), s_layers, t_layers
        )
        student = cut_student(teacher_dir, teacher.backbone, copy_from, data.label_names)
        tokenizer = teacher_tok
        info = {"kind": "cut_from_teacher", "layers_copied": copy_from}
    info["layers"] = s_layers
    return student, tokenizer, mapping, info


def choose_adaptive_mapping(
    student: torch.nn.Module,
    tokenizer,
    data: DataBundle,
    teacher_pooled: np.ndarray,
    max_length: int,
) -> tuple[list[int], list[list[float]]]:
    """Pick each student layer's teacher layer by linear CKA on a calibration batch."""
    from onedistill.encode import accepted_inputs, tokenize
    from onedistill.losses import mean_pool

    n = min(128, len(data.train))
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(len(data.train), n, replace=False))
    inputs = tokenize(
        tokenizer,
        [data.train.texts[i] for i in idx],
        [data.train.pairs[i] for i in idx] if data.train.pairs is not None else None,
        max_length,
        accepted_inputs(student) | {"attention_mask"},
    )
    with torch.no_grad():
        student.eval()
        hidden = student(**inputs, output_hidden_states=True).hidden_states
    student_pooled = torch.stack([mean_pool(h, inputs["attention_mask"]) for h in hidden], dim=1)
    return adaptive_mapping(
        student_pooled, torch.as_tensor(teacher_pooled[idx], dtype=torch.float32)
    )


def measure(
    model: torch.nn.Module,
    tokenizer,
    accepted: set[str],
    logits: np.ndarray,
    data: DataBundle,
    state: RunState,
    saved_at: Path,
    reference: np.ndarray | None = None,
) -> dict:
    """Quality, size and CPU speed of one model, measured the same way for both models."""
    cfg = state.config
    out = quality(logits, data.eval.labels, reference)
    out["params"] = count_params(model)
    out["size_mb"] = round(size_on_disk_mb(saved_at), 2)
    out |= cpu_speed(
        model,
        tokenizer,
        data.eval.texts,
        data.eval.pairs,
        cfg.data.max_length,
        accepted,
        threads=cfg.run.threads,
        repeats=cfg.eval.latency_repeats,
        throughput_batches=cfg.eval.throughput_batches,
    )
    return out


# ---------------------------------------------------------------------------------------------
# The job


def run(config: Config, resume: bool = False, overwrite: bool = False) -> dict:
    """Distill end to end and return the report (also written to ``OUT/report.json``)."""
    from onedistill.report import write_report

    out = Path(config.run.out)
    prepare_output(out, resume, overwrite)
    handler = add_file_log(out)
    state = RunState(config=config, out=out)
    try:
        return _run(state, resume, write_report)
    finally:
        logging.getLogger("onedistill").removeHandler(handler)
        handler.close()


@dataclass
class Prepared:
    """Data and teacher outputs, ready for the student stages."""

    data: DataBundle
    teacher_dir: Path | str
    teacher: TeacherClassifier
    teacher_tok: Any
    cache: TeacherCache
    teacher_info: dict
    train_out: Any
    train_logits: np.ndarray
    eval_logits: np.ndarray
    hard: np.ndarray
    hard_info: dict


def data_and_teacher(state: RunState) -> Prepared:
    """The data and teacher stages: load and check data, then teacher outputs (cached)."""
    cfg = state.config
    out = state.out
    # Data and model references are checked before any model is loaded.
    with stage(state, "data"):
        data = load_data(cfg.data, cfg.run.seed)
        teacher_dir = resolve_model(cfg.teacher.model, cfg.run.cache_dir)
        if cfg.student.model is not None:
            resolve_model(cfg.student.model, cfg.run.cache_dir)
        log.info(
            "train %d, eval %d, transfer %d, labels %s",
            len(data.train),
            len(data.eval),
            len(data.transfer) if data.transfer is not None else 0,
            data.label_names,
        )
        write_eval_files(out, data)

    with stage(state, "teacher"):
        teacher, teacher_tok, cache, teacher_info = build_teacher(state, data, teacher_dir)
        train_out = cache.get(data.train.ids)
        eval_out = cache.get(data.eval.ids)
        train_logits = train_out.logits
        eval_logits = eval_out.logits
        if teacher.head is not None:
            train_logits = head_logits(teacher, train_out.pooled)
            eval_logits = head_logits(teacher, eval_out.pooled)
        hard, hard_info = select_hard_examples(
            train_logits, data.train.labels, cfg.teacher.hard_fraction, cfg.teacher.hard_by
        )
    return Prepared(
        data,
        teacher_dir,
        teacher,
        teacher_tok,
        cache,
        teacher_info,
        train_out,
        train_logits,
        eval_logits,
        hard,
        hard_info,
    )


def _run(state: RunState, resume: bool, write_report: Callable) -> dict:
    cfg = state.config
    out = state.out
    seed_everything(cfg.run.seed)
    torch.set_num_threads(cfg.run.threads)
    (out / "config.resolved.yaml").write_text(dump_config(cfg), encoding="utf-8")

    prep = data_and_teacher(state)
    data, teacher, teacher_tok, cache = prep.data, prep.teacher, prep.teacher_tok, prep.cache
    teacher_dir, teacher_info = prep.teacher_dir, prep.teacher_info
    train_out, train_logits, eval_logits = prep.train_out, prep.train_logits, prep.eval_logits
    hard, hard_info = prep.hard, prep.hard_info

    with stage(state, "student"):
        student, student_tok, mapping, student_info = build_student(
            state, teacher, teacher_dir, teacher_tok, data
        )
        s_layers = student.config.num_hidden_layers
        cka = None
        if mapping is None:
            mapping, cka = choose_adaptive_mapping(
                student, student_tok, data, train_out.pooled, cfg.data.max_length
            )
            check_mapping(mapping, cfg.student.skip_layers, s_layers, teacher.num_layers)
        matched = [s for s in range(1, s_layers + 1) if s not in cfg.student.skip_layers]
        if cfg.distill.loss.w_hidden == 0:
            matched = []
        mapping_info = {
            "strategy": cfg.student.mapping if isinstance(cfg.student.mapping, str) else "explicit",
            "student_to_teacher": {str(s): mapping[s - 1] for s in range(1, s_layers + 1)},
            "skip_layers": cfg.student.skip_layers,
            "matched": [[s, mapping[s - 1]] for s in matched],
            "hidden_match": "pooled sentence vectors (mean over real tokens), one learned "
            "projection per matched layer",
        }
        if cka is not None:
            mapping_info["cka"] = [[round(v, 4) for v in row] for row in cka]
        log.info("layer mapping (student -> teacher): %s", mapping_info["student_to_teacher"])

    with stage(state, "distill"):
        train_data = assemble_train_data(
            data, cache, teacher, train_logits, mapping, matched, hard, cfg
        )
        train_data.lengths = token_lengths(student_tok, train_data, cfg.data.max_length)
        lr = cfg.distill.lr or (cfg.teacher.lr / 3 if cfg.teacher.lr else DEFAULT_STUDENT_LR)
        qat = enable_qat(cfg, student)
        trainer = make_distiller(
            state, student, student_tok, teacher, data, matched, lr, "checkpoints"
        )
        result: TrainResult = trainer.fit(train_data, resume=resume)
        disable_qat(qat)

    with stage(state, "save"):
        student_dir = out / "student"
        student.save_pretrained(student_dir)
        student_tok.save_pretrained(student_dir)

    pruned_dir = pruning_info = prune_result = None
    if cfg.compression is not None and cfg.compression.prune is not None:
        with stage(state, "prune"):
            pruned_dir, pruning_info, prune_result = prune_stage(
                state, student, student_tok, teacher, data, train_data, matched, lr, resume
            )

    with stage(state, "evaluate"):
        from onedistill.encode import accepted_inputs

        teacher_report = measure(
            LogitsOnly(teacher),
            teacher_tok,
            teacher.accepted,
            eval_logits,
            data,
            state,
            Path(teacher_dir),
        )
        if teacher.head is not None:
            teacher_report["size_mb"] = round(
                teacher_report["size_mb"] + size_on_disk_mb(out / "teacher_head.pt"), 2
            )
        student = load_student_dir(student_dir)
        student_logits = predict(
            student, student_tok, data.eval.texts, data.eval.pairs, cfg.data.max_length
        )
        student_report = measure(
            student,
            student_tok,
            accepted_inputs(student),
            student_logits,
            data,
            state,
            student_dir,
            reference=eval_logits,
        )
        pruned_report = None
        if pruned_dir is not None:
            pruned_report = measure_pruned(
                state, prep, pruned_dir, student_tok, pruning_info, prune_result
            )

    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "teacher": teacher_report | {"details": teacher_info},
        "student": student_report | {"details": student_info},
        "compression": {
            "params_ratio": student_report["params"] / teacher_report["params"],
            "size_ratio": student_report["size_mb"] / teacher_report["size_mb"],
            "speedup_p50": teacher_report["latency_ms_p50"] / student_report["latency_ms_p50"],
            "throughput_ratio": student_report["throughput_per_s"]
            / teacher_report["throughput_per_s"],
        },
        "accuracy_gap": teacher_report["accuracy"] - student_report["accuracy"],
        "mapping": mapping_info,
        "training": {
            "lr": lr,
            "steps": result.steps,
            "best_epoch": result.best_epoch,
            "stopped_early": result.stopped_early,
            "history": result.history,
            "loss": cfg.distill.loss.model_dump(),
            "hard_examples": hard_info,
            "hard_oversample": cfg.teacher.hard_oversample,
            "train_examples_per_epoch": int(len(train_data.sample)),
        },
        "data": data.stats,
        "stage_times_s": state.stage_times,
        "wall_time_s": round(time.perf_counter() - state.started, 1),
        "machine": machine_info(cfg.run.threads),
    }
    if pruned_report is not None:
        report["student_pruned"] = pruned_report
        report["figures"] = ["figures/pruning.png"]
    write_report(out, report)
    if cfg.compression is not None:
        with stage(state, "compress"):
            from onedistill.compress.commands import compress_run_dir
            from onedistill.report import rerender

            source = "student-pruned" if pruned_dir is not None else "student"
            compress_run_dir(str(out), student_subdir=source, threads=cfg.run.threads)
            report = rerender(out, stage_times=state.stage_times)
    log.info(
        "teacher accuracy %.4f, student %.4f (agreement %.4f); params x%.2f, speedup p50 x%.2f",
        teacher_report["accuracy"],
        student_report["accuracy"],
        student_report["agreement"],
        report["compression"]["params_ratio"],
        report["compression"]["speedup_p50"],
    )
    return report


def enable_qat(cfg: Config, student: torch.nn.Module):
    """Fake-quantized linear weights during distillation, when configured."""
    if cfg.compression is None or not cfg.compression.qat:
        return None
    from onedistill.compress.qat import enable_fake_quant

    return enable_fake_quant(student)


def disable_qat(handle) -> None:
    """Remove fake quantization, leaving the trained float weights."""
    if handle is not None:
        from onedistill.compress.qat import disable_fake_quant

        disable_fake_quant(handle)


def make_distiller(
    state: RunState,
    student: torch.nn.Module,
    tokenizer,
    teacher: TeacherClassifier,
    data: DataBundle,
    matched: list[int],
    lr: float,
    checkpoints: str,
    distill_cfg: DistillConfig | None = None,
    **kwargs: Any,
) -> Distiller:
    """A Distiller wired to this run's output directory, eval data and teacher."""
    cfg = state.config
    return Distiller(
        student,
        tokenizer,
        distill_cfg or cfg.distill,
        lr=lr,
        teacher_width=teacher.width,
        pairs=matched,
        max_length=cfg.data.max_length,
        seed=cfg.run.seed,
        checkpoint_dir=state.out / checkpoints,
        metrics_path=state.out / "metrics.jsonl",
        evaluate=eval_fn(tokenizer, data.eval, cfg.data.max_length),
        assert_teacher_frozen=teacher.assert_frozen,
        show_progress=cfg.run.progress,
        **kwargs,
    )


def prune_stage(
    state: RunState,
    student: torch.nn.Module,
    tokenizer,
    teacher: TeacherClassifier,
    data: DataBundle,
    train_data: TrainData,
    matched: list[int],
    lr: float,
    resume: bool,
) -> tuple[Path, dict, TrainResult]:
    """Keep distilling while heads and neurons are pruned by gradient sensitivity.

    The distilled student is the starting point; the schedule runs over ``prune.epochs`` more
    epochs, so the student recovers between and after pruning events. The pruned weights are
    removed (not masked) and the model is saved to ``OUT/student-pruned``.
    """
    from onedistill.compress.prune import PruningController, plot_sensitivity, save_pruned

    cfg = state.config
    prune_cfg = cfg.compression.prune
    distill_cfg = cfg.distill.model_copy(
        update={"epochs": prune_cfg.epochs, "early_stopping_patience": 0}
    )
    total = Distiller.total_steps(len(train_data.sample), distill_cfg)
    pruner = PruningController(student, prune_cfg, total)
    log.info("Pruning events at steps %s of %d", pruner.event_steps(), total)
    qat = enable_qat(cfg, student)
    trainer = make_distiller(
        state,
        student,
        tokenizer,
        teacher,
        data,
        matched,
        lr,
        "checkpoints-prune",
        distill_cfg=distill_cfg,
        callbacks=[pruner],
        # Only epochs after the last pruning event describe the final structure.
        best_from_step=max(pruner.event_steps()),
    )
    resume_prune = resume and any((state.out / "checkpoints-prune").glob("epoch-*.pt"))
    result = trainer.fit(train_data, resume=resume_prune)
    disable_qat(qat)
    summary = pruner.summary()
    pruner.finalize()
    target = state.out / "student-pruned"
    save_pruned(student, tokenizer, target)
    (state.out / "figures").mkdir(exist_ok=True)
    plot_sensitivity(summary, state.out / "figures" / "pruning.png")
    log.info(
        "Pruned to %d/%d heads and %d/%d FFN neurons",
        summary["total_heads_kept"],
        summary["total_heads"],
        summary["total_neurons_kept"],
        summary["total_neurons"],
    )
    return target, summary, result


class PruneGuard:
    """Stops the pruning schedule when an event costs more accuracy than allowed.

    After each pruning event the student is evaluated; if its eval accuracy fell more than
    ``max_drop`` below the unpruned student's, the last event is undone and pruning stops.
    Training then continues, so the student still recovers from the events that were kept.
    """

    def __init__(self, pruner, evaluate: Callable, student: torch.nn.Module, max_drop: float):
        self.pruner = pruner
        self.evaluate = evaluate
        self.student = student
        self.max_drop = max_drop
        self.baseline: float | None = None
        self.reverted_at: int | None = None

    def after_backward(self) -> None:
        """Pass gradients on to the pruner's importance scores."""
        self.pruner.after_backward()

    def on_step(self, step: int) -> bool:
        """Advance the schedule; undo an event that costs too much accuracy."""
        if self.baseline is None:
            self.baseline = self.evaluate(self.student)["accuracy"]
        if self.pruner.stopped or not self.pruner.on_step(step):
            return False
        accuracy = self.evaluate(self.student)["accuracy"]
        self.student.train()
        if accuracy < self.baseline - self.max_drop:
            self.pruner.stop(revert_last_event=True)
            self.reverted_at = step
            log.warning(
                "Pruning stopped at step %d: eval accuracy %.4f is more than %.1f points below "
                "the unpruned %.4f; the last event was undone",
                step,
                accuracy,
                self.max_drop * 100,
                self.baseline,
            )
        return True

    def state_dict(self) -> dict:
        """Pruner state and the unpruned baseline, for resuming."""
        return {"pruner": self.pruner.state_dict(), "baseline": self.baseline}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` saved."""
        self.pruner.load_state_dict(state["pruner"])
        self.baseline = state["baseline"]


def measure_pruned(
    state: RunState, prep: Prepared, pruned_dir: Path, tokenizer, info: dict, result: TrainResult
) -> dict:
    """The pruned student measured like teacher and student, plus what pruning kept."""
    from onedistill.encode import accepted_inputs

    cfg, data = state.config, prep.data
    pruned = load_student_dir(pruned_dir)
    logits = predict(pruned, tokenizer, data.eval.texts, data.eval.pairs, cfg.data.max_length)
    report = measure(
        pruned,
        tokenizer,
        accepted_inputs(pruned),
        logits,
        data,
        state,
        pruned_dir,
        reference=prep.eval_logits,
    )
    report["pruning"] = info
    report["training"] = {"best_epoch": result.best_epoch, "history": result.history}
    return report


def prune_run_dir(run_dir: Path, overrides: dict | None = None, force: bool = False) -> dict:
    """Prune the student of a finished run, with further distillation so it recovers.

    Reads the run's resolved config, reuses its cached teacher outputs, writes
    ``RUN_DIR/student-pruned`` and adds ``student_pruned`` to the run's report.
    """
    from onedistill.compress.config import CompressionConfig, PruneConfig
    from onedistill.config import load_config
    from onedistill.report import rerender

    run_dir = Path(run_dir)
    report_path = run_dir / "report.json"
    if not report_path.is_file() or not (run_dir / "student").is_dir():
        raise FileNotFoundError(f"{run_dir} is not a finished run (no report.json or student/)")
    target = run_dir / "student-pruned"
    if target.exists():
        if not force:
            raise OutputExistsError(
                f"{target} already exists; pass --force to move it aside and prune again"
            )
        target.rename(target.with_name(f"student-pruned.prev-{datetime.now():%Y%m%d-%H%M%S}"))
    cfg = load_config(run_dir / "config.resolved.yaml")
    comp = cfg.compression or CompressionConfig()
    prune = comp.prune or PruneConfig()
    if overrides:
        prune = PruneConfig.model_validate(prune.model_dump() | overrides)
    cfg.compression = comp.model_copy(update={"prune": prune})

    state = RunState(config=cfg, out=run_dir)
    handler = add_file_log(run_dir)
    try:
        seed_everything(cfg.run.seed)
        torch.set_num_threads(cfg.run.threads)
        prep = data_and_teacher(state)
        report = json.loads(report_path.read_text(encoding="utf-8"))
        student = load_student_dir(run_dir / "student")
        tokenizer = load_tokenizer(run_dir / "student")
        layers = student.config.num_hidden_layers
        mapping = [report["mapping"]["student_to_teacher"][str(s)] for s in range(1, layers + 1)]
        matched = [s for s, _ in report["mapping"]["matched"]]
        train_data = assemble_train_data(
            prep.data, prep.cache, prep.teacher, prep.train_logits, mapping, matched, prep.hard, cfg
        )
        train_data.lengths = token_lengths(tokenizer, train_data, cfg.data.max_length)
        with stage(state, "prune"):
            pruned_dir, info, result = prune_stage(
                state,
                student,
                tokenizer,
                prep.teacher,
                prep.data,
                train_data,
                matched,
                report["training"]["lr"],
                resume=False,
            )
        with stage(state, "evaluate pruned"):
            report["student_pruned"] = measure_pruned(
                state, prep, pruned_dir, tokenizer, info, result
            )
        report["figures"] = sorted(set(report.get("figures", [])) | {"figures/pruning.png"})
        report["stage_times_s"] = report.get("stage_times_s", {}) | state.stage_times
        report_path.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
        return rerender(run_dir)
    finally:
        logging.getLogger("onedistill").removeHandler(handler)
        handler.close()


def load_student_dir(path: Path) -> torch.nn.Module:
    """A saved student, plain or pruned, in eval mode."""
    from onedistill.compress.prune import load_student

    return load_student(path).eval()


def head_logits(teacher: TeacherClassifier, pooled: np.ndarray) -> np.ndarray:
    """Teacher logits from cached pooled embeddings and the trained head (no encoder pass)."""
    x = torch.nn.functional.normalize(torch.as_tensor(pooled[:, -1], dtype=torch.float32), dim=-1)
    with torch.no_grad():
        return teacher.head(x).numpy()


def assemble_train_data(
    data: DataBundle,
    cache: TeacherCache,
    teacher: TeacherClassifier,
    train_logits: np.ndarray,
    mapping: list[int],
    matched: list[int],
    hard: np.ndarray,
    cfg: Config,
) -> TrainData:
    """Training rows with their teacher outputs, plus transfer text and hard-example copies."""
    texts, pairs = list(data.train.texts), data.train.pairs
    labels = data.train.labels
    pooled = cache.get(data.train.ids).pooled
    logits = train_logits
    if data.transfer is not None and len(data.transfer):
        tr = cache.get(data.transfer.ids)
        tr_logits = head_logits(teacher, tr.pooled) if teacher.head is not None else tr.logits
        texts += data.transfer.texts
        if pairs is not None:
            pairs = list(pairs) + (data.transfer.pairs or [""] * len(data.transfer))
        labels = np.concatenate([labels, data.transfer.labels])
        logits = np.concatenate([logits, tr_logits])
        pooled = np.concatenate([pooled, tr.pooled])
    hidden = pooled[:, [mapping[s - 1] for s in matched]] if matched else None
    extra = (
        np.repeat(hard, cfg.teacher.hard_oversample - 1) if len(hard) else np.array([], np.int64)
    )
    sample = np.concatenate([np.arange(len(texts)), extra]).astype(np.int64)
    return TrainData(texts, pairs, labels, logits, hidden, sample=sample)


def token_lengths(tokenizer, data: TrainData, max_length: int) -> np.ndarray:
    """Token count of every training row, for length-grouped batches."""
    enc = tokenizer(data.texts, data.pairs, truncation=True, max_length=max_length)
    return np.array([len(ids) for ids in enc["input_ids"]], dtype=np.int64)


def write_eval_files(out: Path, data: DataBundle, calibration: int = 256) -> None:
    """Eval rows and a calibration sample, so later stages can work on a finished run."""
    with (out / "eval.jsonl").open("w", encoding="utf-8") as f:
        for i in range(len(data.eval)):
            pair = data.eval.pairs[i] if data.eval.pairs is not None else None
            row = {"text": data.eval.texts[i], "pair": pair, "label": int(data.eval.labels[i])}
            f.write(json.dumps(row) + "\n")
    rng = np.random.default_rng(0)
    idx = rng.choice(len(data.train), min(calibration, len(data.train)), replace=False)
    with (out / "calibration.jsonl").open("w", encoding="utf-8") as f:
        for i in sorted(idx):
            pair = data.train.pairs[i] if data.train.pairs is not None else None
            f.write(json.dumps({"text": data.train.texts[i], "pair": pair}) + "\n")


def machine_info(threads: int) -> dict:
    """CPU model, core count and versions, recorded with every report."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
