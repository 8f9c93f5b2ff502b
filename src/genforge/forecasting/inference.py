"""The inference API of a forecaster: a history, its covariates and its end time checked as they are sent
(as_history, covariates_for, place_end), forecasts direct up to the trained horizon and recursive beyond it
(recursive, forecast_windows), and a Forecast with its median, intervals and columns; the classical baselines.
runs.LoadedRun.forecast and the server call it; the task's backtests and warm-up run the same `recursive`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from genforge.data.series import calendar_features, extend_times
from genforge.errors import GenforgeError
from genforge.models.rnn import Baseline, BaselineConfig, pack

BASELINES = ("naive", "seasonal-naive", "drift", "season-mean")
INTERVALS = {"80": (0.1, 0.9), "95": (0.025, 0.975)}  # the quantile levels that bound each central interval


def baselines(context: int, horizon: int, season: int, quantiles) -> dict:
    """The classical baselines {kind: Baseline}, each at the given context, horizon, season and quantile levels."""
    return {kind: Baseline(BaselineConfig(kind=kind, context=context, horizon=horizon, season=season,
                                          quantiles=quantiles), context, horizon, season) for kind in BASELINES}


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


def minimum_history(model) -> int:
    """The shortest history a forecaster reads: its context (a baseline: one season and a step, two for drift)."""
    return max(model.season + 1, 3) if getattr(model, "full_history", False) else model.context


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


def recursive(model, history: torch.Tensor, horizon: int, covariates: torch.Tensor | None = None) -> torch.Tensor:
    """(N, L) history -> (N, horizon, Q): direct up to the model's horizon, then its median appended to the history
    and the model run again (the intervals of later blocks are conditional on that median path: too narrow).
    covariates (N, L + horizon, F), for a model that reads them: a block that reaches past them (the last one, when
    the horizon is not a multiple of the model's) sees their last row repeated."""
    if model.features:
        need = history.shape[1] + -(-horizon // model.horizon) * model.horizon
        covariates = torch.cat([covariates, covariates[:, -1:].expand(-1, need - covariates.shape[1], -1)], 1)
    blocks, done = [], 0
    while done < horizon:
        if getattr(model, "full_history", False):
            x = history
        else:
            p = history.shape[1]
            x = pack(history[:, -model.context :],
                     covariates[:, p - model.context : p + model.horizon] if model.features else None)
        q = model(x)
        blocks.append(q)
        done += q.shape[1]
        history = torch.cat([history, q[..., model.median]], 1)
    return torch.cat(blocks, 1)[:, :horizon].float()


@torch.inference_mode()
def forecast_windows(model, values: np.ndarray, origins: list[int], horizon: int,
                     features: np.ndarray | None = None) -> np.ndarray:
    """The model's quantiles (W, horizon, Q) for windows starting at each origin of one series. A model with a fixed
    context reads the `context` values before each origin (batched); one that reads any history (a baseline) reads
    everything before it. A horizon beyond the model's is reached by feeding its median back (recursive). features:
    the series' covariates (T + known ahead, F), for a model that reads them."""
    if getattr(model, "full_history", False):
        return np.stack([recursive(model, torch.tensor(values[None, :o], dtype=torch.float32), horizon)[0].numpy()
                         for o in origins])
    c = model.context
    history = torch.tensor(np.stack([values[o - c : o] for o in origins]), dtype=torch.float32)
    covariates = None
    if model.features:
        f = torch.as_tensor(features, dtype=torch.float32)
        covariates = torch.stack([f[o - c : o + horizon] for o in origins])  # (W, <= C + horizon, F)
    return recursive(model, history, horizon, covariates).numpy()


def covariates_for(model, cfg, freq: str, n: int, length: int, horizon: int | None, end=None,
                   covariates: dict | None = None) -> np.ndarray | None:
    """The (n, length + horizon, F) covariates of a run's model for n histories of `length` steps whose last one is
    at `end`: their calendar features (from the times) and the values of the covariate columns, given by name, each
    a sequence over the history and the horizon (shared) or n of them. None for a model that reads none."""
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
