"""POST /v1/models/{name}/explain through the real app (TestClient) on the tiny trained runs: the classify route's
inputs and checks, the answer's shapes, the target by index or label, the PNG overlays, the caps, the verbs and the
model that cannot be explained. Few steps everywhere: the attributions' quality is tests/test_explain.py's."""

import dataclasses
import io
import threading

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from helpers import error_of, png
from PIL import Image

from genforge.data import load_dataset
from genforge.serve.adapters import ServedModel, load_models
from genforge.serve.app import create_app
from genforge.serve.limits import Limits

FEW = {"method": "integrated-gradients", "steps": 4}  # 4 path points: milliseconds on the tiny CNN


@pytest.fixture(scope="module")
def images():
    return load_dataset("fashion-mnist", progress=False).test_x[:4, 0].numpy()  # (4, 28, 28) uint8


@pytest.fixture(scope="module")
def classifier_alone(classifier_run):
    """The classifier alone behind the app (no generators to train first), a 500 answered rather than raised."""
    (name, model), = load_models([classifier_run], backend="torch").items()
    with TestClient(create_app({name: model}), raise_server_exceptions=False) as c:
        yield c, name


def test_the_answer_has_each_inputs_attributions_in_its_shape(client, names, images):
    clf = names[0]
    r = client.post(f"/v1/models/{clf}/explain", json={"inputs": images[:3].tolist(), **FEW})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["method"] == "integrated-gradients" and body["steps"] == 4 and body["backend"] == "torch"
    assert body["precision"] in ("fp32", "bf16")  # bf16 autocast where the device runs it fast
    classified = client.post(f"/v1/models/{clf}/classify", json={"inputs": images[:3].tolist()}).json()
    for e, c in zip(body["explanations"], classified["predictions"]):
        assert np.array(e["attributions"]).shape == (1, 28, 28)  # the model's input shape, as its card says
        assert e["index"] == c["index"] and e["label"] == c["label"]
        assert np.allclose(e["probabilities"], c["probabilities"], atol=1e-4)
        assert e["target"]["index"] == e["index"] and e["target"]["probability"] == e["probabilities"][e["index"]]
        assert np.abs(e["attributions"]).sum() > 0


def test_the_target_is_chosen_by_index_or_label(client, names, images):
    clf, image = names[0], images[:1].tolist()
    by_index = client.post(f"/v1/models/{clf}/explain", json={"inputs": image, "target": 1, **FEW}).json()
    by_label = client.post(f"/v1/models/{clf}/explain", json={"inputs": image, "target": "Trouser", **FEW}).json()
    upload = client.post(f"/v1/models/{clf}/explain", files={"file": ("x.png", png(images[0]), "image/png")},
                         data={"target": "1", **{k: str(v) for k, v in FEW.items()}}).json()  # "1": an index
    other = client.post(f"/v1/models/{clf}/explain", json={"inputs": image, "target": 7, **FEW}).json()
    assert by_index["explanations"][0]["target"] == {"index": 1, "label": "Trouser",
                                                     "probability": by_index["explanations"][0]["probabilities"][1]}
    a = [np.array(b["explanations"][0]["attributions"]) for b in (by_index, by_label, upload, other)]
    assert np.allclose(a[0], a[1]) and np.allclose(a[0], a[2], atol=1e-5) and not np.allclose(a[0], a[3])


def test_png_is_one_overlay_or_a_grid_of_them(client, names, images):
    clf = names[0]
    one = client.post(f"/v1/models/{clf}/explain", json={"inputs": images[:1].tolist(), "format": "png",
                                                         "method": "saliency"})
    assert one.status_code == 200 and one.headers["content-type"] == "image/png"
    overlay = Image.open(io.BytesIO(one.content))
    assert overlay.size == (224, 224) and overlay.mode == "RGB"  # 28 x 8, as `genforge explain` draws them
    assert one.headers["x-method"] == "saliency" and one.headers["x-target"] == one.headers["x-predicted"]
    upload = client.post(f"/v1/models/{clf}/explain", files={"file": ("x.png", png(images[0]), "image/png")},
                         data={"format": "png", "method": "grad-cam", "target": "Sandal"})
    assert upload.status_code == 200 and upload.headers["x-target"] == "5"
    assert Image.open(io.BytesIO(upload.content)).size == (224, 224)
    three = client.post(f"/v1/models/{clf}/explain", json={"inputs": images[:3].tolist(), "format": "png", **FEW})
    assert Image.open(io.BytesIO(three.content)).size == ((3 * 30 + 2) * 8, (30 + 2) * 8)  # 2-pixel gaps, 8x
    assert len(three.headers["x-target"].split(",")) == 3


@pytest.mark.parametrize("body, message", [
    ({"method": "lime"}, "method: Input should be 'integrated-gradients'"),
    ({"target": 10}, "target: class 10 is out of range"),
    ({"target": "Cat"}, "no class labelled 'Cat'"),
    ({"target": -1}, "target: Value error, give a class index"),
    ({"target": True}, "target: Value error, give a class index"),
    ({**FEW, "steps": 65}, "steps must be at most 64 on this server"),
    ({**FEW, "steps": 1000}, "steps: Input should be less than or equal to 256"),
    ({"steps": 4, "method": "saliency"}, "saliency takes no steps"),
    ({"format": "gif"}, "format: Input should be"),
    ({"top_k": 3}, "top_k: Extra inputs are not permitted"),
    ({"inputs": [[0] * 784] * 17}, "at most 16 inputs per explain request, got 17"),
    ({"inputs": [[0] * 783]}, "784 values"),
    ({"inputs": [[300] * 784]}, "0-255"),
    ({"inputs": []}, "inputs"),
])
def test_bad_requests_are_a_422_with_a_message(client, names, body, message):
    r = client.post(f"/v1/models/{names[0]}/explain", json={"inputs": [[0] * 784], **body})
    assert r.status_code == 422 and message in error_of(r), r.text


@pytest.mark.parametrize("target", ["٣", "１", "²", "1²", "𝟙", "+1", " 1", "1_0", "9" * 150])
def test_a_target_index_is_written_in_the_digits_0_to_9(classifier_alone, images, target):
    """str.isdigit() passes each of these, and int() reads some ('٣' as class 3), refuses others ('²': a 500 before)
    or takes signs and spaces: a class index is the digits 0-9, anything else a label, in JSON and in a form."""
    c, clf = classifier_alone
    by_json = c.post(f"/v1/models/{clf}/explain", json={"inputs": images[:1].tolist(), "target": target, **FEW})
    by_form = c.post(f"/v1/models/{clf}/explain", files={"file": ("x.png", png(images[0]), "image/png")},
                     data={"target": target, **{k: str(v) for k, v in FEW.items()}})
    for r in (by_json, by_form):
        assert r.status_code == 422 and f"no class labelled {target!r}" in error_of(r), r.text


def test_the_route_checks_like_classify(client, names):
    clf, gan, _ = names
    r = client.post(f"/v1/models/{clf}/explain", files={"file": ("x.gif", b"GIF89a" + b"\0" * 64, "image/gif")})
    assert r.status_code == 422 and "PNG or JPEG" in error_of(r)
    r = client.post(f"/v1/models/{clf}/explain", content=b"hello", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "application/json" in error_of(r)
    r = client.post(f"/v1/models/{clf}/explain", files={"file": ("x.png", png(np.zeros((28, 28), np.uint8)),
                                                                  "image/png")}, data={"steps": "x"})
    assert r.status_code == 422 and "steps: Input should be a valid integer" in error_of(r)
    r = client.post(f"/v1/models/{gan}/explain", json={"inputs": [[0] * 784]})
    assert r.status_code == 422 and "offers generate, interpolate, not explain" in error_of(r)
    r = client.post("/v1/models/nope/explain", json={"inputs": [[0] * 784]})
    assert r.status_code == 404 and "GET /v1/models" in error_of(r)
    assert "explain" in client.get(f"/v1/models/{clf}").json()["verbs"]
    assert "explain" not in client.get(f"/v1/models/{gan}").json()["verbs"]
    assert 'route="explain"' in client.get("/metrics").text  # its own metrics label, not "other"


def test_the_batch_and_steps_caps_come_from_the_limits(served, names):
    clf = names[0]
    with TestClient(create_app({clf: served[clf]}, limits=Limits(max_explain_batch=2, max_explain_steps=3))) as c:
        r = c.post(f"/v1/models/{clf}/explain", json={"inputs": [[0] * 784] * 3, "method": "saliency"})
        assert r.status_code == 422 and "at most 2 inputs" in error_of(r)
        r = c.post(f"/v1/models/{clf}/explain", json={"inputs": [[0] * 784], **FEW})
        assert r.status_code == 422 and "at most 3 on this server" in error_of(r)
        body = {"inputs": [[0] * 784] * 2, **FEW, "steps": 3}
        assert c.post(f"/v1/models/{clf}/explain", json=body).status_code == 200


def test_feature_vectors_and_a_model_without_feature_maps(tabular_run):
    (name, model), = load_models([tabular_run], backend="torch").items()
    with TestClient(create_app({name: model})) as c:
        r = c.post(f"/v1/models/{name}/explain", json={"inputs": [[0.5, -1.0], [2.0, 0.0]], "method": "occlusion"})
        assert r.status_code == 200, r.text
        assert [np.array(e["attributions"]).shape for e in r.json()["explanations"]] == [(2,), (2,)]
        r = c.post(f"/v1/models/{name}/explain", json={"inputs": [[0.5, -1.0]], "method": "grad-cam"})
        assert r.status_code == 422 and "grad-cam needs a model with feature maps" in error_of(r)
        r = c.post(f"/v1/models/{name}/explain", json={"inputs": [[0.5, -1.0]], "format": "png"})
        assert r.status_code == 422 and "takes feature vectors: ask for format array" in error_of(r)
        r = c.post(f"/v1/models/{name}/explain", json={"inputs": [[3e38, -3e38]]})  # finite in float32; inf inside
        assert r.status_code == 422 and "not finite" in error_of(r)


def test_a_run_with_onnx_files_only_is_a_409_that_says_why(served, names, tmp_path):
    """An int8 run holds no torch weights: the route says so, and its card does not offer explain."""
    clf = names[0]
    run = dataclasses.replace(served[clf].run, backend="onnxruntime", path=tmp_path / "int8",
                              lineage={"parent_name": "fashion-parent"})
    onnx_only = ServedModel(clf, run)
    assert onnx_only.verbs() == ("classify",)
    with TestClient(create_app({clf: onnx_only})) as c:
        r = c.post(f"/v1/models/{clf}/explain", json={"inputs": [[0] * 784]})
        assert r.status_code == 409 and "explain its parent run fashion-parent" in error_of(r)
        assert c.post(f"/v1/models/{clf}/classify", json={"inputs": [[0] * 784]}).status_code == 200


def test_calls_on_one_explainer_take_turns(served, names, images):
    """Grad-CAM hooks the explainer's model while it runs: concurrent calls wait for each other's hooks to go."""
    model = dataclasses.replace(served[names[0]])  # an explainer of its own
    x = torch.from_numpy(images[:, None])
    expected = model.explain(x, "grad-cam", None, None).attributions
    inside, peak, results = [0], [0], []
    explain = model._explainer.__call__

    def counted(*args):  # the explainer's own call, counted while it runs
        inside[0] += 1
        peak[0] = max(peak[0], inside[0])
        try:
            return explain(*args)
        finally:
            inside[0] -= 1

    model._explainer = type("Counted", (), {"__call__": staticmethod(counted), "layer": model._explainer.layer})()
    threads = [threading.Thread(target=lambda: results.append(model.explain(x, "grad-cam", None, None)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 1 and len(results) == 4
    assert all(torch.equal(r.attributions, expected) for r in results)


def test_a_model_served_with_onnxruntime_is_explained_with_its_torch_weights(classifier_run, served, names, images):
    """The live server's default backend: ONNX Runtime classifies, the run's torch weights explain (loaded once)."""
    (name, ort), = load_models([classifier_run], backend="onnxruntime").items()  # exported once per session
    assert ort.backend == "onnxruntime" and "explain" in ort.verbs()
    x = torch.from_numpy(images[:2, None])
    with TestClient(create_app({name: ort})) as c:
        r = c.post(f"/v1/models/{name}/explain", json={"inputs": images[:2].tolist(), **FEW})
        assert r.status_code == 200 and r.json()["backend"] == "torch", r.text  # gradients: torch's
    expected = dataclasses.replace(served[names[0]]).explain(x, "integrated-gradients", None, 4).attributions
    assert np.allclose([e["attributions"] for e in r.json()["explanations"]], expected.numpy(), atol=1e-6)
