"""The verb table: every verb of every task is served by /v1, the Open Inference Protocol (v2) and the Python client
from its one definition (tasks/): the same inputs and bounds in the OpenAPI, the model card and the v2 metadata, and
the same error, word for word, for the same bad input, wherever it is sent."""

import math
from typing import Literal, get_origin

import numpy as np
import pytest
from annotated_types import Ge, Gt, Le
from fastapi.testclient import TestClient
from helpers import error_of, start_server

from genforge.client import Client, RequestRejected
from genforge.registry import MODELS
from genforge.serve.app import create_app
from genforge.serve.limits import Limits

VERBS = {v.name: v for spec in MODELS.values() for verb in spec.task.verbs for v in (verb, *verb.companions)}


@pytest.fixture(scope="module")
def every_kind(served, forecast_served, text_served):
    return {**served, **forecast_served, **text_served}


@pytest.fixture(scope="module")
def app(every_kind):
    with TestClient(create_app(every_kind, limits=Limits(timeout_s=30))) as c:
        yield c


@pytest.fixture(scope="module")
def client(classifier_run, gan_run, vae_run, forecast_runs, text_run):
    proc, url = start_server([classifier_run, gan_run, vae_run, forecast_runs[0], text_run], "--backend", "torch")
    yield Client(url, retries=0, timeout=60)
    proc.terminate()
    proc.wait(timeout=30)


def offering(models: dict, verb) -> str:
    """The first served model that offers the verb (or the verb it comes with)."""
    return next(name for name, m in models.items() if (verb.requires or verb) in m.verbs())


def bulk(model, verb):
    """A valid bulk input for the verb (zeros of the model's input, or a history long enough), else None."""
    if verb.array == "history":
        return [1.0] * model.minimum_history
    return [[0] * math.prod(model.input_shape)] if verb.array else None


def without_nulls(node):
    """A JSON schema as the OpenAPI document writes it: FastAPI leaves out every key whose value is null."""
    if isinstance(node, dict):
        return {k: without_nulls(v) for k, v in node.items() if v is not None}
    return [without_nulls(v) for v in node] if isinstance(node, list) else node


def bad_values(verb) -> list[tuple[str, object]]:
    """(field, value) just outside each bound of the verb's request model, and an unknown choice of each Literal."""
    bad = []
    for name, field in (verb.request.model_fields.items() if verb.request else ()):
        if name == verb.array:
            continue
        for m in field.metadata:
            if isinstance(m, Le):
                bad.append((name, m.le + 1))
            elif isinstance(m, Ge):
                bad.append((name, m.ge - 1))
            elif isinstance(m, Gt):
                bad.append((name, m.gt))
        if get_origin(field.annotation) is Literal:
            bad.append((name, "nope"))
    return bad


TABLE = [(verb, field, value) for verb in VERBS.values() for field, value in bad_values(verb)]


@pytest.mark.parametrize("verb", VERBS.values(), ids=VERBS)
def test_one_definition_describes_the_verb_everywhere(app, every_kind, verb):
    """The OpenAPI's bodies, the card's request and the v2 metadata are the verb's own definition."""
    name = offering(every_kind, verb)
    operation = app.get("/openapi.json").json()["paths"][f"/v1/models/{{name}}/{verb}"][verb.method.lower()]
    card = app.get(f"/v1/models/{name}").json()
    request = card["requests"][verb]
    if verb.request is not None:
        schema = verb.request.model_json_schema()
        assert request["schema"] == schema
        assert operation["requestBody"]["content"]["application/json"]["schema"] == without_nulls(schema)
        assert request["inputs"][0] == (verb.array or request["inputs"][0])
        assert set(request["inputs"]) == set(verb.request.model_fields)
    assert request["path"] == f"/v1/models/{{name}}/{verb}" and request["answer"] == verb.answer_field
    model = every_kind[name]
    if model.tensor_verb == verb:
        meta = app.get(f"/v2/models/{name}").json()
        tensors = verb.tensors(model)["inputs"]
        assert meta["inputs"] == [{k: t[k] for k in ("name", "datatype", "shape")} for t in tensors]


def _v2_request(model, verb, field: str, value) -> dict | None:
    """A v2 infer request whose `field` is `value`: as a tensor of shape [1] where the verb has one by that name,
    else as a request parameter beside its bulk input; None when v2 cannot carry it so (a string, a choice, a
    parameter of a verb without a bulk input)."""
    if isinstance(value, str) or isinstance(value, float) and not value.is_integer():
        return None
    tensors = {t["name"]: t for t in verb.tensors(model)["inputs"]}
    inputs = []
    if verb.array:  # the bulk input, valid
        spec = tensors["history" if verb.array == "history" else "input"]
        shape = [1, model.minimum_history] if verb.array == "history" else [1, *model.input_shape]
        inputs.append({"name": spec["name"], "shape": shape, "datatype": spec["datatype"],
                       "data": [1] * math.prod(shape)})
    if field in tensors:
        inputs.append({"name": field, "shape": [1], "datatype": tensors[field]["datatype"], "data": [int(value)]})
        return {"inputs": inputs}
    return {"inputs": inputs, "parameters": {field: int(value)}} if inputs else None  # a request has an input


@pytest.mark.parametrize("verb, field, value", TABLE, ids=[f"{v}-{f}={x}" for v, f, x in TABLE])
def test_the_same_bad_input_gets_the_same_error_everywhere(app, client, every_kind, verb, field, value):
    name = offering(every_kind, verb)
    model, base = every_kind[name], bulk(every_kind[name], verb)
    body = {**({verb.array: base} if verb.array else {}), field: value}
    v1 = app.post(f"/v1/models/{name}/{verb}", json=body)
    assert v1.status_code == 422, v1.text
    message = error_of(v1)
    assert message.startswith(f"{field}: "), message
    with pytest.raises(RequestRejected) as e:  # the client sends it as /v1 does: the server's own message back
        client.call(verb, *([base] if base is not None else []), model=name, **{field: value})
    assert e.value.status == 422 and e.value.message == message
    if model.tensor_verb == verb and (request := _v2_request(model, verb, field, value)) is not None:
        v2 = app.post(f"/v2/models/{name}/infer", json=request)
        if v2.status_code != 200:  # a field that v2 carries: the same status and words
            assert (v2.status_code, v2.json()["error"]) == (422, message), v2.text


def test_every_v2_verb_carries_its_bounded_fields(every_kind):
    """The fields v2 carries (tensors of shape [1], request parameters) are bounded by the verb's request model:
    at least one per verb, so that the comparison above is never empty."""
    for verb in {m.tensor_verb for m in every_kind.values()} - {None}:
        model = every_kind[offering(every_kind, verb)]
        carried = [f for f, v in bad_values(verb) if _v2_request(model, verb, f, v) is not None]
        assert carried, verb


def test_the_servers_limits_apply_to_every_protocol_alike(every_kind):
    """Caps that are the server's (Limits) rather than the definition's: the same message over /v1 and v2."""
    gan, lstm = offering(every_kind, VERBS["generate"]), offering(every_kind, VERBS["forecast"])
    clf = offering(every_kind, VERBS["classify"])
    history = [1.0] * every_kind[lstm].minimum_history
    cases = [  # (model, /v1 body, v2 inputs)
        (gan, {"n": 5}, [{"name": "n", "shape": [1], "datatype": "INT64", "data": [5]}]),
        (lstm, {"history": history, "horizon": 13},
         [{"name": "history", "shape": [1, len(history)], "datatype": "FP32", "data": history},
          {"name": "horizon", "shape": [1], "datatype": "INT64", "data": [13]}]),
        (clf, {"inputs": [[0] * 784] * 3}, [{"name": "input", "shape": [3, 1, 28, 28], "datatype": "UINT8",
                                            "data": [0] * 3 * 784}]),
    ]
    with TestClient(create_app(every_kind, limits=Limits(max_n=4, max_horizons=2, max_batch=2))) as c:
        for name, body, inputs in cases:
            verb = every_kind[name].tensor_verb
            v1 = c.post(f"/v1/models/{name}/{verb}", json=body)
            v2 = c.post(f"/v2/models/{name}/infer", json={"inputs": inputs})
            assert v1.status_code == v2.status_code == 422, (v1.text, v2.text)
            assert error_of(v1) == v2.json()["error"], (v1.text, v2.text)


def test_the_client_calls_every_verb_from_its_definition(client, every_kind):
    """Every verb through the client, by the card's definition: positional bulk input, the answer's field."""
    for verb in VERBS.values():
        name = offering(every_kind, verb)
        model = every_kind[name]
        base = bulk(model, verb)
        answer = client.call(verb, *([np.asarray(base)] if base is not None else []), model=name)
        if verb.answer_images:
            assert answer.dtype == np.uint8 and answer.ndim == 4, verb
        elif verb.answer_field:
            assert isinstance(answer, list) and len(answer) == 1, verb
        else:
            assert answer["model"] == name, verb


# The CLI's explain keeps the library's own check of --method (`error: unknown method 'lime'`, which tests/test_explain
# pins, and which load_run(...).explain(method=...) gives Python users too): the one option a command checks itself.
CLI_OWN_CHECK = {("explain", "method")}


def cli_option(command, field: str):
    """The click option of `genforge <command>` that carries the verb's `field`, else None."""
    return next((p for p in command.params if p.name == field), None)


def run_cli(monkeypatch, capfd, *args) -> tuple[int, str]:
    from genforge import cli

    monkeypatch.setattr("sys.argv", ["genforge", *map(str, args)])
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capfd.readouterr().err


CLI_TABLE = [(verb, field, value) for verb, field, value in TABLE if verb.command]


@pytest.mark.parametrize("verb, field, value", CLI_TABLE, ids=[f"{v.command}-{f}={x}" for v, f, x in CLI_TABLE])
def test_the_cli_refuses_what_the_server_refuses_in_the_same_words(app, every_kind, monkeypatch, capfd, verb, field,
                                                                   value):
    """`genforge <command>` takes the verb's fields as options and refuses a bad value with the server's words,
    before it loads anything (exit 2)."""
    import typer.main

    from genforge.cli import app as cli_app

    command = typer.main.get_command(cli_app).commands[verb.command]
    option = cli_option(command, field)
    if option is None or (verb.command, field) in CLI_OWN_CHECK:
        assert option is None or (verb.command, field) in CLI_OWN_CHECK
        return  # a field the command does not take (a pixel range, a response format: HTTP's)
    name = offering(every_kind, verb)
    base = bulk(every_kind[name], verb)
    v1 = app.post(f"/v1/models/{name}/{verb}", json={**({verb.array: base} if verb.array else {}), field: value})
    flag = max(option.opts, key=len)
    code, err = run_cli(monkeypatch, capfd, verb.command, "RUN", *(["x.png"] if verb.array == "inputs" else []),
                        *(["--out", "x.csv"] if verb.command == "forecast" else []), flag, value)
    assert code == 2, err
    assert f"Invalid value for '{flag}': {error_of(v1).removeprefix(f'{field}: ')} (see genforge" in err, err


def test_every_verb_has_a_command_and_its_options_are_the_verbs_fields():
    """Each verb that runs on a run directory names its command, and each option of that command that shares a name
    with one of the verb's fields is checked by the verb (but CLI_OWN_CHECK)."""
    import typer.main

    from genforge.cli import app as cli_app

    commands = typer.main.get_command(cli_app).commands
    for verb in VERBS.values():
        if verb.command is None:
            continue
        command = commands[verb.command]
        shared = [f for f in verb.request.model_fields if cli_option(command, f) is not None]
        assert shared, verb
        for field in shared:
            checked = cli_option(command, field).callback is not None
            assert checked != ((verb.command, field) in CLI_OWN_CHECK), (verb.command, field)
