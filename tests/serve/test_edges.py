"""The edges of the request surface, in-process: form fields validated like JSON, values that overflow the
model's float32, a failing model answered as a JSON 500 on both paths, bounded concurrent decodes, and the
hello-world route answered by the fast-path layer."""

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import error_of, png

from genforge.serve import v1 as app_module  # the /v1 codec decodes uploads
from genforge.serve.adapters import load_models
from genforge.serve.app import create_app
from genforge.serve.limits import Limits

IMAGE = ("x.png", png(np.zeros((28, 28), dtype=np.uint8)), "image/png")


@pytest.mark.parametrize("verb, data, message", [
    ("classify", {"top_k": "abc"}, "top_k: Input should be a valid integer"),
    ("classify", {"top_k": "0"}, "top_k: Input should be greater than or equal to 1"),
    ("classify", {"range": "0-9"}, "range: Input should be"),
    ("classify", {"colour": "red"}, "colour: Extra inputs are not permitted"),
    ("classify", {"inputs": "[[0]]"}, "inputs: Extra inputs are not permitted"),
    ("reconstruct", {"label": "x"}, "label: Input should be a valid integer"),
    ("reconstruct", {"label": "-1"}, "label: Input should be greater than or equal to 0"),
    ("reconstruct", {"format": "gif"}, "format: Input should be"),
    ("reconstruct", {"top_k": "3"}, "top_k: Extra inputs are not permitted"),
])
def test_multipart_fields_are_validated_like_the_json_body(client, names, verb, data, message):
    name = names[0] if verb == "classify" else names[2]
    r = client.post(f"/v1/models/{name}/{verb}", files={"file": IMAGE}, data=data)
    assert r.status_code == 422 and message in error_of(r), r.text


def test_valid_multipart_fields_take_effect(client, names):
    clf, _, vae = names
    r = client.post(f"/v1/models/{clf}/classify", files={"file": IMAGE}, data={"top_k": "2", "range": "0-255"})
    assert r.status_code == 200 and len(r.json()["predictions"][0]["top_k"]) == 2
    r = client.post(f"/v1/models/{vae}/reconstruct", files={"file": IMAGE}, data={"format": "png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"


def test_the_schema_declares_every_field_of_every_encoding(client, names):
    paths = client.get("/openapi.json").json()["paths"]
    for verb, fields in (("classify", {"file", "top_k", "range"}), ("reconstruct", {"file", "label", "range",
                                                                                     "format"})):
        body = paths[f"/v1/models/{{name}}/{verb}"]["post"]["requestBody"]["content"]
        form = body["multipart/form-data"]["schema"]
        assert set(form["properties"]) == fields and form["additionalProperties"] is False
    params = {p["name"]: p for p in paths["/v1/models/{name}/classify"]["post"]["parameters"]}
    assert set(params) == {"name", "top_k", "echo_input"}


@pytest.fixture(scope="module")
def tabular(tabular_run):
    (name, model), = load_models([tabular_run], backend="torch").items()
    with TestClient(create_app({name: model})) as c:
        yield c, name, model.input_shape[0]


@pytest.mark.parametrize("row, message", [([1e300, 0], "fit in float32"), ([0, -3.5e38], "fit in float32"),
                                          ([3e38, -3e38], "not finite")])  # finite in float32; inf - inf inside
def test_values_that_overflow_float32_are_refused(tabular, row, message):
    c, name, features = tabular
    assert features == len(row)
    for query in ("", "?top_k=1"):  # the fast path and the route
        r = c.post(f"/v1/models/{name}/classify{query}", json={"inputs": [row]})
        assert r.status_code == 422 and message in error_of(r), r.text
    r = c.post(f"/v1/models/{name}/classify", json={"inputs": [[1.0] * features]})
    assert r.status_code == 200 and None not in r.json()["predictions"][0]["probabilities"]


def test_a_failing_model_is_a_json_500_on_both_paths(served, names, caplog):
    clf = names[0]
    model, armed = dataclasses.replace(served[clf]), threading.Event()
    works = model.probabilities

    def broken(x):
        if armed.is_set():  # after the warm-up
            raise RuntimeError("the model broke")
        return works(x)

    model.probabilities = broken
    with TestClient(create_app({clf: model}), raise_server_exceptions=False) as c:
        armed.set()
        for path in (f"/v1/models/{clf}/classify", f"/v1/models/{clf}/classify?top_k=2"):
            r = c.post(path, json={"inputs": [[0] * 784]})
            assert r.status_code == 500 and "internal error (RuntimeError)" in error_of(r), r.text
            assert r.headers["content-type"] == "application/json"
        assert c.get("/livez").status_code == 200  # and it keeps serving
    assert "the model broke" in caplog.text  # the traceback is logged


def test_concurrent_decodes_are_bounded(served, names, monkeypatch):
    """Eight uploads at once, max_decodes 2: two decode together, never more. Each decode waits (without timing)
    until another runs beside it, or until no other is left to come, so that two overlap whenever they may."""
    clf, decode, uploads = names[0], app_module._decode, 8
    running, peak, started, changed = [0], [0], [0], threading.Condition()

    def counted(*args):  # the real decode, counted while it runs
        with changed:
            running[0], started[0] = running[0] + 1, started[0] + 1
            peak[0] = max(peak[0], running[0])
            changed.notify_all()
            changed.wait_for(lambda: running[0] >= 2 or started[0] == uploads, timeout=10)  # s: a failure's wait
        try:
            return decode(*args)
        finally:
            with changed:
                running[0] -= 1
                changed.notify_all()

    monkeypatch.setattr(app_module, "_decode", counted)
    with TestClient(create_app({clf: served[clf]}, limits=Limits(max_decodes=2))) as c:
        def upload(_):
            return c.post(f"/v1/models/{clf}/classify", files={"file": IMAGE}).status_code

        with ThreadPoolExecutor(uploads) as pool:
            codes = list(pool.map(upload, range(uploads)))
    assert codes == [200] * uploads and peak[0] == 2


def test_livez_is_answered_by_the_fast_path_layer(client):
    fast_path = client.app.front.app.app.app.app  # ProtocolErrors (v2 errors) in front
    behind, passed_on = fast_path.app, []

    async def fastapi(scope, receive, send):
        passed_on.append(scope["path"])
        await behind(scope, receive, send)

    fast_path.app = fastapi
    try:
        live = client.get("/livez")
        ready = client.get("/readyz")
    finally:
        fast_path.app = behind
    assert live.json() == {"status": "ok"} and live.headers["content-type"] == "application/json"
    assert ready.status_code == 200 and passed_on == ["/readyz"]
    assert "/livez" in client.get("/openapi.json").json()["paths"]
