"""How long a long series takes to read and clean: `genforge data info` (read, grid, fill, robust trend and season,
outliers, seasonality) and what training does before its first step (the same load, then the windows), on hourly
series of 80,000 and 300,000 points (9 and 34 years), median of 3. The target: under 30 s at 300,000 on 2 cores.

--reference also times statsmodels' lowess, the smoother cleaning used before (one call, 80,000 points only: it is
O(n^2) and took minutes at 300,000); --train also times `genforge train csv-lstm` on the series with its optimizer
steps capped at 5 s (train.max_seconds): the load, the windows, validation, calibration, the test and the report.
The LSTM's own epochs are not in it: one epoch of the 80,000-point series is ~80,000 windows, minutes on 2 cores.

Usage: python bench/series_cleaning.py [--reference] [--train]"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import record

LENGTHS = (80_000, 300_000)
REPEATS = 3


def write_hourly(path: Path, n: int, seed: int = 0) -> str:
    """A load-like hourly series: a slow trend, a daily cycle, noise, a spike every 5,000 hours and a 3-hour gap."""
    import pandas as pd

    t = np.arange(n)
    rng = np.random.default_rng(seed)
    values = 100 + 0.001 * t + 10 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 1, n)
    values[::5000] += 50
    keep = np.ones(n, bool)
    keep[n // 2 : n // 2 + 3] = False
    times = pd.date_range("2000-01-01", periods=n, freq="h").strftime("%Y-%m-%d %H:%M:%S")
    pd.DataFrame({"time": times[keep], "load": np.round(values[keep], 3)}).to_csv(path, index=False)
    return f"csv-series:{path}"


def median_seconds(fn, *args, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 2)


def train_once(cfg) -> None:
    from genforge import rundir
    from genforge.training import train

    with tempfile.TemporaryDirectory() as runs_dir:
        train(cfg, rundir.create_run(runs_dir, cfg.name, cfg), quiet=True)


def prepare(task, cfg) -> None:
    task.prepare(cfg, task.dataset(cfg), torch.device("cpu"))


def time_length(n: int, folder: Path) -> dict:
    from genforge.config import load_config
    from genforge.data.series import load_series, robust_lowess
    from genforge.registry import task_of

    spec = write_hourly(folder / f"hourly-{n}.csv", n)
    values = load_series(spec).series[0].values
    cfg = load_config("csv-lstm", [f"data.name={spec}"])
    row = {
        "data_info": median_seconds(lambda: load_series(spec).info()),
        "smoother": median_seconds(robust_lowess, values, 49),  # one of cleaning's two passes
        "train_data": median_seconds(prepare, task_of(cfg.model.kind), cfg),  # training, up to its first step
    }
    if "--train" in sys.argv:  # the whole command, its optimizer steps capped at 5 s: the rest is what n costs
        capped = load_config("csv-lstm", [f"data.name={spec}", "train.epochs=1", "train.max_seconds=5"])
        row["train_steps_capped_at_5s"] = median_seconds(train_once, capped)
    if "--reference" in sys.argv and n == LENGTHS[0]:
        from statsmodels.nonparametric.smoothers_lowess import lowess

        t = np.arange(n, dtype=np.float64)
        row["statsmodels_lowess"] = median_seconds(lambda: lowess(values, t, frac=49 / n, it=3, return_sorted=False),
                                                   repeats=1)
    return row


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        seconds = {str(n): time_length(n, Path(tmp)) for n in LENGTHS}
    record("series_cleaning", {"repeats": REPEATS, "seconds": seconds})


if __name__ == "__main__":
    main()
