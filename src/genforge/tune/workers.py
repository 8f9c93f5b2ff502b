"""--workers K: K processes on this machine, each `genforge tune` on the same storage and study with its share of the
trials. The storage URL, which may carry a password, goes to them in the environment (STORAGE_ENV), not on their
command lines, which every user of the machine can read."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from genforge.tune.plan import Plan

STORAGE_ENV = "GENFORGE_TUNE_STORAGE"  # --storage's environment variable: how --workers hands the URL to its processes


def worker_command(plan: Plan, trials: int, timeout: float | None, worker: int, runs_dir: Path,
                   space_path: Path) -> list[str]:
    """A worker's command line; the storage URL goes in its environment (STORAGE_ENV): a command line is readable by
    every user of the machine (ps, /proc/PID/cmdline), a process's environment by its user only."""
    return [sys.executable, "-m", "genforge", "tune", plan.source, *plan.overrides, "--trials", str(trials),
            "--space", str(space_path), "--study", plan.study, "--metric", plan.metric,
            "--direction", plan.direction, "--pruner", str(plan.pruner), "--runs-dir", str(runs_dir),
            "--heartbeat", str(plan.heartbeat), "--reports-per-epoch", str(plan.reports_per_epoch),
            "--worker-index", str(worker),
            *(["--seed", str(plan.seed)] if plan.seed is not None else []),
            *(["--threads", str(plan.threads)] if plan.threads else []),
            *(["--timeout", str(timeout)] if timeout else [])]


def run_workers(plan: Plan, trials: int, timeout: float | None, workers: int, runs_dir: Path,
                space_path: Path) -> dict:
    """K worker processes on the same storage and study, the trials split between them; Ctrl-C reaches them all
    (the terminal sends it to the process group; a signal sent to this process alone is passed on)."""
    shares = [trials // workers + (i < trials % workers) for i in range(workers)]
    env = {**os.environ, STORAGE_ENV: plan.storage}
    procs = [subprocess.Popen(worker_command(plan, share, timeout, i, runs_dir, space_path), env=env)
             for i, share in enumerate(shares) if share]
    interrupted = False
    while True:
        try:
            for proc in procs:
                proc.wait()
            break
        except KeyboardInterrupt:
            interrupted = True
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
    codes = [proc.returncode for proc in procs]
    failed = [(i, code) for i, code in enumerate(codes) if code not in (0, 130)]
    return {"interrupted": interrupted or 130 in codes, "failed": failed}
