"""Exact resume beyond classifiers: a GAN (two optimizers, an EMA of G) and a VAE killed mid-epoch (SIGKILL) end
bit-identical to uninterrupted runs, and an interrupted pruning fine-tune resumed with the command it prints
finishes exactly like an uninterrupted `genforge compress` (weights, zeros, comparison); so do a language model and
the text classifier fine-tuned from it."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import PRUNE_FINETUNE, in_this_process, train_run
from safetensors.torch import load_file

from genforge import rundir

pytestmark = pytest.mark.usefixtures("fashion_available")

EXACT = ["train.threads=1", "deterministic=true", "seed=5", "data.train_subset=1024", "train.batch_size=64",
         "train.epochs=2", "train.checkpoint_every=4", "eval.samples=100", "eval.seeds=1", "eval.grid=4"]
GAN = ["fashion-cdcgan", "model.width=8", "model.latent_dim=16"]  # two optimizers, an EMA of G (0.999)
VAE = ["fashion-vae", "model.width=8", "model.latent_dim=8", "eval.iwae_k=5", "eval.iwae_images=10"]


def genforge(*args, cache=None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({"GENFORGE_CACHE": str(cache)} if cache else {})}
    return subprocess.Popen([sys.executable, "-m", "genforge", *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def resume(*command: str, cache=None) -> str:
    """`genforge COMMAND` (a resume, as the killed run prints it) in this process, which shares nothing with the
    killed one but the run directory (and saves a subprocess's start-up): what it printed on stderr."""
    with pytest.MonkeyPatch.context() as mp:
        if cache:
            mp.setenv("GENFORGE_CACHE", str(cache))
        code, _, stderr = in_this_process(*command)
    assert code == 0, stderr
    return stderr


def checkpoint_step(run: Path) -> int:
    try:
        return rundir.load_state(run / rundir.CHECKPOINT)["loop"]["step"]
    except Exception:  # not written yet
        return -1


def wait_for_step(proc, parent: Path, step: int, timeout: float = 300) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        dirs = [p for p in parent.glob("*") if p.is_dir()]
        if dirs and checkpoint_step(dirs[0]) >= step:
            return dirs[0]
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


def kill_mid_training(proc, parent: Path, kill_at: int, steps: int) -> Path:
    """SIGKILL a training once its checkpoint reaches step kill_at, and check that the kill landed mid-training:
    the process is stopped (SIGSTOP) the moment the checkpoint is seen, so that what is checked is what is killed.
    On a machine fast enough to finish first, this fails instead of comparing two complete runs."""
    run = wait_for_step(proc, parent, kill_at)
    proc.send_signal(signal.SIGSTOP)
    stopped_at = checkpoint_step(run)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert alive and kill_at <= stopped_at < steps and not (run / rundir.WEIGHTS).exists(), \
        f"the kill did not land mid-training (checkpoint at step {stopped_at} of {steps}); lower kill_at"
    return run


def killed_and_uninterrupted(tmp_path: Path, preset: str, args: list[str], kill_at: int) -> tuple[Path, Path]:
    """The same training twice: uninterrupted, and SIGKILLed once a checkpoint reaches step kill_at (checked to be
    mid-training), then resumed. Returns (the uninterrupted run, the resumed run)."""
    reference = train_run(tmp_path / "whole", preset, *args)  # in this process: no start-up to pay
    steps = rundir.read_json(reference / "summary.json")["steps"]
    parent = tmp_path / "killed"
    run = kill_mid_training(genforge("train", preset, *args, "--runs-dir", parent, "--quiet"), parent, kill_at, steps)
    assert "resumed at" in resume("train", "--resume", run, "--quiet")
    return reference, run


def assert_same_tree(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{where}.{i}")
    else:
        assert a == b or (a != a and b != b), where


@pytest.mark.parametrize("preset", [GAN, VAE], ids=["gan", "vae"])
def test_a_generator_killed_mid_epoch_resumes_bit_identical(preset, evaluator_cache, tmp_path):
    reference = train_run(tmp_path / "a", *preset, *EXACT, cache=evaluator_cache)  # uninterrupted, in this process

    proc = genforge("train", *preset, *EXACT, "--runs-dir", tmp_path / "b", "--quiet", cache=evaluator_cache)
    run = kill_mid_training(proc, tmp_path / "b", 20, 32)  # in the second epoch (16 steps an epoch)
    assert "resumed at epoch 2" in resume("train", "--resume", run, "--quiet", cache=evaluator_cache)

    expected, resumed = load_file(reference / rundir.WEIGHTS), load_file(run / rundir.WEIGHTS)
    assert_same_tree(expected, resumed)
    # the whole state: both optimizers and schedules, the EMA with its update count, the GAN's counters
    assert_same_tree(rundir.load_state(reference / rundir.CHECKPOINT)["step_fn"],
                     rundir.load_state(run / rundir.CHECKPOINT)["step_fn"])


TIMINGS = ("latency_ms_b1", "latency_ms_b256")


def without_timings(comparison: dict) -> dict:
    rows = {name: {k: v for k, v in row.items() if k not in TIMINGS} for name, row in comparison["rows"].items()}
    return {**comparison, "rows": rows, "ratio": {k: v for k, v in comparison["ratio"].items() if k not in TIMINGS}}


def test_an_interrupted_pruning_finetune_resumes_with_its_printed_command_and_ends_the_same(classifier_run,
                                                                                          pruned_run, tmp_path):
    reference = pruned_run  # the same command, uninterrupted
    proc = genforge("compress", classifier_run, "--prune", "0.8", "--finetune-epochs", "2", *PRUNE_FINETUNE,
                    "--quiet", "--runs-dir", tmp_path / "b")
    child = wait_for_step(proc, tmp_path / "b", 12)  # of 32 steps: the sparsity is still ramping up
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    hint = re.search(r"resume with: (genforge .*)$", stderr, flags=re.M).group(1)
    assert hint == f"genforge train --resume {child}"
    resume(*hint.split()[1:])

    expected, resumed = load_file(reference / rundir.WEIGHTS), load_file(child / rundir.WEIGHTS)
    assert_same_tree(expected, resumed)  # the same weights, so the same zeros
    zeros = [int((w == 0).sum()) for k, w in resumed.items() if k.endswith("weight") and w.ndim > 1]
    assert sum(zeros) > 0.75 * sum(w.numel() for k, w in resumed.items() if k.endswith("weight") and w.ndim > 1)
    read = lambda run: json.loads((run / "comparison.json").read_text())  # noqa: E731
    assert without_timings(read(reference)) == without_timings(read(child))
    summary = rundir.read_json(child / "summary.json")
    assert summary["status"] == "complete" and summary["compressed_from"] == classifier_run.name


# a language model small enough to train in seconds, slow enough per step to be killed mid-training: 16 steps an epoch
TEXT_SIZE = ["model.layers=2", "model.width=96", "model.heads=2", "model.context=128"]
TEXT_EXACT = [*TEXT_SIZE, "train.threads=1", "deterministic=true", "seed=3", "data.train_subset=128",
              "train.batch_size=8", "train.epochs=2", "train.checkpoint_every=4", "data.test_subset=20"]


@pytest.fixture(scope="module")
def language_model(tmp_path_factory, fortunes_available) -> tuple[Path, Path]:
    """(uninterrupted, killed mid-epoch and resumed): the same TEXT_EXACT language model."""
    return killed_and_uninterrupted(tmp_path_factory.mktemp("lm"), "text-gpt", TEXT_EXACT, kill_at=20)


def test_a_language_model_killed_mid_epoch_resumes_bit_identical(language_model):
    reference, run = language_model
    assert_same_tree(load_file(reference / rundir.WEIGHTS), load_file(run / rundir.WEIGHTS))
    assert_same_tree(rundir.load_state(reference / rundir.CHECKPOINT)["step_fn"],
                     rundir.load_state(run / rundir.CHECKPOINT)["step_fn"])
    # the samples written after each epoch are the uninterrupted run's too
    assert rundir.read_json(reference / "samples.json") == rundir.read_json(run / "samples.json")


def test_a_fine_tuned_text_classifier_killed_mid_epoch_resumes_bit_identical(language_model, tmp_path):
    """fortunes-finetune from the language model: 10 classes x 16 labels, 17 steps an epoch, killed in the second."""
    pretrained, _ = language_model
    args = [f"train.init_from={pretrained}", *TEXT_SIZE, "train.threads=1", "deterministic=true", "seed=4",
            "data.labels_per_class=16", "train.batch_size=8", "train.epochs=2", "train.checkpoint_every=4",
            "data.test_subset=20"]
    reference, run = killed_and_uninterrupted(tmp_path, "fortunes-finetune", args, kill_at=24)
    assert rundir.read_json(run / "meta.json")["head"] == "classes"
    assert_same_tree(load_file(reference / rundir.WEIGHTS), load_file(run / rundir.WEIGHTS))
    assert_same_tree(rundir.load_state(reference / rundir.CHECKPOINT)["step_fn"],
                     rundir.load_state(run / rundir.CHECKPOINT)["step_fn"])
    assert rundir.read_json(reference / "summary.json")["test_accuracy"] == \
        rundir.read_json(run / "summary.json")["test_accuracy"]
