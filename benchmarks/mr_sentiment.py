"""Benchmark the default example against its targets, and against hard-label fine-tuning.

Runs, each as a separate `onedistill` process so wall time and peak memory are the user's:

1. the default example with an empty cache (first run: teacher pass included);
2. the same again with the teacher outputs cached (rerun);
3. the same student fine-tuned on the labels only, same data and epochs (baseline);
4. optionally (--compress) `onedistill compress` on the distilled run, for the CPU target.

Prints a table, checks the targets, and appends the results to benchmarks/results.jsonl.

    .venv/bin/python benchmarks/mr_sentiment.py [--skip-cold] [--compress]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "mr-sentiment.yaml"
CLI = [sys.executable, "-m", "onedistill.cli"]


def run_cli(args: list[str], env: dict) -> tuple[float, float]:
    """Run the CLI; return wall seconds and the peak RSS of that child in GB."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run(CLI + args, check=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the max over all children so far; runs go from small to large
    # only by chance, so report it together with the note that it is a running maximum.
    return wall, max(peak_kb, before) / 1024 / 1024


def write_config(base: dict, out: Path, path: Path, **overrides) -> Path:
    cfg = json.loads(json.dumps(base))
    cfg["run"]["out"] = str(out)
    for dotted, value in overrides.items():
        node = cfg
        keys = dotted.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_variants(base: dict, out: Path, env: dict) -> dict:
    """The example with one choice changed at a time; accuracy, size and speed of each."""
    variants = {
        "w_ce=0": {"distill__loss": {**base["distill"]["loss"], "w_ce": 0.0}},
        "w_ce=0.5": {"distill__loss": {**base["distill"]["loss"], "w_ce": 0.5}},
        "cut 2 layers from teacher": {"student": {"layers": 2, "mapping": "uniform"}},
    }
    found = {}
    for name, overrides in variants.items():
        slug = name.replace(" ", "-").replace("=", "")
        cfg = write_config(base, out / slug, out / f"{slug}.yaml", **overrides)
        wall, _ = run_cli(["run", str(cfg)], env)
        rep = json.loads((out / slug / "report.json").read_text())
        s = rep["student"]
        found[name] = {
            "accuracy": s["accuracy"],
            "agreement": s["agreement"],
            "params": s["params"],
            "latency_ms_p50": s["latency_ms_p50"],
            "wall_s": round(wall, 1),
        }
    return found


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-cold", action="store_true", help="Reuse the normal cache.")
    parser.add_argument("--compress", action="store_true", help="Also compress for the CPU.")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench"))
    parser.add_argument(
        "--variants",
        action="store_true",
        help="Also run the variants behind the example's choices: w_ce 0 and 0.5, and a "
        "2-layer student cut from the teacher.",
    )
    parser.add_argument("--skip-main", action="store_true", help="Only run --variants.")
    args = parser.parse_args()

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) / stamp
    out.mkdir(parents=True)
    base = yaml.safe_load(EXAMPLE.read_text())
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    results: dict = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    results["machine"] = {"cpu": cpu_name(), "cores": os.cpu_count()}

    if not args.skip_cold:
        env_cold = dict(env, ONEDISTILL_CACHE=tempfile.mkdtemp(prefix="onedistill-cold-"))
        cfg = write_config(base, out / "cold", out / "cold.yaml")
        wall, peak = run_cli(["run", str(cfg)], env_cold)
        results["cold"] = {"wall_s": round(wall, 1), "peak_rss_gb": round(peak, 2)}
        env = env_cold  # the rerun and baseline share the cache the cold run filled

    if args.skip_main:
        results["variants"] = run_variants(base, out, env)
        print(json.dumps(results, indent=2))
        with (ROOT / "benchmarks" / "results.jsonl").open("a") as f:
            f.write(json.dumps(results) + "\n")
        return

    cfg = write_config(base, out / "distill", out / "distill.yaml")
    wall, peak = run_cli(["run", str(cfg)], env)
    distill = json.loads((out / "distill" / "report.json").read_text())
    results["rerun"] = {"wall_s": round(wall, 1), "peak_rss_gb": round(peak, 2)}

    cfg = write_config(
        base,
        out / "labels-only",
        out / "labels.yaml",
        distill__loss={"w_kd": 0.0, "w_hidden": 0.0, "w_quant": 0.0, "w_ce": 1.0},
        teacher__hard_oversample=1,
    )
    wall, _ = run_cli(["run", str(cfg)], env)
    labels_only = json.loads((out / "labels-only" / "report.json").read_text())
    results["labels_only_wall_s"] = round(wall, 1)

    t, s, b = distill["teacher"], distill["student"], labels_only["student"]
    results["teacher"] = {k: t[k] for k in ("accuracy", "macro_f1", "params", "latency_ms_p50")}
    keys = ("accuracy", "macro_f1", "agreement", "params", "latency_ms_p50")
    results["student"] = {k: s[k] for k in keys}
    results["labels_only"] = {k: b[k] for k in ("accuracy", "macro_f1", "agreement")}
    results["compression"] = distill["compression"]

    if args.compress:
        start = time.perf_counter()
        subprocess.run(CLI + ["compress", str(out / "distill")], check=True, env=env, cwd=ROOT)
        comp = json.loads((out / "distill" / "report.json").read_text())["compression"]
        chosen = next(a for a in comp["artifacts"] if a.get("chosen"))
        results["compressed"] = {
            "wall_s": round(time.perf_counter() - start, 1),
            "chosen": chosen["name"],
            "accuracy": chosen["accuracy"],
            "size_mb": chosen["size_mb"],
            "latency_ms_p50": chosen["latency_ms_p50"],
            "speedup_vs_teacher": t["latency_ms_p50"] / chosen["latency_ms_p50"],
            "size_ratio_vs_teacher": t["size_mb"] / chosen["size_mb"],
        }

    if args.variants:
        results["variants"] = run_variants(base, out, env)

    checks = {
        "student within 1.5 points of teacher": t["accuracy"] - s["accuracy"] <= 0.015,
        "latency p50 at least 3x better": distill["compression"]["speedup_p50"] >= 3,
        "at most a third of the parameters": distill["compression"]["params_ratio"] <= 1 / 3,
        "distillation beats labels only": s["accuracy"] > b["accuracy"],
        "rerun within 8 minutes": results["rerun"]["wall_s"] <= 480,
    }
    if "cold" in results:
        checks["first run within 15 minutes"] = results["cold"]["wall_s"] <= 900
        checks["peak memory under 6 GB"] = results["cold"]["peak_rss_gb"] < 6
    if "compressed" in results:
        c = results["compressed"]
        checks["artifact 5x faster than teacher"] = c["speedup_vs_teacher"] >= 5
        checks["artifact 6x smaller than teacher"] = c["size_ratio_vs_teacher"] >= 6
        checks["artifact within 1.5 points of teacher"] = t["accuracy"] - c["accuracy"] <= 0.015
        checks["INT8 costs at most 0.5 point"] = s["accuracy"] - c["accuracy"] <= 0.005
    results["checks"] = checks
    results["run_dir"] = str(out)

    print(json.dumps(results, indent=2))
    with (ROOT / "benchmarks" / "results.jsonl").open("a") as f:
        f.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
