"""Forecasts and backtests shown: a backtest as a table (printed, or HTML for the report) and as a picture of the test
windows; the future of a run's series (or of a CSV's) as forecast.csv's table or a picture, what `genforge forecast`
writes. Plots go through genforge.plots.figure."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd
from rich.table import Table

from genforge import rundir
from genforge.data.series import load_series
from genforge.errors import GenforgeError
from genforge.forecasting.inference import forecast, forecast_windows, minimum_history
from genforge.forecasting.windows import check_features, window_origins
from genforge.plots import figure

HEADER = ("method", "MASE", "sMAPE", "MAE", "RMSE", "pinball", "cover 80%", "cover 95%")


def _cells(o: dict) -> list[str]:
    return [f"{o['mase']:.3f}", f"{o['smape']:.2f}", f"{o['mae']:.4g}", f"{o['rmse']:.4g}", f"{o['pinball']:.3f}",
            *(f"{o[k]:.0%}" if k in o else "-" for k in ("coverage_80", "coverage_95"))]


def metrics_table(result: dict) -> str:
    """A backtest's overall metrics per method, as an HTML table (the report's)."""
    head = "".join(f"<th>{h}</th>" for h in HEADER)
    rows = [f"<tr><th>{html.escape(label)}</th>" + "".join(f"<td>{c}</td>" for c in _cells(m["overall"])) + "</tr>"
            for label, m in result["methods"].items()]
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def print_backtest(out, name: str, result: dict) -> None:
    """A backtest on the console `out`: the overall metrics per method, then the MASE per series beside the seasonal
    naive's when there are several."""
    out.print(f"[bold]{name}[/] on {result['dataset']}: {result['windows']} window(s) of {result['horizon']} "
              f"steps per series" + (" (recursive beyond the trained horizon)" if result["recursive"] else ""))
    table = Table()
    for i, column in enumerate(HEADER):
        table.add_column(column, no_wrap=True, min_width=14 if i == 0 else None)
    for label, m in result["methods"].items():
        table.add_row(label, *_cells(m["overall"]))
    out.print(table)
    if len(result["methods"]["model"]["series"]) > 1:
        per = Table("series", "MASE", "seasonal naive")
        naive = result["methods"]["seasonal-naive"]["series"]
        for sid, m in result["methods"]["model"]["series"].items():
            per.add_row(sid, f"{m['mase']:.3f}", f"{naive[sid]['mase']:.3f}")
        out.print(per)


def plot_backtest(model, ds, result: dict, path: Path, most: int = 6) -> None:
    """Per series (the best and worst by MASE when there are more than `most`): the history, the truth of the test
    windows, the median forecast and the 80% and 95% bands."""
    plt = figure()
    per = result["methods"]["model"]["series"]
    ids = sorted(per, key=lambda sid: per[sid]["mase"])
    if len(ids) > most:
        ids = ids[: most // 2] + ids[-(most - most // 2) :]
    by_id = {s.id: s for s in ds.series}
    levels = tuple(model.cfg.quantiles)
    fig, axes = plt.subplots(len(ids), 1, figsize=(9, 2.6 * len(ids)), squeeze=False)
    horizon, windows = result["horizon"], result["windows"]
    for sid, ax in zip(ids, axes[:, 0]):
        s = by_id[sid]
        origins = window_origins(len(s.values), horizon, windows)
        shown = max(0, origins[0] - 4 * horizon)
        ax.plot(s.times[shown:], s.values[shown:], color="black", lw=1, label="history and truth")
        q = forecast_windows(model, s.values, origins, horizon, ds.features(s) if model.features else None)
        for o, qw in zip(origins, q):
            t = s.times[o : o + horizon]
            for (lo, hi), alpha in (((0.025, 0.975), 0.15), ((0.1, 0.9), 0.3)):
                if lo in levels and hi in levels:
                    ax.fill_between(t, qw[:, levels.index(lo)], qw[:, levels.index(hi)], color="tab:blue",
                                    alpha=alpha, lw=0)
            ax.plot(t, qw[:, levels.index(0.5)], color="tab:blue", lw=1.5)
        ax.axvline(s.times[origins[0]], color="gray", ls=":", lw=1)
        ax.set_title(f"{sid}: MASE {per[sid]['mase']:.3f}", fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    rundir.write_with(path, lambda f: fig.savefig(f, format="png", dpi=90))
    plt.close(fig)


def future_times(last, freq: str, horizon: int) -> np.ndarray:
    """The `horizon` times after `last` at frequency `freq`."""
    return pd.date_range(pd.Timestamp(last), periods=horizon + 1, freq=freq)[1:].to_numpy()


def histories(loaded, input_csv: Path | None, series: list[str] | None):
    """The series to forecast: the run's own data (cleaned by its config), or a CSV read with the same options."""
    spec = f"csv-series:{input_csv}" if input_csv is not None else loaded.config.data.name
    options = loaded.config.data.series if input_csv is None else loaded.config.data.series.model_copy(
        update={"target": None, "id_column": None, "time_column": None, "freq": None, "resample": None})
    ds = load_series(spec, options)
    if series:
        known = {s.id for s in ds.series}
        unknown = [sid for sid in series if sid not in known]
        if unknown:
            raise GenforgeError(f"no series {unknown[0]!r} in {spec}; the series are {', '.join(sorted(known))}")
        ds.series = [s for s in ds.series if s.id in series]
    return ds


def forecast_table(loaded, ds, horizon: int | None):
    """A DataFrame with series, time, forecast, lo_80, hi_80, lo_95, hi_95 and every quantile q_<level>, and the
    Forecast of each series (for plots). `loaded` is a forecaster's run (the CLI's forecast checks that first)."""
    check_features(loaded.model, ds)
    frames, forecasts = [], {}
    need = minimum_history(loaded.model)
    for s in ds.series:
        if len(s.values) < need:  # forecast() refuses it too, without naming the series
            raise GenforgeError(f"series {s.id!r} has {len(s.values)} values; this model needs a history of at least "
                                f"{need}")
        ahead = horizon or loaded.model.horizon
        f = forecast(loaded.model, s.values, horizon, ds.features(s, ahead) if loaded.model.features else None)
        forecasts[s.id] = f
        columns = {k: v[0] for k, v in f.columns().items()}
        frames.append(pd.DataFrame({"series": s.id, "time": future_times(s.times[-1], ds.freq, f.quantiles.shape[1]),
                                    **columns}))
    return pd.concat(frames, ignore_index=True), forecasts


def plot_future(ds, forecasts: dict, path: Path, shown: int | None = None) -> None:
    """The end of each history, the median forecast and its 80% and 95% bands, one panel per series (at most 8)."""
    plt = figure()
    items = [s for s in ds.series if s.id in forecasts][:8]
    fig, axes = plt.subplots(len(items), 1, figsize=(9, 2.6 * len(items)), squeeze=False)
    for s, ax in zip(items, axes[:, 0]):
        f = forecasts[s.id]
        horizon = f.quantiles.shape[1]
        start = max(0, len(s.values) - (shown or 4 * horizon))
        ax.plot(s.times[start:], s.values[start:], color="black", lw=1, label="history")
        t = future_times(s.times[-1], ds.freq, horizon)
        for coverage, alpha in ((95, 0.15), (80, 0.3)):
            if (bounds := f.interval(coverage)) is not None:
                ax.fill_between(t, bounds[0][0], bounds[1][0], color="tab:blue", alpha=alpha, lw=0,
                                label=f"{coverage}% interval")
        ax.plot(t, f.median[0], color="tab:blue", lw=1.5, label="forecast" + (" (recursive)" if f.recursive else ""))
        ax.set_title(s.id, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    rundir.write_with(path, lambda fh: fig.savefig(fh, format="png", dpi=90))
    plt.close(fig)
