"""Shared by the tests: the real command line in a subprocess, and quick training runs."""

import os
import subprocess
import sys
from pathlib import Path


def genforge_cli(*args, cache=None, cwd=None) -> subprocess.CompletedProcess:
    """Run the real command line in a subprocess, one torch thread, optionally with a private cache."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({"GENFORGE_CACHE": str(cache)} if cache else {})}
    return subprocess.run([sys.executable, "-m", "genforge", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


QUICK_GENERATOR = ["train.threads=1", "data.train_subset=1024", "train.epochs=1", "eval.samples=300", "eval.grid=16"]


def train_run(parent: Path, preset: str, *overrides, cache=None) -> Path:
    result = genforge_cli("train", preset, *overrides, "--runs-dir", str(parent), "--quiet", cache=cache)
    assert result.returncode == 0, result.stderr
    (run,) = parent.iterdir()
    return run
