"""Forecasting as a task: a forecaster's data (time series, cut by time into windows), its step, validation and
calibration, its test (a backtest beside the classical baselines), its report, its ONNX part and its verb. The pieces
below the task are in genforge.forecasting (windows, inference, presentation); the metrics in
evaluate.forecast_accuracy."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from genforge.data.series import is_series, load_series
from genforge.errors import GenforgeError
from genforge.evaluate import forecast_accuracy
from genforge.evaluate.classification import measure_speed
from genforge.evaluate.report import _plots_with_curves, write_page
from genforge.forecasting.inference import baselines, minimum_history, recursive
from genforge.forecasting.presentation import metrics_table, plot_backtest, print_backtest
from genforge.forecasting.windows import (
    check_features,
    check_lengths,
    covariate_stats,
    cut_windows,
    reads_covariates,
    resolve,
    training_windows,
    window_origins,
)
from genforge.onnx.parts import Part
from genforge.tasks.base import Prepared, Task
from genforge.tasks.forecast_verbs import FORECAST
from genforge.train.steps import FixedStep, ModelLossStep


class ForecastTask(Task):
    name = "forecast"
    verbs = (FORECAST,)  # and its companion, series (tasks/forecast_verbs.py)
    parts = (Part("model", "forward", ("history",), ("quantiles",), labels=False),)
    divergence_hint = "lower train.lr, set train.grad_clip=1.0, or shorten model.context"

    def rate_unit(self, cfg) -> tuple[str, int]:
        return "windows", 1

    def dataset(self, cfg, name: str | None = None, quiet: bool = True):
        name = name or cfg.data.name
        if not is_series(name):
            raise GenforgeError(f"model.kind={cfg.model.kind} forecasts time series: set data.name=series:NAME (a "
                                f"bundled series, e.g. series:co2) or csv-series:PATH, not {name!r}")
        return load_series(name, cfg.data.series)

    def prepare(self, cfg, ds, device: torch.device, fold=None) -> Prepared:
        context, horizon = resolve(cfg, ds)
        opts = cfg.data.series
        check_lengths(ds, context, horizon, opts)
        names = ds.feature_names if reads_covariates(cfg) else []
        xs, ys, xv, yv, train_features = training_windows(ds, context, horizon, opts, bool(names), device)
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
            x, y = cut_windows(values, origins, model.context, model.horizon, features)
            xs.append(x)
            ys.append(y)
        x, y = torch.cat(xs), torch.cat(ys)
        idx = torch.randint(0, len(x), (n,), generator=torch.Generator().manual_seed(seed))
        return x[idx], y[idx]

    def step(self, model, cfg, steps_per_epoch: int, autocast: bool, channels_last: bool):
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
        horizon = horizon or model.horizon
        models = {"model": model, **baselines(model.context, horizon, ds.season, model.cfg.quantiles)}
        for s in ds.series:
            if len(s.values) - windows * horizon < minimum_history(model):
                raise GenforgeError(f"series {s.id!r} ({len(s.values)} values) is too short for {windows} windows of "
                                    f"{horizon} after a history of {minimum_history(model)}")
        check_features(model, ds)
        result = forecast_accuracy.backtest(
            models, ds.series, ds.season,
            lambda s: window_origins(len(s.values), horizon, windows)[: 1 if first_only else None], horizon,
            ds.features)
        out = {"dataset": ds.name, "windows": windows, "horizon": horizon, "trained_horizon": model.horizon,
               "recursive": horizon > model.horizon, "season": ds.season, "methods": result}
        return out if with_parts else _jsonable(out)

    def test(self, model, ds, cfg) -> dict:
        result = self.backtest(model, ds, cfg.data.series.test_windows)
        s = ds.series[0]
        x, _ = cut_windows(torch.tensor(s.values, dtype=torch.float32), [len(s.values) - model.horizon],
                           minimum_history(model), model.horizon,
                           torch.tensor(ds.features(s)) if model.features else None)
        return {**result, **measure_speed(model, x)}

    def headline(self, result: dict) -> dict:
        ours, naive = result["methods"]["model"]["overall"], result["methods"]["seasonal-naive"]["overall"]
        return {"test_mase": ours["mase"], "test_smape": ours["smape"],
                "test_coverage_80": ours.get("coverage_80"), "test_coverage_95": ours.get("coverage_95"),
                "test_mase_seasonal_naive": naive["mase"], "latency_ms_b1": result["latency_ms_b1"]}

    def report(self, run_dir: Path, model, ds, result: dict, summary: dict, extra=()) -> Path:
        plots = _plots_with_curves(run_dir)
        plot_backtest(model, ds, result, plots / "forecasts.png")
        return write_page(run_dir, summary, [*extra, ("Backtest (test windows)", metrics_table(result))])

    def print_evaluation(self, out, name: str, result: dict) -> None:
        print_backtest(out, name, result)

    def export_parts(self, model) -> tuple[Part, ...]:
        if not model.features:
            return self.parts
        return (Part("model", "forward", ("history_and_covariates",), ("quantiles",), labels=False),)

    def onnx_threads(self) -> int:
        return 1  # a few short sequences per call

    def warm_up(self, served) -> None:
        model = served.model
        for n in (1, 8):
            history = torch.zeros(n, model.context) + torch.arange(model.context).float()
            covariates = torch.zeros(n, model.context + model.horizon, model.features) if model.features else None
            with torch.inference_mode():
                recursive(model, history, model.horizon, covariates)


def _jsonable(result: dict) -> dict:
    """The backtest without the raw forecasts and window sums: what eval.json keeps."""
    methods = {label: {k: v for k, v in m.items() if k not in ("windows", "parts")}
               for label, m in result["methods"].items()}
    return {**result, "methods": methods}


TASK = ForecastTask()
