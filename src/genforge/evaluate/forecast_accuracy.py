"""Forecast accuracy by rolling origin: the metrics of M4 and M5 on windows cut at given origins of each series.

MASE (Hyndman and Koehler 2006) divides the mean absolute error by the in-sample mean absolute error of the seasonal
naive forecast (lag = the data's season, 1 for non-seasonal data) over everything before the window's origin, so it
is comparable across series and < 1 beats that naive forecast on average. The pinball loss is scaled the same way.
sMAPE is M4's (0-200). Coverage counts the true values inside the 80% (q 0.1-0.9) and 95% (q 0.025-0.975) intervals.
`backtest` scores forecasters (a model and the baselines) on the same windows; the forecasts come from
forecasting.inference.forecast_windows.
"""

from __future__ import annotations

import math

import numpy as np

from genforge.forecasting.inference import INTERVALS, forecast_windows

METRICS = ("mase", "smape", "mae", "rmse", "pinball", "coverage_80", "coverage_95")


def mase_scale(history: np.ndarray, season: int) -> float:
    """In-sample mean absolute error of the seasonal naive forecast (the naive one for a history shorter than two
    seasons); a flat history gets 1e-8 times its level (at least 1e-8) so the ratio stays finite."""
    m = season if len(history) > 2 * season else 1
    scale = float(np.mean(np.abs(history[m:] - history[:-m]))) if len(history) > m else 0.0
    return max(scale, 1e-8 * max(float(np.mean(np.abs(history))), 1.0))


def window_metrics(quantiles: np.ndarray, levels: tuple[float, ...], truth: np.ndarray, scale: float) -> dict:
    """One window: quantiles (H, Q) at `levels`, truth (H,), the window's MASE scale -> sums and counts, combined
    over windows by `combine`."""
    point = quantiles[:, levels.index(0.5)]
    error = truth - point
    q = np.asarray(levels)
    diff = truth[:, None] - quantiles
    result = {"n": len(truth), "abs": float(np.abs(error).sum()), "sq": float((error**2).sum()),
              "scaled_abs": float(np.abs(error).sum() / scale),
              "smape": float(np.sum(200 * np.abs(error) / np.maximum(np.abs(truth) + np.abs(point), 1e-12))),
              "pinball": float(np.maximum(q * diff, (q - 1) * diff).mean(1).sum() / scale)}
    for name, (lo, hi) in INTERVALS.items():
        if lo in levels and hi in levels:
            inside = (truth >= quantiles[:, levels.index(lo)]) & (truth <= quantiles[:, levels.index(hi)])
            result[f"inside_{name}"] = int(inside.sum())
    return result


def combine(parts: list[dict]) -> dict:
    """The metrics of one series (or of pooled windows) from its windows' sums."""
    n = sum(p["n"] for p in parts)
    out = {"mase": sum(p["scaled_abs"] for p in parts) / n, "smape": sum(p["smape"] for p in parts) / n,
           "mae": sum(p["abs"] for p in parts) / n, "rmse": math.sqrt(sum(p["sq"] for p in parts) / n),
           "pinball": sum(p["pinball"] for p in parts) / n}
    for name in INTERVALS:
        if all(f"inside_{name}" in p for p in parts):
            out[f"coverage_{name}"] = sum(p[f"inside_{name}"] for p in parts) / n
    return out


def overall(per_series: dict[str, dict]) -> dict:
    """Every series counts once: the mean of each metric over the series (MAE and RMSE are in each series' units,
    so their means mix scales; MASE, sMAPE, pinball and coverage do not)."""
    keys = [k for k in METRICS if all(k in m for m in per_series.values())]
    return {k: float(np.mean([m[k] for m in per_series.values()])) for k in keys}


def backtest(models: dict, series: list, season: int, origins_of, horizon: int, features_of=None) -> dict:
    """Score forecasters on the same windows: models {label: forecaster}; series: data.series.Series;
    origins_of(series) -> the window origins (indices) of that series; features_of(series) -> its covariates, for
    models that read them. Returns {label: {"overall": ...,
    "series": {id: metrics}}}, with, per label, each window's sums under "parts" (to pool backtests) and the
    forecasts under "windows" (for plots)."""
    result = {}
    for label, model in models.items():
        per_series, windows, all_parts = {}, {}, {}
        levels = tuple(float(v) for v in model.cfg.quantiles)
        for s in series:
            origins = origins_of(s)
            q = forecast_windows(model, s.values, origins, horizon, features_of(s) if model.features else None)
            parts = [window_metrics(q[i], levels, s.values[o : o + horizon], mase_scale(s.values[:o], season))
                     for i, o in enumerate(origins)]
            per_series[s.id] = combine(parts)
            windows[s.id] = {"origins": origins, "quantiles": q}
            all_parts[s.id] = parts
        result[label] = {"overall": overall(per_series), "series": per_series, "windows": windows,
                         "parts": all_parts, "levels": levels}
    return result
