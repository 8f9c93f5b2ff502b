"""Covariates known in the future and calendar features: read from a CSV (wide and long, with their future rows),
learned by the recurrent forecaster (it beats itself without them on a series they drive), forecast with from the
command line, the library, ONNX Runtime and HTTP, and refused in one line when missing or short."""

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from helpers import run_cli

from genforge import rundir, runs
from genforge.config import load_config
from genforge.data.series import SeriesOptions, calendar_features, calendar_names, load_series
from genforge.errors import GenforgeError
from genforge.training import train

MONTHS, AHEAD = 240, 12
FAST = ["train.threads=1", "train.epochs=100", "model.hidden=16", "train.lr=0.01", "train.batch_size=16"]


def promo_frame(seed=0, effect=25.0):
    """Monthly sales that a promotion lifts by `effect` (a season and noise beside it), with the promotions of the
    12 months after the last sale already planned: the rows a user appends to forecast with covariates."""
    rng = np.random.default_rng(seed)
    promo = (rng.random(MONTHS + AHEAD) < 0.3).astype(float)
    t = np.arange(MONTHS)
    sales = 100 + 10 * np.sin(2 * np.pi * t / 12) + effect * promo[:MONTHS] + rng.normal(0, 1, MONTHS)
    times = pd.date_range("2000-01-01", periods=MONTHS + AHEAD, freq="MS").strftime("%Y-%m-%d")
    return pd.DataFrame({"date": times, "sales": [*sales, *[None] * AHEAD], "promo": promo})


@pytest.fixture(scope="module")
def promo_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("promo") / "sales.csv"
    promo_frame().to_csv(path, index=False)
    return path


def _train(parent, csv, *overrides):
    cfg = load_config("csv-lstm", [f"data.name=csv-series:{csv}", *FAST, *overrides])
    run_dir = rundir.create_run(parent, cfg.name, cfg)
    return run_dir, train(cfg, run_dir, quiet=True)


@pytest.fixture(scope="module")
def promo_runs(tmp_path_factory, promo_csv):
    """The same LSTM recipe on the same sales, with the promotions and calendar features, and without them."""
    parent = tmp_path_factory.mktemp("runs")
    return (_train(parent, promo_csv, "data.series.covariates=[promo]", "data.series.calendar=true"),
            _train(parent, promo_csv))


def test_calendar_features_place_each_time_in_its_cycle():
    assert calendar_names("MS") == ["month_sin", "month_cos"]
    assert calendar_names("QS") == ["quarter_sin", "quarter_cos"]
    assert calendar_names("D") == ["weekday_sin", "weekday_cos", "yearday_sin", "yearday_cos"]
    assert calendar_names("YS") == []  # a year has no position in a longer cycle here
    months = calendar_features(pd.date_range("2001-01-01", periods=12, freq="MS").to_numpy(), "MS")
    np.testing.assert_allclose(months[0], [0, 1], atol=1e-12)  # January
    np.testing.assert_allclose(months[6], [0, -1], atol=1e-12)  # July, opposite
    distance = np.linalg.norm(months - np.roll(months, 1, 0), axis=1)
    np.testing.assert_allclose(distance, distance[0])  # December is as close to January as January to February


def test_covariates_are_read_with_their_planned_future(promo_csv):
    ds = load_series(f"csv-series:{promo_csv}", SeriesOptions(covariates=["promo"], calendar=True))
    (s,) = ds.series  # promo is a covariate, not a second series
    assert s.id == "sales" and len(s.values) == MONTHS and ds.known_ahead(s) == AHEAD
    assert s.report["known_ahead"] == AHEAD and s.report["trimmed"] == 0  # future rows are not missing values
    assert ds.feature_names == ["month_sin", "month_cos", "promo"]
    features = ds.features(s, AHEAD)
    assert features.shape == (MONTHS + AHEAD, 3)
    np.testing.assert_array_equal(features[:, 2], promo_frame()["promo"].to_numpy())
    with pytest.raises(GenforgeError, match="known 12 step"):
        ds.features(s, AHEAD + 1)


def test_long_format_reads_each_series_covariate(tmp_path):
    a, b = promo_frame(seed=1), promo_frame(seed=2)
    long = pd.concat([a.assign(store="a"), b.assign(store="b")])
    long.to_csv(tmp_path / "long.csv", index=False)
    ds = load_series(f"csv-series:{tmp_path / 'long.csv'}",
                     SeriesOptions(id_column="store", target=["sales"], covariates=["promo"]))
    assert [s.id for s in ds.series] == ["a", "b"]
    for s, frame in zip(ds.series, (a, b)):
        np.testing.assert_array_equal(s.exog[:, 0], frame["promo"].to_numpy())


@pytest.mark.parametrize("fill, error", [("interpolate", None),
                                         ("refuse", "covariate 'promo' has no value at 2000-03")])
def test_a_missing_covariate_follows_the_fill_policy(tmp_path, fill, error):
    frame = promo_frame()
    frame.loc[2, "promo"] = None
    frame.to_csv(tmp_path / "gap.csv", index=False)
    spec, opts = f"csv-series:{tmp_path / 'gap.csv'}", SeriesOptions(covariates=["promo"], fill=fill)
    if error:
        with pytest.raises(GenforgeError, match=error):
            load_series(spec, opts)
    else:
        (s,) = load_series(spec, opts).series
        assert s.exog[2, 0] == pytest.approx((frame.promo[1] + frame.promo[3]) / 2)


def test_bad_covariate_options_end_in_one_line(promo_csv, tmp_path, capsys, monkeypatch):
    frame = promo_frame()
    frame.loc[0, "promo"] = None  # nothing to fill the first month from
    frame.to_csv(tmp_path / "first.csv", index=False)
    for spec, option, message in [
        (promo_csv, "data.series.covariates=[price]", "no column 'price'; the columns are date, sales, promo"),
        (tmp_path / "first.csv", "data.series.covariates=[promo]", "covariate 'promo' has no value at 2000-01-01"),
    ]:
        code, _, err = run_cli(capsys, monkeypatch, "train", "csv-lstm", f"data.name=csv-series:{spec}", option,
                               "--runs-dir", str(tmp_path / "runs"), "--quiet")
        assert code == 2 and message in err, err
        assert len(err.strip().splitlines()) <= 2  # the run directory line, then the error


def test_a_covariate_that_drives_the_series_is_learned(promo_runs):
    (with_run, with_summary), (_, without_summary) = promo_runs
    config = runs.load_run(with_run).config
    assert config.model.covariates == ["month_sin", "month_cos", "promo"]  # resolved into config.yaml
    # the promotions lift sales by 25 (a typical step is ~10): the model that sees them errs far less
    assert with_summary["test_mase"] < 0.6 * without_summary["test_mase"], (with_summary, without_summary)


def test_forecasts_use_the_planned_covariates_everywhere(promo_runs, promo_csv, tmp_path, capsys, monkeypatch):
    (run_dir, _), (plain_dir, _) = promo_runs
    frame = promo_frame()
    history, promo = frame["sales"].dropna().to_numpy(), frame["promo"].to_numpy()
    loaded = runs.load_run(run_dir)
    library = loaded.forecast(history, end="2019-12-01", covariates={"promo": promo})

    code, _, err = run_cli(capsys, monkeypatch, "forecast", str(run_dir), "--out", str(tmp_path / "f.csv"))
    assert code == 0, err
    table = pd.read_csv(tmp_path / "f.csv")
    assert list(table["time"]) == list(frame["date"][MONTHS:])
    np.testing.assert_allclose(table["forecast"], library.median[0], rtol=1e-5)

    # the planned promotions move the forecast by about their effect
    none, every = (loaded.forecast(history, end="2019-12-01", covariates={"promo": np.r_[promo[:MONTHS], [v] * 12]})
                   for v in (0.0, 1.0))
    assert 15 < float(np.mean(every.median - none.median)) < 35

    code, _, err = run_cli(capsys, monkeypatch, "forecast", str(run_dir), "--out", str(tmp_path / "g.csv"),
                           "--horizon", "13")
    assert code == 2 and "known 12 step(s) after its last value, not 13" in err, err

    for kwargs, message in [
        ({"covariates": {"promo": promo}}, "give the time of the history's last value"),
        ({"end": "2019-12-01"}, "reads covariate 'promo'"),
        ({"end": "2019-12-15", "covariates": {"promo": promo}}, "not on this model's MS grid"),
        ({"end": "2019-12-01", "covariates": {"promo": promo[:-1]}}, "it needs 252 values"),
        ({"end": "2019-12-01", "covariates": {"promo": promo, "price": promo}}, "unknown covariate 'price'"),
    ]:
        with pytest.raises(GenforgeError, match=message):
            loaded.forecast(history, **kwargs)
    with pytest.raises(GenforgeError, match="reads no covariates"):
        runs.load_run(plain_dir).forecast(history, covariates={"promo": promo})

    code, _, err = run_cli(capsys, monkeypatch, "export", str(run_dir), "--dynamic-batch")
    assert code == 0, err
    onnx = runs.load_run(run_dir, backend="onnxruntime").forecast(history, 30, end="2019-12-01",
                                                                   covariates={"promo": np.r_[promo, [0.0] * 18]})
    eager = loaded.forecast(history, 30, end="2019-12-01", covariates={"promo": np.r_[promo, [0.0] * 18]})
    assert onnx.recursive and np.abs(onnx.quantiles - eager.quantiles).max() <= 1e-4 * np.abs(eager.quantiles).max()


def test_the_forecast_route_takes_the_end_and_the_covariates(promo_runs):
    from genforge.serve.adapters import load_models
    from genforge.serve.app import create_app

    run_dir = promo_runs[0][0]
    frame = promo_frame()
    history, promo = frame["sales"].dropna().tolist(), frame["promo"].tolist()
    models = load_models([run_dir], backend="torch")
    (name,) = models
    with TestClient(create_app(models)) as client:
        card = next(m for m in client.get("/v1/models").json()["models"] if m["name"] == name)["forecast"]
        assert card["calendar"] and card["covariates"] == ["promo"] and card["features"][-1] == "promo"
        shown = client.get(f"/v1/models/{name}/series").json()["series"][0]
        assert len(shown["covariates"]["promo"]) == len(shown["values"]) + AHEAD  # the playground sends these
        answer = client.post(f"/v1/models/{name}/forecast",
                             json={"history": history, "end": "2019-12-01", "covariates": {"promo": promo}})
        assert answer.status_code == 200, answer.text
        expected = runs.load_run(run_dir).forecast(history, end="2019-12-01", covariates={"promo": promo})
        np.testing.assert_allclose(answer.json()["forecast"], expected.median[0], rtol=1e-5)
        for body, message in [
            ({"history": history}, "give the time of the history's last value"),
            ({"history": history, "end": "2019-12-01", "covariates": {"promo": promo[:5]}}, "it needs 252 values"),
            ({"history": history, "end": "2019-12-01", "covariates": {"promo": ["x"] * 252}}, "covariates"),
        ]:
            response = client.post(f"/v1/models/{name}/forecast", json=body)
            assert response.status_code == 422 and message in response.json()["error"]["message"], response.text


@pytest.fixture(scope="module")
def calendar_app(tmp_path_factory, promo_csv):
    """A quick LSTM (2 epochs) that reads the calendar and the promotions, behind the app: (client, name, run)."""
    from genforge.serve.adapters import load_models
    from genforge.serve.app import create_app

    run_dir, _ = _train(tmp_path_factory.mktemp("calendar"), promo_csv, "data.series.covariates=[promo]",
                        "data.series.calendar=true", "train.epochs=2")
    models = load_models([run_dir], backend="torch")
    with TestClient(create_app(models), raise_server_exceptions=False) as client:  # a 500 is an answer to check
        yield client, next(iter(models)), runs.load_run(run_dir)


def _v2(history: np.ndarray, end: str | None, promo: np.ndarray, binary: bool = False) -> tuple[bytes, dict]:
    """A v2 infer request for the calendar model: JSON tensors, or the binary extension (BYTES: a 4-byte
    little-endian length before each element)."""
    import json

    c = promo.reshape(-1, promo.shape[-1], 1).astype(np.float32)  # (1 or N, steps, 1 covariate)
    tensors = [("history", "FP32", history.astype(np.float32)), ("covariates", "FP32", c)]
    inputs, raw = [], b""
    for name, datatype, array in tensors:
        tensor = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            raw += array.tobytes()
            inputs.append({**tensor, "parameters": {"binary_data_size": array.nbytes}})
        else:
            inputs.append({**tensor, "data": array.ravel().tolist()})
    if end is not None:
        element = end.encode()
        bytes_tensor = {"name": "end", "datatype": "BYTES", "shape": [1]}
        if binary:
            chunk = len(element).to_bytes(4, "little") + element
            raw += chunk
            inputs.append({**bytes_tensor, "parameters": {"binary_data_size": len(chunk)}})
        else:
            inputs.append({**bytes_tensor, "data": [end]})
    header = json.dumps({"inputs": inputs}).encode()
    return header + raw, {"inference-header-content-length": str(len(header))} if binary else {}


def test_v2_lists_and_takes_the_end_and_the_covariates(calendar_app):
    """A forecaster that reads the calendar and a covariate column is served by v2 as by /v1: its metadata lists
    `end` (BYTES) and `covariates`, and an infer request with them answers the library's forecast, in JSON and
    binary tensors, with one covariate row shared by every history or one per history."""
    client, name, run = calendar_app
    frame = promo_frame()
    history, promo = frame["sales"].dropna().to_numpy(), frame["promo"].to_numpy()
    meta = client.get(f"/v2/models/{name}").json()
    assert meta["inputs"] == [{"name": "history", "datatype": "FP32", "shape": [-1, -1]},
                              {"name": "horizon", "datatype": "INT64", "shape": [1]},
                              {"name": "end", "datatype": "BYTES", "shape": [1]},
                              {"name": "covariates", "datatype": "FP32", "shape": [-1, -1, 1]}]
    expected = run.forecast(history, end="2019-12-01", covariates={"promo": promo}).quantiles
    two = np.stack([history, history[::-1]])
    both = np.stack([promo, 1 - promo])
    expected_two = run.forecast(two, end="2019-12-01", covariates={"promo": both}).quantiles
    for binary in (False, True):
        for h, p, want in ((history[None], promo, expected), (two, both, expected_two)):
            body, headers = _v2(h, "2019-12-01", p, binary)
            r = client.post(f"/v2/models/{name}/infer", content=body, headers=headers)
            assert r.status_code == 200, r.text
            out = r.json()["outputs"][0]
            assert out["shape"] == list(want.shape)
            np.testing.assert_allclose(np.array(out["data"], np.float32).reshape(want.shape), want, rtol=1e-5)
    body, _ = _v2(history[None], None, promo)
    r = client.post(f"/v2/models/{name}/infer", content=body)
    assert r.status_code == 400 and "needs the input(s) end" in r.json()["error"]


BAD_ENDS = [  # (end, what the message says): every one answered a 500, or a 200 for some other date, before
    ("9999-12-31", "end must be from 1697-12-01 to 2260-12-01"),  # beyond pandas' nanoseconds
    ("0001-01-01", "end must be from 1697-12-01 to 2260-12-01"),
    ("2500-01-01", "end must be from 1697-12-01 to 2260-12-01"),  # wrapped round to 1915: a 200 with its numbers
    ("2262-04-01", "end must be from 1697-12-01 to 2260-12-01"),  # representable, its horizon not
    ("1677-10-01", "end must be from 1697-12-01 to 2260-12-01"),  # representable, its history not
    ("1e30", "is not a date or time"), ("", "is not a date or time"), ("NaT", "is not a date or time"),
    ("nan", "is not a date or time"), ("now", "is not a date or time"),  # 'now': a different answer every call
    ("２０１９-１２-０１", "is not a date or time"),  # fullwidth digits, which pandas reads
    ("2019-12-15", "not on this model's MS grid"),
]


@pytest.mark.parametrize("end, message", BAD_ENDS, ids=range(len(BAD_ENDS)))
def test_an_end_off_the_calendar_is_refused_with_what_is_accepted(calendar_app, end, message):
    """The library, /v1 forecast and the v2 `end` share one check (forecasting.inference.place_end): a 422 that says
    the accepted range, never a 500, never a forecast for another date."""
    client, name, run = calendar_app
    frame = promo_frame()
    history, promo = frame["sales"].dropna().to_numpy(), frame["promo"].to_numpy()
    with pytest.raises(GenforgeError, match=message):
        run.forecast(history, end=end, covariates={"promo": promo})
    r = client.post(f"/v1/models/{name}/forecast", json={"history": history.tolist(), "end": end,
                                                         "covariates": {"promo": promo.tolist()}})
    assert r.status_code == 422 and message in r.json()["error"]["message"], r.text
    for binary in (False, True):
        body, headers = _v2(history[None], end, promo, binary)
        r = client.post(f"/v2/models/{name}/infer", content=body, headers=headers)
        assert r.status_code == 422 and message in r.json()["error"], r.text
