"""Issue 33, item 6: a machine that is not idle. Training images/s of `fashion-cnn-fast` (one epoch, in a fresh
`genforge train` process, as a user runs it) alone, beside a single-threaded busy loop, and beside a second training
run of the same preset, for genforge's own choice of threads (what is free when training starts) and for all the
cores (`train.threads=N`, torch's default before), in turns, median of `--repeats` runs each. Speed is the share of
the same arm's idle images/s. Writes bench/out/busy_machine.json. About 35 minutes with 3 repeats: all the cores
beside a second run take about 6 minutes an epoch."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import record

BUSY_LOOP = [sys.executable, "-c", "while True: pass"]
PRESET = ["fashion-cnn-fast", "train.epochs=1"]


def train_images_per_s(extra: list[str]) -> tuple[float, str]:
    """One epoch in a new process: (training images/s as summary.json and meta.json say, the threads it chose)."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "genforge", "train", *PRESET, *extra, "--runs-dir", tmp, "--quiet"],
                       check=True, capture_output=True)
        run = next(Path(tmp).glob("*/summary.json")).parent
        summary, meta = (json.loads((run / name).read_text()) for name in ("summary.json", "meta.json"))
        env = json.loads((run / "env.json").read_text())
        return meta["n_train"] * summary["epochs"] / summary["train_seconds"], env.get("threads_why", "")


def beside(other: list[str] | None, extra: list[str]) -> tuple[float, str]:
    """A measurement with `other` running (started 8 s before: a training run is past its start-up by then)."""
    proc = subprocess.Popen(other, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) if other else None
    try:
        if proc is not None:
            time.sleep(8)
        return train_images_per_s(extra)
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()


def main(repeats: int) -> None:
    cores = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as other_runs:
        second_run = [sys.executable, "-m", "genforge", "train", "fashion-cnn-fast", "train.epochs=20", "--runs-dir",
                      other_runs, "--quiet"]
        conditions = {"alone": None, "busy loop": BUSY_LOOP, "second training run": second_run}
        arms = {"genforge's choice": [], f"all {cores} cores": [f"train.threads={cores}"]}
        rows = {c: {a: [] for a in arms} for c in conditions}
        chosen = {c: [] for c in conditions}
        for _ in range(repeats):
            for condition, other in conditions.items():
                for arm, extra in arms.items():  # in turns, so that a slow minute of the VM hits both arms
                    speed, why = beside(other, extra)
                    rows[condition][arm].append(speed)
                    if not extra:
                        chosen[condition].append(why)
                    print(f"{condition:20s} {arm:18s} {speed:8,.0f} images/s  {why}", flush=True)
    medians = {c: {a: statistics.median(v) for a, v in arms_.items()} for c, arms_ in rows.items()}
    kept = {c: {a: medians[c][a] / medians["alone"][a] for a in arms} for c in conditions}
    for condition in conditions:
        print(condition, {a: f"{medians[condition][a]:,.0f} images/s, {kept[condition][a]:.0%} of idle" for a in arms})
    record("busy_machine", {"preset": PRESET, "repeats": repeats, "images_per_s": rows, "median": medians,
                            "kept_of_idle": kept, "threads_chosen": chosen,
                            "goal_met": all(kept[c]["genforge's choice"] >= 0.45 for c in conditions)})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    main(parser.parse_args().repeats)
