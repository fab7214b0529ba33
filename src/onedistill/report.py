"""Write ``report.json``, ``report.md`` and the figures they refer to."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def plot_training(metrics_path: Path, out_path: Path) -> Path | None:
    """Loss terms per step and eval accuracy per epoch, from ``metrics.jsonl``."""
    if not metrics_path.is_file():
        return None
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "total" in r]
    epochs = [r for r in rows if "eval_accuracy" in r]
    if not steps:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for term in ("total", "kd", "hidden", "quant", "ce"):
        pts = [(r["step"], r[term]) for r in steps if term in r]
        if pts:
            ax1.plot(*zip(*pts, strict=True), label=term)
    ax1.set_xlabel("optimizer step")
    ax1.set_ylabel("loss (terms unweighted, total weighted)")
    ax1.set_yscale("log")
    ax1.legend()
    ax1.set_title("Loss terms")
    if epochs:
        ax2.plot([r["epoch"] for r in epochs], [r["eval_accuracy"] for r in epochs], marker="o")
        ax2.set_xlabel("epoch")
        ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax2.set_ylabel("eval accuracy")
        ax2.set_title("Student on eval")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def plot_comparison(report: dict, out_path: Path) -> Path:
    """Teacher vs student: accuracy, parameters and latency side by side."""
    t, s = report["teacher"], report["student"]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, key, title in (
        (axes[0], "accuracy", "eval accuracy"),
        (axes[1], "params", "parameters (M)"),
        (axes[2], "latency_ms_p50", "latency p50, batch 1 (ms)"),
    ):
        scale = 1e6 if key == "params" else 1
        values = [t[key] / scale, s[key] / scale]
        bars = ax.bar(["teacher", "student"], values, color=["#7a869a", "#2f7ed8"])
        ax.bar_label(bars, fmt="%.3g")
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def render_markdown(report: dict, figures: list[str]) -> str:
    """The report as a Markdown document: teacher-vs-student table, summary and figures."""
    t, s, c = report["teacher"], report["student"], report["compression"]
    lines = [
        "# onedistill report",
        "",
        f"Created {report['created']} on {report['machine']['cpu']} "
        f"({report['machine']['threads']} threads), wall time {report['wall_time_s']:.0f} s.",
        "",
        "## Teacher vs student (eval set)",
        "",
        "| | accuracy | macro-F1 | ROC-AUC | agreement | params | size MB | p50 ms | p95 ms | "
        "throughput/s (batch 32) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in (("teacher", t), ("student", s)):
        lines.append(
            f"| {name} | {_fmt(m['accuracy'])} | {_fmt(m['macro_f1'])} | "
            f"{_fmt(m.get('roc_auc'))} | "
            f"{_fmt(m.get('agreement'))} | {_fmt(m['params'])} | {_fmt(m['size_mb'], 1)} | "
            f"{_fmt(m['latency_ms_p50'], 2)} | {_fmt(m['latency_ms_p95'], 2)} | "
            f"{_fmt(m['throughput_per_s'], 1)} |"
        )
    lines += [
        "",
        f"Student has {c['params_ratio']:.1%} of the teacher's parameters and "
        f"{c['size_ratio']:.1%} of its size on disk; it is {c['speedup_p50']:.2f}x faster at "
        f"batch 1 (p50) and {c['throughput_ratio']:.2f}x in throughput. Accuracy gap "
        f"(teacher - student): {report['accuracy_gap'] * 100:+.2f} points.",
        "",
        "## Layer mapping",
        "",
        f"Strategy: {report['mapping']['strategy']}; hidden states matched as "
        f"{report['mapping']['hidden_match']}.",
        "",
        "| student layer | teacher layer | matched |",
        "|---:|---:|---|",
    ]
    matched = {s_ for s_, _ in report["mapping"]["matched"]}
    for s_layer, t_layer in report["mapping"]["student_to_teacher"].items():
        lines.append(
            f"| {s_layer} | {t_layer} | {'yes' if int(s_layer) in matched else 'skipped'} |"
        )
    tr = report["training"]
    loss = tr["loss"]
    temp = loss["temperature"]
    lines += [
        "",
        "## Training",
        "",
        f"Loss: {loss['w_kd']} x KD + {loss['w_hidden']} x hidden + {loss['w_quant']} x quant + "
        f"{loss['w_ce']} x CE; temperature {temp['start']}"
        + (f" -> {temp['end']}" if temp.get("end") else "")
        + f". LR {tr['lr']:g}, {tr['steps']} steps, best epoch {tr['best_epoch']}"
        + (" (stopped early)" if tr["stopped_early"] else "")
        + f". Hard examples (by teacher {tr['hard_examples'].get('by', 'loss')}): "
        + f"{tr['hard_examples']['count']}, each seen {tr.get('hard_oversample', 1)}x per epoch.",
        "",
        "| epoch | train loss | eval accuracy | eval macro-F1 | time s |",
        "|---:|---:|---:|---:|---:|",
    ]
    for h in tr["history"]:
        lines.append(
            f"| {h['epoch']} | {_fmt(h.get('train_total'))} | {_fmt(h.get('eval_accuracy'))} | "
            f"{_fmt(h.get('eval_macro_f1'))} | {_fmt(h.get('epoch_time_s'), 0)} |"
        )
    d = report["data"]
    lines += ["", "## Data", "", "```json", json.dumps(d, indent=2)[:4000], "```", ""]
    lines += compression_section(report)
    lines += ["## Stage times (s)", ""]
    lines += [f"- {k}: {v:.1f}" for k, v in report["stage_times_s"].items()]
    lines += ["", "## Figures", ""]
    lines += [f"![{Path(f).stem}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def compression_section(report: dict) -> list[str]:
    """One table, measured in the same run: teacher, student, pruned student, artifacts."""
    comp = report.get("compression", {})
    pruned = report.get("student_pruned")
    if "artifacts" not in comp and pruned is None:
        return []
    lines = [
        "## Compression",
        "",
        "| model | accuracy | size MB | p50 ms (batch 1) | throughput/s (batch 32) | note |",
        "|---|---:|---:|---:|---:|---|",
    ]
    rows = [
        ("teacher FP32 (torch)", report["teacher"], ""),
        ("student FP32 (torch)", report["student"], ""),
    ]
    if pruned is not None:
        p = pruned["pruning"]
        note = (
            f"{p['total_heads_kept']}/{p['total_heads']} heads, "
            f"{p['total_neurons_kept']}/{p['total_neurons']} FFN neurons kept"
        )
        rows.append(("student pruned (torch)", pruned, note))
    for name, m, note in rows:
        lines.append(
            f"| {name} | {_fmt(m.get('accuracy'))} | {_fmt(m.get('size_mb'), 1)} | "
            f"{_fmt(m.get('latency_ms_p50'), 2)} | {_fmt(m.get('throughput_per_s'), 1)} | {note} |"
        )
    for a in comp.get("artifacts", []):
        note = "chosen" if a.get("chosen") else (a.get("rejected_reason") or "")
        lines.append(
            f"| {a.get('name')} ({a.get('precision')}) | {_fmt(a.get('accuracy'))} | "
            f"{_fmt(a.get('size_mb'), 1)} | {_fmt(a.get('latency_ms_p50'), 2)} | "
            f"{_fmt(a.get('throughput_per_s'), 1)} | {note} |"
        )
    if pruned is not None:
        lines += ["", "Heads kept per layer: " + str(pruned["pruning"].get("heads_per_layer"))]
        lines += ["FFN neurons kept per layer: " + str(pruned["pruning"].get("neurons_per_layer"))]
    q = comp.get("quantization")
    if isinstance(q, dict) and q:
        lines += ["", "Quantization: " + json.dumps(q, default=str)[:600]]
    if comp.get("load_snippet"):
        lines += [
            "",
            "Load and run the chosen artifact:",
            "",
            "```python",
            comp["load_snippet"],
            "```",
        ]
    return lines + [""]


def rerender(out: Path, stage_times: dict | None = None) -> dict:
    """Re-read ``report.json`` (after a later stage merged into it) and rewrite ``report.md``."""
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    if stage_times is not None:
        report["stage_times_s"] = stage_times
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    (out / "report.md").write_text(
        render_markdown(report, report.get("figures", [])), encoding="utf-8"
    )
    return report


def write_report(out: Path, report: dict) -> None:
    """Write the JSON report, the figures and the Markdown report into ``out``."""
    figures = []
    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    if plot_training(out / "metrics.jsonl", fig_dir / "training.png"):
        figures.append("figures/training.png")
    plot_comparison(report, fig_dir / "teacher_vs_student.png")
    figures.append("figures/teacher_vs_student.png")
    for extra in report.get("figures", []):
        if extra not in figures:
            figures.append(extra)
    report["figures"] = figures
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    (out / "report.md").write_text(render_markdown(report, figures), encoding="utf-8")
