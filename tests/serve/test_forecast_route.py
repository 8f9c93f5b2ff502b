"""The forecast verb over HTTP with real trained forecasters (an LSTM and a baseline): answers equal to the library's
load_run(...).forecast, the series route the playground plots, the cards, and a 4xx with a message for every bad
input."""

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import error_of

from genforge import runs
from genforge.errors import GenforgeError
from genforge.serve.adapters import ServedModel, load_models
from genforge.serve.app import create_app
from genforge.serve.limits import Limits

LSTM, NAIVE = "nile-lstm", "nile-naive"


@pytest.fixture(scope="module")
def client(forecast_served, quick_logreg_run):
    models = {**forecast_served, **load_models([quick_logreg_run], backend="torch")}  # and one without the verb
    with TestClient(create_app(models, limits=Limits(timeout_s=30))) as c:
        yield c


@pytest.fixture(scope="module")
def library(forecast_runs):
    """The same runs loaded by the library, as a notebook would."""
    return {LSTM: runs.load_run(forecast_runs[0]), NAIVE: runs.load_run(forecast_runs[1])}


@pytest.fixture(scope="module")
def nile(client):
    return client.get(f"/v1/models/{LSTM}/series").json()["series"][0]["values"]


def same(answer: list, expected: np.ndarray) -> None:
    np.testing.assert_array_equal(np.array(answer, dtype=np.float32), expected)


@pytest.mark.parametrize("name", [LSTM, NAIVE])
def test_answers_equal_the_librarys_forecast(client, library, nile, name):
    f = library[name].forecast(nile)
    body = client.post(f"/v1/models/{name}/forecast", json={"history": nile}).json()
    assert body["model"] == name and body["horizon"] == body["trained_horizon"] == 6 and body["recursive"] is False
    assert body["levels"] == [0.025, 0.1, 0.5, 0.9, 0.975] and body["backend"] == "torch"
    same(body["quantiles"], f.quantiles[0])  # one 1-D history: (horizon, Q) and (horizon,) lists
    same(body["forecast"], f.median[0])
    for coverage in (80, 95):
        lo, hi = f.interval(coverage)
        same(body[f"lo_{coverage}"], lo[0])
        same(body[f"hi_{coverage}"], hi[0])

    histories = [nile[-40:], nile[-41:-1], nile[-42:-2]]  # N equal-length histories, a horizon beyond the trained one
    f = library[name].forecast(histories, 15)
    body = client.post(f"/v1/models/{name}/forecast", json={"history": histories, "horizon": 15}).json()
    assert body["horizon"] == 15 and body["recursive"] is True
    assert np.array(body["quantiles"]).shape == (3, 15, 5) and np.array(body["lo_80"]).shape == (3, 15)
    same(body["quantiles"], f.quantiles)
    same(body["forecast"], f.median)


def test_the_series_route_gives_the_end_of_the_training_series(client, library):
    body = client.get(f"/v1/models/{LSTM}/series").json()
    assert body["model"] == LSTM and body["freq"] == "YS-JAN" and body["total_series"] == 1
    (series,) = body["series"]
    ds = library[LSTM].task.dataset(library[LSTM].config)
    assert series["id"] == "volume" and series["length"] == len(ds.series[0].values) == 100
    assert len(series["values"]) == len(series["times"]) == min(100, 10 * 24)
    assert series["values"] == ds.series[0].values[-len(series["values"]):].tolist()
    assert series["times"][-1] == "1970-01-01T00:00:00"


def test_cards_state_context_horizon_and_levels(client):
    cards = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert cards[LSTM]["forecast"] == {"context": 24, "horizon": 6, "levels": [0.025, 0.1, 0.5, 0.9, 0.975],
                                       "minimum_history": 24, "season": 1, "freq": "YS-JAN", "series": ["volume"],
                                       "features": [], "calendar": False, "covariates": []}
    assert cards[NAIVE]["forecast"]["minimum_history"] == 3  # a baseline reads any history of a season and a step
    assert "test_mase" in cards[LSTM]["metrics"] and "forecast" not in cards["blobs-logreg"]


BAD = [  # (body, what the message must say)
    ({}, "history: Field required"),
    ({"history": []}, "history must be a list of numbers"),
    ({"history": [[]]}, "history is empty"),
    ({"history": [1.0] * 23}, "needs at least 24"),
    ({"history": [1.0] * 23 + ["2"]}, "numbers only"),
    ({"history": [1.0] * 23 + [True]}, "numbers only"),
    ({"history": [1.0] * 23 + [None]}, "no null, NaN or infinity"),
    ({"history": [[1.0] * 24, [1.0] * 25]}, "different lengths (24 to 25)"),
    ({"history": [[[1.0] * 24]]}, "history must be a list of numbers"),
    ({"history": [1.0] * 23 + [[1.0]]}, "history must be a list of numbers"),
    ({"history": [1.0] * 23 + [1e39]}, "fit in float32"),
    ({"history": [[1.0] * 24] * 257}, "at most 256 histories"),
    ({"history": [1.0] * 100_001}, "at most 100,000 history values"),
    ({"history": [1.0] * 24, "horizon": 0}, "horizon: Input should be greater than or equal to 1"),
    ({"history": [1.0] * 24, "horizon": 121}, "horizon must be at most 120 (20 x the trained horizon 6"),
    ({"history": [1.0] * 24, "horizon": "soon"}, "horizon"),
    ({"history": [1.0] * 24, "steps": 6}, "steps: Extra inputs are not permitted"),
    ([1.0] * 24, "body"),
]


@pytest.mark.parametrize(("body", "says"), BAD, ids=range(len(BAD)))
def test_bad_inputs_get_a_4xx_that_says_what_to_fix(client, body, says):
    r = client.post(f"/v1/models/{LSTM}/forecast", json=body)
    assert r.status_code == 422 and says in error_of(r), r.text


def test_bad_bodies_and_models_get_a_4xx(client):
    def post(name, content, content_type="application/json"):
        return client.post(f"/v1/models/{name}/forecast", content=content, headers={"content-type": content_type})

    for raw in (b'{"history": [NaN, 1, 2]}', b'{"history": [1, 2, Infinity]}'):  # not JSON, yet parsers take them
        r = post(NAIVE, raw)
        assert r.status_code == 422 and "no null, NaN or infinity" in error_of(r)
    r = post(NAIVE, b'{"history": [1, 2, 3')
    assert r.status_code == 422 and "Invalid JSON" in error_of(r)
    r = post(NAIVE, b"1,2,3", "text/csv")
    assert r.status_code == 415 and "application/json" in error_of(r)
    r = post(NAIVE, b'{"history": [' + b"1.5," * 300_000 + b"1]}")
    assert r.status_code == 413 and "larger than 1,048,576 bytes" in error_of(r)
    r = post(NAIVE, b'{"history": [1, 2]}')  # a baseline's minimum: a season and a step, and at least 3
    assert r.status_code == 422 and "needs at least 3" in error_of(r)
    for response in (post("blobs-logreg", b'{"history": [1, 2, 3]}'), client.get("/v1/models/blobs-logreg/series")):
        assert response.status_code == 422
        assert error_of(response) == "blobs-logreg is a classify model: it offers classify, explain, not forecast"
    r = post("nope", b'{"history": [1, 2, 3]}')
    assert r.status_code == 404 and "GET /v1/models lists them" in error_of(r)
    r = client.post(f"/v1/models/{LSTM}/classify", json={"inputs": [[1.0] * 24]})
    assert r.status_code == 422 and "it offers forecast, not classify" in error_of(r)
    assert 'genforge_requests_total{route="forecast",status="422"}' in client.get("/metrics").text


def test_a_baseline_is_served_with_torch_whatever_the_history_length(forecast_runs, tmp_path):
    """A baseline reads histories of any length; its ONNX graph could read only `context` values, so auto serves it
    with torch (without exporting it) and onnxruntime is refused with the fix."""
    (model,) = load_models([forecast_runs[1]], backend="auto").values()
    assert model.backend == "torch" and not (forecast_runs[1] / "export").exists()
    with pytest.raises(GenforgeError, match="reads histories of any length.*--backend auto or torch"):
        load_models([forecast_runs[1]], backend="onnxruntime")


def test_series_that_no_longer_load_leave_the_forecast_route_working(forecast_runs, nile):
    run = runs.load_run(forecast_runs[1])
    data = run.config.data.model_copy(update={"name": "csv-series:/nonexistent/flows.csv"})
    run.config = run.config.model_copy(update={"data": data})
    with TestClient(create_app({"moved": ServedModel("moved", run)})) as c:
        r = c.get("/v1/models/moved/series")
        assert r.status_code == 404 and "the series moved trained on do not load here" in error_of(r)
        assert c.post("/v1/models/moved/forecast", json={"history": nile}).status_code == 200
