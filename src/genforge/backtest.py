"""Backtests of a forecaster: a trained run on its last windows, or a preset trained for them (once, or refitted at
every origin) through the training loop. What `genforge backtest` runs; the scores come from the task's backtest
(evaluate.forecast_accuracy)."""

from __future__ import annotations

from pathlib import Path

from genforge import rundir, runs
from genforge.config import load_config
from genforge.evaluate.forecast_accuracy import combine, overall
from genforge.training import train


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
