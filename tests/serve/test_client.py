"""genforge.client against a live `genforge serve` (token, one request in flight at a time so that a 503 can be
provoked): every method, a 503 retried, a 4xx raised with the server's message, a timeout."""

import contextlib
import threading
import time

import httpx
import numpy as np
import pytest
from helpers import TOKEN, start_server

from genforge.client import Client, RequestRejected, Timeout, Unavailable
from genforge.data import load_dataset
from genforge.runs import load_run


@pytest.fixture(scope="module")
def server(classifier_run, gan_run, forecast_runs, tmp_path_factory):
    token_file = tmp_path_factory.mktemp("token") / "token"
    token_file.write_text(TOKEN)
    proc, url = start_server([classifier_run, gan_run, forecast_runs[0]], "--token-file", token_file,
                             "--max-concurrency", "1")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def images():
    return load_dataset("fashion-mnist", progress=False).test_x[:4].numpy()  # uint8 (4, 1, 28, 28)


def test_every_method(server, classifier_run, gan_run, images):
    client = Client(server, token=TOKEN)
    assert client.ready()
    cards = {c["name"]: c for c in client.models()}
    assert {c["task"] for c in cards.values()} == {"classify", "gan", "forecast"}
    clf = next(n for n, c in cards.items() if c["task"] == "classify")
    assert client.card(clf)["classes"] == cards[clf]["classes"]
    predictions = client.classify(images, top_k=2)  # the only classifier: no model= needed
    model = load_run(classifier_run).model
    expected = model.probabilities(model(__import__("torch").from_numpy(images))).argmax(1).tolist()
    assert [p["index"] for p in predictions] == expected and len(predictions[0]["top_k"]) == 2
    generated = client.generate(n=3, label=2, seed=5)
    assert generated.dtype == np.uint8 and generated.shape == (3, 1, 28, 28)
    assert np.array_equal(generated, load_run(gan_run, backend="onnxruntime").sample(3, label=2, seed=5).numpy())
    forecaster = next(n for n, c in cards.items() if c["task"] == "forecast")
    history = np.linspace(800, 1200, cards[forecaster]["forecast"]["minimum_history"])
    answer = client.forecast(history, horizon=3)
    assert len(answer["forecast"]) == 3 and answer["model"] == forecaster
    explained = client.explain(images[:1], method="integrated-gradients", steps=4)
    assert explained[0]["index"] == expected[0] and np.array(explained[0]["attributions"]).shape == (1, 28, 28)


def test_4xx_is_raised_with_the_servers_message(server, images):
    client = Client(server, token=TOKEN)
    with pytest.raises(RequestRejected) as e:
        client.classify(images[:, :, :20])  # 20 rows, not 28
    assert e.value.status == 422 and "each input must have 784 values" in e.value.message
    with pytest.raises(RequestRejected) as e:
        client.generate(n=2, model="nope")
    assert e.value.status == 404 and "no model named 'nope'" in e.value.message
    with pytest.raises(RequestRejected) as e:
        Client(server, token="wrong" * 4).models()
    assert e.value.status == 401 and "Bearer" in e.value.message
    with pytest.raises(RequestRejected, match="give model=NAME for reconstruct"):
        client._model("reconstruct", None)


def test_503_is_retried_with_backoff(server, images):
    """The server takes one request at a time (--max-concurrency 1): while explanations keep it busy, a classify
    request gets 503; the client retries it, and it is answered once they stop."""
    stop, auth = threading.Event(), {"authorization": f"Bearer {TOKEN}"}

    def busy():  # explanations back to back until told to stop
        client = Client(server, token=TOKEN, timeout=120, retries=0)
        while not stop.is_set():
            with contextlib.suppress(Unavailable):
                client.explain(np.repeat(images, 4, axis=0), method="integrated-gradients", steps=64)

    def in_flight() -> bool:
        return "genforge_in_flight 1.0" in httpx.get(f"{server}/metrics", headers=auth).text

    thread = threading.Thread(target=busy)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not in_flight() and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(Unavailable) as e:  # without retries the 503 is raised, with the server's message
            Client(server, token=TOKEN, retries=0).classify(images)
        assert e.value.status == 503 and "concurrency limit" in e.value.message
        threading.Timer(0.5, stop.set).start()  # the explanations stop while the client is retrying
        client = Client(server, token=TOKEN, retries=12, backoff=0.05)
        assert len(client.classify(images)) == 4
        assert client.attempts > 1  # answered 503 at least once, then retried
    finally:
        stop.set()
        thread.join()
    metrics = httpx.get(f"{server}/metrics", headers=auth).text
    assert 'genforge_requests_total{route="classify",status="503"}' in metrics


def test_timeout_and_no_server(server, images):
    client = Client(server, token=TOKEN, timeout=0.05)
    with pytest.raises(Timeout, match="within 0.05 s"):
        client.explain(np.repeat(images, 4, axis=0), method="integrated-gradients", steps=64)
    assert len(Client(server, token=TOKEN, retries=12).classify(images)) == 4  # served once the slot frees
    with pytest.raises(Unavailable, match="cannot reach"):
        Client("http://127.0.0.1:9", retries=0).models()
