"""Shared by the tests: the real command line (in process, or in a subprocess), and quick training runs."""

import contextlib
import io
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from genforge.cli import main


def genforge_cli(*args, cache=None, cwd=None) -> subprocess.CompletedProcess:
    """Run the real command line in a subprocess, one torch thread, optionally with a private cache."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({"GENFORGE_CACHE": str(cache)} if cache else {})}
    return subprocess.run([sys.executable, "-m", "genforge", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


def call_main(*args) -> int:
    """`genforge ARGS` in this process: its exit code. The torch thread count a command sets is put back, so later
    tests run as they would have."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["genforge", *map(str, args)])
        try:
            main()
            return 0
        except SystemExit as e:
            return e.code or 0
        finally:
            torch.set_num_threads(threads)


def in_this_process(*args) -> tuple[int, str, str]:
    """For fixtures, which cannot use capsys: (exit code, stdout, stderr) of the command line, run in this process
    with its output redirected (a subprocess would add its start-up)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = call_main(*args)
    return code, out.getvalue(), err.getvalue()


def run_cli(capsys, monkeypatch, *args) -> tuple[int, str, str]:
    """The real command line, in process: (exit code, stdout, stderr). For what a command prints and returns; a
    subprocess costs ~2.5 s of start-up and is for process behaviour (signals, kills, servers, the environment).
    stderr ends with the warnings a user's terminal would show (pytest's filters would only collect them), and the
    torch thread count a command sets is put back, so later tests run as they would have."""
    with warnings.catch_warnings(record=True) as shown:
        warnings.resetwarnings()  # Python's default filters (the warnings module's docs), not pytest's
        warnings.simplefilter("default")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.filterwarnings("ignore", category=category)
        code = call_main(*args)
    captured = capsys.readouterr()
    printed = "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line) for w in shown)
    return code, captured.out, captured.err + printed


QUICK_GENERATOR = ["train.threads=1", "data.train_subset=1024", "train.epochs=1", "eval.samples=300", "eval.grid=16"]
# `genforge compress RUN --prune 0.8 --finetune-epochs 2` with these: conftest's pruned_run, and test_resume interrupts
# the same command; 32 steps (2 epochs of 16), each checkpointed every 4
PRUNE_FINETUNE = ["deterministic=true", "data.train_subset=2048", "train.batch_size=128", "train.checkpoint_every=4"]


def train_run(parent: Path, preset: str, *overrides, cache=None) -> Path:
    """Train in this process what `genforge train PRESET OVERRIDES --runs-dir PARENT --quiet` trains (the same
    library calls, without a subprocess's start-up): the run directory. cache: the GENFORGE_CACHE to train with."""
    from genforge import rundir
    from genforge.config import load_config
    from genforge.training import train

    with pytest.MonkeyPatch.context() as mp:
        if cache:
            mp.setenv("GENFORGE_CACHE", str(cache))
        cfg = load_config(preset, list(overrides))
        run_dir = rundir.create_run(parent, cfg.name, cfg)
        train(cfg, run_dir, quiet=True)
    return run_dir


TOKEN = "a-test-token-0123456789"  # a bearer token for the serving tests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(runs, *extra):
    """`genforge serve` in a subprocess on a free loopback port; returns (process, base URL) once ready."""
    import httpx  # a dev dependency: only the serving tests need it

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "genforge", "serve", *map(str, runs), "--port", str(port), *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120  # the first start exports each run to ONNX
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the server did not become ready in 120 s")


def png(array) -> bytes:
    """A uint8 (H, W) or (H, W, C) array as PNG bytes: an upload for the serving tests."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def error_of(response) -> str:
    """The message of a genforge error answer, after checking its shape: {"error": {"status", "message"}}."""
    body = response.json()
    assert set(body) == {"error"} and body["error"]["status"] == response.status_code, body
    return body["error"]["message"]


def until(condition, what: str, seconds: float = 30.0, poll: float = 0.02):
    """Poll `condition` until it returns something true, and return that; fail naming `what` after `seconds` (a
    generous deadline on a busy machine: it bounds a failure's wait, never a pause a slow machine could outlast)."""
    deadline = time.monotonic() + seconds
    while not (found := condition()):
        assert time.monotonic() < deadline, f"{what} did not happen within {seconds:g} s"
        time.sleep(poll)
    return found


def gauge(url: str, name: str) -> float:
    """A gauge's value from the server's /metrics; 0 when it has no such gauge."""
    import httpx

    lines = [x for x in httpx.get(f"{url}/metrics", timeout=10).text.splitlines() if x.startswith(f"{name} ")]
    return float(lines[0].split()[1]) if lines else 0.0
