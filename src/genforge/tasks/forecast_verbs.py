"""A forecaster's verbs: forecast (quantiles after one or more histories) and series (the end of its own training
series, which the playground plots and forecasts from)."""

from __future__ import annotations

from itertools import chain

import numpy as np
from pydantic import Field

from genforge.tasks.verb import IntegerOrNone, Limits, Number, RequestError, Strict, Verb

SHOWN_SERIES = 8  # series of a forecaster's own data that the series verb offers (the first ones)
SHOWN_CONTEXTS = 10  # the last this many contexts of each: what the playground plots and forecasts from


class ForecastRequest(Strict):
    history: list[Number] | list[list[Number]] = Field(
        description=f"One series' most recent values, oldest first, or N equally long series; at least the model's "
                    f"forecast.minimum_history values each (its card says), at most {Limits.max_history:,} in all")
    horizon: IntegerOrNone = Field(None, ge=1, le=1_000_000, description=f"Steps to forecast (default: the trained "
                                f"horizon); at most {Limits.max_horizons} trained horizons, those beyond the first "
                                f"forecast from the model's own medians")
    end: str | None = Field(None, max_length=40, description="The time of the history's last value (e.g. "
                            "2010-12-01), for a model that reads calendar features (its card's forecast.features)")
    covariates: dict[str, list[Number] | list[list[Number]]] | None = Field(
        None, max_length=64, description="Each covariate column the model reads (its card's forecast.covariates): "
                                         "its values over the history and the horizon (history length + horizon), "
                                         "or one such list per history")


def history_inputs(values, minimum: int, max_series: int, max_values: int) -> np.ndarray:
    """A forecast request's history -> float32 (L,) for one series or (N, L) for N of equal length, validated: numbers
    only, finite in float32, at most max_series series and max_values values, at least `minimum` values each. An array
    already typed (N, L) (a tensor whose datatype and shape the protocol checked) may hold zero rows."""
    if isinstance(values, np.ndarray):
        return _typed_history(values, minimum, max_series, max_values)
    shape = "a list of numbers, oldest first (one series), or a list of equally long such lists (several)"
    if not isinstance(values, list) or not values:
        raise RequestError(f"history must be {shape}, with at least {minimum} values each")
    if all(isinstance(row, list) for row in values) and len(lengths := {len(row) for row in values}) > 1:
        raise RequestError(f"the {len(values)} histories have different lengths ({min(lengths)} to {max(lengths)}); "
                           f"send equally long ones (e.g. the last {max(min(lengths), minimum)} values of each), or "
                           f"one request per length")
    try:
        array = np.array(values)
    except (ValueError, TypeError):  # numbers mixed with lists
        raise RequestError(f"history must be {shape}") from None
    if array.dtype == object:  # nulls, or integers beyond 64 bits: as floats (a null is NaN, refused below)
        try:
            array = array.astype(np.float64)
        except (TypeError, ValueError, OverflowError):
            pass
    flat = values if array.ndim == 1 else chain.from_iterable(values) if array.ndim == 2 else ()
    if array.dtype.kind not in "iuf" or array.ndim > 2 or any(v is True or v is False for v in flat):
        raise RequestError(f"history must be {shape}: numbers only (no strings, booleans or nulls; fill a missing "
                           f"value first)")
    if array.size == 0:
        raise RequestError(f"history is empty; send at least {minimum} values per series")
    return _typed_history(array, minimum, max_series, max_values)


def _typed_history(array: np.ndarray, minimum: int, max_series: int, max_values: int) -> np.ndarray:
    if array.ndim == 2 and len(array) > max_series:
        raise RequestError(f"at most {max_series} histories per request, got {len(array)}")
    values = max(array.size, array.shape[-1])  # zero rows of a length no model reads: refused too
    if values > max_values:
        raise RequestError(f"at most {max_values:,} history values per request, got {values:,}; send the most "
                           f"recent values only")
    if not np.isfinite(array).all():
        raise RequestError("history values must be finite numbers (no null, NaN or infinity); fill a missing value "
                           "first")
    with np.errstate(over="ignore"):
        history = array.astype(np.float32)  # what the model sees: 1e300 is finite here and inf there
    if not np.isfinite(history).all():
        raise RequestError(f"history values must fit in float32 (magnitude at most {np.finfo(np.float32).max:.3g})")
    if history.shape[-1] < minimum:
        raise RequestError(f"the history has {history.shape[-1]} values per series; this model needs at least "
                           f"{minimum}: send a longer one")
    return history


def forecast_card(served) -> dict:
    """What a forecaster reads and answers: its context, trained horizon and quantile levels."""
    model, meta = served.model, served.run.meta
    series_opts = served.run.config.data.series
    return {"context": model.context, "horizon": model.horizon, "levels": [float(q) for q in model.cfg.quantiles],
            "minimum_history": served.minimum_history, "season": meta.get("season"), "freq": meta.get("freq"),
            "series": meta.get("series", []), "features": list(getattr(model.cfg, "covariates", [])),
            "calendar": bool(model.features and series_opts.calendar),
            "covariates": list(series_opts.covariates) if model.features else []}


def forecast_answer(served, forecast, one: bool, latency_ms: float) -> dict:
    """The forecast answer: the median, the 80% and 95% bounds (null where the model predicts no such quantiles)
    and every quantile; lists (horizon,) and (horizon, Q) for one 1-D history, else one per history."""
    def rows(array):
        return None if array is None else (array[0] if one else array).tolist()

    bounds = {}
    for coverage in (80, 95):
        lo, hi = forecast.interval(coverage) or (None, None)
        bounds |= {f"lo_{coverage}": rows(lo), f"hi_{coverage}": rows(hi)}
    return {"model": served.name, "backend": served.backend, "latency_ms": latency_ms,
            "horizon": forecast.quantiles.shape[1], "trained_horizon": served.model.horizon,
            "recursive": forecast.recursive, "levels": list(forecast.levels), "forecast": rows(forecast.median),
            **bounds, "quantiles": rows(forecast.quantiles)}


class Forecast(Verb):
    command = "forecast"
    summary = ("Quantile forecasts after one or more histories: the median, its 80% and 95% intervals, and every "
               "quantile the model predicts")
    request, array = ForecastRequest, "history"
    fewer = "or shorter histories, or a shorter horizon"

    def decode(self, served, array, fields: dict, limits: Limits) -> dict:
        history = history_inputs(array, served.minimum_history, limits.max_batch, limits.max_history)
        horizon, trained = fields["horizon"], served.model.horizon
        if horizon is not None and horizon > limits.max_horizons * trained:
            raise RequestError(f"horizon must be at most {limits.max_horizons * trained} ({limits.max_horizons} x "
                               f"the trained horizon {trained}; steps beyond {trained} are forecast from the model's "
                               f"own medians), got {horizon}")
        return {**fields, "history": history}

    def run(self, served, inputs: dict):
        return served.forecast(inputs["history"], inputs["horizon"], inputs["end"], inputs["covariates"])

    def check(self, served, inputs: dict, result):
        if not np.isfinite(result.quantiles).all():  # finite float32 inputs can still overflow inside the model
            raise RequestError("the model's forecast of this history is not finite (values too large for its "
                               "float32 arithmetic); send a history on the scale of its training data")
        return result

    def answer(self, served, inputs: dict, result, latency_ms: float) -> dict:
        return forecast_answer(served, result, inputs["history"].ndim == 1, latency_ms)

    def card(self, served) -> dict:
        return {"forecast": forecast_card(served)}

    def tensors(self, served) -> dict:
        levels, card = len(served.model.cfg.quantiles), forecast_card(served)
        reads = [  # what the verb needs beyond the history: the same checks as a JSON request's end and covariates
            *([{"name": "end", "datatype": "BYTES", "shape": [1], "description": "the time of the histories' last "
                f"value (e.g. 2010-12-01), on the model's {card['freq']} grid: it places them on the calendar the "
                "model reads"}] if card["calendar"] else []),
            *([{"name": "covariates", "datatype": "FP32", "shape": [-1, -1, len(card["covariates"])],
                "description": f"the covariate columns {', '.join(card['covariates'])} (in this order) over the "
                "history's steps and the horizon's: 1 row shared by every history, or one per history"}]
              if card["covariates"] else [])]
        return {"inputs": [
            {"name": "history", "datatype": "FP32", "shape": [-1, -1], "description": "N equally long histories, "
             f"oldest first, at least {served.minimum_history} values each"},
            {"name": "horizon", "datatype": "INT64", "shape": [1], "description": "steps to forecast; default the "
             "trained horizon", "optional": True}, *reads],
            "outputs": [{"name": "quantiles", "datatype": "FP32", "shape": [-1, -1, levels],
                         "description": "per history and step, the quantiles at the card's forecast.levels"}]}

    def from_tensors(self, served, tensors: dict, parameters: dict) -> tuple[np.ndarray, dict]:
        """The covariates tensor (rows, steps, columns) -> {column: its values over the steps, shared (one row) or
        one list per history}, as a JSON request gives them."""
        history, values = tensors["history"], {k: tensors[k] for k in ("horizon", "end") if k in tensors}
        if "covariates" in tensors:
            c, n = tensors["covariates"], len(history)
            if len(c) not in (1, n):
                raise RequestError(f"covariates: 1 row (shared by every history) or one per history ({n}), got "
                                   f"{len(c)}")
            values["covariates"] = {name: (c[0, :, i] if len(c) == 1 else c[:, :, i]).tolist()
                                    for i, name in enumerate(forecast_card(served)["covariates"])}
        return history, values

    def outputs(self, served, inputs: dict, result) -> dict[str, np.ndarray]:
        return {"quantiles": np.asarray(result.quantiles, dtype=np.float32)}


def load_series(served) -> None:
    """The last SHOWN_CONTEXTS contexts of the first SHOWN_SERIES series the model trained on, read once at start
    into served.recent. Data that no longer loads (a CSV moved away) leaves the reason in served.recent_error: the
    forecast verb does not need it."""
    if served.recent is not None or served.recent_error is not None:
        return  # read at an earlier start of the app
    try:
        ds = served.task.dataset(served.run.config)
    except Exception as e:  # noqa: BLE001 - any failure: the server still serves the model
        why = (str(e).splitlines() or [type(e).__name__])[0]
        served.recent_error = f"the series {served.name} trained on do not load here ({why})"
        return
    keep = max(SHOWN_CONTEXTS * served.model.context, served.minimum_history)

    def covariates(s):  # the shown steps' covariate columns and their known future (the playground sends them)
        if s.exog is None or not served.model.features:
            return {}
        start = max(0, len(s.values) - keep)
        return {"covariates": {name: s.exog[start:, i].astype(float).tolist() for i, name in
                               enumerate(ds.covariates)}}

    shown = [{"id": str(s.id), "length": len(s.values), "values": s.values[-keep:].astype(float).tolist(),
              "times": np.datetime_as_string(s.times[-keep:], unit="s").tolist(), **covariates(s)}
             for s in ds.series[:SHOWN_SERIES]]
    served.recent = {"freq": ds.freq, "season": ds.season, "total_series": len(ds.series), "series": shown}


class Series(Verb):
    summary = "The end of a forecaster's own training series (a few at most): histories to forecast from"
    method, thread = "GET", None

    def run(self, served, inputs: dict) -> dict:
        if served.recent is None:
            raise RequestError(served.recent_error or f"{served.name}'s series are not loaded yet; retry shortly",
                               404 if served.recent_error else 503)
        return served.recent

    def answer(self, served, inputs: dict, recent: dict, latency_ms: float) -> dict:
        return {"model": served.name, **recent}

    def warm_up(self, served) -> None:
        load_series(served)


FORECAST = Forecast("forecast")
SERIES = Series("series")
Series.requires = FORECAST  # offered with forecast, and refused with its message
Forecast.companions = (SERIES,)
