"""data.series: the options that say how a series CSV's columns are read and how the series are cleaned (config.py
reads this class; data/series.py, which imports pandas, does the reading)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SeriesOptions(BaseModel):
    """data.series: how a CSV's columns are read and how the series are cleaned."""

    model_config = ConfigDict(extra="forbid")
    time_column: str | None = None  # default: the first column named like date/time/ds/period/year, else column 1
    target: list[str] | None = None  # value column(s); default: every numeric column (wide format)
    id_column: str | None = None  # long format: the column naming each row's series
    freq: str | None = None  # a pandas frequency (MS, W-SUN, QS, D, h, ...); default: inferred from the times
    resample: str | None = None  # aggregate to this coarser pandas frequency by the mean (weekly co2 -> MS)
    fill: Literal["interpolate", "ffill", "refuse"] = "interpolate"  # gaps and missing values
    outliers: Literal["keep", "clip"] = "keep"  # |robust z| > outlier_z on the seasonal residual: reported, or clipped
    outlier_z: float = Field(3.5, gt=0)  # robust z-score threshold (Iglewicz and Hoaglin's 3.5)
    test_windows: int = Field(1, ge=1)  # forecasting: the last N horizons of every series are the test set
    val_windows: int = Field(2, ge=0)  # and the N horizons before them the validation set (and interval calibration)
    covariates: list[str] = []  # columns known in the future; rows past a series' last value give their future
    calendar: bool = False  # derive calendar features from the timestamps (month, quarter, week, weekday, hour)
