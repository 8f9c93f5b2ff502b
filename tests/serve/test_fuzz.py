"""Schemathesis against the app's own OpenAPI schema, in-process (ASGI), a bounded number of examples per
operation and request encoding (JSON and multipart, where a route takes both): no 5xx answer and no response
that breaks the schema (status codes, content types, bodies).

The Open Inference Protocol's routes (/v2, serve/v2.py) are in the schema too, with their JSON and binary bodies.
Each model route is fuzzed twice: with the names schemathesis makes up (mostly 404s), and with the name pinned to
a served model that offers the verb, so that the bodies, form fields and query parameters reach the model's own
validation and inference. The pinned pass leaves out schemathesis's positive-data check: the schema cannot say
each model's input size, so a schema-valid image of the wrong size is rightly refused with a 422.

Beside the schema, hypothesis draws the inputs a schema makes unlikely, each class on purpose: v2 shapes with zero
and huge dimensions (JSON and binary), integers written in digits of every script in every integer field and header,
and the forecast end of a model that reads the calendar (/v1 and v2)."""

import json
import math
import re
from datetime import date, datetime

import numpy as np
import pandas as pd
import pytest
import schemathesis
from fastapi.testclient import TestClient
from helpers import png
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import positive_data_acceptance

from genforge.serve.app import create_app
from genforge.serve.limits import Limits

EXAMPLES = 10  # per operation and encoding (the targeted tests below draw 300 each)


def _model_for(path: str, names: tuple[str, str, str], forecaster: str) -> str | None:
    """The served model that offers the route's verb (the card route and explain: the classifier), None for other
    routes."""
    if "{name}" not in path:
        return None
    classifier, gan, vae = names
    verb = path.rsplit("/", 1)[-1]
    return {"generate": gan, "interpolate": gan, "reconstruct": vae, "forecast": forecaster,
            "series": forecaster}.get(verb, classifier)


def _fuzzer(operation, media_type: str | None, model: str | None, sent: set, answered: dict):
    """A hypothesis test of one operation in one encoding, its {name} pinned to `model` (None: made up)."""

    @given(case=operation.as_strategy(media_type=media_type))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case):
        excluded = []
        if model is not None:
            case.path_parameters = {**(case.path_parameters or {}), "name": model}
            if "version" in case.path_parameters:  # the v2 routes' /versions/{version} forms: the one version
                case.path_parameters["version"] = "1"
            excluded = [positive_data_acceptance]
        key = (case.operation.label, case.media_type, model)
        sent.add(key)
        answered.setdefault(key, set()).add(case.call_and_validate(excluded_checks=excluded).status_code)

    return fuzz


def test_api_never_answers_5xx_and_keeps_its_schema(served, names, forecast_served):
    forecaster = next(iter(forecast_served))  # the LSTM
    app = create_app({**served, **forecast_served}, limits=Limits(timeout_s=30))
    sent = set()  # (method and path, media type, pinned model or None) of every case sent
    answered = {}  # the same key -> the status codes answered
    with TestClient(app):  # runs the lifespan: batchers started, models warmed up, ready
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 20
        for operation in operations:
            pinned = _model_for(operation.path, names, forecaster)
            for model in [None, pinned] if pinned else [None]:
                for media_type in operation.get_request_payload_content_types() or [None]:
                    _fuzzer(operation, media_type, model, sent, answered)()
    for verb, model in (("classify", names[0]), ("explain", names[0]), ("reconstruct", names[2])):
        for media_type in ("application/json", "multipart/form-data"):
            assert (f"POST /v1/models/{{name}}/{verb}", media_type, None) in sent
            statuses = answered[(f"POST /v1/models/{{name}}/{verb}", media_type, model)]
            assert 404 not in statuses and statuses & {200, 422}, statuses  # the model itself answered
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):  # Open Inference Protocol
        for media_type in ("application/json", "application/octet-stream"):
            assert (f"POST {path}", media_type, None) in sent
            statuses = answered[(f"POST {path}", media_type, names[0])]
            assert 404 not in statuses and 400 in statuses, statuses  # the request reached the model's checks
    assert ("GET /v2/models/{name}/versions/{version}/ready", None, names[0]) in sent
    assert ("POST /v1/models/{name}/forecast", "application/json", None) in sent
    statuses = answered[("POST /v1/models/{name}/forecast", "application/json", forecaster)]
    assert 404 not in statuses and statuses & {200, 422}, statuses


# Hypothesis, beside the schema: the inputs a schema cannot make likely (10 examples of an integer field rarely
# draw '²'), each class drawn on purpose: v2 shapes with zero and huge dimensions, integers written in digits of
# every script in every integer field and header, and the forecast end of a model that reads the calendar.
FUZZED = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def calendar_model(tmp_path_factory):
    """A quick LSTM (1 epoch) on 10 years of monthly values that reads the calendar: it needs `end`."""
    from genforge import rundir
    from genforge.config import load_config
    from genforge.serve.adapters import load_models
    from genforge.training import train

    parent = tmp_path_factory.mktemp("calendar")
    months = pd.date_range("2000-01-01", periods=120, freq="MS")
    pd.DataFrame({"date": months.strftime("%Y-%m-%d"), "sales": 100 + 10 * np.sin(np.arange(120) * np.pi / 6)}) \
        .to_csv(parent / "sales.csv", index=False)
    cfg = load_config("csv-lstm", [f"data.name=csv-series:{parent / 'sales.csv'}", "data.series.calendar=true",
                                   "train.threads=1", "train.epochs=1", "model.hidden=8", "name=calendar"])
    run_dir = rundir.create_run(parent, cfg.name, cfg)
    train(cfg, run_dir, quiet=True)
    return load_models([run_dir], backend="torch")


@pytest.fixture(scope="module")
def every_kind(served, forecast_served, calendar_model):
    with TestClient(create_app({**served, **forecast_served, **calendar_model}, limits=Limits(timeout_s=30)),
                    raise_server_exceptions=False) as c:  # a 500 is an answer to count, not an exception
        yield c


def _v1_error(r) -> None:
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        body = r.json()
        assert set(body) == {"error"} and body["error"]["status"] == r.status_code, body


def _v2_error(r) -> None:
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        body = r.json()
        assert set(body) == {"error"} and isinstance(body["error"], str), body


SIZES = st.sampled_from([0, 1, 2, 24, 28, 2**31 - 1, 2**31, 2**62, 2**63, 2**64, 2**70]) | st.integers(0, 2**80)
ITEM = {"UINT8": 1, "FP32": 4, "INT64": 8}


@FUZZED
@given(shape=st.lists(SIZES, max_size=8), tensor=st.sampled_from([
    ("classifier", "input", "UINT8"), ("nile-lstm", "history", "FP32"), ("nile-lstm", "horizon", "INT64"),
    ("gan", "latent", "FP32"), ("calendar", "history", "FP32"), ("calendar", "end", "BYTES")]),
    binary=st.booleans())
def test_v2_shapes_with_zero_and_huge_dimensions(every_kind, names, shape, tensor, binary):
    """Any shape, in JSON or binary tensors: a 4xx in the protocol's shape, or outputs shaped as the metadata says
    with as many rows as were sent."""
    model, name, datatype = tensor
    model = {"classifier": names[0], "gan": names[1]}.get(model, model)
    count = math.prod(shape)
    small = count <= 4096  # elements to send; a larger count is sent without them (a 400 either way)
    if datatype == "BYTES":
        data, raw = [""] * count if small else [], bytes(4 * count) if small else b""
    else:
        data, raw = [0] * count if small else [], bytes(ITEM[datatype] * count) if small else b""
    spec = {"name": name, "shape": shape, "datatype": datatype}
    spec |= {"parameters": {"binary_data_size": len(raw)}} if binary else {"data": data}
    header = json.dumps({"inputs": [spec]}).encode()  # json: orjson refuses integers beyond 64 bits
    r = every_kind.post(f"/v2/models/{model}/infer", content=header + (raw if binary else b""),
                        headers={"inference-header-content-length": str(len(header))} if binary else {})
    _v2_error(r)
    if r.status_code == 200:
        promised = {t["name"]: t["shape"] for t in every_kind.get(f"/v2/models/{model}").json()["outputs"]}
        for out in r.json()["outputs"]:
            want = promised[out["name"]]
            assert len(out["shape"]) == len(want) and all(w in (-1, s) for w, s in zip(want, out["shape"])), out
            if name in ("input", "history"):
                assert out["shape"][0] == shape[0], out  # rows in, rows out: none for none


INTEGER_TEXT = st.one_of(
    st.text(st.characters(categories=("Nd", "No")), min_size=1, max_size=6),  # digits of every script, '²', '½'
    st.text(st.sampled_from("0123456789٣١２²𝟙+-_ .e"), min_size=1, max_size=8),
    st.integers(0, 300).map(str), st.just("9" * 5000))


def _plain(text: str) -> bool:
    """An integer as JSON writes one (leading zeros allowed): the rule every integer written as text follows."""
    return re.fullmatch(r"-?[0-9]+", text) is not None


@FUZZED
@given(text=INTEGER_TEXT, field=st.sampled_from([
    "content-length header", "v2 header", "classify JSON top_k", "classify form top_k", "classify query top_k",
    "explain JSON target", "explain form target", "explain form steps", "generate n", "generate seed", "generate label",
    "interpolate steps", "interpolate from_label", "reconstruct form label", "forecast horizon"]))
def test_every_integer_field_and_header_reads_the_digits_0_to_9(every_kind, names, text, field):
    """One rule for an integer written as text: the digits 0-9. Anything else is a 4xx, never a 500, never read as
    the number that int() (or pydantic) would have made of it."""
    clf, gan, vae = names
    c, image = every_kind, np.zeros((28, 28), np.uint8)
    upload = {"file": ("x.png", png(image), "image/png")}
    few = {"method": "integrated-gradients", "steps": "2"}
    if field == "content-length header":  # BodySizeLimit reads it before any route: a 413 when not a length
        r = c.post(f"/v1/models/{clf}/classify", content=b'{"inputs": [[0]]}', headers={
            "content-type": "application/json", "content-length": text.encode("latin-1", "replace")})
        return _v1_error(r)
    if field == "v2 header":
        body = b'{"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "UINT8", "data": [%s]}]}' % \
            b",".join([b"0"] * 784)
        raw = text.encode("latin-1") if max(map(ord, text)) < 256 else text.encode()  # as HTTP carries it
        r = c.post(f"/v2/models/{clf}/infer", content=body, headers={"inference-header-content-length": raw})
        _v2_error(r)
        assert (r.status_code == 200) == (text == str(len(body))), r.text
        return
    verb, where, key = field.split()[0], field.split()[-2], field.split()[-1]
    model = {"classify": clf, "explain": clf, "generate": gan, "interpolate": gan, "reconstruct": vae,
             "forecast": "nile-lstm"}[verb]
    path = f"/v1/models/{model}/{verb}"
    if where == "form":
        r = c.post(path, files=upload, data={**(few if verb == "explain" else {}), key: text})
    elif where == "query":
        r = c.post(path, params={key: text}, json={"inputs": [image.tolist()]})
    elif verb == "forecast":
        r = c.post(path, json={"history": [1.0] * 24, key: text})
    elif verb in ("classify", "explain"):
        r = c.post(path, json={"inputs": [image.tolist()], **(few if verb == "explain" else {}), key: text})
    else:
        r = c.post(path, json={"format": "array", **({"n": "2"} if verb == "generate" else {"steps": "2"}),
                               key: text})
    _v1_error(r)
    if not _plain(text):
        assert r.status_code == 422, (field, text, r.text)


MONTH_STARTS = st.dates(date(1, 1, 1), date(9999, 12, 1)).map(lambda d: d.replace(day=1).isoformat())
ENDS = st.one_of(MONTH_STARTS, st.datetimes().map(datetime.isoformat), st.text(max_size=40), st.sampled_from(
    ["", "NaT", "nan", "now", "today", "1e30", "9999-12-31", "0001-01-01", "2262-04-01", "1677-10-01", "2500-01-01",
     "２０１９-１２-０１", "2019-12-01", "2019-12-01T00:00:00+05:00", "99999999999999999999"]))


@FUZZED
@given(end=ENDS, v2=st.booleans())
def test_the_forecast_end_is_placed_on_the_calendar_or_refused(every_kind, calendar_model, end, v2):
    """The forecast route's end (and v2's) on a model that reads the calendar: a 422 that says why, or a forecast
    for an end on its monthly grid inside the span its calendar features are computed for (a far date once
    wrapped round to another and answered that one's numbers)."""
    (name, model), = calendar_model.items()
    history = [100.0 + i % 12 for i in range(model.minimum_history)]
    if v2:
        r = every_kind.post(f"/v2/models/{name}/infer", json={"inputs": [
            {"name": "history", "shape": [1, len(history)], "datatype": "FP32", "data": history},
            {"name": "end", "shape": [1], "datatype": "BYTES", "data": [end]}]})
        _v2_error(r)
    else:
        r = every_kind.post(f"/v1/models/{name}/forecast", json={"history": history, "end": end})
        _v1_error(r)
    assert r.status_code in (200, 422), r.text
    if r.status_code == 200:
        last = pd.Timestamp(end)
        last = last.tz_convert(None) if last.tzinfo else last  # a time with an offset is placed in UTC
        assert end.isascii() and pd.Timestamp("1678-01-01") <= last <= pd.Timestamp("2261-12-31"), end
        assert last.day == 1, end  # a month's first day: pandas' MS grid (its calendar features read the month)
