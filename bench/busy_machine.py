"""Issue 33, item 6: a machine that is not idle.

Training (`--part training`): images/s of `fashion-cnn-fast` (one epoch, in a fresh `genforge train` process, as a
user runs it) alone, beside a single-threaded busy loop, and beside a second training run of the same preset, for
genforge's own choice of threads (what is free when training starts) and for all the cores (`train.threads=N`,
torch's default before), in turns, median of `--repeats` runs each. Speed is the share of the same arm's idle
images/s. Goal: >= 45% of idle beside one other busy process. About 35 minutes with 3 repeats: all the cores beside
a second run take about 6 minutes an epoch.

Serving (`--part serving`): classify p50/p99 of `genforge serve` on a one-epoch fashion-cnn-fast run (one 28x28
image per request, wrk with 1 thread, at 1 connection and at 16 keep-alive connections, --seconds each) alone, beside
the busy loop and beside a training run, in turns, median of `--repeats` rounds. Goal: p99 <= 3x its idle value.
The other process starts 8 s before wrk and is killed after it. About 3 minutes with 3 repeats.

Writes bench/out/busy_machine.json (the parts run, merged into what an earlier run of the other part wrote)."""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import OUT, record, wait_ready
from serve_load import _start, _stop, wrk_phase

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


def beside(other: list[str] | None, measure, *args):
    """measure(*args) with `other` running (started 8 s before: a training run is past its start-up by then)."""
    proc = subprocess.Popen(other, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) if other else None
    try:
        if proc is not None:
            time.sleep(8)
        return measure(*args)
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()


def others(folder: str) -> dict[str, list[str] | None]:
    """The conditions: nothing else, a single-threaded busy loop, a second training run (of more epochs than any
    measurement lasts; genforge picks its threads as it would for a user)."""
    second_run = [sys.executable, "-m", "genforge", "train", "fashion-cnn-fast", "train.epochs=20", "--runs-dir",
                  folder, "--quiet"]
    return {"alone": None, "busy loop": BUSY_LOOP, "second training run": second_run}


def training(repeats: int) -> dict:
    cores = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as other_runs:
        conditions = others(other_runs)
        arms = {"genforge's choice": [], f"all {cores} cores": [f"train.threads={cores}"]}
        rows = {c: {a: [] for a in arms} for c in conditions}
        chosen = {c: [] for c in conditions}
        for _ in range(repeats):
            for condition, other in conditions.items():
                for arm, extra in arms.items():  # in turns, so that a slow minute of the VM hits both arms
                    speed, why = beside(other, train_images_per_s, extra)
                    rows[condition][arm].append(speed)
                    if not extra:
                        chosen[condition].append(why)
                    print(f"{condition:20s} {arm:18s} {speed:8,.0f} images/s  {why}", flush=True)
    medians = {c: {a: statistics.median(v) for a, v in arms_.items()} for c, arms_ in rows.items()}
    kept = {c: {a: medians[c][a] / medians["alone"][a] for a in arms} for c in conditions}
    for condition in conditions:
        print(condition, {a: f"{medians[condition][a]:,.0f} images/s, {kept[condition][a]:.0%} of idle" for a in arms})
    return {"preset": PRESET, "repeats": repeats, "images_per_s": rows, "median": medians, "kept_of_idle": kept,
            "threads_chosen": chosen, "goal_met": all(kept[c]["genforge's choice"] >= 0.45 for c in conditions)}


def serving(repeats: int, seconds: float, port: int) -> dict:
    """classify p50/p99 under each condition, at 1 and 16 connections; the server runs throughout, as a user's does."""
    base = f"http://127.0.0.1:{port}"
    image = json.dumps({"inputs": [[[(x * y) % 256 for x in range(28)] for y in range(28)]]}).encode()
    connections = (1, 16)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "genforge", "train", *PRESET, "--runs-dir", f"{tmp}/served", "--quiet"],
                       check=True, capture_output=True)
        run = str(next(Path(f"{tmp}/served").iterdir()))
        server = _start([sys.executable, "-m", "genforge", "serve", run, "--port", str(port)])
        try:
            wait_ready(f"{base}/readyz", server)
            import httpx  # the bench extra's

            url = f"{base}/v1/models/{httpx.get(f'{base}/v1/models').json()['models'][0]['name']}/classify"
            wrk_phase(url, "POST", image, 16, 2, 1)  # warm-up: the first requests pay for lazy set-up
            conditions = others(f"{tmp}/others")
            rows = {c: {n: [] for n in connections} for c in conditions}
            for _ in range(repeats):
                for condition, other in conditions.items():
                    for n in connections:
                        phase = beside(other, wrk_phase, url, "POST", image, n, seconds, 1)
                        if phase["errors"]:
                            raise RuntimeError(f"{condition}, {n} connections: errors {phase['errors']}")
                        rows[condition][n].append(phase)
                        print(f"{condition:20s} {n:2d} connections  {phase['ok_per_s']:7,.0f} req/s  "
                              f"p50 {phase['p50_ms']:6.2f} ms  p99 {phase['p99_ms']:6.2f} ms", flush=True)
        finally:
            _stop(server)
    median = {c: {n: {k: statistics.median(p[k] for p in phases) for k in ("ok_per_s", "p50_ms", "p99_ms")}
                  for n, phases in by_n.items()} for c, by_n in rows.items()}
    p99_of_idle = {c: {n: median[c][n]["p99_ms"] / median["alone"][n]["p99_ms"] for n in connections}
                   for c in conditions}
    for condition in conditions:
        print(condition, {f"{n} connections": f"p99 {median[condition][n]['p99_ms']:.2f} ms, "
                          f"{p99_of_idle[condition][n]:.2f}x idle" for n in connections})
    return {"preset": PRESET, "repeats": repeats, "seconds": seconds, "client": "wrk -t 1", "phases": rows,
            "median": median, "p99_of_idle": p99_of_idle,
            "goal_met": all(r <= 3 for by_n in p99_of_idle.values() for r in by_n.values())}


def main(part: str, repeats: int, seconds: float, port: int) -> None:
    earlier = OUT / "busy_machine.json"
    result = json.loads(earlier.read_text()) if earlier.is_file() else {}
    result = {k: v for k, v in result.items() if k in ("training", "serving")}
    if part in ("training", "both"):
        result["training"] = training(repeats)
    if part in ("serving", "both"):
        if shutil.which("wrk") is None:
            sys.exit("error: wrk is not installed; install it with: apt-get install -y wrk")
        result["serving"] = serving(repeats, seconds, port)
    record("busy_machine", result)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["training", "serving", "both"], default="both")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each serving phase")
    parser.add_argument("--port", type=int, default=8790)
    args = parser.parse_args()
    main(args.part, args.repeats, args.seconds, args.port)
