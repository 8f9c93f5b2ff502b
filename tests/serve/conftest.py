import pytest
from fastapi.testclient import TestClient
from helpers import start_server

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
    by_task = {m.task: name for name, m in served.items()}
    return by_task["classify"], by_task["gan"], by_task["vae"]


@pytest.fixture(scope="module")
def live_server(classifier_run, gan_run, vae_run):
    """The real command line with its default backend (auto: the runs are exported to ONNX once, on first start)."""
    proc, url = start_server([classifier_run, gan_run, vae_run])
    yield url
    proc.terminate()
    proc.wait(timeout=30)
