"""Run directories and the loop's bookkeeping, in process on the small built-in datasets: atomic writes, checkpoint
loading, restored torch settings, consecutive bad steps, best-epoch weights with early stopping, and folds."""

import json
import os
import signal
import time

import pytest
import torch
from safetensors.torch import load_file

from genforge import rundir, runs
from genforge.config import load_config
from genforge.train import steps
from genforge.train.loop import Interrupted
from genforge.train.steps import ClassifierStep
from genforge.training import train


def new_run(tmp_path, *overrides, preset="blobs-logreg", name="run"):
    cfg = load_config(preset, ["train.threads=1", *overrides])
    return cfg, rundir.create_run(tmp_path / name, cfg.name, cfg)


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = rundir.write_json(tmp_path / "summary.json", {"status": "complete"})

    def crash(*args):
        raise OSError("power cut before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        rundir.write_json(path, {"status": "half"})
    assert json.loads(path.read_text()) == {"status": "complete"}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_the_write_syncs_the_file_and_then_its_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.path.isdir(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    rundir.write_text(tmp_path / "eval.json", "{}")
    assert synced == [False, True]  # the temp file's data, then the folder that holds the rename


def test_the_resume_truncation_of_metrics_is_atomic_and_drops_a_torn_line(tmp_path, monkeypatch):
    from genforge.train.journal import truncate_metrics as _truncate_metrics

    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "epoch": e}) for e, s in enumerate((10, 20, 30), 1)]
    path.write_text("\n".join(lines) + '\n{"step": 4')  # the last append was torn by a crash
    original = path.read_text()
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("crash")))
    with pytest.raises(OSError):
        _truncate_metrics(path, 20)
    assert path.read_text() == original  # never half-truncated
    monkeypatch.undo()
    _truncate_metrics(path, 20)
    assert path.read_text() == "\n".join(lines[:2]) + "\n"


def test_load_run_loads_the_checkpoints_weights_the_ema_where_there_is_one(tmp_path):
    cfg, run = new_run(tmp_path, "train.epochs=3", "train.ema=0.9")
    train(cfg, run, quiet=True)
    final = runs.load_run(run).model.state_dict()  # the EMA's weights: what the loop saved
    from_checkpoint = runs.load_run(run, checkpoint=True).model.state_dict()  # the last checkpoint: the same state
    assert final.keys() == from_checkpoint.keys()
    assert all(torch.equal(final[k], from_checkpoint[k]) for k in final)


def test_train_restores_the_process_wide_torch_settings(tmp_path):
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    cfg, run = new_run(tmp_path, "train.epochs=1", "train.threads=2", "deterministic=true")
    train(cfg, run, quiet=True)
    assert torch.get_num_threads() == threads and torch.are_deterministic_algorithms_enabled() == deterministic
    cfg, run = new_run(tmp_path, "train.epochs=1", "train.threads=2", "deterministic=true", name="raises")
    with pytest.raises(Interrupted):  # also when train() raises
        train(cfg, run, quiet=True, on_step=lambda step, t, total: os.kill(os.getpid(), signal.SIGINT))
    assert torch.get_num_threads() == threads and torch.are_deterministic_algorithms_enabled() == deterministic


class EveryOtherBatchIsBad(ClassifierStep):
    """Sporadic bad batches: every other one is not finite (the step refuses it)."""

    calls = 0

    def __call__(self, x, y):
        EveryOtherBatchIsBad.calls += 1
        return super().__call__(x.float() * float("nan") if self.calls % 2 else x, y)


def test_sporadic_bad_steps_are_skipped_without_a_rollback(tmp_path, monkeypatch):
    monkeypatch.setattr(steps, "ClassifierStep", EveryOtherBatchIsBad)  # what the classify task's step builds
    cfg, run = new_run(tmp_path, "train.epochs=2", "train.max_nonfinite=2", "train.max_rollbacks=0")
    summary = train(cfg, run, quiet=True)  # max_rollbacks=0: a single rollback would end the run as diverged
    assert summary["status"] == "complete" and summary["rollbacks"] == 0
    assert summary["skipped_steps"] == summary["steps"] // 2 > 2 * cfg.train.max_nonfinite
    assert summary["test_accuracy"] > 0.9  # the good half of the batches trained it


EARLY = ["model={kind: mlp, hidden: [64, 64], dropout: 0.0}", "data.name=moons", "data.train_subset=64",
         "train.optimizer=adam", "train.lr=0.03", "train.schedule=none", "train.batch_size=16", "deterministic=true",
         "seed=1"]


def test_early_stopping_keeps_the_best_validation_epochs_weights(tmp_path):
    """The weights saved are the best epoch's, bit for bit: those of a run that stopped at that epoch."""
    cfg, run = new_run(tmp_path, *EARLY, "train.epochs=60", "train.early_stopping=3")
    summary = train(cfg, run, quiet=True)
    best = summary["best_epoch"]
    assert summary["epochs"] == best + 3 < 60  # it stopped early, 3 epochs after its best one
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert min(logged, key=lambda r: r["val_loss"])["epoch"] == best
    assert logged[-1]["val_loss"] > summary["best_val_loss"]
    assert summary["weights_epoch"] == best
    cfg, short = new_run(tmp_path, *EARLY, f"train.epochs={best}", name="short")
    train(cfg, short, quiet=True)
    kept, reference = load_file(run / rundir.WEIGHTS), load_file(short / rundir.WEIGHTS)
    assert all(torch.equal(kept[k], reference[k]) for k in reference)
    assert rundir.read_json(run / "eval.json")["loss"] == rundir.read_json(short / "eval.json")["loss"]  # evaluated


def test_the_best_weights_survive_a_resume(tmp_path):
    cfg, run = new_run(tmp_path, *EARLY, "train.epochs=60", "train.early_stopping=3")
    reference = train(cfg, run, quiet=True)
    cfg, again = new_run(tmp_path, *EARLY, "train.epochs=60", "train.early_stopping=3", name="again")
    stop_at = (reference["best_epoch"] + 1) * 4  # 4 steps an epoch: interrupted after the best epoch
    with pytest.raises(Interrupted):
        train(cfg, again, quiet=True,
              on_step=lambda step, t, total: t == stop_at and os.kill(os.getpid(), signal.SIGINT))
    resumed = train(cfg, again, resume=True, quiet=True)
    assert resumed["best_epoch"] == reference["best_epoch"] and resumed["epochs"] == reference["epochs"]
    kept, expected = load_file(again / rundir.WEIGHTS), load_file(run / rundir.WEIGHTS)
    assert all(torch.equal(kept[k], expected[k]) for k in expected)


def test_cross_validation_folds_only_train_and_score(tmp_path, capsys, monkeypatch):
    from helpers import run_cli

    t0 = time.perf_counter()
    code, _, err = run_cli(capsys, monkeypatch, "cv", "blobs-logreg", "train.epochs=3", "--folds", "3", "--runs-dir",
                           str(tmp_path), "--quiet")
    seconds = time.perf_counter() - t0
    assert code == 0, err
    (parent,) = tmp_path.iterdir()
    folds = sorted(parent.glob("fold*"))
    assert len(folds) == 3
    for fold in folds:
        assert not (fold / "report.html").exists() and not (fold / "eval.json").exists()
        assert not (fold / "plots").exists()
        summary = rundir.read_json(fold / "summary.json")
        assert 0.9 < summary["fold_accuracy"] <= 1 and "latency_ms_b1" not in summary
        assert runs.load_run(fold).model is not None  # a fold's weights are kept: it loads like any run
    print(f"cv, 3 folds of blobs-logreg, 3 epochs: {seconds:.1f} s")


@pytest.fixture(scope="module")
def trained_logreg(tmp_path_factory):
    cfg = load_config("blobs-logreg", ["train.threads=1", "train.epochs=1"])
    run = rundir.create_run(tmp_path_factory.mktemp("meta"), cfg.name, cfg)
    train(cfg, run, quiet=True)
    return run


def _without(key):
    return lambda meta: {k: v for k, v in meta.items() if k != key}


def _with(**changes):
    return lambda meta: {**meta, **changes}


@pytest.mark.parametrize(("edit", "message"), [  # edit: meta -> what meta.json then holds (a str: its text)
    (_without("input_shape"), "no key 'input_shape' (a list of positive integers)"),
    (_without("classes"), "no key 'classes'"),
    (_with(input_shape="2"), "'input_shape' must be a list of positive integers, not \"2\""),
    (_with(input_shape=[2, -1]), "'input_shape' must be a list of positive integers"),
    (_with(norm_shape=[True]), "'norm_shape' must be a list of positive integers"),
    (_with(classes=5), "'classes' must be a list of strings, not 5"),
    (_with(dataset=None), "'dataset' must be a string"),
    (_with(season="weekly"), "'season' must be a positive integer"),
    (_with(light_background="yes"), "'light_background' must be true or false, not \"yes\""),
    # well typed but past what training writes: load_run would allocate a model (or zeros) of that size
    (_with(input_shape=[10**9]), "'input_shape' is [1000000000], but training writes a vector of at most 1,048,576"),
    (_with(input_shape=[1, 100000, 100000]), "[1, 100000, 100000], but training writes an image side of at most 4096"),
    (_with(input_shape=[5, 28, 28]), "'input_shape' is [5, 28, 28], but training writes at most 4 channels"),
    (_with(input_shape=[2, 3]), "'input_shape' is [2, 3], but training writes [D] (a vector) or [C, H, W] (an image)"),
    (_with(norm_shape=[10**9]), "'norm_shape' is [1000000000], but training writes a vector of at most 1,048,576"),
    (_with(norm_shape=[1] * 100), "'norm_shape' is [1, 1, 1,"),
    (_with(classes=[str(i) for i in range(70_000)]), "'classes' holds 70,000 classes, but training writes at most"),
    (lambda meta: [1, 2], "holds a JSON list, not an object"),
    (lambda meta: '{"input_shape": [2', "not valid JSON"),
])
def test_a_crafted_meta_json_is_one_line_naming_the_key(trained_logreg, tmp_path, edit, message):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_logreg, run)
    edited = edit(json.loads((run / "meta.json").read_text()))
    (run / "meta.json").write_text(edited if isinstance(edited, str) else json.dumps(edited))
    with pytest.raises(runs.GenforgeError) as e:
        runs.load_run(run)
    assert message in str(e.value) and "meta.json" in str(e.value) and "\n" not in str(e.value)


def test_a_crafted_meta_json_through_the_command_line_exits_2(trained_logreg, tmp_path, capsys, monkeypatch):
    import shutil

    import numpy as np
    from helpers import run_cli

    run = tmp_path / "run"
    shutil.copytree(trained_logreg, run)
    meta = json.loads((run / "meta.json").read_text())
    (run / "meta.json").write_text(json.dumps({**meta, "norm_shape": "x"}))
    np.save(tmp_path / "x.npy", np.zeros((1, 2), dtype=np.float32))
    code, _, err = run_cli(capsys, monkeypatch, "predict", run, tmp_path / "x.npy")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "'norm_shape'" in lines[0] and "Traceback" not in err, err
    assert runs.load_run(trained_logreg).meta["input_shape"] == [2]  # the untouched run still loads
