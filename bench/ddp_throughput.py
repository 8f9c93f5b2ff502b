"""Data-parallel cost where it cannot gain (issue 19, acceptance 5): fashion-cnn-fast training images per second,
1 process x 2 threads vs `--nproc 2` (2 gloo processes x 1 thread), interleaved in one run, median of REPS each;
1 process x 1 thread beside them for scale, and the machine's 1-minute load average before each run (the machine is
shared: two torch threads on two busy cores slow down far more than one, /work/shared/DEPENDENCIES.md).

Each run is the real command line (`genforge train fashion-cnn-fast train.epochs=1 ...`) in a subprocess; the rate
is the training images of the epoch over summary.json's train_seconds (the epoch's steps and its validation, both
launches alike; start-up, the test evaluation and the report are outside it)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import record

REPS = 5
COMMON = ["fashion-cnn-fast", "train.epochs=1", "--quiet"]


def _rate(extra: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "genforge", "train", *COMMON, f"train.threads={threads}", *extra,
                        "--runs-dir", tmp], env=env, check=True, capture_output=True, timeout=900)
        (run,) = [p for p in Path(tmp).iterdir() if not p.name.startswith(".")]
        summary = json.loads((run / "summary.json").read_text())
        meta = json.loads((run / "meta.json").read_text())
    batch = 256  # the preset's global batch
    images = summary["steps"] * batch
    assert images <= meta["n_train"]
    return images / summary["train_seconds"]


def main() -> None:
    single, ddp, one, load = [], [], [], []
    for _ in range(REPS):  # interleaved, so a change in the machine's load hits all alike
        load.append(os.getloadavg()[0])
        single.append(_rate([], threads=2))
        load.append(os.getloadavg()[0])
        ddp.append(_rate(["--nproc", "2"], threads=1))
        load.append(os.getloadavg()[0])
        one.append(_rate([], threads=1))
    result = {"command": "python bench/ddp_throughput.py", "preset": "fashion-cnn-fast, 1 epoch",
              "single_2_threads_images_per_s": single, "ddp_2x1_images_per_s": ddp,
              "single_1_thread_images_per_s": one, "load_average_before_each": load,
              "median_single": statistics.median(single), "median_ddp": statistics.median(ddp),
              "median_single_1_thread": statistics.median(one),
              "ratio_ddp_over_single": statistics.median(ddp) / statistics.median(single), "goal": 0.9}
    record("ddp_throughput", result)


if __name__ == "__main__":
    main()
