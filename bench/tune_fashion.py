"""Acceptance 1 of tuning: does a study pay, and does pruning cut its time?

Two studies of 30 trials on fashion-cnn-fast's shipped space (presets/spaces/fashion-cnn-fast.yaml), the same sampler
seed, two workers of one torch thread each: one unpruned, one with genforge's default pruner (Hyperband). Then the
shipped preset and each study's best.yaml are trained again on seeds 1-3 (the studies used seed 0) with one thread
each, two at a time, and compared on test accuracy (median of the seeds) and training seconds: the space keeps the
preset's epochs and widths, so a best config costs about what the preset costs. Writes bench/out/tune_fashion.json
after every step (--studies-only: the two studies alone; --pruner median: the pruned study with the median rule
instead, written to bench/out/tune_fashion_median.json)."""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import record

TRIALS, WORKERS, SEEDS = 30, 2, (1, 2, 3)


def study(name: str, pruner: str, runs_dir: Path) -> dict:
    """Wall time, the study's summary, and what does not depend on the machine's load: epochs trained, and how many
    trials were pruned after which epoch. The load average is kept too (the machine is shared)."""
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "genforge", "tune", "fashion-cnn-fast", "--trials", str(TRIALS),
                           "--workers", str(WORKERS), "--pruner", pruner, "--seed", "0", "--study", name,
                           "--runs-dir", str(runs_dir)])
    wall = time.perf_counter() - started
    result = json.loads((runs_dir / f"tune-{name}" / "study.json").read_text())
    rows = list(csv.DictReader((runs_dir / f"tune-{name}" / "trials.csv").open()))
    pruned_at = [float(r["epochs"]) for r in rows if r["state"] == "pruned"]  # fractions: 4 reports per epoch
    return {"exit_code": done.returncode, "wall_seconds": round(wall, 1), **result,
            "epochs_trained": round(sum(float(r["epochs"] or 0) for r in rows), 2),
            "pruned_after_epoch": {e: pruned_at.count(e) for e in sorted(set(pruned_at))},
            "trial_seconds": round(sum(float(r["seconds"] or 0) for r in rows), 1),
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def train(config: str, seed: int, runs_dir: Path) -> dict:
    out = runs_dir / f"seed{seed}-{abs(hash(config))}"
    subprocess.run([sys.executable, "-m", "genforge", "train", config, f"seed={seed}", "train.threads=1",
                    "--runs-dir", str(out), "--quiet"], check=True, capture_output=True)
    (run,) = out.glob("*/summary.json")
    summary = json.loads(run.read_text())
    return {"seed": seed, "test_accuracy": summary["test_accuracy"], "train_seconds": summary["train_seconds"]}


def seeds(config: str, runs_dir: Path) -> dict:
    with ThreadPoolExecutor(WORKERS) as pool:
        rows = list(pool.map(lambda s: train(config, s, runs_dir), SEEDS))
    return {"runs": rows, "median_test_accuracy": statistics.median(r["test_accuracy"] for r in rows),
            "median_train_seconds": statistics.median(r["train_seconds"] for r in rows)}


def main(with_seeds: bool = True, pruner: str = "hyperband") -> None:
    out = "tune_fashion" if pruner == "hyperband" else f"tune_fashion_{pruner}"
    result = {"trials": TRIALS, "workers": WORKERS, "threads_per_trial": 1, "pruner": pruner}
    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = Path(tmp)
        for name, chosen in (("unpruned", "none"), ("pruned", pruner)):
            result[name] = study(name, chosen, runs_dir)
            record(out, result)
        if with_seeds:
            result["preset"] = seeds("fashion-cnn-fast", runs_dir)
            record(out, result)
        for name in ("pruned", "unpruned") if with_seeds else ():
            if result[name]["best"]:
                result[f"{name}_best"] = seeds(result[name]["best"]["config"], runs_dir)
                record(out, result)
    unpruned, pruned = result["unpruned"], result["pruned"]
    result["pruning_wall_time_cut"] = round(1 - pruned["wall_seconds"] / unpruned["wall_seconds"], 3)
    if unpruned["best"] and pruned["best"]:
        result["best_value_gap_points"] = round(100 * (unpruned["best"]["value"] - pruned["best"]["value"]), 2)
    record(out, result)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies-only", action="store_true", help="the two studies, no retraining on seeds 1-3")
    parser.add_argument("--pruner", default="hyperband", choices=["hyperband", "median"], help="the pruned study's")
    args = parser.parse_args()
    main(with_seeds=not args.studies_only, pruner=args.pruner)
