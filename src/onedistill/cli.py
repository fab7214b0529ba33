"""Command line: ``onedistill run | validate | compress | bench``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler

from onedistill.config import ConfigError, parse_config, read_yaml

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
err = Console(stderr=True)

# Errors that mean "your input is wrong": shown as one clean message, exit code 2.
USER_ERRORS: tuple[type[Exception], ...] = (ConfigError,)


def _user_errors() -> tuple[type[Exception], ...]:
    from onedistill.data import DataError
    from onedistill.models import ModelError
    from onedistill.pipeline import OutputExistsError
    from onedistill.student import MappingError

    return (ConfigError, DataError, ModelError, MappingError, OutputExistsError, FileNotFoundError)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False, rich_tracebacks=False)],
    )
    logging.getLogger("onedistill").setLevel(level.upper())
    # transformers prints a progress bar per checkpoint load; keep the run log readable.
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _fail(exc: Exception) -> None:
    err.print(f"[bold red]error:[/] {exc}", highlight=False)
    raise typer.Exit(code=2)


def _set(raw: dict, path: str, value: Any) -> None:
    node = raw
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


@app.command()
def run(
    config: Annotated[
        Path | None, typer.Argument(help="YAML config; flags below override it.")
    ] = None,
    teacher: Annotated[
        str | None, typer.Option(help="Teacher: directory, hub id or pkg:NAME.")
    ] = None,
    student: Annotated[
        str | None,
        typer.Option(help="Student model (default pkg:all-minilm-l6-v2 without a config)."),
    ] = None,
    student_layers: Annotated[
        int | None, typer.Option(help="Cut a student of N layers from the teacher instead.")
    ] = None,
    train: Annotated[
        str | None, typer.Option(help="Training file (.csv .tsv .jsonl .parquet).")
    ] = None,
    eval: Annotated[str | None, typer.Option("--eval", help="Eval file.")] = None,
    text_column: Annotated[str | None, typer.Option(help="Text column.")] = None,
    text_pair_column: Annotated[str | None, typer.Option(help="Second text column.")] = None,
    label_column: Annotated[str | None, typer.Option(help="Label column.")] = None,
    out: Annotated[str | None, typer.Option(help="Output directory.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Distillation epochs.")] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue a killed run from its last checkpoint.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Move an existing run in --out aside instead of refusing.")
    ] = False,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO or WARNING.")] = "INFO",
) -> None:
    """Distill a teacher into a student end to end and write the student and a report."""
    _setup_logging(log_level)
    try:
        raw: dict[str, Any] = read_yaml(config) if config is not None else {}
        if config is None:
            if not (teacher and train and out):
                raise ConfigError(
                    "command line",
                    ["without a config file, --teacher, --train and --out are required"],
                )
            if student is None and student_layers is None:
                student = "pkg:all-minilm-l6-v2"
        flags = {
            "teacher.model": teacher,
            "student.model": student,
            "student.layers": student_layers,
            "data.train": train,
            "data.eval": eval,
            "data.text_column": text_column,
            "data.text_pair_column": text_pair_column,
            "data.label_column": label_column,
            "run.out": out,
            "distill.epochs": epochs,
        }
        for key, value in flags.items():
            if value is not None:
                _set(raw, key, value)
        if student_layers is not None and isinstance(raw.get("student"), dict):
            raw["student"].pop("model", None)
        if train is not None and isinstance(raw.get("data"), dict):
            raw["data"].pop("source", None)
        cfg = parse_config(raw, source=str(config) if config else "command line")
        if not sys.stderr.isatty():
            cfg.run.progress = False

        from onedistill.pipeline import run as run_pipeline

        report = run_pipeline(cfg, resume=resume, overwrite=overwrite)
    except _user_errors() as exc:
        _fail(exc)
    t, s = report["teacher"], report["student"]
    err.print(
        f"[bold green]done[/] in {report['wall_time_s']:.0f} s. teacher acc {t['accuracy']:.4f}, "
        f"student acc {s['accuracy']:.4f} (agreement {s['agreement']:.4f}), "
        f"{report['compression']['speedup_p50']:.1f}x faster, "
        f"{report['compression']['params_ratio']:.1%} of the parameters. "
        f"Report: {Path(cfg.run.out) / 'report.md'}"
    )


@app.command()
def validate(config: Annotated[Path, typer.Argument(help="YAML config to check.")]) -> None:
    """Check a config file and print every problem at once."""
    try:
        cfg = parse_config(read_yaml(config), source=str(config))
    except ConfigError as exc:
        err.print(f"[bold red]{config}: {len(exc.errors)} error(s)[/]")
        for line in exc.errors:
            err.print(f"  - {line}", highlight=False)
        raise typer.Exit(code=2) from None
    student = cfg.student.model or f"{cfg.student.layers} layers cut from the teacher"
    data = cfg.data.source or cfg.data.train
    typer.echo(f"{config}: OK (teacher {cfg.teacher.model}, student {student}, data {data})")


@app.command()
def compress(
    run_dir: Annotated[Path, typer.Argument(help="A finished run's output directory.")],
    target: Annotated[str | None, typer.Option(help="cpu, gpu or mobile.")] = None,
    prune: Annotated[
        bool,
        typer.Option(
            help="Prune first: further distillation with the pruning schedule (uses the run's "
            "compression.prune settings, or the defaults)."
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option(help="Move existing compressed/ or student-pruned/ aside instead.")
    ] = False,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO or WARNING.")] = "INFO",
) -> None:
    """Prune, quantize and export the student of a finished run for a deployment target.

    Compresses ``student-pruned/`` when the run has one, else ``student/``.
    """
    _setup_logging(log_level)
    from onedistill.compress.commands import compress_run_dir
    from onedistill.pipeline import prune_run_dir
    from onedistill.report import rerender

    overrides = {"target": target} if target else None
    try:
        if prune:
            prune_run_dir(run_dir, force=force)
        source = "student-pruned" if (run_dir / "student-pruned").is_dir() else "student"
        result = compress_run_dir(str(run_dir), overrides, force=force, student_subdir=source)
    except (*_user_errors(), FileExistsError, ValueError) as exc:
        _fail(exc)
    if (run_dir / "report.json").is_file() and (run_dir / "report.md").is_file():
        rerender(run_dir)
    if result.get("status") == "failed":
        err.print(f"[bold red]compression failed its budget:[/] {result.get('errors')}")
        raise typer.Exit(code=1)
    err.print(f"[bold green]done:[/] {run_dir / 'compressed'} (chosen: {result.get('chosen')})")


@app.command()
def bench(
    artifact: Annotated[str, typer.Argument(help="An .onnx/.ort file or a model directory.")],
    target: Annotated[str, typer.Option(help="cpu (gpu is not measurable without a GPU).")] = "cpu",
    threads: Annotated[int, typer.Option(help="Threads for the run.")] = 2,
    texts: Annotated[str | None, typer.Option(help="Text file, one example per line.")] = None,
) -> None:
    """Measure latency p50/p95, throughput and peak memory of any artifact."""
    _setup_logging("WARNING")
    from onedistill.compress.commands import bench_command

    try:
        bench_command(artifact, target, threads, texts)
    except _user_errors() as exc:
        _fail(exc)
    except ValueError as exc:
        _fail(exc)


if __name__ == "__main__":
    app()
