"""The commands of forecasters: forecast (the future of a run's series, or of a CSV's) and backtest (rolling
origins beside the baselines)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from genforge.cli.console import err, out
from genforge.cli.options import AsJson, Quiet, RunsDir, by_verb
from genforge.errors import GenforgeError

# deferred: genforge's modules (errors aside) import torch: `genforge --help` took 4.0 s with these imports at the
# top, 0.28 s with them in the commands (median of 5 starts)


def forecast(
    run: Path,
    out_path: Annotated[Path, typer.Option("--out", help="forecast.csv (a table) or a .png (a picture).")],
    series: Annotated[list[str] | None, typer.Option("--series", help="Only this series (repeatable).")] = None,
    horizon: Annotated[int | None, typer.Option(callback=by_verb("forecast", "horizon"),
                                                help="Steps ahead (default: the trained horizon; longer "
                                                           "ones feed the model its own forecasts).")] = None,
    input_csv: Annotated[Path | None, typer.Option("--input", help="Forecast this CSV's series instead (a time "
                                                                   "column and value columns).")] = None,
):
    """Forecast the future of a run's series (or of a CSV's) with intervals: a table or a picture."""
    from genforge.forecasting.presentation import forecast_table, histories, plot_future
    from genforge.rundir import write_text
    from genforge.runs import load_run

    loaded = load_run(run)
    loaded.require("forecast")
    if out_path.suffix.lower() not in (".csv", ".png"):
        raise GenforgeError(f"--out must end in .csv or .png, got {out_path.name}")
    ds = histories(loaded, input_csv, series)
    table, forecasts = forecast_table(loaded, ds, horizon)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.suffix.lower() == ".png":
        plot_future(ds, forecasts, out_path)
    else:
        write_text(out_path, table.to_csv(index=False, float_format="%.6g"))
    steps = len(table) // len(forecasts)  # every series gets the same horizon
    if steps > loaded.model.horizon:
        err.print(f"note: {steps} steps exceed the trained horizon ({loaded.model.horizon}); later steps were "
                  f"forecast from the model's own forecasts")
    out.print(f"{len(forecasts)} series x {steps} steps -> {out_path}")


def backtest(
    source: Annotated[str, typer.Argument(help="A run directory, or a preset / YAML file to train and backtest.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value, for a preset")] = None,
    windows: Annotated[int, typer.Option(min=1, help="Rolling origins: the last N horizons of every series.")] = 3,
    horizon: Annotated[int | None, typer.Option(min=1, help="Steps per window (default: the model's horizon).")] = None,
    refit: Annotated[bool, typer.Option(help="A preset: train again before every window (else once, before "
                                             "the first).")] = False,
    runs_dir: RunsDir = Path("runs"),
    as_json: AsJson = False,
    quiet: Quiet = False,
):
    """Rolling-origin backtest of a forecaster beside the naive, seasonal naive, drift and season-mean baselines."""
    from genforge.backtest import backtest_preset, backtest_run
    from genforge.runs import load_run
    from genforge.tasks.forecast import TASK

    if Path(source).is_dir():
        if overrides or refit:
            raise GenforgeError("a run is backtested as trained: overrides and --refit need a preset or config file")
        loaded = load_run(source)
        loaded.require("forecast")
        result, warning = backtest_run(loaded, windows, horizon)
        if warning:
            err.print(f"warning: {warning}")
        name = loaded.path.name
    else:
        result = backtest_preset(source, overrides or [], windows, horizon, refit, runs_dir, quiet or as_json,
                                 say=err.print)
        name = source
    if as_json:
        print(json.dumps(result))
        return
    TASK.print_evaluation(out, name, result)
