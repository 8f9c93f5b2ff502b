"""A text classifier served: /v1 classify takes strings and the Open Inference Protocol a BYTES tensor, both answer
what the model itself gives for the same entries, and a language model and a text classifier each offer only their
own verbs; explain takes texts for a text classifier at the route of the image classifiers' explain."""

import pytest
import torch
from fastapi.testclient import TestClient

from genforge.data.tokens import tokenizer_of
from genforge.runs import load_run
from genforge.serve.adapters import load_models
from genforge.serve.app import create_app
from genforge.tasks.language import entry_tokens

TEXTS = ["Love is a many splendored thing.", "A computer without COBOL and FORTRAN is like a piece of chocolate cake "
         "without ketchup or mustard.", ""]


@pytest.fixture(scope="module", params=["torch", "onnxruntime"])
def client(request, text_classifier_run, text_run):
    with TestClient(create_app(load_models([text_classifier_run, text_run], backend=request.param))) as c:
        yield c


@pytest.fixture(scope="module")
def expected(text_classifier_run) -> torch.Tensor:
    """The run's own probabilities for TEXTS, as `genforge evaluate` scores test entries."""
    run = load_run(text_classifier_run)
    with torch.inference_mode():
        x = entry_tokens(tokenizer_of(run.meta), TEXTS, run.model.context)
        return run.model.probabilities(run.model(x)).float()


def test_v1_classifies_strings_as_the_model_does(client, expected):
    (card,) = [m for m in client.get("/v1/models").json()["models"] if m["task"] == "language" and m["classes"]]
    assert card["verbs"] == ["classify", "explain"] and card["tensors"]["inputs"][0]["datatype"] == "BYTES"
    assert card["requests"]["explain"]["inputs"] == ["target", "inputs", "steps"]  # texts, not images
    answer = client.post(f"/v1/models/{card['name']}/classify", json={"inputs": TEXTS, "top_k": 2})
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert len(predictions) == 3 and all(len(p["top_k"]) == 2 for p in predictions)
    got = torch.tensor([p["probabilities"] for p in predictions])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert [p["label"] for p in predictions] == [card["classes"][i] for i in expected.argmax(1).tolist()]


def test_v2_takes_a_bytes_tensor(client, expected):
    name = next(m["name"] for m in client.get("/v1/models").json()["models"] if m["classes"])
    body = {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [3], "data": TEXTS}]}
    answer = client.post(f"/v2/models/{name}/infer", json=body)
    assert answer.status_code == 200, answer.text
    (probabilities,) = [o for o in answer.json()["outputs"] if o["name"] == "probabilities"]
    assert probabilities["shape"] == [3, expected.shape[1]]
    torch.testing.assert_close(torch.tensor(probabilities["data"]).view(3, -1), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("body", "message"), [
    ({"inputs": [[1, 2, 3]]}, "inputs must be a list of strings"),
    ({"inputs": []}, "inputs: Value should have at least 1 item"),
    ({"inputs": ["x"] * 257}, "at most 256"),
])
def test_a_text_classifier_refuses_what_is_not_text_in_one_line(client, body, message):
    name = next(m["name"] for m in client.get("/v1/models").json()["models"] if m["classes"])
    answer = client.post(f"/v1/models/{name}/classify", json=body)
    assert answer.status_code == 422 and message in answer.json()["error"]["message"], answer.text


def test_each_model_offers_only_its_own_verb(client):
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    language_model = next(name for name, m in models.items() if not m["classes"])
    classifier = next(name for name, m in models.items() if m["classes"])
    answer = client.post(f"/v1/models/{language_model}/classify", json={"inputs": ["hello"]})
    assert answer.status_code == 422 and "offers complete, not classify" in answer.json()["error"]["message"]
    answer = client.post(f"/v1/models/{classifier}/complete", json={"prompt": "hello"})
    assert answer.status_code == 409 and "does not generate text" in answer.json()["error"]["message"]


def test_explain_answers_each_character_of_each_text_as_the_command_line_does(client, text_classifier_run):
    from genforge.language.attribution import explain_texts

    name = next(m["name"] for m in client.get("/v1/models").json()["models"] if m["classes"])
    texts = ["Love is blind; café!", "A computer"]
    answer = client.post(f"/v1/models/{name}/explain", json={"inputs": texts, "target": 1, "steps": 16})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["backend"] == "torch" and body["steps"] == 16
    run = load_run(text_classifier_run)
    for text, got, want in zip(texts, body["explanations"], explain_texts(run.model, tokenizer_of(run.meta), texts, 1,
                                                                          16)):
        assert got["characters"] == list(text) and got["target"]["index"] == 1
        torch.testing.assert_close(torch.tensor(got["attributions"]), torch.tensor(want.attributions), atol=1e-4,
                                   rtol=1e-3)
        torch.testing.assert_close(torch.tensor(got["rollout"]), torch.tensor(want.rollout), atol=1e-5, rtol=1e-4)
        assert got["label"] == run.meta["classes"][want.predicted]


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"inputs": ["x"] * 17}, 422, "at most 16 texts per explain request"),
    ({"inputs": ["x"], "steps": 65}, 422, "steps must be at most 64 on this server"),
    ({"inputs": ["x"], "target": "nonsense"}, 422, "no class labelled 'nonsense'"),
    ({"inputs": [[0.5, 0.5]]}, 422, "inputs.0: Input should be a valid string"),
])
def test_explain_refuses_bad_texts_in_one_line(client, body, status, message):
    name = next(m["name"] for m in client.get("/v1/models").json()["models"] if m["classes"])
    answer = client.post(f"/v1/models/{name}/explain", json=body)
    assert answer.status_code == status and message in answer.json()["error"]["message"], answer.text


def test_two_verbs_of_one_name_stay_apart_in_what_is_cached_by_verb():
    from genforge.serve.v1 import describe
    from genforge.tasks.classify import EXPLAIN
    from genforge.tasks.language_verbs import EXPLAIN_TEXT

    assert EXPLAIN == "explain" == EXPLAIN_TEXT and EXPLAIN != EXPLAIN_TEXT  # each equals its name, not the other
    assert "format" in describe(EXPLAIN)["inputs"]  # the image form, described first in this process
    assert describe(EXPLAIN_TEXT)["inputs"] == ["target", "inputs", "steps"]
