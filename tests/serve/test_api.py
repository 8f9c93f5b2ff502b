"""Every route through the real app (TestClient), with real trained runs: answers, validation errors and auth."""

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import TOKEN, error_of, png
from PIL import Image

from genforge.data import load_dataset
from genforge.serve.app import create_app
from genforge.serve.limits import Limits


@pytest.fixture(scope="module")
def fashion(fashion_available):
    return load_dataset("fashion-mnist", progress=False)


def test_probes_and_metrics(client):
    assert client.get("/livez").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and len(ready.json()["models"]) == 3
    text = client.get("/metrics").text
    assert "genforge_requests_total" in text and "genforge_request_seconds_bucket" in text
    assert "genforge_ready 1.0" in text


def test_model_list_and_cards(client, names):
    models = client.get("/v1/models").json()["models"]
    assert {m["name"] for m in models} == set(names)
    clf, gan, _ = names
    card = client.get(f"/v1/models/{clf}").json()
    assert card["task"] == "classify" and card["input_shape"] == [1, 28, 28] and card["classes"][0] == "T-shirt/top"
    assert 0.5 < card["metrics"]["test_accuracy"] <= 1 and card["run_id"] and card["config"]["model"]["kind"]
    assert client.get(f"/v1/models/{gan}").json()["conditional"] is True
    missing = client.get("/v1/models/nope")
    assert missing.status_code == 404 and "GET /v1/models" in error_of(missing)


def test_classify_json_matches_the_model(client, names, served, fashion):
    clf = names[0]
    images = fashion.test_x[:8, 0].numpy()
    r = client.post(f"/v1/models/{clf}/classify", json={"inputs": images.tolist(), "top_k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["backend"] == "torch" and body["latency_ms"] > 0 and len(body["predictions"]) == 8
    import torch

    expected = served[clf].probabilities(torch.from_numpy(images[:, None])).argmax(1).tolist()
    assert [p["index"] for p in body["predictions"]] == expected
    first = body["predictions"][0]
    assert len(first["top_k"]) == 3 and first["top_k"][0]["label"] == first["label"]
    assert abs(sum(first["probabilities"]) - 1) < 1e-4
    assert sum(p["index"] == y for p, y in zip(body["predictions"], fashion.test_y[:8].tolist())) >= 5


def test_classify_fast_path_answers_like_the_route(client, names, fashion):
    """A plain JSON request takes the ASGI fast path; a query string sends the same request through FastAPI's
    route. Both must give the same answer, and the same message for the same mistake."""
    from genforge.serve.middleware import FastPath as ClassifyFastPath

    fast_path = client.app.front.app.app.app.app  # ProtocolErrors, ErrorGuard, BodySizeLimit, Gate, then it
    assert isinstance(fast_path, ClassifyFastPath)
    behind, passed_on = fast_path.app, []

    async def fastapi(scope, receive, send):  # what the fast path hands to FastAPI
        passed_on.append(scope["query_string"])
        await behind(scope, receive, send)

    clf, images = names[0], fashion.test_x[:3, 0].numpy().tolist()
    fast_path.app = fastapi
    try:
        fast = client.post(f"/v1/models/{clf}/classify", json={"inputs": images, "top_k": 2})
        routed = client.post(f"/v1/models/{clf}/classify?top_k=2", json={"inputs": images})
    finally:
        fast_path.app = behind
    assert passed_on == [b"top_k=2"]  # the plain request was answered by the fast path alone
    assert fast.status_code == routed.status_code == 200
    assert fast.headers["content-type"] == routed.headers["content-type"] == "application/json"
    a, b = fast.json(), routed.json()
    assert a.pop("latency_ms") > 0 and b.pop("latency_ms") > 0 and a == b
    bad = {"inputs": [[300] * 784]}
    fast, routed = (client.post(f"/v1/models/{clf}/classify{q}", json=bad) for q in ("", "?top_k=1"))
    assert fast.status_code == routed.status_code == 422 and error_of(fast) == error_of(routed)


def test_classify_flat_and_unit_range_inputs_agree(client, names, fashion):
    clf = names[0]
    image = fashion.test_x[0, 0].numpy()
    a = client.post(f"/v1/models/{clf}/classify", json={"inputs": [image.tolist()]}).json()
    b = client.post(f"/v1/models/{clf}/classify", json={"inputs": [(image.reshape(-1) / 255).tolist()]}).json()
    assert a["predictions"][0]["index"] == b["predictions"][0]["index"]
    assert np.allclose(a["predictions"][0]["probabilities"], b["predictions"][0]["probabilities"], atol=1e-3)


def test_classify_png_upload_echoes_the_input(client, names, fashion):
    clf = names[0]
    image = fashion.test_x[3, 0].numpy()
    r = client.post(f"/v1/models/{clf}/classify?echo_input=true&top_k=2",
                    files={"file": ("x.png", png(image), "image/png")})
    assert r.status_code == 200, r.text
    pred = r.json()["predictions"][0]
    assert np.array_equal(np.array(pred["input"], dtype=np.uint8), image) and len(pred["top_k"]) == 2
    dark_on_light = client.post(f"/v1/models/{clf}/classify?echo_input=true",
                                files={"file": ("x.png", png(255 - image), "image/png")}).json()
    assert np.array_equal(np.array(dark_on_light["predictions"][0]["input"]), image)  # inverted like the data


@pytest.mark.parametrize("body, message", [
    ({"inputs": [[[0] * 27] * 28]}, "784 values"),
    ({"inputs": [[1, 2, 3]]}, "784 values"),
    ({"inputs": [[300] * 784]}, "0-255"),
    ({"inputs": [[-1] * 784]}, "0-255"),
    ({"inputs": [[0.5] * 784], "range": "0-1", "top_k": 0}, "top_k"),
    ({"inputs": []}, "inputs"),
    ({"images": [[0] * 784]}, "inputs"),
    ({"inputs": [[0] * 784] * 257}, "inputs"),
])
def test_classify_rejects_bad_inputs_with_a_message(client, names, body, message):
    r = client.post(f"/v1/models/{names[0]}/classify", json=body)
    assert r.status_code == 422 and message in error_of(r)


def test_classify_rejects_nan_and_wrong_content(client, names):
    clf = names[0]
    r = client.post(f"/v1/models/{clf}/classify", content=b'{"inputs": [[NaN' + b", 0" * 783 + b"]]}",
                    headers={"content-type": "application/json"})  # the right shape: only the NaN is wrong
    assert r.status_code == 422 and "finite" in error_of(r)
    r = client.post(f"/v1/models/{clf}/classify", content=b"hello", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "application/json" in error_of(r)
    r = client.post(f"/v1/models/{clf}/classify", files={"file": ("x.gif", b"GIF89a" + b"\0" * 64, "image/gif")})
    assert r.status_code == 422 and "PNG or JPEG" in error_of(r)
    r = client.post(f"/v1/models/{clf}/generate", json={"n": 2})
    assert r.status_code == 422 and "offers classify" in error_of(r)


def test_generate_png_and_seeded_arrays(client, names):
    gan = names[1]
    r = client.post(f"/v1/models/{gan}/generate", json={"n": 16, "label": 3, "seed": 4})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size[0] > 28 * 4
    a = client.post(f"/v1/models/{gan}/generate", json={"n": 5, "seed": 9, "format": "array"}).json()
    b = client.post(f"/v1/models/{gan}/generate", json={"n": 5, "seed": 9, "format": "array"}).json()
    c = client.post(f"/v1/models/{gan}/generate", json={"n": 5, "seed": 10, "format": "array"}).json()
    assert np.array(a["images"]).shape == (5, 28, 28) and a["images"] == b["images"] != c["images"]


@pytest.mark.parametrize("body, message", [
    ({"n": 10**6}, "n: Input should be less than or equal to 256"), ({"n": 0}, "n: Input should be greater"),
    ({"label": 10}, "0-9"), ({"seed": -1}, "seed: "), ({"truncation": 0}, "truncation: "),
    ({"format": "gif"}, "format: "), ({"colour": 1}, "colour"),
])
def test_generate_rejects_bad_parameters(client, names, body, message):
    r = client.post(f"/v1/models/{names[1]}/generate", json=body)
    assert r.status_code == 422 and message in error_of(r)


def test_interpolate_and_reconstruct(client, names, fashion):
    _, gan, vae = names
    walk = client.post(f"/v1/models/{gan}/interpolate", json={"steps": 7, "from_label": 1, "to_label": 5}).json()
    assert np.array(walk["images"]).shape == (7, 28, 28)
    strip = client.post(f"/v1/models/{vae}/interpolate", json={"steps": 4, "format": "png"})
    assert strip.headers["content-type"] == "image/png"
    images = fashion.test_x[:3, 0].numpy()
    r = client.post(f"/v1/models/{vae}/reconstruct", json={"inputs": images.tolist()}).json()
    assert np.array(r["images"]).shape == (3, 28, 28) and len(r["errors"]) == 3
    assert all(0 < e < 128 for e in r["errors"])
    upload = client.post(f"/v1/models/{vae}/reconstruct", files={"file": ("x.png", png(images[0]), "image/png")})
    assert upload.status_code == 200 and upload.json()["errors"][0] == pytest.approx(r["errors"][0], abs=1e-3)
    r = client.post(f"/v1/models/{gan}/reconstruct", json={"inputs": images.tolist()})
    assert r.status_code == 422 and "not reconstruct" in error_of(r)


def test_unknown_routes_are_json_errors(client):
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and error_of(r)
    r = client.get("/v1/models", headers={"authorization": "Bearer whatever"})  # no token configured: ignored
    assert r.status_code == 200


def test_bearer_token_is_required_and_compared(served):
    with TestClient(create_app(served, token=TOKEN)) as c:
        assert c.get("/livez").status_code == 200 and c.get("/readyz").status_code == 200
        assert c.get("/").status_code == 200  # the playground page itself; it asks for the token
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
            r = c.get("/v1/models", headers=headers)
            assert r.status_code == 401 and "Bearer" in error_of(r) and r.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/models", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert c.get("/metrics").status_code == 401


def test_slow_inference_answers_504_and_the_server_keeps_serving(served, names, fashion):
    """Both classify paths (the fast path, and the route when a query parameter is given) time out with a 504
    and a message; the requests that timed out are dropped from the queue, and later requests are answered."""
    import dataclasses
    import threading

    clf = names[0]
    slow = threading.Event()
    model = dataclasses.replace(served[clf])
    fast = model.probabilities
    model.probabilities = lambda x: (slow.wait(1.0), fast(x))[1]  # hangs while `slow` is not set
    image = fashion.test_x[0, 0].tolist()
    with TestClient(create_app({clf: model}, limits=Limits(timeout_s=0.2))) as c:
        for path in (f"/v1/models/{clf}/classify", f"/v1/models/{clf}/classify?top_k=2"):
            r = c.post(path, json={"inputs": [image]})
            assert r.status_code == 504 and "longer than 0.2 s" in error_of(r)
        slow.set()
        r = c.post(f"/v1/models/{clf}/classify", json={"inputs": [image]})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 1


@pytest.fixture(scope="module")
def lean(classifier_run, forecast_served):
    """The classifier and the Nile forecasters (no generators to train first); a 500 answered rather than raised."""
    from genforge.serve.adapters import load_models

    models = {**load_models([classifier_run], backend="torch"), **forecast_served}
    with TestClient(create_app(models), raise_server_exceptions=False) as c:
        yield c, next(iter(models))


WRITTEN = ["٣", "１２", "²", "+3", " 3", "3_0", "3.0", "9" * 150]  # int() reads the first two, pydantic the next four


@pytest.mark.parametrize("value", WRITTEN)
def test_an_integer_written_as_text_is_the_digits_0_to_9(lean, fashion, value):
    """One rule for every integer a request writes as text (a JSON string, a form field, a query parameter), the
    rule of the v2 header and the explain target: the digits 0-9, nothing else."""
    c, clf = lean
    image = fashion.test_x[0, 0].numpy()
    upload = {"file": ("x.png", png(image), "image/png")}
    answers = {
        "JSON top_k": c.post(f"/v1/models/{clf}/classify", json={"inputs": [image.tolist()], "top_k": value}),
        "form top_k": c.post(f"/v1/models/{clf}/classify", files=upload, data={"top_k": value}),
        "query top_k": c.post(f"/v1/models/{clf}/classify", params={"top_k": value}, json={"inputs": [[0] * 784]}),
        "form steps": c.post(f"/v1/models/{clf}/explain", files=upload, data={"steps": value}),
        "JSON horizon": c.post("/v1/models/nile-lstm/forecast", json={"history": [1.0] * 24, "horizon": value}),
    }
    for where, r in answers.items():
        assert r.status_code == 422 and "digits 0-9" in error_of(r), (where, r.text)
    assert c.post(f"/v1/models/{clf}/classify", files=upload, data={"top_k": "3"}).status_code == 200
    assert c.post(f"/v1/models/{clf}/classify", json={"inputs": [image.tolist()], "top_k": "2"}).status_code == 200


@pytest.mark.parametrize("value", ["1", "\u0661", "\uff11", "1_0", None, "all booleans"])
def test_pixel_values_are_json_numbers(lean, value):
    """np.array(values, dtype=float64) read the strings "1", "١", "１" and "1_0" as numbers: a pixel is a JSON number.
    (A true among numbers still reads as 1: numpy makes the array int, and finding it would cost a Python pass.)"""
    c, clf = lean
    image = [[0] * 28 for _ in range(28)]
    image[5][5] = value
    if value == "all booleans":
        image = [[True] * 28 for _ in range(28)]
    r = c.post(f"/v1/models/{clf}/classify", json={"inputs": [image]})
    assert r.status_code == 422 and "JSON numbers" in error_of(r), r.text
    image[5][5] = 1
    assert c.post(f"/v1/models/{clf}/classify", json={"inputs": [image]}).status_code == 200


def test_the_gate_notes_when_another_client_sends_a_post(client, names, fashion):
    """A lone request is answered on the event loop only if no other client sent one for a few milliseconds: the gate
    records who sent the last POST and when a different one did (Runtime.alone reads both)."""
    state = client.app.state.genforge
    path, body = f"/v1/models/{names[0]}/classify", {"inputs": [fashion.test_x[0, 0].tolist()]}
    assert client.post(path, json=body).status_code == 200
    since = state["mixed_at"]
    assert client.post(path, json=body).status_code == 200
    assert state["mixed_at"] == since and state["last_client"] == ("testclient", 50000)  # the same client again
    other = TestClient(client.app, client=("10.0.0.2", 40000))  # a second connection to the same app
    assert other.post(path, json=body).status_code == 200
    assert state["last_client"] == ("10.0.0.2", 40000) and state["mixed_at"] > since
