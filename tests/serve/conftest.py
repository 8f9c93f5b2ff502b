import json
import os
import subprocess
import sys
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from helpers import free_port, start_server, train_run

from genforge.serve.adapters import load_models
from genforge.serve.app import create_app
from genforge.serve.limits import Limits


@pytest.fixture(scope="session")
def served(classifier_run, gan_run, vae_run):
    return load_models([classifier_run, gan_run, vae_run], backend="torch")  # the live server serves the default


@pytest.fixture(scope="session")
def client(served):
    with TestClient(create_app(served, limits=Limits(timeout_s=30))) as c:
        yield c


@pytest.fixture(scope="session")
def names(served):
    by_task = {m.task.name: name for name, m in served.items()}
    return by_task["classify"], by_task["gan"], by_task["vae"]


@pytest.fixture(scope="module")
def live_process(classifier_run, gan_run, vae_run):
    """The real command line with its default backend (auto: the runs are exported to ONNX once, on first start):
    (process, base URL)."""
    proc, url = start_server([classifier_run, gan_run, vae_run])
    yield proc, url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def live_server(live_process):
    return live_process[1]


@pytest.fixture(scope="session")
def tabular_run(tmp_path_factory):
    """A logistic regression on the 2-D blobs (seconds): a model that takes float32 feature vectors."""
    return train_run(tmp_path_factory.mktemp("blobs"), "blobs-logreg", "train.threads=1", "train.epochs=2")


def train_here(parent, preset: str, *overrides):
    """Train in this process (no CLI start-up): the run directory."""
    from genforge import rundir
    from genforge.config import load_config
    from genforge.training import train

    cfg = load_config(preset, ["train.threads=1", *overrides])
    run_dir = rundir.create_run(parent, cfg.name, cfg)
    train(cfg, run_dir, quiet=True)
    return run_dir


@pytest.fixture(scope="session")
def forecast_runs(tmp_path_factory):
    """Two forecasters of the Nile's yearly flows (bundled, 100 values; seconds each): a tiny LSTM (2 epochs, 8 units)
    and the seasonal naive baseline, which reads histories of any length."""
    parent = tmp_path_factory.mktemp("forecast")
    rnn = train_here(parent, "series-lstm", "name=nile-lstm", "data.name=series:nile", "train.epochs=2",
                     "model.hidden=8")
    baseline = train_here(parent, "series-lstm", "name=nile-naive", "data.name=series:nile",
                          "model.kind=seasonal-naive", "train.epochs=1")
    return rnn, baseline


@pytest.fixture(scope="session")
def quick_logreg_run(tmp_path_factory):
    """A model without the forecast verb, trained in process: the blobs logistic regression, one epoch."""
    return train_here(tmp_path_factory.mktemp("blobs-quick"), "blobs-logreg", "train.epochs=1")


@pytest.fixture(scope="session")
def text_served(text_run):
    return load_models([text_run], backend="torch")


@pytest.fixture(scope="session")
def forecast_served(forecast_runs):
    return load_models(list(forecast_runs), backend="torch")


HELD = 1000  # a scripted server holds a generate request whose seed is at least this until its test releases it

# What `genforge serve` runs (server._app, server._run), with the test's Limits, and its generators held for seeds
# from HELD on until the file HOLD/<seed> exists: an inference as slow as the test needs, without timing
SCRIPT = f"""
import json, sys, time
from pathlib import Path

from genforge.serve import server
from genforge.serve.limits import Limits

runs, port, limits, hold = json.loads(sys.argv[1])
app, models = server._app([Path(r) for r in runs], None, Limits(**limits), "torch")


def held(generate):
    def generate_when_released(n, label, seed, truncation):
        while seed >= {HELD} and not (Path(hold) / str(seed)).exists():
            time.sleep(0.01)
        return generate(n, label, seed, truncation)
    return generate_when_released


for model in models.values():
    if "generate" in model.verbs():
        model.generate = held(model.generate)
server._run(app, server.listen("127.0.0.1", port), "warning")
"""


@pytest.fixture(scope="module")
def scripted_server(tmp_path_factory):
    """A factory: start(runs, **limits) -> (process, base URL, hold folder) of a server with those Limits, once
    ready; its stderr goes to hold/stderr. start.held: the first held seed. Every server still running is killed
    after the module."""
    procs = []

    def start(runs, **limits):
        hold, port = tmp_path_factory.mktemp("hold"), free_port()
        with open(hold / "stderr", "w") as stderr:
            proc = subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps([list(map(str, runs)), port, limits,
                                                                              str(hold)])],
                                    env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                                    stderr=stderr)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"the server exited: {(hold / 'stderr').read_text()}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    return proc, url, hold
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError("the server did not become ready in 120 s")

    start.held = HELD
    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
