import pytest
from fastapi.testclient import TestClient

from genforge.serve.adapters import load_models
from genforge.serve.app import create_app
from genforge.serve.limits import Limits

TOKEN = "a-test-token-0123456789"


@pytest.fixture(scope="session")
def served(classifier_run, gan_run, vae_run):
    return load_models([classifier_run, gan_run, vae_run])


@pytest.fixture(scope="session")
def client(served):
    with TestClient(create_app(served, limits=Limits(timeout_s=30))) as c:
        yield c


@pytest.fixture(scope="session")
def names(served):
    by_task = {m.task: name for name, m in served.items()}
    return by_task["classify"], by_task["gan"], by_task["vae"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(runs, *extra):
    """`genforge serve` in a subprocess on a free loopback port; returns (process, base URL) once ready."""
    import os
    import subprocess
    import sys
    import time

    import httpx

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "genforge", "serve", *map(str, runs), "--port", str(port), *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
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
    raise AssertionError("the server did not become ready in 60 s")


@pytest.fixture(scope="module")
def live_server(classifier_run, gan_run, vae_run):
    proc, url = start_server([classifier_run, gan_run, vae_run])
    yield url
    proc.terminate()
    proc.wait(timeout=30)
