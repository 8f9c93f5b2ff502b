"""Experiment tracking: MLflow (its client API on the local SQLite store) and TensorBoard (its event files, read by
TensorBoard's own reader) hold exactly what metrics.jsonl holds, with the same steps; a resume logs no step twice;
a missing package is a one-line refusal with the install command."""

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import run_cli, train_run

from genforge import rundir, track
from genforge.errors import GenforgeError

QUICK = ["train.threads=1", "train.epochs=3", "data.train_subset=800"]  # blobs: 12 steps an epoch


@pytest.fixture(scope="module")
def installed():
    try:
        track.require(list(track.TRACKERS))
    except GenforgeError as e:
        if os.environ.get("CI"):  # make install-dev installs them: a skip here would hide a broken install
            pytest.fail(str(e))
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory, installed) -> Path:
    """One runs folder for the module: the MLflow store is created once (its schema migrations take ~4 s)."""
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def tracked_run(runs_dir) -> Path:
    """blobs-logreg with `track: [mlflow, tensorboard]`; no host name is looked up while it trains (no telemetry)."""
    looked_up = []
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        looked_up.append(host)
        return real(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "getaddrinfo", getaddrinfo)
        run = train_run(runs_dir, "blobs-logreg", *QUICK, "track=[mlflow,tensorboard]")
    assert [h for h in looked_up if h not in ("localhost", "127.0.0.1", "::1")] == []
    return run


def jsonl(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def mlflow_client(run: Path):
    from mlflow import MlflowClient

    recorded = rundir.read_json(run / "track.json")["mlflow"]
    return MlflowClient(tracking_uri=recorded["uri"]), recorded["run_id"]


def assert_mlflow_holds(run: Path) -> None:
    """Every key of metrics.jsonl, read back through MLflow's client: the same steps, the same values, once each."""
    client, run_id = mlflow_client(run)
    records = jsonl(run)
    for key in (k for k in records[0] if k != "step"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert history == [(r["step"], float(r[key])) for r in records], key


def tensorboard_scalars(run: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(rundir.read_json(run / "track.json")["tensorboard"]["log_dir"],
                              size_guidance={"scalars": 0, "images": 0})  # 0: keep every event
    events.Reload()
    return events


def assert_tensorboard_holds(run: Path) -> None:
    events = tensorboard_scalars(run)
    records = jsonl(run)
    for key in (k for k in records[0] if k != "step"):
        scalars = [(e.step, e.value) for e in events.Scalars(key)]
        assert [s for s, _ in scalars] == [r["step"] for r in records], key
        assert [v for _, v in scalars] == pytest.approx([r[key] for r in records], rel=1e-6), key  # float32 events


def test_mlflow_reads_back_metrics_jsonl_params_tags_and_artifacts(tracked_run):
    assert len(jsonl(tracked_run)) == 3
    assert_mlflow_holds(tracked_run)
    client, run_id = mlflow_client(tracked_run)
    mlflow_run = client.get_run(run_id)
    assert mlflow_run.info.status == "FINISHED"
    assert mlflow_run.info.run_name == tracked_run.name
    config = track.flat_config(yaml.safe_load((tracked_run / "config.yaml").read_text()))
    assert mlflow_run.data.params == config and config["train.epochs"] == "3"
    tags = mlflow_run.data.tags
    assert tags["genforge.kind"] == "logreg" and tags["genforge.dataset"] == "blobs"
    git = rundir.read_json(tracked_run / "env.json")["git"]
    assert tags.get("mlflow.source.git.commit") == git or git is None
    summary = rundir.read_json(tracked_run / "summary.json")
    assert mlflow_run.data.metrics["summary.test_accuracy"] == summary["test_accuracy"]
    stored = {f.path for f in client.list_artifacts(run_id)} | {f.path for f in client.list_artifacts(run_id, "plots")}
    assert {"report.html", "metrics.jsonl", "config.yaml", "plots/decision_boundary.png"} <= stored
    assert not any(p.endswith(".safetensors") or p.startswith("checkpoints") for p in stored)


@pytest.mark.slow
def test_mlflow_telemetry_is_off(installed):
    """MLflow turns its telemetry off by itself under pytest and CI: a process with neither shows genforge's switch."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_CURRENT_TEST", "MLFLOW_DISABLE_TELEMETRY",
                                                             "DO_NOT_TRACK")}
    script = ("from genforge import track; track.mlflow_client_class(); "
              "from mlflow.telemetry.client import get_telemetry_client; print(get_telemetry_client())")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "None", done.stderr


def test_tensorboard_event_files_hold_metrics_jsonl(tracked_run):
    assert_tensorboard_holds(tracked_run)
    events = tensorboard_scalars(tracked_run)
    assert "plots/decision_boundary" in events.Tags()["images"]
    log_dir = Path(rundir.read_json(tracked_run / "track.json")["tensorboard"]["log_dir"])
    assert log_dir == tracked_run.parent.resolve() / "tensorboard" / tracked_run.name  # the default, in RUNS


def test_a_resumed_run_logs_no_step_twice(runs_dir):
    """Interrupted in its second epoch, then resumed after losing track.json's cursor (as if killed right after
    logging): MLflow's history and TensorBoard's scalars still hold each step of metrics.jsonl once."""
    from genforge.config import load_config
    from genforge.train.loop import Interrupted
    from genforge.training import train

    cfg = load_config("blobs-logreg", [*QUICK, "track=[mlflow,tensorboard]", "name=resumed"])
    run = rundir.create_run(runs_dir, cfg.name, cfg)
    with pytest.raises(Interrupted):  # Ctrl-C at step 15: the loop checkpoints and stops
        train(cfg, run, quiet=True, on_step=lambda step, t, total: t == 15 and os.kill(os.getpid(), signal.SIGINT))
    client, run_id = mlflow_client(run)
    assert client.get_run(run_id).info.status == "KILLED"
    (first,) = jsonl(run)  # epoch 1; step 15 is in epoch 2
    assert [m.step for m in client.get_metric_history(run_id, "epoch")] == [first["step"]]
    recorded = rundir.read_json(run / "track.json")
    for name in track.TRACKERS:
        recorded[name]["step"] = -1
    rundir.write_json(run / "track.json", recorded)

    train(cfg, run, resume=True, quiet=True)
    assert [r["step"] for r in jsonl(run)] == [first["step"] * k for k in (1, 2, 3)]
    assert_mlflow_holds(run)
    assert_tensorboard_holds(run)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert rundir.read_json(run / "track.json")["mlflow"]["run_id"] == run_id  # the same MLflow run, continued


def test_runs_track_exports_an_untracked_run_once(runs_dir, capsys, monkeypatch):
    run = train_run(runs_dir, "blobs-logreg", *QUICK, "name=untracked")
    assert not (run / "track.json").exists()
    for _ in range(2):  # a second export adds nothing
        code, out, err = run_cli(capsys, monkeypatch, "runs", "track", run, "--to", "mlflow,tensorboard")
        assert code == 0, err
        assert out.splitlines()[:3] == [run.name, *(f"  {line}" for line in track.views(run))]
        assert out.splitlines()[1].startswith("  mlflow: run ") and "tensorboard: " in out
        assert_mlflow_holds(run)
        assert_tensorboard_holds(run)
        client, run_id = mlflow_client(run)
        assert len(client.get_metric_history(run_id, "summary.test_accuracy")) == 1
        assert len(tensorboard_scalars(run).Images("plots/decision_boundary")) == 1
    code, _, err = run_cli(capsys, monkeypatch, "runs", "track", run, "--to", "wandb")
    assert code == 2 and "error: --to wandb: give mlflow, tensorboard" in err


def test_a_trial_nests_under_its_study_run(tracked_run, tmp_path):
    """track.mlflow.parent_run_id: how a tune study's trials become child runs of the study's MLflow run."""
    client, _ = mlflow_client(tracked_run)
    uri = rundir.read_json(tracked_run / "track.json")["mlflow"]["uri"]
    study = client.create_run(track.mlflow_experiment(client, uri, "a-study"), run_name="a-study").info.run_id
    trial = shutil.copytree(tracked_run, tmp_path / "trial-0")
    (trial / "track.json").unlink()
    settings = {"name": "trial", "uri": uri, "experiment": "a-study", "parent_run_id": study}
    track.open_tracking(trial, ["mlflow"], {"mlflow": settings}).finish()
    child = rundir.read_json(trial / "track.json")["mlflow"]["run_id"]
    assert client.get_run(child).data.tags["mlflow.parentRunId"] == study
    assert_mlflow_holds(trial)
    artifacts = Path(uri.removeprefix("sqlite:///")).parent / "artifacts" / "a-study"
    assert (artifacts / child / "artifacts" / "report.html").is_file()  # beside the store, not in the current folder


def test_track_without_the_packages_is_refused_with_the_install_command(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    code, _, err = run_cli(capsys, monkeypatch, "train", "blobs-logreg", "--track", "mlflow", "--runs-dir", tmp_path)
    assert code == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert line.startswith("error: track: mlflow is not installed; install with: pip install 'mlflow-skinny>=3.1'")
    assert list(tmp_path.iterdir()) == []  # refused before the run directory was made
    code, _, err = run_cli(capsys, monkeypatch, "train", "blobs-logreg", "track=[wandb]", "--runs-dir", tmp_path)
    assert code == 2 and "error: config key 'track': unknown tracker 'wandb'; trackers: mlflow, tensorboard" in err


def test_the_track_extra_installs_what_the_trackers_import():
    import tomllib

    extra = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["track"]
    assert sorted(extra) == sorted(req for needs in track.PACKAGES.values() for _, req in needs)
