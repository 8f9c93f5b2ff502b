"""Forecasting: series cut by time into (context, horizon) windows, the pinball loss, backtests beside the classical
baselines, the forecast report, the ONNX part and the forecast verb.

Splits by time, never at random: the last `data.series.test_windows` horizons of every series are the test set,
the `data.series.val_windows` horizons before them the validation set, and training windows end before those.
The training windows are every (context + horizon) slice of the training part, cut by Tensor.unfold on the device.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genforge.errors import GenforgeError
from genforge.onnx.parts import Part
from genforge.tasks.base import Prepared, Task
from genforge.tasks.forecast_verbs import FORECAST

BASELINES = ("naive", "seasonal-naive", "drift", "season-mean")


def default_horizon(season: int) -> int:
    """One season; 6 steps for data without one (M4's yearly horizon)."""
    return season if season > 1 else 6


def default_context(season: int, horizon: int) -> int:
    """Two seasons, or four horizons for non-seasonal data."""
    return 2 * season if season > 1 else 4 * horizon


def resolve(cfg, ds) -> tuple[int, int]:
    """(context, horizon) of a run on the SeriesSet ds, defaults filled in."""
    horizon = cfg.model.horizon or default_horizon(ds.season)
    return cfg.model.context or default_context(ds.season, horizon), horizon


def window_origins(length: int, horizon: int, windows: int) -> list[int]:
    """Origins of the last `windows` non-overlapping windows of a series of `length` (rolling origin, step = H)."""
    return [length - (windows - k) * horizon for k in range(windows)]


def baselines(context: int, horizon: int, season: int, quantiles) -> dict:
    from genforge.models.rnn import Baseline, BaselineConfig

    return {kind: Baseline(BaselineConfig(kind=kind, context=context, horizon=horizon, season=season,
                                          quantiles=quantiles), context, horizon, season) for kind in BASELINES}


def _windows(values: torch.Tensor, origins: list[int], context: int, horizon: int,
             features: torch.Tensor | None = None):
    """(W, context) histories, packed with their (W, context + horizon, F) covariates when features (T, F) are
    given, and (W, horizon) futures at the given origins."""
    from genforge.models.rnn import pack

    x = torch.stack([values[o - context : o] for o in origins])
    y = torch.stack([values[o : o + horizon] for o in origins])
    if features is not None:
        x = pack(x, torch.stack([features[o - context : o + horizon] for o in origins]))
    return x, y


def reads_covariates(cfg) -> bool:
    """Whether the model kind of cfg reads covariates (the recurrent one; the baselines do not)."""
    return "covariates" in type(cfg.model).model_fields


def covariate_stats(ds, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std), each (F,), of the covariates over the training parts of the series; calendar features, already
    in [-1, 1], keep 0 and 1, and a constant covariate gets std 1."""
    rows = torch.cat(features)
    mean, std = rows.mean(0), rows.std(0) if len(rows) > 1 else torch.ones(rows.shape[1])
    calendar = len(ds.feature_names) - len(ds.covariates)
    mean[:calendar], std[:calendar] = 0.0, 1.0
    return mean, torch.where(std > 0, std, torch.ones_like(std))


@dataclass
class Forecast:
    """Quantile forecasts of one or more histories: quantiles (N, horizon, Q) at `levels`."""

    quantiles: np.ndarray
    levels: tuple[float, ...]
    recursive: bool  # the horizon exceeds the trained one: later blocks were fed the model's own medians

    @property
    def median(self) -> np.ndarray:
        """(N, horizon) point forecasts."""
        return self.quantiles[..., self.levels.index(0.5)]

    def interval(self, coverage: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(lower, upper), each (N, horizon), of the central 80% or 95% interval; None when not predicted."""
        from genforge.evaluate.forecast import INTERVALS

        lo, hi = INTERVALS[str(coverage)]
        if lo not in self.levels or hi not in self.levels:
            return None
        return self.quantiles[..., self.levels.index(lo)], self.quantiles[..., self.levels.index(hi)]

    def columns(self) -> dict[str, np.ndarray]:
        """Named columns of forecast.csv, each (N, horizon): forecast, lo_80, hi_80, lo_95, hi_95, then q_<level>."""
        out = {"forecast": self.median}
        for coverage in (80, 95):
            if (bounds := self.interval(coverage)) is not None:
                out[f"lo_{coverage}"], out[f"hi_{coverage}"] = bounds
        for i, level in enumerate(self.levels):
            out[f"q_{level:g}"] = self.quantiles[..., i]
        return out


def as_history(model, history) -> torch.Tensor:
    """A history as sent (a sequence of numbers, or N equally long ones) -> a float32 (N, L) tensor the model can
    read, or a one-line error."""
    try:
        x = torch.as_tensor(np.asarray(history, dtype=np.float32))
    except (ValueError, TypeError):
        raise GenforgeError("a history is a sequence of numbers (or N sequences of equal length)") from None
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] == 0:
        raise GenforgeError(f"a history is a sequence of numbers (or N sequences of equal length), got shape "
                            f"{tuple(x.shape)}")
    need = minimum_history(model)
    if x.shape[1] < need:
        raise GenforgeError(f"the history has {x.shape[1]} values; this model needs at least {need}")
    if not torch.isfinite(x).all():
        raise GenforgeError("the history holds a missing or non-finite value; fill it first")
    return x


def forecast(model, history, horizon: int | None = None, covariates=None) -> Forecast:
    """Forecast `horizon` steps (default: the trained horizon) after each history: a sequence of numbers (one series)
    or an (N, L) array. Histories shorter than the model's context, or not finite, are refused. A model that reads
    covariates needs them (covariates_for builds them): (L + horizon, F), or (N, L + horizon, F)."""
    from genforge.evaluate.forecast import recursive

    x = as_history(model, history)
    horizon = horizon or model.horizon
    if horizon < 1:
        raise GenforgeError(f"horizon must be at least 1, got {horizon}")
    c = None
    if model.features:
        if covariates is None:
            raise GenforgeError(f"this model reads {model.features} covariate(s) ({', '.join(model.cfg.covariates)}) "
                                f"at every step of the history and of the horizon; give them")
        c = torch.as_tensor(np.asarray(covariates, dtype=np.float32))
        c = c.expand(x.shape[0], -1, -1) if c.ndim == 2 else c
        want = (x.shape[0], x.shape[1] + horizon, model.features)
        if tuple(c.shape) != want:
            raise GenforgeError(f"the covariates have shape {tuple(c.shape)}; expected {want[1:]} (the history's "
                                f"{x.shape[1]} steps and the horizon's {horizon}, {model.features} features)")
        if not torch.isfinite(c).all():
            raise GenforgeError("the covariates hold a missing or non-finite value")
    levels = tuple(float(v) for v in model.cfg.quantiles)
    if len(x) == 0:  # no histories (a v2 request may send none): no forecasts, and no empty batch through a backend
        return Forecast(np.zeros((0, horizon, len(levels)), np.float32), levels, horizon > model.horizon)
    with torch.inference_mode():
        q = recursive(model, x, horizon, c)
    return Forecast(q.numpy(), levels, horizon > model.horizon)


def covariates_for(model, cfg, freq: str, n: int, length: int, horizon: int | None, end=None,
                   covariates: dict | None = None) -> np.ndarray | None:
    """The (n, length + horizon, F) covariates of a run's model for n histories of `length` steps whose last one is
    at `end`: their calendar features (from the times) and the values of the covariate columns, given by name, each
    a sequence over the history and the horizon (shared) or n of them. None for a model that reads none."""
    import pandas as pd

    from genforge.data.series import calendar_features, extend_times

    if not model.features:
        if covariates:
            raise GenforgeError("this model reads no covariates; forecast it from the history alone")
        return None
    horizon = horizon or model.horizon
    steps, opts, columns = length + horizon, cfg.data.series, []
    if opts.calendar:
        if end is None:
            raise GenforgeError("this model reads calendar features: give the time of the history's last value "
                                "(end, e.g. 2010-12-01)")
        times = pd.date_range(end=place_end(end, freq, length, horizon), periods=length, freq=freq)
        calendar = calendar_features(extend_times(times.to_numpy(dtype="datetime64[ns]"), freq, horizon), freq)
        columns.append(np.broadcast_to(calendar, (n, *calendar.shape)))
    given = covariates or {}
    unknown = sorted(set(given) - set(opts.covariates))
    if unknown:
        raise GenforgeError(f"unknown covariate {unknown[0]!r}; this model reads "
                            f"{', '.join(opts.covariates) or 'no covariate columns'}")
    for name in opts.covariates:
        if name not in given:
            raise GenforgeError(f"this model reads covariate {name!r}: give its {steps} values (the history's "
                                f"{length} steps and the horizon's {horizon})")
        try:
            values = np.asarray(given[name], dtype=np.float64)
        except (ValueError, TypeError):
            raise GenforgeError(f"covariate {name!r} must be numbers (or one list of them per history)") from None
        if values.shape not in ((steps,), (n, steps)):
            raise GenforgeError(f"covariate {name!r} has shape {values.shape}; it needs {steps} values (the "
                                f"history's {length} steps and the horizon's {horizon})" +
                                (f", or {n} such lists, one per history" if n > 1 else ""))
        columns.append(np.broadcast_to(values, (n, steps))[..., None])
    return np.concatenate(columns, -1)


CALENDAR_SPAN = ("1678-01-01", "2261-12-31")  # whole years inside pandas' nanosecond times (1677-09-21 to 2262-04-11)
# with months to spare: pandas' own offset arithmetic steps past a bound before it steps back (a weekly date_range
# ending a few days before 2262-04-11 overflows inside pandas)


def place_end(end, freq: str, length: int, horizon: int):
    """`end`, the time of a history's last value as a client wrote it -> a pandas Timestamp (ns) that places the
    history's `length` steps and the `horizon` after them on the model's calendar, or a GenforgeError that says what
    is accepted. One check for every way in (the library, /v1 forecast, the v2 `end` input):
    - text in ASCII that pandas reads as a time (ISO 8601: 2010-12-01, 2010-12-01T06:00): not NaT ('', 'nan'), not
      'now' or 'today' (a different answer every call), not '２０１０' (fullwidth digits, which pandas reads);
    - every time of the history and the horizon inside CALENDAR_SPAN, where the calendar features can be computed in
      nanoseconds: beyond pandas' range the times overflowed and wrapped round (2500 was read as 1915);
    - on the frequency's grid, as pandas defines it: a month's first day for MS, a Sunday for W-SUN; any time for a
      fixed step such as h (its calendar features read the hour and the weekday, not the minutes)."""
    import pandas as pd

    unreadable = f"end={end!r} is not a date or time; write it as YYYY-MM-DD (or YYYY-MM-DDTHH:MM:SS)"
    if not isinstance(end, str) or not end.isascii() or not end[:1].isdigit():
        raise GenforgeError(unreadable)
    try:
        last = pd.Timestamp(end)
    except (ValueError, TypeError, OverflowError):  # pandas' OutOfBoundsDatetime is a ValueError
        raise GenforgeError(unreadable) from None
    if pd.isna(last):
        raise GenforgeError(unreadable)
    if last.tzinfo is not None:
        last = last.tz_convert(None)
    lowest, highest = (pd.Timestamp(t).as_unit("us") for t in CALENDAR_SPAN)
    try:  # microseconds: their range (years 1 to 9999) holds these sums wherever the nanoseconds' would overflow
        first = pd.date_range(start=lowest, periods=length, freq=freq, unit="us")[-1]  # the earliest end: all steps
        latest = pd.date_range(end=highest, periods=horizon + 1, freq=freq, unit="us")[0]  # after CALENDAR_SPAN[0]...
    except (ValueError, OverflowError):  # ...and the latest: the horizon before CALENDAR_SPAN[1]
        first, latest = highest, lowest
    if first > latest:
        raise GenforgeError(f"a history of {length} steps and a horizon of {horizon} at frequency {freq} do not fit "
                            f"between {CALENDAR_SPAN[0]} and {CALENDAR_SPAN[1]}, the times this model's calendar "
                            f"features are computed for; send a shorter history or horizon")
    if not first <= last <= latest:
        shown = [f"{t:%Y-%m-%d}" if t == t.normalize() else t.isoformat() for t in (first, latest)]
        raise GenforgeError(f"end={end!r} is out of range: with a history of {length} steps and a horizon of "
                            f"{horizon} at frequency {freq}, end must be from {shown[0]} to {shown[1]} (the calendar "
                            f"features are computed for times from {CALENDAR_SPAN[0]} to {CALENDAR_SPAN[1]})")
    last = last.as_unit("ns")
    if pd.date_range(end=last, periods=1, freq=freq)[-1] != last:  # the grid's last time at or before end
        raise GenforgeError(f"end={end!r} is not on this model's {freq} grid")
    return last


def minimum_history(model) -> int:
    """The shortest history a forecaster reads: its context (a baseline: one season and a step, two for drift)."""
    return max(model.season + 1, 3) if getattr(model, "full_history", False) else model.context


class ForecastTask(Task):
    name = "forecast"
    verbs = (FORECAST,)  # and its companion, series (tasks/forecast_verbs.py)
    parts = (Part("model", "forward", ("history",), ("quantiles",), labels=False),)
    divergence_hint = "lower train.lr, set train.grad_clip=1.0, or shorten model.context"

    def dataset(self, cfg, name: str | None = None, quiet: bool = True):
        from genforge.data.series import is_series, load_series

        name = name or cfg.data.name
        if not is_series(name):
            raise GenforgeError(f"model.kind={cfg.model.kind} forecasts time series: set data.name=series:NAME (a "
                                f"bundled series, e.g. series:co2) or csv-series:PATH, not {name!r}")
        return load_series(name, cfg.data.series)

    def prepare(self, cfg, ds, device: torch.device, fold=None) -> Prepared:
        from genforge.models.rnn import pack

        context, horizon = resolve(cfg, ds)
        opts = cfg.data.series
        held = horizon * (opts.val_windows + opts.test_windows)
        for s in ds.series:
            need = context + horizon + held
            if len(s.values) < need:
                raise GenforgeError(f"{ds.name}: series {s.id!r} has {len(s.values)} values; it needs context "
                                    f"{context} + horizon {horizon} + {opts.val_windows + opts.test_windows} held-out "
                                    f"horizons = {need}; lower model.context or model.horizon, or "
                                    f"data.series.test_windows / val_windows")
        names = ds.feature_names if reads_covariates(cfg) else []
        xs, ys, xv, yv, train_features = [], [], [], [], []
        for s in ds.series:
            values = torch.tensor(s.values, dtype=torch.float32, device=device)
            val_start = len(values) - held
            pairs = values[:val_start].unfold(0, context + horizon, 1)  # (W, C + H): every training window
            features = torch.tensor(ds.features(s), device=device) if names else None
            covariates = None
            if features is not None:
                train_features.append(features[:val_start].cpu())
                covariates = features[:val_start].unfold(0, context + horizon, 1).transpose(1, 2)  # (W, C + H, F)
            xs.append(pack(pairs[:, :context], covariates))
            ys.append(pairs[:, context:])
            origins = [val_start + k * horizon for k in range(opts.val_windows)]
            if origins:
                x, y = _windows(values, origins, context, horizon, features)
                xv.append(x.cpu())
                yv.append(y.cpu())
        width = context + (context + horizon) * len(names)  # the packed input
        empty = torch.zeros(0, width), torch.zeros(0, horizon)
        update = {"context": context, "horizon": horizon, **({"covariates": names} if reads_covariates(cfg) else {})}
        if "season" in type(cfg.model).model_fields and cfg.model.season is None:
            update["season"] = ds.season
        mean, std = covariate_stats(ds, train_features) if names else (torch.zeros(1), torch.ones(1))
        checksum = hashlib.sha256(b"".join(np.ascontiguousarray(s.values).tobytes() for s in ds.series)).hexdigest()
        meta = {"dataset": ds.name, "source": ds.source, "checksum": checksum, "classes": [],
                "input_shape": [width], "norm_shape": list(mean.shape), "task": self.name, "freq": ds.freq,
                "season": ds.season, "series": [s.id for s in ds.series],
                "ends": {s.id: str(s.times[-1])[:19] for s in ds.series},
                "n_train": int(sum(len(x) for x in xs)), "n_val": int(sum(len(x) for x in xv))}
        return Prepared(ds, torch.cat(xs), torch.cat(ys), torch.cat(xv) if xv else empty[0],
                        torch.cat(yv) if yv else empty[1], (width,), 0, mean, std, meta,
                        model_config=cfg.model.model_copy(update=update))

    def check_fits(self, ds, meta: dict) -> None:
        pass  # any series can be forecast from its history; too short a one is refused where it is cut

    def heldout(self, run, n: int, seed: int, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
        """Histories and futures of the run's test windows (or, split="train", of training windows)."""
        ds, model, opts = self.dataset(run.config), run.model, run.config.data.series
        xs, ys = [], []
        for s in ds.series:
            values = torch.tensor(s.values, dtype=torch.float32)
            last = len(values) - model.horizon * (opts.test_windows + opts.val_windows)  # where training ended
            origins = (window_origins(len(values), model.horizon, opts.test_windows) if split == "test"
                       else list(range(model.context, last - model.horizon + 1)))
            features = torch.tensor(ds.features(s)) if model.features else None
            x, y = _windows(values, origins, model.context, model.horizon, features)
            xs.append(x)
            ys.append(y)
        x, y = torch.cat(xs), torch.cat(ys)
        idx = torch.randint(0, len(x), (n,), generator=torch.Generator().manual_seed(seed))
        return x[idx], y[idx]

    def step(self, model, cfg, steps_per_epoch: int, autocast: bool, channels_last: bool):
        from genforge.train.steps import FixedStep, ModelLossStep

        if not any(p.requires_grad for p in model.parameters()):  # a baseline: nothing to train
            return FixedStep(model)
        return ModelLossStep(model, cfg, steps_per_epoch, autocast, channels_last)

    def after_training(self, model, data: Prepared) -> dict:
        device = model.quantiles.device
        return model.calibrate(data.x_val.to(device), data.y_val.to(device))

    def validate(self, model, x: torch.Tensor, y: torch.Tensor, ds, cfg) -> dict:
        model.eval()
        with torch.inference_mode():
            x, y = x.to(model.quantiles.device), y.to(model.quantiles.device)
            return {"loss": model.loss(x, y).item()}

    def backtest(self, model, ds, windows: int, horizon: int | None = None, first_only: bool = False,
                 with_parts: bool = False) -> dict:
        """The model and the four baselines on the last `windows` horizons of every series of ds (first_only: on
        the first of those windows). with_parts: keep each window's sums, to pool backtests."""
        from genforge.evaluate.forecast import backtest

        horizon = horizon or model.horizon
        models = {"model": model, **baselines(model.context, horizon, ds.season, model.cfg.quantiles)}
        for s in ds.series:
            if len(s.values) - windows * horizon < minimum_history(model):
                raise GenforgeError(f"series {s.id!r} ({len(s.values)} values) is too short for {windows} windows of "
                                    f"{horizon} after a history of {minimum_history(model)}")
        check_features(model, ds)
        result = backtest(models, ds.series, ds.season,
                          lambda s: window_origins(len(s.values), horizon, windows)[: 1 if first_only else None],
                          horizon, ds.features)
        out = {"dataset": ds.name, "windows": windows, "horizon": horizon, "trained_horizon": model.horizon,
               "recursive": horizon > model.horizon, "season": ds.season, "methods": result}
        return out if with_parts else _jsonable(out)

    def test(self, model, ds, cfg) -> dict:
        from genforge.evaluate.classification import measure_speed

        result = self.backtest(model, ds, cfg.data.series.test_windows)
        s = ds.series[0]
        x, _ = _windows(torch.tensor(s.values, dtype=torch.float32), [len(s.values) - model.horizon],
                        minimum_history(model), model.horizon,
                        torch.tensor(ds.features(s)) if model.features else None)
        return {**result, **measure_speed(model, x)}

    def headline(self, result: dict) -> dict:
        ours, naive = result["methods"]["model"]["overall"], result["methods"]["seasonal-naive"]["overall"]
        return {"test_mase": ours["mase"], "test_smape": ours["smape"],
                "test_coverage_80": ours.get("coverage_80"), "test_coverage_95": ours.get("coverage_95"),
                "test_mase_seasonal_naive": naive["mase"], "latency_ms_b1": result["latency_ms_b1"]}

    def report(self, run_dir: Path, model, ds, result: dict, summary: dict, extra=()) -> Path:
        from genforge.evaluate.report import _plots_with_curves, write_page

        plots = _plots_with_curves(run_dir)
        plot_forecasts(model, ds, result, plots / "forecasts.png")
        return write_page(run_dir, summary, [*extra, ("Backtest (test windows)", metrics_table(result))])

    def print_evaluation(self, out, name: str, result: dict) -> None:
        from rich.table import Table

        out.print(f"[bold]{name}[/] on {result['dataset']}: {result['windows']} window(s) of {result['horizon']} "
                  f"steps per series" + (" (recursive beyond the trained horizon)" if result["recursive"] else ""))
        table = Table()
        for i, name in enumerate(HEADER):
            table.add_column(name, no_wrap=True, min_width=14 if i == 0 else None)
        for label, m in result["methods"].items():
            table.add_row(label, *_cells(m["overall"]))
        out.print(table)
        if len(result["methods"]["model"]["series"]) > 1:
            per = Table("series", "MASE", "seasonal naive")
            naive = result["methods"]["seasonal-naive"]["series"]
            for sid, m in result["methods"]["model"]["series"].items():
                per.add_row(sid, f"{m['mase']:.3f}", f"{naive[sid]['mase']:.3f}")
            out.print(per)

    def export_parts(self, model) -> tuple[Part, ...]:
        if not model.features:
            return self.parts
        return (Part("model", "forward", ("history_and_covariates",), ("quantiles",), labels=False),)

    def onnx_threads(self) -> int:
        return 1  # a few short sequences per call

    def warm_up(self, served) -> None:
        from genforge.evaluate.forecast import recursive

        model = served.model
        for n in (1, 8):
            history = torch.zeros(n, model.context) + torch.arange(model.context).float()
            covariates = torch.zeros(n, model.context + model.horizon, model.features) if model.features else None
            with torch.inference_mode():
                recursive(model, history, model.horizon, covariates)


def check_features(model, ds) -> None:
    """A model that reads covariates gets the ones it was trained with, or a one-line error."""
    if model.features and ds.feature_names != list(model.cfg.covariates):
        raise GenforgeError(f"{ds.name}: this model reads the features {', '.join(model.cfg.covariates)}; the data "
                            f"gives {', '.join(ds.feature_names) or 'none'} (set data.series.covariates and "
                            f"data.series.calendar as the run's config.yaml does)")


def _jsonable(result: dict) -> dict:
    """The backtest without the raw forecasts and window sums: what eval.json keeps."""
    methods = {label: {k: v for k, v in m.items() if k not in ("windows", "parts")}
               for label, m in result["methods"].items()}
    return {**result, "methods": methods}


HEADER = ("method", "MASE", "sMAPE", "MAE", "RMSE", "pinball", "cover 80%", "cover 95%")


def _cells(o: dict) -> list[str]:
    return [f"{o['mase']:.3f}", f"{o['smape']:.2f}", f"{o['mae']:.4g}", f"{o['rmse']:.4g}", f"{o['pinball']:.3f}",
            *(f"{o[k]:.0%}" if k in o else "-" for k in ("coverage_80", "coverage_95"))]


def metrics_table(result: dict) -> str:
    import html

    head = "".join(f"<th>{h}</th>" for h in HEADER)
    rows = [f"<tr><th>{html.escape(label)}</th>" + "".join(f"<td>{c}</td>" for c in _cells(m["overall"])) + "</tr>"
            for label, m in result["methods"].items()]
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def plot_forecasts(model, ds, result: dict, path: Path, most: int = 6) -> None:
    """Per series (the best and worst by MASE when there are more than `most`): the history, the truth of the test
    windows, the median forecast and the 80% and 95% bands."""
    from genforge import rundir
    from genforge.evaluate.forecast import forecast_windows
    from genforge.plots import figure

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


TASK = ForecastTask()
