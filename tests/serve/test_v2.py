"""The Open Inference Protocol (v2) of a live `genforge serve`, driven by a client no one here wrote: NVIDIA's
tritonclient (HTTP), with JSON tensors and with its binary tensor extension. Results equal the model called in
process (load_run, on the backend the server chose: ONNX Runtime), and a bad request gets the protocol's 4xx."""

import json

import httpx
import numpy as np
import orjson
import pytest
import torch
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from genforge.data import load_dataset
from genforge.runs import load_run
from genforge.serve import v2
from genforge.serve.limits import RequestError


@pytest.fixture(scope="module")
def fashion():
    return load_dataset("fashion-mnist", progress=False)


@pytest.fixture(scope="module")
def client(live_server):
    with triton.InferenceServerClient(live_server.removeprefix("http://"), network_timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def local(classifier_run, gan_run, live_server):
    """The runs loaded in this process as the server loaded them (live_server exported them to ONNX first)."""
    return {"classifier": load_run(classifier_run, backend="onnxruntime"),
            "gan": load_run(gan_run, backend="onnxruntime")}


def test_server_and_model_metadata_and_readiness(client, names):
    clf, gan, vae = names
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "genforge" and "binary_tensor_data" in meta["extensions"]
    assert client.is_model_ready(clf) and client.is_model_ready(gan, "1") and not client.is_model_ready("nope")
    m = client.get_model_metadata(clf)
    assert m["name"] == clf and m["versions"] == ["1"] and m["platform"] == "genforge_onnxruntime"
    assert m["inputs"] == [{"name": "input", "datatype": "UINT8", "shape": [-1, 1, 28, 28]}]
    assert m["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                            {"name": "top_k", "datatype": "INT64", "shape": [-1, -1]}]
    g = client.get_model_metadata(gan, "1")
    assert [(t["name"], t["datatype"]) for t in g["inputs"]] == [("n", "INT64"), ("seed", "INT64"),
                                                                 ("label", "INT64"), ("latent", "FP32")]
    assert g["outputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 1, 28, 28]}]
    assert client.get_model_metadata(vae)["outputs"][0]["name"] == "images"


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_classify_equals_the_model_in_process(client, names, local, fashion, binary):
    images = fashion.test_x[:8].numpy()  # (8, 1, 28, 28) uint8
    x = triton.InferInput("input", list(images.shape), "UINT8")
    x.set_data_from_numpy(images, binary_data=binary)
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "top_k")]
    result = client.infer(names[0], [x], outputs=outputs, request_id="r1", parameters={"top_k": 4})
    assert result.get_response()["id"] == "r1"
    assert ("parameters" in result.get_output("probabilities")) == binary  # binary_data_size when binary
    probabilities, top = result.as_numpy("probabilities"), result.as_numpy("top_k")
    model = local["classifier"].model
    with torch.inference_mode():
        expected = model.probabilities(model(torch.from_numpy(images))).numpy()
    assert probabilities.dtype == np.float32 and probabilities.shape == (8, 10) and top.shape == (8, 4)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    assert (top[:, 0] == expected.argmax(1)).all()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_generate_equals_the_model_in_process_and_v1(client, names, local, live_server, binary):
    gan = names[1]

    def scalar(name, value):
        tensor = triton.InferInput(name, [1], "INT64")
        return tensor.set_data_from_numpy(np.array([value], dtype=np.int64), binary_data=binary)

    out = [triton.InferRequestedOutput("images", binary_data=binary)]
    images = client.infer(gan, [scalar("n", 6), scalar("seed", 7), scalar("label", 3)], outputs=out)
    images = images.as_numpy("images")
    assert images.dtype == np.uint8 and images.shape == (6, 1, 28, 28)
    assert np.array_equal(images, local["gan"].sample(6, label=3, seed=7).numpy())
    v1 = httpx.post(f"{live_server}/v1/models/{gan}/generate", json={"n": 6, "label": 3, "seed": 7,
                                                                     "format": "array"}, timeout=60).json()
    assert np.array_equal(images[:, 0], np.array(v1["images"]))
    z = torch.randn(5, local["gan"].model.latent_dim, generator=torch.Generator().manual_seed(0))
    latent = triton.InferInput("latent", [5, z.shape[1]], "FP32").set_data_from_numpy(z.numpy(), binary_data=binary)
    rendered = client.infer(gan, [latent, scalar("label", 2)], outputs=out).as_numpy("images")
    assert np.array_equal(rendered, local["gan"].model.render(z, torch.full((5,), 2)).numpy())


def _refused(call) -> tuple[int, str]:
    with pytest.raises(InferenceServerException) as e:
        call()
    return int(e.value.status()), e.value.message()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_bad_requests_get_the_protocols_errors(client, names, fashion, binary):
    clf = names[0]

    def infer(name, array, datatype, model=clf):
        x = triton.InferInput(name, list(array.shape), datatype).set_data_from_numpy(array, binary_data=binary)
        return lambda: client.infer(model, [x])

    images = fashion.test_x[:2].numpy()
    status, message = _refused(infer("input", images.astype(np.float32), "FP32"))
    assert status == 400 and "is UINT8, got FP32" in message
    status, message = _refused(infer("input", images[:, 0], "UINT8"))
    assert status == 400 and "has shape [-1, 1, 28, 28]" in message and "[2, 28, 28]" in message
    status, message = _refused(infer("pixels", images, "UINT8"))
    assert status == 400 and "no input named 'pixels'" in message
    status, message = _refused(infer("input", images, "UINT8", model="nope"))
    assert status == 404 and "no model named 'nope'" in message
    big = np.zeros((1400, 1, 28, 28), np.uint8)  # 1.1 MB: over the 1 MiB body limit
    status, message = _refused(infer("input", big, "UINT8"))
    assert status == 413 and "larger than 1,048,576 bytes" in message
    status, message = _refused(infer("input", np.zeros((300, 1, 28, 28), np.uint8), "UINT8"))
    assert status == 422 and "at most 256 inputs" in message
    status, message = _refused(lambda: client.get_model_metadata("nope"))
    assert status == 404


BINARY = b'{"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "UINT8", "parameters": ' \
         b'{"binary_data_size": %d}}]}'


@pytest.mark.parametrize("body, raw, message", [
    (b'{"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "UINT8", "data": [1, 2]}]}', None,
     "has 784 elements, data has 2"),
    (b'{"inputs": [{"name": "input", "shape": [1], "datatype": "UINT8", "data": [300]}]}', None, "0 to 255"),
    (b'{"inputs": [{"name": "input", "shape": [1], "datatype": "UINT8", "data": [true]}]}', None, "integers"),
    (b'{"inputs": [{"name": "input", "shape": [1], "datatype": "UINT8", "data": [[1], [2, 3]]}]}', None,
     "evenly nested"),
    (b'{"inputs": [{"name": "input", "shape": [-1], "datatype": "UINT8", "data": []}]}', None, "negative"),
    (b'{"inputs": [{"name": "input", "shape": [1], "datatype": "STRING", "data": [1]}]}', None, "datatype"),
    (b'{"inputs": [{"name": "input", "shape": ["1_0"], "datatype": "UINT8", "data": [1]}]}', None, "shape.0"),
    (b'{"inputs": [{"name": "input", "shape": [true], "datatype": "UINT8", "data": [1]}]}', None, "shape.0"),
    (b'{"inputs": []}', None, "inputs: List should have at least 1 item"),
    (b'[1]', None, "an infer request is JSON"),
    (BINARY % 784, bytes(700), "runs past the body's"),
    (BINARY % 784, bytes(790), "binary_data_size add up to 784"),
    (BINARY % 700, bytes(700), "is 784 bytes"),
    (b'{"inputs": []}', b"x", "Inference-Header-Content-Length must be"),
])
def test_malformed_bodies_are_400_with_the_protocols_shape(live_server, names, body, raw, message):
    headers = {}
    if raw is not None:  # binary: the header's length, then the bytes (a wrong length for the b"x" case)
        headers = {"inference-header-content-length": str(len(body) + (5 if raw == b"x" else 0))}
        body += raw
    r = httpx.post(f"{live_server}/v2/models/{names[0]}/infer", content=body, headers=headers, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()
    assert set(error) == {"error"} and isinstance(error["error"], str) and message in error["error"], error


def test_json_answers_and_unknown_outputs(live_server, names, fashion):
    images = fashion.test_x[:1].numpy()
    request = {"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "UINT8",
                           "data": images.tolist()}]}  # nested data, no outputs asked for: all, as JSON
    r = httpx.post(f"{live_server}/v2/models/{names[0]}/versions/1/infer", json=request, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert outputs["top_k"]["shape"] == [1, 3] and len(outputs["probabilities"]["data"]) == 10
    r = httpx.post(f"{live_server}/v2/models/{names[0]}/infer", timeout=30,
                   json={**request, "outputs": [{"name": "logits"}]})
    assert r.status_code == 400 and "no output named 'logits'" in r.json()["error"]
    r = httpx.post(f"{live_server}/v2/models/{names[0]}/versions/2/infer", json=request, timeout=30)
    assert r.status_code == 404 and "version 1 only" in r.json()["error"]
    r = httpx.get(f"{live_server}/metrics", timeout=30)
    assert 'genforge_requests_total{route="v2_infer",status="200"}' in r.text
    card = httpx.get(f"{live_server}/v1/models/{names[0]}", timeout=30).json()
    assert card["tensors"]["inputs"][0]["datatype"] == "UINT8"


def test_v2_needs_the_token_but_not_its_health_probes(served, names):
    from fastapi.testclient import TestClient

    from genforge.serve.app import create_app

    with TestClient(create_app(served, token="t" * 20)) as c:
        assert c.get("/v2/health/ready").json() == {"ready": True}
        assert c.get("/v2/health/live").status_code == 200
        r = c.get(f"/v2/models/{names[0]}")
        assert r.status_code == 401 and orjson.loads(r.content) == {"error": r.json()["error"]}
        assert "Bearer" in r.json()["error"]
        auth = {"authorization": "Bearer " + "t" * 20}
        assert c.get(f"/v2/models/{names[0]}", headers=auth).status_code == 200
        c.app.state.genforge["ready"] = False  # as after SIGTERM: the probes say not ready, in the protocol's shape
        try:
            for path in ("/v2/health/ready", f"/v2/models/{names[0]}/ready"):
                r = c.get(path, headers=auth)
                assert r.status_code == 503 and "not ready" in r.json()["error"]
        finally:
            c.app.state.genforge["ready"] = True


def test_forecaster_and_vae_through_v2(forecast_served, served, names):
    """The other kinds, in process: a forecaster's quantiles equal its forecast; a VAE draws as /v1 generate."""
    from fastapi.testclient import TestClient

    from genforge.serve.app import create_app

    name, model = next(iter(forecast_served.items()))
    history = np.linspace(800, 1200, 2 * model.minimum_history, dtype=np.float32).reshape(2, -1)
    with TestClient(create_app({**forecast_served, names[2]: served[names[2]]})) as c:
        meta = c.get(f"/v2/models/{name}").json()
        assert [t["name"] for t in meta["inputs"]] == ["history", "horizon"]
        r = c.post(f"/v2/models/{name}/infer", json={"inputs": [
            {"name": "history", "shape": list(history.shape), "datatype": "FP32", "data": history.ravel().tolist()},
            {"name": "horizon", "shape": [1], "datatype": "INT64", "data": [3]}]})
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        expected = model.forecast(history, 3).quantiles
        assert out["name"] == "quantiles" and out["shape"] == list(expected.shape)
        np.testing.assert_allclose(np.array(out["data"], np.float32).reshape(expected.shape), expected, rtol=1e-6)
        r = c.post(f"/v2/models/{name}/infer", json={"inputs": [
            {"name": "history", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]})
        assert r.status_code == 422 and "at least" in r.json()["error"]  # a value the model refuses
        vae = names[2]
        r = c.post(f"/v2/models/{vae}/infer", json={"inputs": [
            {"name": "n", "shape": [1], "datatype": "INT64", "data": [3]},
            {"name": "seed", "shape": [1], "datatype": "INT64", "data": [4]}]})
        v1 = c.post(f"/v1/models/{vae}/generate", json={"n": 3, "seed": 4, "format": "array"}).json()
        assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [3, 1, 28, 28]
        assert r.json()["outputs"][0]["data"] == np.array(v1["images"]).ravel().tolist()


@pytest.fixture(scope="module")
def in_process(classifier_run, forecast_served):
    """The classifier and the Nile forecasters behind the app, in process (no live server): the edge cases below."""
    from fastapi.testclient import TestClient

    from genforge.serve.adapters import load_models
    from genforge.serve.app import create_app

    models = {**load_models([classifier_run], backend="torch"), **forecast_served}
    with TestClient(create_app(models), raise_server_exceptions=False) as c:  # a 500 is an answer to check
        yield c, next(m for m in models if m != "nile-lstm" and m != "nile-naive")


def _infer(c, model: str, inputs: list[dict], raw: bytes | None = None, headers: dict | None = None):
    body = json.dumps({"inputs": inputs}).encode()  # json: orjson refuses integers beyond 64 bits
    if raw is not None:
        headers = {"inference-header-content-length": str(len(body)), **(headers or {})}
        body += raw
    return c.post(f"/v2/models/{model}/infer", content=body, headers=headers or {})


def _protocol_error(r, status: int = 400) -> str:
    error = r.json()
    assert r.status_code == status and set(error) == {"error"} and isinstance(error["error"], str), r.text
    return error["error"]


HUGE = [[0, 2**62], [2**62, 0], [0, 2**63], [0, 2**70, 3], [0, 1, 2**40, 2**40], [2**31, 0, 2**31]]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("shape", HUGE, ids=map(str, range(len(HUGE))))
@pytest.mark.parametrize("which", ["classifier", "forecaster"])
def test_zero_and_huge_dimensions_are_a_400(in_process, shape, binary, which):
    """No elements, yet a shape that numpy cannot make (or a history no model reads): refused before any array is
    made, in both encodings, for a model whose input has fixed dimensions and one whose has none."""
    c, clf = in_process
    model, name, datatype = (clf, "input", "UINT8") if which == "classifier" else ("nile-lstm", "history", "FP32")
    tensor = {"name": name, "shape": shape, "datatype": datatype}
    r = _infer(c, model, [{**tensor, "parameters": {"binary_data_size": 0}}], b"") if binary else \
        _infer(c, model, [{**tensor, "data": []}])
    assert r.status_code in (400, 422) and "shape" in _protocol_error(r, r.status_code), r.text


NOT_ASCII = ["１２", "٣", "²", "١٢٣", "1²", "𝟙𝟚"]  # fullwidth, Arabic-Indic, superscript, mixed, mathematical digits


@pytest.mark.parametrize("length", [*NOT_ASCII, "9" * 5000, " 12", "+12", "1_2", "0"])
def test_the_header_length_is_ascii_digits(in_process, length):
    """str.isdigit() passes the digits of NOT_ASCII; int() refuses '²' and reads '٣' as 3, and refuses 5,000 digits:
    only 0-9 make a length. Over HTTP a header's bytes arrive as latin-1 ('²' is byte 0xB2); parse() gets them all."""
    c, clf = in_process
    body = b'{"inputs": [{"name": "input", "shape": [1], "datatype": "UINT8", "data": [1]}]}'
    raw = length.encode("latin-1") if max(map(ord, length)) < 256 else length.encode()
    r = c.post(f"/v2/models/{clf}/infer", content=body, headers={"inference-header-content-length": raw})
    assert "Inference-Header-Content-Length must be" in _protocol_error(r)
    with pytest.raises(RequestError, match="Inference-Header-Content-Length must be") as e:
        v2.parse(body + b"x" * 100, length)
    assert e.value.status == 400


def test_zero_rows_answer_the_shapes_the_metadata_promises(in_process):
    """Every output of every model kind that takes rows: N = 0 rows in, N = 0 rows out, the other dimensions as the
    model's metadata says (a -1 there: as many as N > 0 rows would give)."""
    c, clf = in_process
    cases = {clf: ([{"name": "input", "shape": [0, 1, 28, 28], "datatype": "UINT8", "data": []}],
                   {"probabilities": [0, 10], "top_k": [0, 3]}),
             "nile-lstm": ([{"name": "history", "shape": [0, 24], "datatype": "FP32", "data": []},
                            {"name": "horizon", "shape": [1], "datatype": "INT64", "data": [4]}],
                           {"quantiles": [0, 4, 5]})}
    for model, (inputs, expected) in cases.items():
        meta = {t["name"]: t["shape"] for t in c.get(f"/v2/models/{model}").json()["outputs"]}
        for binary in (False, True):
            r = c.post(f"/v2/models/{model}/infer", json={"inputs": inputs, "parameters": {"binary_data_output":
                                                                                               binary}})
            assert r.status_code == 200, r.text
            header = r.content[:int(r.headers[HEADER_LENGTH])] if binary else r.content
            shapes = {o["name"]: o["shape"] for o in orjson.loads(header)["outputs"]}
            assert shapes == expected, (model, binary, shapes)
            for name, shape in shapes.items():
                assert len(shape) == len(meta[name]) and all(m in (-1, s) for m, s in zip(meta[name], shape))


HEADER_LENGTH = "inference-header-content-length"
