"""genforge tune: the search space is checked before any trial, a study of run directories completes, prunes, records
failures and goes on, resumes; and on a real PostgreSQL server: two workers share one study, one of them killed
mid-trial; a password in the URL is shown and written nowhere; a server that stops mid-study, or never answers, is a
one-line error. Trials train blobs-logreg for a few epochs on one thread (about a second each)."""

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from glob import glob
from pathlib import Path

import pytest
import yaml
from helpers import run_cli, until

from genforge import rundir
from genforge.config import load_config
from genforge.errors import GenforgeError

optuna = pytest.importorskip("optuna", reason="genforge tune needs optuna: pip install -e '.[tune]'")

from genforge import tune  # noqa: E402

QUICK = ["train.epochs=4", "train.threads=1"]


@pytest.fixture
def cli(capsys, monkeypatch):
    monkeypatch.delenv(tune.STORAGE_ENV, raising=False)  # --storage's variable, if the shell running the tests has it
    return lambda *args: run_cli(capsys, monkeypatch, *args)


def one_line_error(err: str) -> str:
    """The command's error: one line starting with error:, the last one, and no traceback."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [err.strip().splitlines()[-1]], err
    return errors[0]


def write_space(path: Path, space: dict) -> Path:
    path.write_text(yaml.safe_dump(space))
    return path


def plan_for(tmp_path: Path, space: dict, study: str, pruner="none") -> tune.Plan:
    params, _ = tune.load_space("blobs-logreg", write_space(tmp_path / f"{study}.yaml", space))
    study_dir = tmp_path / f"tune-{study}"
    return tune.Plan("blobs-logreg", QUICK, params, study, study_dir, tune.sqlite_url(study_dir), "val_acc", "max",
                     pruner=pruner, seed=0)


@pytest.mark.parametrize("space, message", [
    ({"train.lrr": {"low": 0.1, "high": 1.0}}, "unknown config key 'train.lrr'"),
    ({"train.lr": {"low": 1.0, "high": 0.1}}, "train.lr"),
    ({"train.lr": {"low": 0.0, "high": 0.1, "log": True}}, "train.lr"),
    ({"train.lr": {"low": 0.0, "high": 0.1}}, "config key 'train.lr': Input should be greater than 0"),
    ({"train.optimizer": {"choices": ["adamw", "lion"]}}, "train.optimizer=lion"),
    ({"train.lr": {"lo": 0.1, "high": 1.0}}, "unknown field 'lo'"),
    ({"train.batch_size": [16, 32]}, "train.batch_size: give {low, high}"),
])
def test_a_bad_space_is_one_line_before_any_trial(space, message, tmp_path, cli):
    code, _, err = cli("tune", "blobs-logreg", "--trials", "2", "--space", str(write_space(tmp_path / "s.yaml", space)),
                       "--runs-dir", str(tmp_path / "r"))
    assert code == 2, err
    assert message in err and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [err.strip()]
    assert not (tmp_path / "r").exists()  # no study, no trial


@pytest.mark.slow
def test_a_study_completes_writes_a_best_config_that_trains_and_resumes(tmp_path, cli):
    r = tmp_path / "r"
    code, out, err = cli("tune", "blobs-logreg", *QUICK, "--trials", "3", "--seed", "0", "--runs-dir", str(r))
    assert code == 0, err
    assert "best: trial" in out and err.count("complete val_acc") == 3
    study_dir = r / "tune-blobs-logreg"
    study = optuna.load_study(study_name="blobs-logreg", storage=tune.sqlite_url(study_dir))
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    for t in study.trials:  # each trial is an ordinary run directory that names its trial
        run = Path(t.user_attrs["run"])
        assert run.parent == study_dir / "trials"
        assert (run / rundir.WEIGHTS).is_file() and (run / "report.html").is_file()
        assert rundir.read_json(run / "summary.json")["tune"] == {"study": "blobs-logreg", "trial": t.number,
                                                              "storage": tune.sqlite_url(study_dir), "value": t.value}
        assert load_config(str(run / "config.yaml")).train.lr == t.params["train.lr"]
    assert len((study_dir / "trials.csv").read_text().splitlines()) == 4
    page = (study_dir / "report.html").read_text()
    assert page.count("<img") >= 3 and "history" in page and "importances" in page and "parallel" in page
    best = study_dir / "best.yaml"
    assert yaml.safe_load(best.read_text())["train"]["lr"] == study.best_params["train.lr"]
    code, out, err = cli("train", str(best), "train.epochs=1", "--runs-dir", str(tmp_path / "best"), "--quiet")
    assert code == 0 and "test_accuracy" in out, err

    code, out, err = cli("tune", "blobs-logreg", *QUICK, "--trials", "2", "--runs-dir", str(r))  # resume, extend
    assert code == 0, err
    assert "resuming after 3 trials" in err and "5 trials" in out
    study = optuna.load_study(study_name="blobs-logreg", storage=tune.sqlite_url(study_dir))
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4]
    assert len({t.user_attrs["run"] for t in study.trials}) == 5

    code, _, err = cli("tune", "blobs-logreg", "train.epochs=5", "--trials", "1", "--runs-dir", str(r))
    assert code == 2 and "tunes another base config" in err  # a different config is a new study, not a resume


def test_a_trial_below_the_median_is_pruned(tmp_path):
    plan = plan_for(tmp_path, {"train.lr": {"choices": [0.5, 1.0e-5]}}, "prune",
                    pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    study = tune.open_study(plan)
    study.enqueue_trial({"train.lr": 0.5})
    study.enqueue_trial({"train.lr": 1.0e-5})  # barely moves from its random start: worse at epoch 1
    tune.optimize(plan, 2, None)
    good, bad = tune.open_study(plan).trials
    assert (good.state.name, bad.state.name) == ("COMPLETE", "PRUNED")
    run = Path(bad.user_attrs["run"])
    summary = rundir.read_json(run / "summary.json")
    assert summary["status"] == "pruned" and summary["epochs"] < 4 and summary["tune"]["trial"] == 1
    assert (run / rundir.WEIGHTS).is_file() and not (run / "eval.json").exists()  # no test evaluation for it
    assert tune.write_study_dir(plan)["pruned"] == 1


def test_hyperband_by_name_prunes_a_trial_that_is_not_the_best_at_its_rung(tmp_path):
    # one epoch of 2 reports: a single bracket of successive halving with its rung at the first report, where a
    # trial goes on only among the best third of the trials there (the best one while fewer than 3 have reached it)
    plan = plan_for(tmp_path, {"train.lr": {"choices": [0.5, 1.0e-5]}}, "hyperband", pruner="hyperband")
    plan.overrides, plan.reports_per_epoch = ["train.epochs=1", "train.threads=1"], 2
    study = tune.open_study(plan)
    assert isinstance(study.pruner, optuna.pruners.HyperbandPruner)
    study.enqueue_trial({"train.lr": 0.5})
    study.enqueue_trial({"train.lr": 1.0e-5})
    tune.optimize(plan, 2, None)
    good, bad = tune.open_study(plan).trials
    assert (good.state.name, bad.state.name) == ("COMPLETE", "PRUNED")
    assert sorted(good.intermediate_values) == [1, 2] and list(bad.intermediate_values) == [1]


def test_reports_within_the_epoch_let_the_pruner_stop_a_trial_early(tmp_path):
    plan = plan_for(tmp_path, {"train.lr": {"choices": [0.5, 1.0e-5]}}, "quarters",
                    pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    plan.reports_per_epoch = 4
    study = tune.open_study(plan)
    study.enqueue_trial({"train.lr": 0.5})
    study.enqueue_trial({"train.lr": 1.0e-5})
    tune.optimize(plan, 2, None)
    good, bad = tune.open_study(plan).trials
    assert (good.state.name, bad.state.name) == ("COMPLETE", "PRUNED")
    assert sorted(good.intermediate_values) == list(range(1, 17))  # 4 epochs x 4 reports
    epochs = [json.loads(line) for line in (Path(good.user_attrs["run"]) / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4]  # the reports within an epoch are not logged
    assert [good.intermediate_values[4 * r["epoch"]] for r in epochs] == [r["val_acc"] for r in epochs]
    assert list(bad.intermediate_values) == [1]  # stopped a quarter into its first epoch
    summary = rundir.read_json(Path(bad.user_attrs["run"]) / "summary.json")
    assert summary["status"] == "pruned" and summary["epochs"] == 0 and 0 < summary["steps"]
    rows = {r["trial"]: r for r in tune.write_study_dir(plan) and tune.trial_rows(tune.open_study(plan), plan)}
    assert (rows[0]["epochs"], rows[1]["epochs"]) == (4, 0.25)
    plan.reports_per_epoch = 1
    with pytest.raises(GenforgeError, match="reports 4 time.s. per epoch; give --reports-per-epoch 4"):
        tune.open_study(plan)  # its pruner compares reports by their index


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    from genforge.train import loop

    real = loop.train

    def train(cfg, run_dir, **kwargs):
        if cfg.train.lr == 0.25:
            raise RuntimeError("boom")
        return real(cfg, run_dir, **kwargs)

    monkeypatch.setattr(loop, "train", train)
    plan = plan_for(tmp_path, {"train.lr": {"choices": [0.5, 0.25, 1.0e38]}}, "fail")
    study = tune.open_study(plan)
    for lr in (1.0e38, 0.25, 0.5):  # diverges, raises, trains
        study.enqueue_trial({"train.lr": lr})
    lines = []
    assert tune.optimize(plan, 3, None, say=lines.append) == {"interrupted": False}
    diverged, raised, ok = tune.open_study(plan).trials
    assert [t.state.name for t in (diverged, raised, ok)] == ["FAIL", "FAIL", "COMPLETE"]
    assert "training diverged" in diverged.user_attrs["error"] and raised.user_attrs["error"] == "RuntimeError: boom"
    assert rundir.read_json(Path(diverged.user_attrs["run"]) / "summary.json")["status"] == "diverged"
    assert rundir.read_json(Path(raised.user_attrs["run"]) / "summary.json")["status"] == "failed"
    assert "RuntimeError: boom" in (Path(raised.user_attrs["run"]) / "log.txt").read_text()  # with its traceback
    assert "(RuntimeError: boom)" in lines[1]
    tune.write_study_dir(plan)
    table = (plan.study_dir / "trials.csv").read_text()
    assert "training diverged" in table and "RuntimeError: boom" in table


def test_an_interrupted_trial_fails_and_stops_the_study(tmp_path, monkeypatch):
    from genforge.train import loop

    def train(cfg, run_dir, **kwargs):
        raise loop.Interrupted("interrupted at step 3; resume with: genforge train --resume RUN")

    monkeypatch.setattr(loop, "train", train)
    plan = plan_for(tmp_path, {"train.lr": {"low": 0.1, "high": 1.0}}, "stop")
    assert tune.optimize(plan, 3, None) == {"interrupted": True}
    (trial,) = tune.open_study(plan).trials  # no second trial started
    assert trial.state.name == "FAIL" and trial.user_attrs["error"] == "interrupted"


@pytest.mark.slow
def test_a_tracked_study_is_an_mlflow_run_with_its_trials_as_children(tmp_path, cli):
    pytest.importorskip("mlflow", reason="tracking needs the track extra: pip install -e '.[track]'")
    from genforge.track import mlflow_client_class

    r = tmp_path / "r"
    code, _, err = cli("tune", "blobs-logreg", *QUICK, "track=[mlflow]", "--trials", "2", "--runs-dir", str(r))
    assert code == 0, err
    client = mlflow_client_class()(tracking_uri=f"sqlite:///{r / 'mlruns' / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "blobs-logreg"]  # not one per trial
    found = client.search_runs([experiment.experiment_id])
    (parent,) = [run for run in found if run.info.run_name == "tune-blobs-logreg"]
    children = [run for run in found if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and "best_val_acc" in parent.data.metrics and parent.info.status == "FINISHED"
    assert yaml.safe_load((r / "tune-blobs-logreg" / "best.yaml").read_text())["track"]["mlflow"]["parent_run_id"] \
        is None  # best.yaml trains a run of its own


# --- PostgreSQL: two workers on one study, one killed mid-trial; secrets; a server that goes away -------------------

INSTALL_PG = "apt-get install -y postgresql"
PG_BIN_ENV = "GENFORGE_TEST_PG_BIN"  # a folder with initdb and pg_ctl, instead of Debian's /usr/lib/postgresql/*/bin


def _pg_bin(name: str) -> str | None:
    if (folder := os.environ.get(PG_BIN_ENV)) is not None:  # this folder only: a test of the skip can empty it
        path = Path(folder) / name
        return str(path) if os.access(path, os.X_OK) else None
    found = sorted(glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def test_the_postgresql_binaries_come_from_the_folder_the_environment_names(tmp_path, monkeypatch):
    monkeypatch.setenv(PG_BIN_ENV, str(tmp_path))
    assert _pg_bin("initdb") is None and _pg_bin("pg_ctl") is None
    (tmp_path / "pg_ctl").write_text("#!/bin/sh\n")
    (tmp_path / "pg_ctl").chmod(0o755)
    assert _pg_bin("pg_ctl") == str(tmp_path / "pg_ctl")


@dataclass
class Postgres:
    """A throwaway server: `url` (psycopg2, user genforge, any password: trust), and stop()/start() for the tests
    that take it away."""

    port: int
    pg_ctl: list[str]  # [*as the postgres user, pg_ctl, -D, the data folder]
    log: Path
    options: str

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://genforge@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        subprocess.run([*self.pg_ctl, "-l", str(self.log), "-w", "-t", "60", "-o", self.options, "start"], check=True,
                       capture_output=True, timeout=120)

    def stop(self) -> None:  # as a crash would: no checkpoint, every connection cut
        subprocess.run([*self.pg_ctl, "-m", "immediate", "stop"], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server on 127.0.0.1 and a free port, data in a temp folder, shared by this module's
    tests; initdb and pg_ctl refuse to run as root, so as root they run as the `postgres` user the Debian package
    creates."""
    pytest.importorskip("psycopg2", reason="the PostgreSQL test needs psycopg2: pip install psycopg2-binary")
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip(f"PostgreSQL is not installed; install it with: {INSTALL_PG}")
    as_user = []
    folder = Path(tempfile.mkdtemp(prefix="genforge-pg-"))
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip(f"no `postgres` user to run the server as (root may not); install it with: {INSTALL_PG}")
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data, log = folder / "data", folder / "server.log"
    server = Postgres(port, [*as_user, pg_ctl, "-D", str(data)], log,
                      f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off")
    try:
        subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "genforge", "--no-sync"], check=True,
                       capture_output=True, timeout=120)
        server.start()
    except (subprocess.SubprocessError, OSError) as e:
        reason = log.read_text()[-500:] if log.is_file() else getattr(e, "stderr", b"") or str(e)
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"PostgreSQL did not start ({' '.join(str(reason).split())[-300:]}); it needs Debian's "
                    f"postgresql: {INSTALL_PG}")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


NETLOC_SECRET, QUERY_SECRET = "netloc-s3cret", "query-s3cret"


def _genforge(*args, cwd: Path) -> subprocess.Popen:
    env = {**{k: v for k, v in os.environ.items() if k != tune.STORAGE_ENV}, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "genforge", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _children(pid: int) -> list[int]:
    found = []
    for stat in glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()  # after the command's name, which may hold ')'
        except OSError:  # it ended meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(Path(stat).parent.name))
    return found


def _trials(url: str, study: str) -> list:
    """The study's trials, read on an engine of its own that is closed after: polled every 50 ms, engines left to the
    garbage collector held a connection each, and the module's server ran out of them (too many clients)."""
    storage = optuna.storages.RDBStorage(url)
    try:
        return optuna.load_study(study_name=study, storage=storage).trials
    except KeyError:  # not created yet
        return []
    finally:
        storage.engine.dispose()


def test_two_workers_share_a_postgres_study_survive_a_killed_one_and_show_its_password_nowhere(postgres, tmp_path,
                                                                                             cli):
    """Two workers and a third process share a study on PostgreSQL while one worker is killed mid-trial. The storage
    URL holds its password twice (user:password@ and ?password=, which wins in libpq): neither is in what the
    commands print, in any file of the study directory (study.json, report.html, trials' summary.json, ...) or on
    the command lines of the worker processes."""
    # each trial trains for 1 s (train.max_seconds), long enough to be killed in the middle of one; no pruner, so
    # every trial that is not killed completes
    storage = (f"postgresql+psycopg2://genforge:{NETLOC_SECRET}@127.0.0.1:{postgres.port}/postgres"
               f"?password={QUERY_SECRET}&application_name=genforge-test")
    r = tmp_path / "r"
    args = ["tune", "blobs-logreg", "train.epochs=1000", "train.max_seconds=1", "train.threads=1", "--pruner", "none",
            "--storage", storage, "--study", "shared", "--heartbeat", "1", "--runs-dir", str(r)]
    parent = _genforge(*args, "--trials", "4", "--workers", "2", cwd=tmp_path)

    def running():  # the first trial that is training (its run has an epoch logged): its worker is killed
        return next((t for t in _trials(storage, "shared") if t.state.name == "RUNNING" and "worker" in t.user_attrs
                     and (Path(t.user_attrs.get("run", "")) / "metrics.jsonl").is_file()), None)

    try:
        victim = until(running, "a trial training", 120)
        command_lines = [Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                         for pid in _children(parent.pid)]
    except AssertionError:
        parent.kill()
        raise AssertionError(parent.communicate()) from None
    assert len(command_lines) == 2 and all(b"tune blobs-logreg" in line for line in command_lines), command_lines
    os.kill(int(victim.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
    out, err = parent.communicate(timeout=120)
    printed = out + err
    assert parent.returncode == 1 and "exited with code -9" in err, err  # the other worker finished its trials

    # the killed trial is stale once its heartbeat is 3 heartbeats old (Optuna's own test of it, read-only, on a
    # storage with the study's heartbeat: 1 s, grace 3 s), unless the parent's study directory failed it already
    watch = tune.storage.open_storage(storage, heartbeat=1)
    study_id = watch.get_study_id_from_name("shared")
    until(lambda: watch.get_trial(victim._trial_id).state.name == "FAIL"
          or victim._trial_id in watch._get_stale_trial_ids(study_id), "the killed trial going stale", 60)
    code, out, err = cli(*args, "--trials", "1")  # in this process: a third worker
    assert code == 0, err
    printed += out + err
    trials = optuna.load_study(study_name="shared", storage=storage).trials
    states = {t.number: t.state.name for t in trials}
    assert set(states.values()) <= {"COMPLETE", "FAIL"} and states[victim.number] == "FAIL"
    assert sum(s == "COMPLETE" for s in states.values()) >= 3  # two by the survivor, one by the resumed study
    assert len({t.user_attrs["worker"] for t in trials}) == 3  # two workers and the resumed process
    assert len(states) == len(trials)  # no trial number twice
    completed = [t for t in trials if t.state.name == "COMPLETE"]
    assert len({t.user_attrs["run"] for t in completed}) == len(completed)  # and no run dir scored twice
    for t in completed:
        assert rundir.read_json(Path(t.user_attrs["run"]) / "summary.json")["tune"]["trial"] == t.number
    table = (r / "tune-shared" / "trials.csv").read_text()
    assert "its worker stopped without finishing it" in table

    for secret in (NETLOC_SECRET, QUERY_SECRET):
        assert not [line for line in command_lines if secret.encode() in line]
        assert secret not in printed
        assert not [p for p in r.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    shown = rundir.read_json(r / "tune-shared" / "study.json")["storage"]
    assert shown == f"postgresql+psycopg2://genforge:***@127.0.0.1:{postgres.port}/postgres?password=***" \
                    f"&application_name=genforge-test"
    assert shown in err and (r / "tune-shared" / "report.html").is_file()


@pytest.mark.parametrize("url, shown", [
    ("postgresql://u:pw-123@db:5432/optuna", "postgresql://u:***@db:5432/optuna"),
    ("postgresql+psycopg2://u@db/optuna?password=pw-123&sslmode=require",
     "postgresql+psycopg2://u@db/optuna?password=***&sslmode=require"),
    ("postgresql://u@db/o?sslpassword=pw-123&passfile=/home/u/.pgpass&PassWord=pw-123",
     "postgresql://u@db/o?sslpassword=***&passfile=***&PassWord=***"),
    ("postgresql://u@db/o?pass%77ord=pw-123", "postgresql://u@db/o?pass%77ord=***"),  # a key SQLAlchemy unquotes
    ("mssql+pyodbc:///?odbc_connect=DRIVER%3D{x}%3BPWD%3Dpw-123", "mssql+pyodbc:///?odbc_connect=***"),
    ("mysql://u@db/o?passwd=pw-123", "mysql://u@db/o?passwd=***"),
    ("postgresql://u:pw@123@db/o", "postgresql://u:***@db/o"),  # SQLAlchemy's password ends at the first @
    ("postgresql://u:pw-123@db:notaport/o", "postgresql://u:***@db:notaport/o"),  # one SQLAlchemy cannot parse
    ("sqlite:////tmp/x/study.db", "sqlite:////tmp/x/study.db"),
])
def test_shown_url_masks_every_credential_a_url_carries(url, shown):
    assert tune.shown_url(url) == shown
    if "pw-123" in url:
        assert "pw-123" not in tune.scrubbed(f"a driver's message quoting pw-123 or the URL {url}", url)


def test_a_password_split_where_a_parser_splits_it_is_scrubbed_in_pieces():
    url = "postgresql://u:pw@123@db/o"  # SQLAlchemy: password pw, host 123@db
    assert tune.scrubbed('could not translate host name "123@db" to address', url) == \
        'could not translate host name "***@db" to address'


def test_an_unreadable_storage_url_is_one_line_without_its_password(tmp_path, cli):
    code, _, err = cli("tune", "blobs-logreg", *QUICK, "--trials", "1", "--runs-dir", str(tmp_path / "r"),
                       "--storage", f"postgresql://genforge:{NETLOC_SECRET}@127.0.0.1:notaport/postgres")
    assert code == 2 and "cannot open the study storage" in one_line_error(err)
    assert NETLOC_SECRET not in err


def test_a_plain_postgresql_url_uses_psycopg2(postgres, tmp_path):
    """SQLAlchemy 2.1 reads postgresql:// as psycopg 3, which the tune extra does not install."""
    assert tune.engine_url("postgresql://u@db/o") == "postgresql+psycopg2://u@db/o"
    assert tune.engine_url("postgres://u@db/o") == "postgresql+psycopg2://u@db/o"
    plan = plan_for(tmp_path, {"train.lr": {"low": 0.1, "high": 1.0}}, "plain")
    plan.storage = postgres.url.replace("postgresql+psycopg2://", "postgresql://")
    assert tune.open_study(plan).study_name == "plain"


@pytest.mark.slow
def test_a_storage_that_never_answers_fails_within_the_connect_timeout(tmp_path):
    """A listener that accepts and never answers (a server that hangs, a firewall that swallows): the command fails
    after the connect timeout (set to 1 s here) with one line, where a worker used to wait forever."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        silent.listen(8)  # the kernel completes the handshakes; nothing ever reads or answers
        held = []
        threading.Thread(target=lambda: held.extend(silent.accept() for _ in range(8)), daemon=True).start()
        url = f"postgresql+psycopg2://genforge:{NETLOC_SECRET}@127.0.0.1:{silent.getsockname()[1]}/postgres"
        code = ("import sys; from genforge.tune import storage; storage.CONNECT_TIMEOUT = 1; "
                "from genforge.cli import main; sys.argv[0] = 'genforge'; main()")
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-c", code, "tune", "blobs-logreg", *QUICK, "--trials", "1",
                                 "--storage", url, "--runs-dir", str(tmp_path / "r")],
                                env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"still waiting after 90 s: {proc.communicate()}") from None
    assert proc.returncode == 2 and "timeout expired" in one_line_error(err), err
    assert NETLOC_SECRET not in err
    assert time.monotonic() - started < 60  # start-up, and a second per connection tried


def test_a_storage_that_stops_mid_study_is_one_line_and_the_study_dir_is_written(postgres, tmp_path):
    """The server stops (as in a crash) while a trial trains, after another has completed: exit 2 with one line; the
    study directory is written from the run directories, and the completed trial's value is kept there."""
    r = tmp_path / "r"
    proc = _genforge("tune", "blobs-logreg", "train.epochs=1000", "train.max_seconds=1", "train.threads=1",
                     "--pruner", "none", "--storage", postgres.url, "--study", "lost", "--trials", "20",
                     "--heartbeat", "1", "--runs-dir", str(r), cwd=tmp_path)

    def one_done_one_training():
        trials = _trials(postgres.url, "lost")
        done = [t for t in trials if t.state.name == "COMPLETE"]
        return done and any(t.state.name == "RUNNING" and "run" in t.user_attrs for t in trials) and done

    try:
        try:
            done = until(one_done_one_training, "a trial complete and the next one training", 120)
        except AssertionError:
            proc.kill()
            raise AssertionError(proc.communicate()) from None
        postgres.stop()
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        postgres.start()
    assert proc.returncode == 2, err
    line = one_line_error(err)
    assert "the study storage" in line and "failed mid-study" in line and "written from the trials' run" in line
    study_dir = r / "tune-lost"
    result = rundir.read_json(study_dir / "study.json")
    assert result["written_from"] == "the run directories" and result["complete"] >= len(done)
    rows = {int(row.split(",")[0]): row for row in (study_dir / "trials.csv").read_text().splitlines()[1:]}
    for t in done:
        assert rows[t.number].split(",")[1] == "complete"
        assert rundir.read_json(Path(t.user_attrs["run"]) / "summary.json")["tune"]["value"] == t.value
    assert "could not be read" in (study_dir / "report.html").read_text()
    assert result["best"] is not None and (study_dir / "best.yaml").is_file()


def test_a_gan_study_ranks_trials_by_the_validation_fd(tmp_path, cli, evaluator_cache, monkeypatch):
    """A GAN has no held-out loss: its trials report the FD of samples against validation images after every epoch
    (val_fd, lower is better), on a validation split the study adds where the preset holds none out."""
    from helpers import QUICK_GENERATOR

    monkeypatch.setenv("GENFORGE_CACHE", str(evaluator_cache))
    space = write_space(tmp_path / "gan.yaml", {"train.lr": {"low": 1e-4, "high": 1e-3, "log": True}})
    r = tmp_path / "r"
    code, out, err = cli("tune", "fashion-cdcgan", *QUICK_GENERATOR, "train.epochs=2", "model.width=16",
                         "--trials", "2", "--space", str(space), "--seed", "0", "--runs-dir", str(r))
    assert code == 0, err
    assert "val_fd (min)" in err and "val_fd needs data.val_fraction=0.1 eval.val_samples=1000" in err
    study = optuna.load_study(study_name="fashion-cdcgan", storage=tune.sqlite_url(r / "tune-fashion-cdcgan"))
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 2
    for t in study.trials:
        run = Path(t.user_attrs["run"])
        cfg = load_config(str(run / "config.yaml"))
        assert cfg.data.val_fraction == 0.1 and cfg.eval.val_samples == 1000
        fds = [record["val_fd"] for record in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
               if "val_fd" in record]
        assert len(fds) == 2 and all(v > 0 for v in fds)
        assert t.value == fds[-1] and list(t.intermediate_values.values()) == fds  # reported to the pruner per epoch
    assert study.best_value == min(t.value for t in study.trials)
