import pytest
from fastapi.testclient import TestClient
from helpers import start_server, train_run

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
