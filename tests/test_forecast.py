"""Forecasting end to end on real bundled series: time splits and windows, training through the one loop, backtests
beside the baselines, the metrics against their definitions, calibrated intervals, `genforge forecast` and
`genforge backtest`, exact resume, and the bad inputs that end in one line."""

import json
import math

import numpy as np
import pytest
import torch
from helpers import run_cli
from test_resume import assert_same_tree, killed_and_uninterrupted

from genforge import rundir, runs
from genforge.config import load_config
from genforge.data.series import load_series
from genforge.errors import GenforgeError
from genforge.evaluate.forecast_accuracy import combine, mase_scale, window_metrics
from genforge.forecasting.windows import window_origins
from genforge.tasks.forecast import TASK
from genforge.training import train

TINY = ["data.name=series:nile", "train.epochs=3", "model.hidden=8", "train.threads=1"]


@pytest.fixture
def cli(capsys, monkeypatch):
    """cli(*args) -> (exit code, stdout, stderr) of `genforge ARGS`, in this process (the same command line without
    a subprocess's start-up, 3 to 4 s each)."""
    return lambda *args: run_cli(capsys, monkeypatch, *args)


def _train(tmp_path, *overrides, preset="series-lstm"):
    cfg = load_config(preset, [*TINY, *overrides])
    run_dir = rundir.create_run(tmp_path, cfg.name, cfg)
    return run_dir, train(cfg, run_dir, quiet=True)


@pytest.fixture(scope="module")
def nile_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("runs"))


def _csv(path, values, start="2000-01-01", freq="MS"):
    import pandas as pd

    times = pd.date_range(start, periods=len(values), freq=freq)
    path.write_text("date,value\n" + "".join(f"{t.date()},{v}\n" for t, v in zip(times, values)))
    return f"csv-series:{path}"


def test_splits_are_by_time_and_training_windows_are_every_slice_before_validation(tmp_path):
    spec = _csv(tmp_path / "ramp.csv", list(range(120)))  # the value is the time index
    cfg = load_config("series-lstm", [f"data.name={spec}", "model.context=24", "model.horizon=6"])
    ds = TASK.dataset(cfg)
    data = TASK.prepare(cfg, ds, torch.device("cpu"))
    val_start = 120 - 6 * (cfg.data.series.val_windows + cfg.data.series.test_windows)  # 120 - 6 * 3 = 102
    assert len(data.x) == val_start - 24 - 6 + 1  # every (context + horizon) slice of the training part
    assert data.y.max().item() == val_start - 1  # no training target reaches the validation or test windows
    torch.testing.assert_close(data.x[0], torch.arange(24.0))
    torch.testing.assert_close(data.y[-1], torch.arange(val_start - 6.0, val_start))
    assert data.x_val[:, -1].tolist() == [val_start - 1, val_start + 5]  # the validation origins, one horizon apart
    assert data.model_config.context == 24 and data.model_config.horizon == 6 and data.model_config.season == 12
    assert window_origins(120, 6, 1) == [114]


def test_a_forecaster_trains_and_reports_beside_the_baselines(nile_run):
    run_dir, summary = nile_run
    assert summary["status"] == "complete" and math.isfinite(summary["test_mase"])
    cfg = runs.load_run(run_dir).config
    assert (cfg.model.context, cfg.model.horizon) == (24, 6)  # resolved from yearly data, written to config.yaml
    result = json.loads((run_dir / "eval.json").read_text())
    assert set(result["methods"]) == {"model", "naive", "seasonal-naive", "drift", "season-mean"}
    assert set(result["methods"]["model"]["series"]) == {"volume"}
    assert {"mase", "smape", "mae", "rmse", "pinball", "coverage_80", "coverage_95"} <= set(
        result["methods"]["model"]["overall"])
    assert "calibration_points" in summary and summary["calibration_points"] == 2 * 6
    page = (run_dir / "report.html").read_text()
    assert "Backtest" in page and 'alt="forecasts"' in page


def test_the_loaded_run_forecasts_directly_then_recursively(nile_run):
    run_dir, _ = nile_run
    loaded = runs.load_run(run_dir)
    values = load_series("series:nile").series[0].values
    f = loaded.forecast(values)
    assert f.quantiles.shape == (1, 6, 5) and not f.recursive
    with torch.inference_mode():
        direct = loaded.model(torch.tensor(values[None, -24:], dtype=torch.float32))
    np.testing.assert_allclose(f.quantiles, direct.numpy(), rtol=1e-6)
    longer = loaded.forecast(values, horizon=10)
    assert longer.recursive and longer.quantiles.shape == (1, 10, 5)
    np.testing.assert_allclose(longer.quantiles[:, :6], f.quantiles, rtol=1e-6)  # the first block is the direct one
    lo, hi = longer.interval(80)
    assert (lo <= longer.median).all() and (longer.median <= hi).all()
    with pytest.raises(GenforgeError, match="at least 24"):
        loaded.forecast(values[:10])
    with pytest.raises(GenforgeError, match="non-finite"):
        loaded.forecast([*values[:-1], float("nan")])


def test_a_plain_two_column_csv_trains_with_only_its_name_given(tmp_path):
    rng = np.random.default_rng(0)
    spec = _csv(tmp_path / "sales.csv", [100 + 10 * math.sin(i * math.pi / 6) + rng.normal() for i in range(120)])
    cfg = load_config("csv-lstm", [f"data.name={spec}", "train.epochs=2"])
    run_dir = rundir.create_run(tmp_path, cfg.name, cfg)
    summary = train(cfg, run_dir, quiet=True)
    loaded = runs.load_run(run_dir)
    assert loaded.model.horizon == 12 and loaded.model.context == 24  # one season of the inferred monthly data
    assert summary["test_mase"] < summary["test_mase_seasonal_naive"] * 3


def test_a_baseline_is_a_run_with_the_textbook_forecast(tmp_path):
    spec = _csv(tmp_path / "season.csv", [10 + (i % 12) + 0.01 * i for i in range(96)])
    run_dir, summary = _train(tmp_path, f"data.name={spec}", "model.kind=seasonal-naive")
    assert summary["status"] == "complete" and not list(runs.load_run(run_dir).model.parameters())
    assert summary["epochs"] == 1  # of train.epochs=3 (TINY): every epoch of a baseline would score the same
    loaded = runs.load_run(run_dir)
    history = np.array([10 + (i % 12) + 0.01 * i for i in range(96)])
    f = loaded.forecast(history)
    np.testing.assert_allclose(f.median[0], history[-12:], rtol=1e-6)  # the last season, repeated
    naive = runs.load_run(_train(tmp_path / "n", f"data.name={spec}", "model.kind=naive")[0]).forecast(history)
    lo, hi = naive.interval(95)
    width = (hi - lo)[0]
    np.testing.assert_allclose(width / width[0], np.sqrt(np.arange(1, 13)), rtol=1e-5)  # sigma * sqrt(h), FPP3 5.5


def test_the_metrics_match_their_definitions():
    history = np.array([1.0, 3.0, 2.0, 4.0, 3.0, 5.0])
    assert mase_scale(history, 1) == pytest.approx(np.mean(np.abs(np.diff(history))))
    assert mase_scale(history, 2) == pytest.approx(1.0)  # |y_t - y_{t-2}| is 1 everywhere
    truth = np.array([2.0, 4.0])
    levels = (0.1, 0.5, 0.9)
    q = np.array([[1.0, 3.0, 5.0], [3.5, 4.0, 4.5]])
    m = combine([window_metrics(q, levels, truth, scale=2.0)])
    assert m["mae"] == pytest.approx(0.5) and m["mase"] == pytest.approx(0.25) and m["rmse"] == pytest.approx(
        math.sqrt(0.5))
    assert m["smape"] == pytest.approx((200 * 1 / 5 + 0) / 2)
    # pinball at (0.1, 0.5, 0.9): first point (0.1, 0.5, 0.3), second (0.05, 0, 0.05), each averaged over levels
    assert m["pinball"] == pytest.approx(((0.1 + 0.5 + 0.3) / 3 + (0.05 + 0 + 0.05) / 3) / 2 / 2.0)
    assert m["coverage_80"] == 1.0


def test_calibration_brings_the_intervals_to_their_coverage_on_the_held_out_windows():
    from genforge.models.rnn import RNNConfig, RNNForecaster

    torch.manual_seed(0)
    model = RNNForecaster(RNNConfig(context=16, horizon=4, hidden=8, season=1), 16, 4).eval()
    x = torch.cumsum(torch.randn(400, 20), 1)  # random walks: the untrained intervals are far too narrow or wide
    history, future = x[:, :16], x[:, 16:]
    fitted = model.calibrate(history, future)
    assert fitted["calibration_points"] == 1600
    q = model(history)
    for (lo, hi), nominal in (((1, 3), 0.8), ((0, 4), 0.95)):
        inside = ((future >= q[..., lo]) & (future <= q[..., hi])).float().mean().item()
        assert nominal <= inside <= nominal + 0.02  # split conformal: at least nominal, by at most one point's share


@pytest.mark.slow
def test_cli_forecast_and_backtest_a_run(nile_run, tmp_path, cli):
    run_dir, _ = nile_run
    out = tmp_path / "forecast.csv"
    code, _, err = cli("forecast", str(run_dir), "--out", str(out), "--horizon", "8")
    assert code == 0, err
    assert "exceed the trained horizon" in err
    lines = out.read_text().splitlines()
    assert lines[0].startswith("series,time,forecast,lo_80,hi_80,lo_95,hi_95,q_0.025") and len(lines) == 9
    assert lines[1].split(",")[:2] == ["volume", "1971-01-01"]  # the year after the data ends
    code, _, err = cli("forecast", str(run_dir), "--out", str(tmp_path / "f.png"))
    assert code == 0 and (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG", err
    code, out, err = cli("backtest", str(run_dir), "--windows", "5", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["windows"] == 5 and "seen in training" in err
    assert report["methods"]["seasonal-naive"]["overall"]["mase"] > 0


@pytest.mark.slow
def test_cli_backtest_refits_a_preset_at_every_origin(tmp_path, cli):
    code, out, err = cli("backtest", "series-lstm", *TINY, "train.epochs=1", "--windows", "2", "--refit", "--json",
                         "--runs-dir", str(tmp_path))
    assert code == 0, err
    report = json.loads(out)
    assert report["refit"] and len(list(tmp_path.iterdir())) == 2  # one run per origin
    tests = [json.loads((run / "config.yaml").read_text().split("test_windows: ")[1].split("\n")[0])
             for run in sorted(tmp_path.iterdir())]
    assert sorted(tests) == [1, 2]


@pytest.mark.parametrize("args, message", [
    (["data.name=series:nile", "model.context=90"], "series 'volume' has 100 values; it needs context 90"),
    (["data.name=series:nile", "model.kind=cnn"], "series:nile is a time series: forecast it with model.kind=rnn"),
])
@pytest.mark.slow
def test_bad_forecasting_configs_end_in_one_line(tmp_path, args, message, cli):
    code, _, err = cli("train", "series-lstm", *args, "--runs-dir", str(tmp_path), "--quiet")
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) <= 2  # the run directory line, then the error


@pytest.mark.parametrize("args, message", [
    (["data.name=fashion-mnist"], "forecasts time series: set data.name=series:NAME"),
    (["data.name=series:nile", "model.quantiles=[0.1,0.9]"], "include 0.5"),
])
def test_bad_forecasting_configs_are_refused_before_training(args, message):
    with pytest.raises(GenforgeError, match=message.replace(".", r"\.").replace("[", r"\[")):
        cfg = load_config("series-lstm", args)
        TASK.dataset(cfg)


@pytest.mark.slow
def test_a_killed_forecaster_resumes_to_the_same_weights(tmp_path):
    exact = [*TINY, "train.epochs=6", "train.batch_size=8", "train.checkpoint_every=3", "deterministic=true"]
    reference, run = killed_and_uninterrupted(tmp_path, "series-lstm", exact, 6)
    from safetensors.torch import load_file

    assert_same_tree(load_file(reference / rundir.WEIGHTS), load_file(run / rundir.WEIGHTS))
