"""The training loop on real data: exact resume after SIGKILL, clean SIGTERM, divergence rollback."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import run_cli, train_run
from safetensors.torch import load_file

from genforge import rundir, runs

pytestmark = pytest.mark.usefixtures("fashion_available")

QUICK = ["data.name=fashion-mnist", "train.threads=1"]
RESUMABLE = QUICK + ["model={kind: fastcnn, channels: [8, 16]}", "data.train_subset=3072", "data.test_subset=1000",
                     "train.batch_size=64", "train.epochs=2", "train.checkpoint_every=16", "deterministic=true",
                     "seed=3", "data.augment.rotation=10", "train.ema=0.9"]


def genforge(*args, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "genforge", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def only_run(parent: Path) -> Path:
    (run,) = [p for p in parent.iterdir() if p.is_dir()]
    return run


def checkpoint_step(run: Path) -> int:
    path = run / rundir.CHECKPOINT
    return rundir.load_state(path)["loop"]["step"] if path.is_file() else -1


def wait_for_step(proc, run_parent: Path, step: int, timeout: float = 300) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        dirs = [p for p in run_parent.glob("*") if p.is_dir()]
        if dirs and checkpoint_step(dirs[0]) >= step:
            return dirs[0]
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(tmp_path, capsys, monkeypatch):
    reference = load_file(train_run(tmp_path / "a", "quickstart", *RESUMABLE) / "model.safetensors")  # uninterrupted

    proc = genforge("train", "quickstart", *RESUMABLE, "--runs-dir", str(tmp_path / "b"), "--quiet")
    run = wait_for_step(proc, tmp_path / "b", 24)  # mid-epoch: an epoch is 48 steps
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "model.safetensors").exists()
    killed_at = checkpoint_step(run)
    assert 0 < killed_at < 96

    # resumed in this process, which shares nothing with the killed one but the run directory
    code, _, err = run_cli(capsys, monkeypatch, "train", "--resume", run, "--quiet")
    assert code == 0, err
    assert "resumed at epoch" in err
    resumed = load_file(run / "model.safetensors")
    assert reference.keys() == resumed.keys()
    for key in reference:
        assert torch.equal(reference[key], resumed[key]), key


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_says_how_to_resume(tmp_path):
    proc = genforge("train", "quickstart", *RESUMABLE, "--runs-dir", str(tmp_path), "--quiet")
    run = wait_for_step(proc, tmp_path, 16)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert f"genforge train --resume {run}" in stderr
    assert "Traceback" not in stderr
    assert checkpoint_step(run) >= 16


def test_divergence_rolls_back_then_stops_with_finite_weights(tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(
        capsys, monkeypatch, "train", "quickstart", *QUICK, "model={kind: mlp}", "data.train_subset=2048",
        "train.optimizer=sgd", "train.lr=1e12", "train.schedule=none", "train.checkpoint_every=4",
        "train.max_rollbacks=2", "train.max_nonfinite=2", "--runs-dir", str(tmp_path), "--quiet")
    assert code == 2, err
    assert "rolled back to the last checkpoint" in err
    assert "error: training diverged" in err and "lower train.lr" in err
    assert "Traceback" not in err
    state = rundir.load_state(only_run(tmp_path) / rundir.CHECKPOINT)
    assert all(torch.isfinite(v).all() for v in state["step_fn"]["model"].values() if v.is_floating_point())
    assert rundir.read_json(only_run(tmp_path) / "summary.json")["status"] == "diverged"
    assert runs.load_run(only_run(tmp_path)).model is not None  # the last good weights were saved


def test_fast_preset_learns_on_real_data(classifier_run):
    """`genforge train fashion-cnn-fast` with 1 epoch on 8k images: conftest's classifier_run, which the command
    line trained (exit code 0) once for the whole test run."""
    run = classifier_run
    summary = rundir.read_json(run / "summary.json")
    assert summary["test_accuracy"] > 0.75  # 1 epoch on 8k images: far above chance (0.10)
    assert summary["train_seconds"] > 0
    for name in ["config.yaml", "env.json", "metrics.jsonl", "model.safetensors", "summary.json", "report.html",
                 "plots/curves.png", "plots/confusion.png", rundir.CHECKPOINT]:
        assert (run / name).is_file(), name
    loaded = runs.load_run(run)
    from genforge.evaluate import evaluate

    ds = loaded.task.dataset(loaded.config)  # the test images the run scored: the first 2,000 (data.test_subset)
    assert len(ds.test_y) == 2000
    again = evaluate(loaded.model, ds.test_x, ds.test_y, ds.classes)
    assert again["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-6)
