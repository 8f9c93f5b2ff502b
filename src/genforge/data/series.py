"""Time series: `series:NAME` (real series bundled in statsmodels' wheel, no download) and `csv-series:PATH` (a
user's CSV, long or wide), read, put on their frequency's grid, cleaned by the configured policies, and reported.

A CSV needs a time column and at least one numeric column. Wide format: every numeric column is a series (or the
ones data.series.target names). Long format: data.series.id_column names the series of each row, data.series.target
its value column. The frequency is inferred from the time column unless data.series.freq gives it.

Cleaning, in this order, each step counted in the report:
  duplicated timestamps  averaged;
  gaps                   timestamps the frequency expects but the file lacks, and missing values: filled by
                         data.series.fill (interpolate in time, forward fill, or refuse); leading and trailing
                         missing values are trimmed, not invented;
  outliers               |robust z| > data.series.outlier_z on the seasonal residual (z with the MAD, Iglewicz
                         and Hoaglin 1993): reported and kept, or clipped to the threshold (data.series.outliers);
  constant series        reported (a scaled constant is zero: it trains, but nothing can be learned from it).
Seasonality is detected per series with the 90% ACF test at the seasonal lag that M4's benchmarks use (on first
differences).

Covariates known in the future (data.series.covariates: prices, promotions, holidays) are columns of the same CSV:
shared by every series in wide format, per row in long format. Rows after a series' last value that hold them give
their future, which is what lets a model forecast past the end of the data. data.series.calendar adds features
derived from the timestamps (sin and cos of the position in the year, week or day, by the frequency)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from pandas.tseries.frequencies import to_offset
from pydantic import ValidationError

from genforge.data.series_options import SeriesOptions
from genforge.errors import GenforgeError

SEASON_BY_RULE = {"h": 24, "D": 7, "B": 5, "W": 52, "MS": 12, "ME": 12, "M": 12, "QS": 4, "QE": 4, "Q": 4}
TIME_NAMES = ("date", "time", "timestamp", "datetime", "ds", "period", "month", "week", "year", "day")
FLOAT32_MAX = float(np.finfo(np.float32).max)  # 3.4e38: the series reach the models as float32


@dataclass
class Series:
    id: str
    times: np.ndarray  # datetime64[ns], on the frequency's grid, no gaps
    values: np.ndarray  # float64, finite
    report: dict = field(default_factory=dict)
    exog: np.ndarray | None = None  # (len(values) + known ahead, K) covariates, float64, finite; None without any


@dataclass
class SeriesSet:
    name: str
    source: str  # a path, or "statsmodels <version>"
    freq: str  # pandas frequency string
    season: int  # observations per season (1: non-seasonal)
    series: list[Series]
    covariates: list[str] = field(default_factory=list)  # names of the covariate columns, in exog's order
    calendar: bool = False  # calendar features derived from the times come first among the features
    time_column: str | None = None  # the CSV column read as the times (chosen by name, else the first): data info says

    @property
    def feature_names(self) -> list[str]:
        """What a forecaster reads beside the values at every step: calendar features, then the covariates."""
        return [*(calendar_names(self.freq) if self.calendar else []), *self.covariates]

    def known_ahead(self, s: Series) -> int | None:
        """Steps after the last value for which the covariates are known (None: no covariates, any horizon)."""
        return None if s.exog is None else len(s.exog) - len(s.values)

    def features(self, s: Series, ahead: int = 0) -> np.ndarray:
        """(len(s.values) + ahead, F) float32, the feature_names at every time of the series and `ahead` steps
        after it; a covariate not known that far ahead is refused with the fix."""
        known = self.known_ahead(s)
        if known is not None and ahead > known:
            raise GenforgeError(f"{self.name}: the covariates of series {s.id!r} are known {known} step(s) after its "
                                f"last value, not {ahead}; add their future rows to the CSV (an empty value and the "
                                f"covariates) or forecast a shorter horizon")
        columns = []
        if self.calendar:
            times = extend_times(s.times, self.freq, ahead)
            columns.append(calendar_features(times, self.freq))
        if s.exog is not None:
            columns.append(s.exog[: len(s.values) + ahead])
        if not columns:
            return np.zeros((len(s.values) + ahead, 0), dtype=np.float32)
        return np.concatenate(columns, 1).astype(np.float32)

    def info(self) -> dict:
        """The cleaning report of `genforge data info`, JSON-ready."""
        totals = {key: sum(s.report[key] for s in self.series)
                  for key in ("duplicates", "gaps", "missing", "trimmed", "outliers")}
        return {"name": self.name, "source": self.source, "kind": "series",
                **({"time_column": self.time_column} if self.time_column else {}),
                "freq": self.freq, "season": self.season,
                "features": self.feature_names, "n_series": len(self.series),
                "observations": sum(len(s.values) for s in self.series),
                "totals": totals, "constant_series": [s.id for s in self.series if s.report["constant"]],
                "series": {s.id: s.report for s in self.series}}


# --- reading -------------------------------------------------------------------------------------------------------

def _bundled() -> dict:
    """name -> (loader of a wide DataFrame indexed by time, description). statsmodels ships these in its wheel."""
    from statsmodels import datasets  # deferred: 1.5 s or more to import, paid by bundled series only

    def yearly(module, column):
        data = module.load_pandas().data
        year = data.columns[0]
        return data.set_index(pd.to_datetime(data[year].astype(int).astype(str), format="%Y"))[[column]]

    def elnino():  # 61 years x 12 months: one monthly series of sea surface temperature
        data = datasets.elnino.load_pandas().data.set_index("YEAR")
        values = data.to_numpy().reshape(-1)
        return pd.DataFrame({"sst": values}, index=pd.date_range(f"{int(data.index[0])}-01-01", periods=len(values),
                                                                   freq="MS"))

    def macrodata():
        data = datasets.macrodata.load_pandas().data
        index = pd.PeriodIndex.from_fields(year=data["year"].astype(int), quarter=data["quarter"].astype(int),
                                           freq="Q").to_timestamp()
        return data.set_index(index)[["realgdp", "realcons", "realinv", "cpi", "m1", "unemp", "tbilrate"]]

    def elec_equip():
        from statsmodels.datasets import elec_equip as module  # deferred, as above

        data = module.load().data
        return data.set_axis(["elec_equip"], axis=1)

    return {
        "co2": (lambda: datasets.co2.load_pandas().data, "weekly CO2 at Mauna Loa (ppm), 1958-2001, with gaps"),
        "sunspots": (lambda: yearly(datasets.sunspots, "SUNACTIVITY"), "yearly sunspot numbers, 1700-2008"),
        "nile": (lambda: yearly(datasets.nile, "volume"), "yearly Nile flow at Aswan, 1871-1970"),
        "elnino": (elnino, "monthly sea surface temperature, El Nino region, 1950-2010"),
        "elec_equip": (elec_equip, "monthly euro-area electrical equipment orders index, 1995-2012"),
        "macrodata": (macrodata, "quarterly US macro series (GDP, consumption, investment, CPI, M1, ...), 1959-2009"),
    }


def bundled_names() -> dict[str, str]:
    """The bundled series: name -> what it is."""
    return {name: text for name, (_, text) in _bundled().items()}


def _read_csv(path: Path, spec: str):

    if not path.is_file():
        raise GenforgeError(f"{spec}: {path} is not a file; give csv-series:PATH to a CSV with a time column")
    try:
        # utf-8-sig: a spreadsheet's "CSV UTF-8" starts with a byte-order mark (pandas' C parser drops it too)
        return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise GenforgeError(f"{spec}: not a readable CSV ({str(e).splitlines()[0]})") from None


def _cell(value: str, limit: int = 40) -> str:
    """A cell as an error message quotes it: at most `limit` characters (a runaway quote makes a 100,000-char one)."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value):,} characters)"

def _time_column(frame, opts: SeriesOptions, spec: str) -> str:
    columns = list(frame.columns)
    if opts.time_column is not None:
        if opts.time_column not in columns:
            raise GenforgeError(f"{spec}: no time column {opts.time_column!r}; the columns are {', '.join(columns)}")
        return opts.time_column
    named = [c for c in columns if str(c).strip().lower() in TIME_NAMES]
    return named[0] if named else columns[0]


def _parse_times(text, column: str, spec: str):

    text = text.str.strip()
    if text.str.fullmatch(r"\d{4}(\.0+)?").all():  # bare years (1871, 1871.0)
        return pd.to_datetime(text.str[:4], format="%Y")
    times = pd.to_datetime(text, errors="coerce", format="mixed")
    bad = times.isna() & (text != "")
    if bad.any() or (text == "").any():
        row = int(np.flatnonzero(bad | (text == ""))[0])
        raise GenforgeError(f"{spec}: row {row + 2}, column {column!r}: {_cell(text.iloc[row])} is not a date or "
                            f"time; write it as YYYY-MM-DD (or YYYY-MM-DD HH:MM), or set data.series.time_column")
    if getattr(times.dt, "tz", None) is not None:
        times = times.dt.tz_convert(None)
    return times


def _numbers(text, column: str, spec: str) -> np.ndarray:
    """A column of strings -> float64, empty cells and NA/NaN as missing (filled by data.series.fill); anything else
    non-numeric refused, and so are inf and values past float32's range (the models' dtype), which would pass
    as numbers and end training in a traceback."""

    text = text.str.strip()
    missing = text.isin(["", "NA", "N/A", "NaN", "nan", "null", "NULL", "."])
    values = pd.to_numeric(text.where(~missing), errors="coerce")
    bad = values.isna() & ~missing
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise GenforgeError(f"{spec}: row {row + 2}, column {column!r}: {_cell(text.iloc[row])} is not a number; "
                            f"fix the value, leave the cell empty (a missing value), or drop the column with "
                            f"data.series.target")
    values = values.to_numpy(dtype=np.float64)
    huge = np.abs(values) > FLOAT32_MAX  # inf and 1e999 (read as inf), and 1e39 (inf as float32); NaN compares False
    if huge.any():
        row = int(np.flatnonzero(huge)[0])
        raise GenforgeError(f"{spec}: row {row + 2}, column {column!r}: {_cell(text.iloc[row])} is not finite within "
                            f"float32's ±{FLOAT32_MAX:.3g}; fix the value or leave the cell empty (a missing value)")
    return values


def _wide_from_csv(frame, opts: SeriesOptions, spec: str):
    """The CSV as (a wide DataFrame: a time index, duplicates allowed, and one float column per series; the
    covariates: name -> a DataFrame of the same shape (long format) or a Series of the times (wide: shared); the
    time column's name)."""

    time = _time_column(frame, opts, spec)
    times = _parse_times(frame[time], time, spec)
    _check_columns(frame, opts.covariates, spec)
    if opts.id_column is not None:  # long format
        if opts.id_column not in frame.columns:
            raise GenforgeError(f"{spec}: no id column {opts.id_column!r}; the columns are {', '.join(frame.columns)}")
        targets = opts.target or [c for c in frame.columns if c not in (time, opts.id_column, *opts.covariates)]
        if len(targets) != 1:
            raise GenforgeError(f"{spec}: long format (data.series.id_column) reads one value column; choose it "
                                f"with data.series.target=[NAME] from {', '.join(targets)}")
        _check_columns(frame, targets, spec)
        long = pd.DataFrame({"time": times.to_numpy(), "id": frame[opts.id_column].str.strip(),
                             **{c: _numbers(frame[c], c, spec) for c in [targets[0], *opts.covariates]}})
        wide = {c: long.pivot_table(index="time", columns="id", values=c, aggfunc="mean", dropna=False)
                for c in [targets[0], *opts.covariates]}
        return wide[targets[0]], {c: wide[c] for c in opts.covariates}, time
    targets = opts.target or [c for c in frame.columns if c != time and c not in opts.covariates]
    _check_columns(frame, targets, spec)
    if not targets:
        raise GenforgeError(f"{spec}: only a time column" + (" and covariates" if opts.covariates else "") +
                            "; add a column of values")
    index = pd.DatetimeIndex(times)
    wide = pd.DataFrame({c: _numbers(frame[c], c, spec) for c in targets}, index=index)
    return wide, {c: pd.Series(_numbers(frame[c], c, spec), index=index) for c in opts.covariates}, time


def _check_columns(frame, targets: list[str], spec: str) -> None:
    missing = [c for c in targets if c not in frame.columns]
    if missing:
        raise GenforgeError(f"{spec}: no column {missing[0]!r}; the columns are {', '.join(frame.columns)}")


# --- the grid ------------------------------------------------------------------------------------------------------

def infer_freq(index, spec: str) -> str:
    """The frequency of sorted unique times: pandas' own inference, else the one whose grid holds the most of them
    (a series with gaps), checked to hold at least 80% of the times."""

    if len(index) < 3:
        raise GenforgeError(f"{spec}: {len(index)} distinct timestamps; a series needs at least 3")
    with warnings.catch_warnings():  # pandas 3 announces an offset instead of a string; either is read below
        warnings.simplefilter("ignore", DeprecationWarning)
        freq = pd.infer_freq(index)
    if freq is not None:
        freq = getattr(freq, "freqstr", freq)
    else:
        days = float(np.median((index[1:] - index[:-1]).total_seconds())) / 86_400
        candidates = [("h", 1 / 24), ("D", 1), ("W-" + index[0].day_name()[:3].upper(), 7), ("MS", 30.4),
                      ("ME", 30.4), ("QS", 91.3), ("QE", 91.3), ("YS", 365.25), ("YE", 365.25)]
        scored = []
        for name, width in candidates:
            if abs(days / width - 1) < 0.1:
                grid = pd.date_range(index[0], index[-1], freq=name)
                scored.append((index.isin(grid).mean(), name))
        if not scored or max(scored)[0] < 0.8:
            raise GenforgeError(f"{spec}: cannot infer the frequency of the time column (median step {days:.3g} "
                                f"days, irregular); give it with data.series.freq (e.g. D, W-SUN, MS, QS, YS)")
        freq = max(scored)[1]
    return freq


def season_length(freq: str) -> int:
    """Observations per season of a pandas frequency: 12 for monthly, 4 quarterly, 52 weekly, 7 daily, 24 hourly,
    1 (no season) for yearly and anything else."""

    rule = to_offset(freq).rule_code.split("-")[0]
    return SEASON_BY_RULE.get(rule, 1)


CALENDAR = {  # rule -> the positions a calendar feature encodes: (name, position of a DatetimeIndex, period)
    "h": (("hour", lambda t: t.hour, 24), ("weekday", lambda t: t.dayofweek, 7)),
    "D": (("weekday", lambda t: t.dayofweek, 7), ("yearday", lambda t: t.dayofyear - 1, 365.25)),
    "B": (("weekday", lambda t: t.dayofweek, 5), ("yearday", lambda t: t.dayofyear - 1, 365.25)),
    "W": (("week", lambda t: t.isocalendar().week.to_numpy() - 1, 52.18),),
    "MS": (("month", lambda t: t.month - 1, 12),), "ME": (("month", lambda t: t.month - 1, 12),),
    "M": (("month", lambda t: t.month - 1, 12),),
    "QS": (("quarter", lambda t: t.quarter - 1, 4),), "QE": (("quarter", lambda t: t.quarter - 1, 4),),
    "Q": (("quarter", lambda t: t.quarter - 1, 4),),
}


def _calendar(freq: str) -> tuple:

    return CALENDAR.get(to_offset(freq).rule_code.split("-")[0], ())


def calendar_names(freq: str) -> list[str]:
    """The calendar features of a frequency: sin and cos of each position (none for yearly data)."""
    return [f"{name}_{f}" for name, _, _ in _calendar(freq) for f in ("sin", "cos")]


def calendar_features(times: np.ndarray, freq: str) -> np.ndarray:
    """(T, 2 * positions): sin and cos of 2 pi position / period, so December sits next to January."""

    index = pd.DatetimeIndex(times)
    out = []
    for _, position, period in _calendar(freq):
        angle = 2 * np.pi * np.asarray(position(index), dtype=np.float64) / period
        out += [np.sin(angle), np.cos(angle)]
    return np.stack(out, 1) if out else np.zeros((len(index), 0))


def extend_times(times: np.ndarray, freq: str, ahead: int) -> np.ndarray:
    """The times followed by `ahead` more on the frequency's grid."""

    if ahead == 0:
        return times
    future = pd.date_range(pd.Timestamp(times[-1]), periods=ahead + 1, freq=freq)[1:]
    return np.concatenate([times, future.to_numpy(dtype="datetime64[ns]")])


def is_seasonal(values: np.ndarray, season: int) -> bool:
    """The 90% test on the autocorrelation at the seasonal lag (Bartlett's standard error), as M4's benchmark code
    decides whether to deseasonalize, here on first differences: a trend otherwise dominates the ACF and hides a
    clear season (a 12-month sine under a linear trend)."""
    if season <= 1 or len(values) < 3 * season + 1:
        return False
    x = np.diff(values)
    n = len(x)
    x = x - x.mean()
    denom = float(x @ x)
    if denom == 0:
        return False
    acf = np.array([float(x[:-k] @ x[k:]) / denom for k in range(1, season + 1)])
    limit = 1.645 * math.sqrt((1 + 2 * float(acf[:-1] @ acf[:-1])) / n)
    return bool(abs(acf[-1]) > limit)


def robust_lowess(y: np.ndarray, k: int, iterations: int = 3, block: int = 2**20) -> np.ndarray:
    """Robust LOWESS (Cleveland 1979) of y on an evenly spaced grid: at every point a line fitted by weighted least
    squares to its k nearest points, tricube weights by distance; then `iterations` refits with each point's weight
    also scaled by the bisquare of its residual over 6 x the median absolute residual, so that a spike stops
    pulling the fit. The same numbers as statsmodels' lowess(y, arange(n), frac=k/n, it=iterations) (1e-8), which
    clears an n-long weight array at every point: O(n^2), 27 s at 80,000 points. Here every point's window is one
    row of an (n, k) gather, `block` values at a time (8 MB): O(n k), about 1.4 s per 100,000 points with k = 49."""
    n = len(y)
    k = min(max(k, 2), n)
    i = np.arange(n)
    left = np.clip(i - k // 2, 0, n - k)  # each point's window [left, left + k): its k nearest, centred if it can be
    radius = np.maximum(i - left, left + k - 1 - i).astype(np.float64)  # the farthest neighbour: tricube weight 0
    robustness = np.ones(n)
    rows = max(1, block // k)
    for _ in range(iterations + 1):
        fit = np.empty(n)
        for start in range(0, n, rows):
            at = slice(start, min(n, start + rows))
            window = left[at, None] + np.arange(k)  # (m, k) indices
            u = (window - i[at, None]).astype(np.float64)  # signed distance to the point being fitted, in steps
            w = (1 - (np.abs(u) / radius[at, None]) ** 3) ** 3 * robustness[window]
            enough = (w > 1e-12).sum(1) >= 2  # a line needs two points; else the value itself, as statsmodels does
            w /= np.where(enough, w.sum(1), 1)[:, None]
            u_mean = (w * u).sum(1)
            du = u - u_mean[:, None]
            spread = np.maximum((w * du * du).sum(1), 1e-12)
            yw = y[window]
            line = (w * yw).sum(1) - u_mean * (w * du * yw).sum(1) / spread  # the weighted line at u = 0
            fit[at] = np.where(enough, line, y[at])
        residual = np.abs(y - fit)
        scale = 6 * float(np.median(residual))
        scaled = np.minimum(residual / scale, 1) if scale > 0 else (residual > 0).astype(np.float64)
        robustness = (1 - scaled**2) ** 2
    return fit


def _residual(values: np.ndarray, season: int) -> np.ndarray:
    """What trend and season leave. Trend: robust LOWESS (local linear, 3 robustness iterations, Cleveland 1979)
    over two seasons (at least 7 points), so a spike neither bends it nor is it biased at the ends; season: the
    median of the detrended values at each position; twice, the second trend fitted to the deseasonalized values."""
    n, t = len(values), np.arange(len(values))
    seasonal_fit = season > 1 and n >= 2 * season
    position = t % season
    seasonal = np.zeros(n)
    for _ in range(2 if seasonal_fit else 1):
        trend = robust_lowess(values - seasonal, max(7, 2 * season + 1))
        if seasonal_fit:
            detrended = values - trend
            seasonal = np.array([np.median(detrended[position == p]) for p in range(season)])[position]
    return values - trend - seasonal


def _clean(sid: str, column, exog, freq: str, season: int, opts: SeriesOptions, spec: str) -> Series:
    """One series: column, a float Series indexed by time; exog, a DataFrame of its covariates (or None)."""

    duplicates = int(column.index.duplicated().sum())
    column = column.groupby(level=0).mean()  # duplicated timestamps averaged
    observed = column.dropna()
    if len(observed) == 0:
        raise GenforgeError(f"{spec}: series {sid!r} has no values")
    grid = pd.date_range(observed.index[0], observed.index[-1], freq=freq)
    off_grid = ~observed.index.isin(grid)
    if off_grid.any():
        raise GenforgeError(f"{spec}: series {sid!r}: {observed.index[off_grid][0]} is not on the {freq} grid that "
                            f"starts at {grid[0]}; set data.series.freq to the data's frequency")
    trimmed = int(column.notna().argmax()) + int(column[::-1].notna().argmax())
    full = column.reindex(grid)
    gaps = int((~grid.isin(column.index)).sum())
    missing = int(full.isna().sum()) - gaps
    if gaps + missing and opts.fill == "refuse":
        where = full.index[full.isna()][0]
        raise GenforgeError(f"{spec}: series {sid!r} has {gaps} missing timestamps and {missing} missing values "
                            f"(the first at {where.date()}); fill them with data.series.fill=interpolate or ffill")
    if opts.fill == "interpolate":
        full = full.interpolate(method="time")
    else:
        full = full.ffill()
    values = full.to_numpy(dtype=np.float64)
    residual = _residual(values, season)
    mad = float(np.median(np.abs(residual - np.median(residual))))
    outliers = 0
    if mad > 0:
        z = 0.6745 * (residual - np.median(residual)) / mad
        flagged = np.abs(z) > opts.outlier_z
        outliers = int(flagged.sum())
        if opts.outliers == "clip" and outliers:
            bound = opts.outlier_z * mad / 0.6745
            center = values - residual + np.median(residual)
            values = np.where(flagged, center + np.sign(z) * bound, values)
    report = {"length": len(values), "start": str(grid[0].date()), "end": str(grid[-1].date()),
              "duplicates": duplicates, "gaps": gaps, "missing": missing, "trimmed": trimmed,
              "filled": (gaps + missing) if opts.fill != "refuse" else 0, "outliers": outliers,
              "outliers_clipped": outliers if opts.outliers == "clip" else 0,
              "constant": bool(np.ptp(values) == 0), "seasonal": is_seasonal(values, season)}
    covariates = None
    if exog is not None:
        covariates = _clean_covariates(sid, exog, grid, freq, opts, spec)
        report["known_ahead"] = len(covariates) - len(values)
        report["trimmed"] -= report["known_ahead"]  # those rows were the covariates' future, not missing values
    return Series(sid, grid.to_numpy(dtype="datetime64[ns]"), values, report, covariates)


def _clean_covariates(sid: str, exog, grid, freq: str, opts: SeriesOptions, spec: str) -> np.ndarray:
    """(len(grid) + known ahead, K): the covariates on the series' grid, gaps filled by the same policy, then the
    steps after its last value at which every covariate is given (their future, taken as given, not filled)."""

    exog = exog.groupby(level=0).mean()
    last = max(grid[-1], exog.index.max())
    full = exog.reindex(pd.date_range(grid[0], last, freq=freq))
    span, future = full.iloc[: len(grid)], full.iloc[len(grid) :]
    ahead = int(future.notna().all(axis=1).cumprod().sum())  # the unbroken run of complete rows after the values
    if span.isna().any().any() and opts.fill == "refuse":
        name = span.columns[span.isna().any()][0]
        where = span.index[span[name].isna()][0]
        raise GenforgeError(f"{spec}: series {sid!r}: covariate {name!r} has no value at {where.date()}; fill it, or "
                            f"set data.series.fill=interpolate or ffill")
    span = span.interpolate(method="time", limit_area="inside") if opts.fill == "interpolate" else span.ffill()
    if span.isna().any().any():
        name = span.columns[span.isna().any()][0]
        where = span.index[span[name].isna()][0]
        raise GenforgeError(f"{spec}: series {sid!r}: covariate {name!r} has no value at {where.date()}; every step "
                            f"of a series needs its covariates (fill them in the CSV)")
    return np.concatenate([span.to_numpy(dtype=np.float64), future.iloc[:ahead].to_numpy(dtype=np.float64)])


SOURCES = ("series", "csv-series")  # the prefixes of series specs


def is_series(spec: str) -> bool:
    return spec.partition(":")[0] in SOURCES and ":" in spec


def options_from(pairs: list[str]) -> SeriesOptions:
    """key=value pairs (values parsed as YAML, as config overrides are) -> validated SeriesOptions."""

    raw = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise GenforgeError(f"option {pair!r} must look like key=value, e.g. fill=ffill")
        raw[key.strip().removeprefix("data.series.")] = yaml.safe_load(value) if value.strip() else None
    try:
        return SeriesOptions(**raw)
    except ValidationError as e:
        first = e.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            raise GenforgeError(f"unknown series option {key!r}; the options are "
                                f"{', '.join(SeriesOptions.model_fields)}") from None
        raise GenforgeError(f"series option {key!r}: {first['msg']}") from None


def load_series(spec: str, opts: SeriesOptions | None = None) -> SeriesSet:
    """`series:NAME` or `csv-series:PATH` -> the cleaned SeriesSet."""
    opts = opts or SeriesOptions()
    prefix, _, rest = spec.partition(":")
    if prefix == "series":
        table = _bundled()
        if rest not in table:
            raise GenforgeError(f"unknown bundled series {rest!r}; choose one of {', '.join(table)} "
                                f"(or csv-series:PATH for your own CSV)")
        import statsmodels  # deferred, as in _bundled (the version the data came with)

        wide, source, time_column = table[rest][0](), f"statsmodels {statsmodels.__version__}", None
        _check_columns(wide, [*(opts.target or []), *opts.covariates], spec)
        exog = {c: wide[c] for c in opts.covariates}
        wide = wide[opts.target or [c for c in wide.columns if c not in opts.covariates]]
    elif prefix == "csv-series":
        path = Path(rest).expanduser()
        wide, exog, time_column = _wide_from_csv(_read_csv(path, spec), opts, spec)
        source = str(path)
    else:
        raise GenforgeError(f"{spec}: not a series; give series:NAME or csv-series:PATH")
    wide = wide.sort_index(kind="stable")
    exog = {c: e.sort_index(kind="stable") for c, e in exog.items()}
    if opts.resample:
        try:
            wide = wide.resample(opts.resample).mean()  # periods with no value stay missing: filled or refused below
            exog = {c: e.resample(opts.resample).mean() for c, e in exog.items()}
        except ValueError:
            raise GenforgeError(f"{spec}: data.series.resample={opts.resample!r} is not a pandas frequency (e.g. MS, "
                                f"QS, W-SUN)") from None
    freq = opts.resample or opts.freq or infer_freq(wide.index.unique(), spec)
    try:
        season = season_length(freq)
    except ValueError:
        raise GenforgeError(f"{spec}: data.series.freq={freq!r} is not a pandas frequency (e.g. D, W-SUN, MS, QS, "
                            f"YS)") from None
    def covariates_of(sid):
        if not exog:
            return None
        return pd.DataFrame({c: e[sid] if isinstance(e, pd.DataFrame) else e for c, e in exog.items()})

    series = [_clean(str(c), wide[c], covariates_of(c), freq, season, opts, spec) for c in wide.columns]
    return SeriesSet(spec, source, pd.tseries.frequencies.to_offset(freq).freqstr, season, series,
                     list(opts.covariates), opts.calendar, time_column)
