"""Forecasting with a run: the future of its series (or of a CSV's) as a table or a picture, and backtests of a run
or of a preset (trained once, or refitted at every origin)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genforge.errors import GenforgeError


def future_times(last, freq: str, horizon: int) -> np.ndarray:
    import pandas as pd

    return pd.date_range(pd.Timestamp(last), periods=horizon + 1, freq=freq)[1:].to_numpy()


def histories(loaded, input_csv: Path | None, series: list[str] | None):
    """The series to forecast: the run's own data (cleaned by its config), or a CSV read with the same options."""
    from genforge.data.series import load_series

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
    Forecast of each series (for plots)."""
    import pandas as pd

    from genforge.tasks.forecast import check_features, forecast, minimum_history

    loaded.require("forecast")
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
    from genforge import rundir
    from genforge.plots import figure

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


def backtest_run(loaded, windows: int, horizon: int | None) -> tuple[dict, str | None]:
    """A trained run on the last `windows` horizons of its series, without refitting; the second value warns when
    the windows reach back into what the run trained on."""
    ds = loaded.task.dataset(loaded.config)
    result = loaded.task.backtest(loaded.model, ds, windows, horizon)
    opts = loaded.config.data.series
    held = loaded.model.horizon * (opts.test_windows + opts.val_windows)
    reach = windows * result["horizon"]
    warning = None
    if reach > held:
        warning = (f"the windows cover the last {reach} steps, but this run trained on everything before the last "
                   f"{held}: the earlier windows were seen in training (backtest the preset, or --refit, instead)")
    return result, warning


def backtest_preset(source: str, overrides: list[str], windows: int, horizon: int | None, refit: bool,
                    runs_dir: Path, quiet: bool, say=print) -> dict:
    """Train `source` with its last `windows` horizons held out and score them (one run); with refit, one run per
    origin, each trained on everything before its window, and the windows pooled."""
    from genforge import rundir, runs
    from genforge.config import load_config
    from genforge.evaluate.forecast import combine, overall
    from genforge.training import train

    extra = [*([f"model.horizon={horizon}"] if horizon else [])]
    if not refit:
        cfg = load_config(source, [*overrides, *extra, f"data.series.test_windows={windows}"])
        run_dir = rundir.create_run(runs_dir, cfg.name, cfg)
        say(f"run directory: {run_dir}")
        train(cfg, run_dir, quiet=quiet)
        return rundir.read_json(run_dir / "eval.json")
    pooled: dict[str, dict[str, list]] = {}
    result = None
    for k in range(windows):  # origin k trains with the windows from k on held out and scores the first of them
        cfg = load_config(source, [*overrides, *extra, f"data.series.test_windows={windows - k}"])
        run_dir = rundir.create_run(runs_dir, cfg.name, cfg)
        say(f"origin {k + 1}/{windows}: run directory {run_dir}")
        train(cfg, run_dir, quiet=quiet)
        loaded = runs.load_run(run_dir)
        result = loaded.task.backtest(loaded.model, loaded.task.dataset(loaded.config), windows - k, None,
                                      first_only=True, with_parts=True)
        for label, m in result["methods"].items():
            for sid, parts in m["parts"].items():
                pooled.setdefault(label, {}).setdefault(sid, []).extend(parts)
    for label, series in pooled.items():
        per_series = {sid: combine(parts) for sid, parts in series.items()}
        result["methods"][label] = {"overall": overall(per_series), "series": per_series}
    return {**result, "windows": windows, "refit": True}
