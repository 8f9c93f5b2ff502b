"""Data-parallel training (train/distributed.py) with real processes: torchrun, gloo on CPU, the real command line.

CONFIG trains without dropout, augmentation or BatchNorm and in fp32, so that 2 processes x 16 images follow the
1 process x 32 run step for step: the mean loss over the global batch is the mean of the two shards' means, the
averaged gradients are the global batch's gradient, and only the reduction order of floating-point sums differs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import free_port, run_cli, train_run
from safetensors.torch import load_file

from genforge import rundir, training
from genforge.config import load_config
from genforge.errors import GenforgeError
from genforge.train import launch

TIMEOUT = 120  # s for any launch: a hang fails the test instead of the CI job
CONFIG = """name: ddp
seed: 3
deterministic: true
data: {name: mnist-5k, val_fraction: 0.1}
model: {kind: mlp, hidden: [128], dropout: 0.0}
train: {epochs: EPOCHS, batch_size: 64, optimizer: adamw, lr: 0.002, schedule: onecycle, precision: fp32,
        threads: 1}
"""
EPOCHS = 3
RTOL = 1e-4  # relative, on the weights and the logged losses (measured: weights within 6e-8, losses 1e-7)


def _config(tmp_path: Path, epochs: int) -> Path:
    path = tmp_path / f"ddp-{epochs}.yaml"
    path.write_text(CONFIG.replace("EPOCHS", str(epochs)))
    return path


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "GENFORGE_DIST_TIMEOUT": "60"}


def _genforge(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "genforge", *map(str, args)], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _torchrun(*args, env: dict | None = None) -> subprocess.Popen:
    """`python -m torch.distributed.run ARGS` in a session of its own (a hang is killed with its workers)."""
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *map(str, args)], env=env or _env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its workers (start_new_session)
        out, err = proc.communicate()
        raise AssertionError(f"the launch hung past {TIMEOUT} s: {err[-3000:]}") from None
    return proc.returncode, out, err


def _only_run(runs_dir: Path) -> Path:
    found = [p for p in runs_dir.iterdir() if not p.name.startswith(".")]
    assert len(found) == 1, found  # one run directory for the whole group, restarts included
    return found[0]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=RTOL, atol=RTOL * b[k].abs().max().item(), msg=k)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> Path:
    """CONFIG trained by `genforge train CONFIG --nproc 2`: the reference of equivalence and restarts."""
    tmp = tmp_path_factory.mktemp("ddp2")
    code, _, err = _finish(_genforge("train", _config(tmp, EPOCHS), "--nproc", 2, "--runs-dir", tmp / "runs", "--quiet",
                                     start_new_session=True))
    assert code == 0, err[-3000:]
    return _only_run(tmp / "runs")


def test_two_processes_train_as_one(two_process_run, tmp_path):
    """Acceptance 1: 1 process x batch 64 and 2 gloo processes x 32: the same losses after every epoch, the same
    logged metrics and the same final weights, within RTOL."""
    one = train_run(tmp_path, str(_config(tmp_path, EPOCHS)))
    _assert_close(load_file(two_process_run / "model.safetensors"), load_file(one / "model.safetensors"))
    two_lines, one_lines = _metrics(two_process_run), _metrics(one)
    assert [r["step"] for r in two_lines] == [r["step"] for r in one_lines] == [56, 112, 168]
    for r2, r1 in zip(two_lines, one_lines):
        for key in ("train_loss", "train_acc", "train_lr", "val_loss", "val_acc"):
            assert r2[key] == pytest.approx(r1[key], rel=RTOL), key
    env = json.loads((two_process_run / "env.json").read_text())
    assert (env["world_size"], env["backend"]) == (2, "gloo")
    summary = json.loads((two_process_run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["steps"] == 168


def _descendants(pid: int) -> list[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _rank_of(pid: int) -> int | None:
    try:
        env = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
    except OSError:
        return None
    return int(env["RANK"]) if "RANK" in env and "TORCHELASTIC_RUN_ID" in env else None


def _checkpointed(metrics: Path) -> bool:
    """Whether the checkpoint is at least as new as the last metrics line: the loop appends an epoch's line before
    it writes the epoch's checkpoint, so a kill that follows the line alone may come before the checkpoint."""
    checkpoint = metrics.parent / rundir.CHECKPOINT
    try:
        return checkpoint.stat().st_mtime_ns >= metrics.stat().st_mtime_ns
    except FileNotFoundError:
        return False


def test_a_killed_rank_restarts_the_group_and_it_resumes(two_process_run, tmp_path):
    """Acceptance 2: SIGKILL rank 1 after the first epoch's checkpoint in a --max-restarts 1 run: torchrun restarts
    both workers, they resume from the checkpoint in the same run directory, and the final weights are the
    uninterrupted 2-process run's, bit for bit (deterministic, fp32)."""
    runs_dir = tmp_path / "runs"
    proc = _genforge("train", _config(tmp_path, EPOCHS), "--nproc", 2, "--max-restarts", 1, "--runs-dir", runs_dir,
                     "--quiet", start_new_session=True)
    deadline, killed = time.monotonic() + TIMEOUT, None
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        lines = list(runs_dir.glob("*/metrics.jsonl"))
        if lines and lines[0].read_text().count("\n") >= 1 and _checkpointed(lines[0]):  # epoch 2 runs
            rank1 = [pid for pid in _descendants(proc.pid) if _rank_of(pid) == 1]
            if rank1:
                os.kill(rank1[0], signal.SIGKILL)
                killed = rank1[0]
        time.sleep(0.01)
    code, _, err = _finish(proc)
    told = "\n".join(line for line in err.splitlines() if not line.startswith(("[rank", " ")))  # no tracebacks
    assert killed is not None, f"rank 1 was never seen mid-run: {told[-3000:]}"
    assert code == 0, told[-3000:]
    assert "resumed at epoch" in err and err.count("run directory:") == 2  # the first start and the restart
    run = _only_run(runs_dir)
    assert [r["epoch"] for r in _metrics(run)] == [1, 2, 3]
    assert json.loads((run / "summary.json").read_text())["status"] == "complete"
    reference, resumed = load_file(two_process_run / "model.safetensors"), load_file(run / "model.safetensors")
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


def test_ctrl_c_stops_every_rank_at_one_step_and_the_run_resumes(two_process_run, tmp_path):
    """Ctrl-C (SIGINT to the launch's process group) after the first epoch: every rank stops at the same step, one
    checkpoint and one message, exit 130; `--resume RUN --nproc 2` ends with the uninterrupted run's weights."""
    runs_dir = tmp_path / "runs"
    proc = _genforge("train", _config(tmp_path, EPOCHS), "--nproc", 2, "--runs-dir", runs_dir, "--quiet",
                     start_new_session=True)
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        lines = list(runs_dir.glob("*/metrics.jsonl"))
        if lines and lines[0].read_text().count("\n") >= 1:
            os.killpg(proc.pid, signal.SIGINT)
            break
        time.sleep(0.01)
    code, _, err = _finish(proc)
    assert code == 130 and err.count("interrupted at step") == 1, err[-3000:]
    run = _only_run(runs_dir)
    code, _, err = _finish(_genforge("train", "--resume", run, "--nproc", 2, "--quiet", start_new_session=True))
    assert code == 0, err[-3000:]
    reference, resumed = load_file(two_process_run / "model.safetensors"), load_file(run / "model.safetensors")
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


@pytest.mark.slow
def test_two_nodes_rendezvous_over_c10d(tmp_path):
    """Acceptance 3: two torchrun agents as two nodes on 127.0.0.1 (c10d rendezvous), one process each."""
    port, runs_dir = free_port(), tmp_path / "runs"
    agents = [_torchrun("--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                        "--rdzv-id=nodes-test", "-m", "genforge", "train", "blobs-logreg", "train.epochs=2",
                        "--runs-dir", runs_dir, "--quiet") for _ in range(2)]
    results = [_finish(agent) for agent in agents]
    assert [code for code, _, _ in results] == [0, 0], [err[-2000:] for _, _, err in results]
    run = _only_run(runs_dir)
    assert json.loads((run / "env.json").read_text())["world_size"] == 2
    assert json.loads((run / "summary.json").read_text())["status"] == "complete"
    assert sum("test_accuracy" in out for _, out, _ in results) == 1  # rank 0 alone reports


LEAVING_WORKER = """
import sys
from pathlib import Path

from genforge.train import distributed
from genforge.train.device import seed_everything

with distributed.process_group() as world:
    seed_everything(3, deterministic=True)  # what train does inside the group
    distributed.any_rank(True)
    distributed.leave()
    threads = sorted(p.read_text().strip() for p in Path("/proc/self/task").glob("*/comm"))
    gloo = " ".join(t for t in threads if "gloo" in t) or "no gloo threads"
    Path(sys.argv[1], f"rank{world.rank}.txt").write_text(gloo)  # a file each: unbuffered prints interleave
"""


@pytest.mark.slow
def test_leaving_the_group_ends_its_threads(tmp_path):
    """A rank that left the group (leave: barrier, then destroy) has none of gloo's threads left, even though train
    turned on deterministic algorithms inside the group. They used to live on into interpreter exit, where a rank
    now and then died of SIGABRT after training had finished."""
    script = tmp_path / "worker.py"
    script.write_text(LEAVING_WORKER)
    code, out, err = _finish(_torchrun("--standalone", "--nproc-per-node=2", script, tmp_path))
    assert code == 0, err[-3000:]
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)] == ["no gloo threads"] * 2


FAILING_WORKER = """
import sys
import time
from pathlib import Path

from genforge import rundir
from genforge.config import load_config
from genforge.train import distributed
from genforge.training import train

with distributed.process_group() as world:
    if world.rank == 1 and sys.argv[2] == "raise":
        raise RuntimeError("rank 1 failed on purpose")
    if world.rank == 1:
        time.sleep(600)  # alive but silent: only the collective's timeout can end rank 0's wait
    cfg = load_config("blobs-logreg", ["train.epochs=50"])
    train(cfg, rundir.create_run(sys.argv[1], cfg.name, cfg), quiet=True)  # rank 0 waits on rank 1 in a collective
"""


@pytest.mark.parametrize(("mode", "message"), [("raise", "rank 1 failed on purpose"),
                                             ("hang", "rank 0: the process group failed")])
@pytest.mark.slow
def test_a_failing_rank_ends_the_launch(tmp_path, mode, message):
    """Acceptance 4: one rank raises (or hangs) while the other trains: the launch exits non-zero within a bounded
    time and shows the failing rank's message (or the waiting rank's, after GENFORGE_DIST_TIMEOUT)."""
    script = tmp_path / "worker.py"
    script.write_text(FAILING_WORKER)
    start = time.monotonic()
    code, out, err = _finish(_torchrun("--standalone", "--nproc-per-node=2", script, tmp_path / "runs", mode,
                                       env={**_env(), "GENFORGE_DIST_TIMEOUT": "5"}))
    assert code != 0
    assert message in out + err
    assert time.monotonic() - start < 60


@pytest.mark.parametrize(("args", "message"), [
    (["--nproc", "0"], "--nproc 0: give the number of processes"),
    (["--max-restarts", "1"], "give --nproc too"),
    (["train.batch_size=63", "--nproc", "2"], "make it a multiple of --nproc 2"),
    (["model.norm=group", "train.privacy.epsilon=3", "--nproc", "2"], "Opacus' distributed mode is not wired"),
])
def test_launch_mistakes_are_one_line(capsys, monkeypatch, tmp_path, args, message):
    code, _, err = run_cli(capsys, monkeypatch, "train", "fashion-cnn-fast", *args, "--runs-dir", tmp_path)
    assert code == 2 and message in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # refused before anything started


def test_a_restarted_group_finds_its_run_directory_and_a_finished_run_is_not_resumed(tmp_path, monkeypatch):
    """train/launch.py without torchrun: the first start of a launch creates the run directory, a restart of the same
    launch (TORCHELASTIC_RESTART_COUNT > 0) finds it again, another launch gets its own; the worker, in one process,
    trains into it, and refuses to resume it once it is complete."""
    cfg = load_config("blobs-logreg", ["train.epochs=1"])
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "first")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    run_dir = launch.elastic_run_dir(tmp_path, cfg)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert launch.elastic_run_dir(tmp_path, cfg) == run_dir
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "second")
    assert launch.elastic_run_dir(tmp_path, cfg) != run_dir
    said = []
    trained, summary = launch.train_worker(cfg, run_dir, tmp_path, True, training.train, say=said.append)
    assert trained == run_dir and summary["status"] == "complete"
    assert said == [f"run directory: {run_dir} (1 processes, one process)"]
    with pytest.raises(GenforgeError, match="finished training already"):
        launch.train_worker(cfg, run_dir, tmp_path, True, training.train, say=said.append)
