"""Shared by the benchmarks: train a genforge preset in-process (its summary, or the summary and the model),
wait for a server to be ready, describe the machine, and write bench/out/<name>.json."""

from __future__ import annotations

import json
import platform
import subprocess
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from genforge import rundir, runs
from genforge.config import load_config
from genforge.training import train

OUT = Path(__file__).resolve().parent / "out"


def wait_ready(url: str, proc: subprocess.Popen, seconds: float = 180) -> None:
    """Until GET url answers 200 (a server's /readyz); an error if the server exits first or takes longer."""
    import httpx  # the bench extra's; only the serving benchmarks need it

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} was not ready after {seconds:g} s")


def train_preset(preset: str, overrides: list[str] = ()) -> dict:
    cfg = load_config(preset, list(overrides))
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = rundir.create_run(tmp, cfg.name, cfg)
        return train(cfg, run_dir, quiet=True)


def train_and_load(preset: str, overrides: list[str] = ()) -> tuple[dict, torch.nn.Module]:
    """Train a preset in a throw-away run dir; (summary, the trained model in eval mode, fp32)."""
    cfg = load_config(preset, list(overrides))
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = rundir.create_run(tmp, cfg.name, cfg)
        summary = train(cfg, run_dir, quiet=True)
        return summary, runs.load_run(run_dir).model.eval()


def machine() -> str:
    cpu = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True, text=True)
    return f"{cpu.stdout.strip() or platform.processor()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def record(name: str, result: dict) -> None:
    OUT.mkdir(exist_ok=True)
    result = {"date": date.today().isoformat(), "machine": machine(), **result}
    (OUT / f"{name}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
