"""genforge's LSTM and GRU forecasters against the statistical peers forecasting practitioners run (statsforecast's
AutoETS and AutoARIMA, and its seasonal naive), on 12 real series bundled with statsmodels, by rolling origin.

Every method sees the same cleaned values (genforge's loader) and is scored by the same code
(genforge.evaluate.forecast_accuracy) on the same windows: the last 3 horizons of each series, horizon = one season
(6 for yearly data). The recurrent models train once on what precedes the first window (no refit); statsforecast refits
at every origin, as its cross_validation does by default. co2 is aggregated from weekly to monthly means: a
seasonal ARIMA with a 52-week season ran past 10 minutes on this machine for one series.

Usage: python bench/forecast_vs_statistical.py [--quick]   (--quick: two datasets, for a smoke run)
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np
from _common import record

from genforge import rundir
from genforge.config import load_config
from genforge.data.series import SeriesOptions, load_series
from genforge.evaluate.forecast_accuracy import combine, mase_scale, window_metrics
from genforge.forecasting.windows import default_horizon, window_origins
from genforge.rundir import read_json
from genforge.training import train

DATASETS = {  # bundled name -> series options
    "co2": {"resample": "MS"}, "elnino": {}, "elec_equip": {}, "sunspots": {}, "nile": {}, "macrodata": {},
}
WINDOWS = 3
LEVELS = (0.025, 0.1, 0.5, 0.9, 0.975)


def genforge_runs(name: str, options: dict, cell: str, tmp: str) -> tuple[dict, float]:
    """Train the preset on one bundled dataset and backtest it (training's own test): per-series metrics, seconds."""
    overrides = [f"data.name=series:{name}", f"model.cell={cell}", f"data.series.test_windows={WINDOWS}",
                 *(f"data.series.{k}={v}" for k, v in options.items())]
    cfg = load_config("series-lstm", overrides)
    run_dir = rundir.create_run(tmp, f"{name}-{cell}", cfg)
    t0 = time.perf_counter()
    train(cfg, run_dir, quiet=True)
    seconds = time.perf_counter() - t0
    return read_json(run_dir / "eval.json")["methods"], seconds


def statsforecast_scores(ds, horizon: int) -> tuple[dict, float]:
    """AutoETS, AutoARIMA and SeasonalNaive by statsforecast's cross_validation on the same windows."""
    import pandas as pd
    from statsforecast import StatsForecast
    from statsforecast.models import AutoARIMA, AutoETS, SeasonalNaive

    m = ds.season
    frame = pd.concat([pd.DataFrame({"unique_id": s.id, "ds": s.times, "y": s.values}) for s in ds.series])
    sf = StatsForecast(models=[AutoETS(season_length=m), AutoARIMA(season_length=m), SeasonalNaive(season_length=m)],
                       freq=ds.freq, n_jobs=1)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cv = sf.cross_validation(df=frame, h=horizon, n_windows=WINDOWS, step_size=horizon, level=[80, 95])
    seconds = time.perf_counter() - t0
    scores = {}
    for model in ("AutoETS", "AutoARIMA", "SeasonalNaive"):
        per_series = {}
        for s in ds.series:
            rows = cv[cv["unique_id"] == s.id].sort_values("ds")
            parts = []
            for k, origin in enumerate(window_origins(len(s.values), horizon, WINDOWS)):
                w = rows.iloc[k * horizon : (k + 1) * horizon]
                assert np.allclose(w["y"].to_numpy(), s.values[origin : origin + horizon])  # the same windows
                q = np.stack([w[f"{model}-lo-95"], w[f"{model}-lo-80"], w[model], w[f"{model}-hi-80"],
                              w[f"{model}-hi-95"]], 1)
                parts.append(window_metrics(q, LEVELS, w["y"].to_numpy(), mase_scale(s.values[:origin], m)))
            per_series[s.id] = combine(parts)
        scores[model] = per_series
    return scores, seconds


def main(quick: bool = False) -> None:
    datasets = dict(list(DATASETS.items())[:2]) if quick else DATASETS
    per_series: dict[str, dict[str, dict]] = {}  # method -> series -> metrics
    seconds = {"lstm": 0.0, "gru": 0.0, "statsforecast": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        for name, options in datasets.items():
            ds = load_series(f"series:{name}", SeriesOptions(**options))
            horizon = default_horizon(ds.season)
            for cell in ("lstm", "gru"):
                methods, took = genforge_runs(name, options, cell, tmp)
                seconds[cell] += took
                for sid, m in methods["model"]["series"].items():
                    per_series.setdefault(f"genforge {cell.upper()}", {})[f"{name}/{sid}"] = m
                if cell == "lstm":
                    for label in ("seasonal-naive", "naive", "drift"):
                        for sid, m in methods[label]["series"].items():
                            per_series.setdefault(f"genforge {label}", {})[f"{name}/{sid}"] = m
            scores, took = statsforecast_scores(ds, horizon)
            seconds["statsforecast"] += took
            for model, series in scores.items():
                for sid, m in series.items():
                    per_series.setdefault(f"statsforecast {model}", {})[f"{name}/{sid}"] = m
            print(f"{name}: done ({horizon}-step windows)", file=sys.stderr, flush=True)
    ets = per_series["statsforecast AutoETS"]
    snaive = per_series["statsforecast SeasonalNaive"]
    summary = {}
    for method, series in per_series.items():
        mase = [m["mase"] for m in series.values()]
        summary[method] = {
            "mean_mase": statistics.fmean(mase),
            "mase_relative_to_autoets": statistics.fmean(mase) / statistics.fmean(m["mase"] for m in ets.values()),
            "geomean_ratio_to_autoets": float(np.exp(np.mean([np.log(series[s]["mase"] / ets[s]["mase"])
                                                              for s in series]))),
            "series_better_than_seasonal_naive": sum(series[s]["mase"] < snaive[s]["mase"] for s in series),
            "mean_smape": statistics.fmean(m["smape"] for m in series.values()),
            "coverage_80": statistics.fmean(m["coverage_80"] for m in series.values()),
            "coverage_95": statistics.fmean(m["coverage_95"] for m in series.values()),
        }
    record("forecast_vs_statistical", {
        "series": len(ets), "windows": WINDOWS, "threads": os.cpu_count(),
        "seconds": {k: round(v, 1) for k, v in seconds.items()}, "summary": summary,
        "per_series_mase": {method: {s: round(m["mase"], 4) for s, m in series.items()}
                            for method, series in per_series.items()},
        "per_series_coverage_80_95": {method: {s: [round(m["coverage_80"], 3), round(m["coverage_95"], 3)]
                                               for s, m in series.items()} for method, series in per_series.items()}})


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
