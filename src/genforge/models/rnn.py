"""Recurrent models: a forecaster (a history of `context` values -> `horizon` steps x quantiles), the classical
baselines behind the same interface, and a classifier that reads an image row by row.

Forecasters take raw values and scale each history themselves (location: its last value; scale: the mean absolute
step of the history, the denominator of MASE), so a saved model forecasts any series of any level without stored
statistics, and a trending series never leaves the range the network saw (docs/decisions.md).

A forecaster with covariates (features known at every step and ahead: calendar features, prices, promotions) takes
one packed input, (N, C + (C + H) * F): the history, then the F features of its C steps and of the H steps ahead,
flattened step by step (`pack`). One input keeps the loop, the export and the serving seams those of a plain
history (docs/decisions.md).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
QUANTILES = (0.025, 0.1, 0.5, 0.9, 0.975)  # the median and the bounds of the 80% and 95% intervals


class _KindConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _ForecastConfig(_KindConfig):
    context: int | None = Field(None, ge=2)  # history length the model reads; default: 2 seasons or 4 horizons
    horizon: int | None = Field(None, ge=1)  # steps forecast at once; default: one season (6 for non-seasonal data)
    quantiles: tuple[float, ...] = QUANTILES  # predicted quantiles; must include 0.5 (the point forecast)

    @field_validator("quantiles")
    @classmethod
    def _with_median(cls, q: tuple[float, ...]) -> tuple[float, ...]:
        if 0.5 not in q or any(not 0 < v < 1 for v in q) or len(set(q)) != len(q):
            raise ValueError("quantiles must be distinct levels in (0, 1) and include 0.5 (the point forecast)")
        return tuple(sorted(q))


class RNNConfig(_ForecastConfig):
    """A global recurrent forecaster over all the series of a dataset, with direct multi-horizon quantile outputs."""

    kind: Literal["rnn"] = "rnn"
    cell: Literal["lstm", "gru", "rnn"] = "lstm"
    hidden: int = Field(64, ge=1)  # units per recurrent layer
    layers: int = Field(2, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)  # between recurrent layers, and before the head
    season: int | None = Field(None, ge=1)  # the linear path starts as the seasonal naive forecast; default: the data's
    covariates: list[str] = []  # set from the data: the features read at every step (calendar, data.series.covariates)
    calibrate: bool = True  # widen (or narrow) the intervals to their nominal coverage on the validation windows


class BaselineConfig(_ForecastConfig):
    """Hyndman and Athanasopoulos' simple methods (FPP3 5.2), with their normal prediction intervals (FPP3 5.5):
    naive (the last value), seasonal-naive (the value one season back), drift (the line through the first and last
    value), season-mean (the mean of the last season). No training; a run directory like any model's."""

    kind: Literal["naive", "seasonal-naive", "drift", "season-mean"] = "naive"
    season: int | None = Field(None, ge=1)  # default: the data's season (1 when it has none)


def _scale(history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(location, scale), each (N, 1): the last value and the mean absolute step of the history; a flat history gets
    a scale from its level, so a constant series neither divides by zero nor amplifies noise."""
    loc = history[:, -1:]
    step = (history[:, 1:] - history[:, :-1]).abs().mean(1, keepdim=True)
    floor = history.abs().mean(1, keepdim=True).clamp_min(1.0) * 1e-4
    return loc, torch.maximum(step, floor)


def pack(history: torch.Tensor, covariates: torch.Tensor | None) -> torch.Tensor:
    """(N, C) history and (N, C + H, F) covariates -> the packed input (N, C + (C + H) * F) of a forecaster with
    covariates; the history alone without them."""
    return history if covariates is None or covariates.shape[-1] == 0 else torch.cat([history, covariates.flatten(1)],
                                                                                      1)


def pinball(pred: torch.Tensor, target: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
    """Mean quantile (pinball) loss: pred (N, H, Q), target (N, H), quantiles (Q,). Koenker and Bassett 1978."""
    diff = target.unsqueeze(-1) - pred  # (N, H, Q)
    return torch.maximum(quantiles * diff, (quantiles - 1) * diff).mean()


class Forecaster(nn.Module):
    """What every forecaster offers: forward(history (N, context)) -> quantiles (N, horizon, Q) in the history's
    units, and loss(history, future) (the pinball loss on scaled values)."""

    context: int
    horizon: int
    features: int = 0  # covariates read at every step; with any, the input is packed (`pack`)

    def __init__(self, cfg: _ForecastConfig, context: int, horizon: int):
        super().__init__()
        self.cfg, self.context, self.horizon = cfg, context, horizon
        self.register_buffer("quantiles", torch.tensor(cfg.quantiles), persistent=False)
        self.median = cfg.quantiles.index(0.5)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The packed input -> (history (N, C), covariates (N, C + H, F) or None)."""
        if not self.features:
            return x, None
        return x[:, : self.context], x[:, self.context :].unflatten(1, (self.context + self.horizon, self.features))

    def loss(self, x: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
        loc, scale = _scale(self.split(x)[0])
        return pinball((self(x) - loc.unsqueeze(-1)) / scale.unsqueeze(-1), (future - loc) / scale,
                       self.quantiles)

    def calibrate(self, history: torch.Tensor, future: torch.Tensor) -> dict:
        """Fit the intervals to held-out windows after training; nothing to do by default."""
        return {}


class RNNForecaster(Forecaster):
    def __init__(self, cfg: RNNConfig, context: int, horizon: int, mean: torch.Tensor | None = None,
                 std: torch.Tensor | None = None):
        super().__init__(cfg, context, horizon)
        q, f = len(cfg.quantiles), len(cfg.covariates)
        self.features = f
        if f:  # the covariates' standardization, fitted on the training windows (calendar features: 0 and 1)
            self.register_buffer("covariate_mean", torch.zeros(f) if mean is None else mean.reshape(f).clone())
            self.register_buffer("covariate_std", torch.ones(f) if std is None else std.reshape(f).clone())
        self.rnn = CELLS[cfg.cell](1 + f, cfg.hidden, cfg.layers, batch_first=True,
                                   dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden + horizon * f, horizon * q)  # the last state and the covariates ahead
        # a linear autoregressive path beside the recurrent one (LSTNet), starting as the seasonal naive forecast
        # (the naive one, all zeros in scaled units, without a season): the network learns what to add to it
        self.linear = nn.Linear(context, horizon)
        nn.init.zeros_(self.linear.bias)
        with torch.no_grad():
            self.linear.weight.zero_()
            m = min(cfg.season or 1, context)
            for h in range(horizon):
                self.linear.weight[h, context - m + h % m] = 1.0
        # conformalized quantile regression (Romano et al. 2019): what calibrate() adds to each scaled quantile
        self.register_buffer("widen", torch.zeros(q))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        history, covariates = self.split(x)
        loc, scale = _scale(history)
        z = (history - loc) / scale  # (N, C): 0 at the last value, in units of a typical step
        steps, state = z.unsqueeze(-1), []
        if covariates is not None:
            covariates = (covariates - self.covariate_mean) / self.covariate_std  # (N, C + H, F)
            steps = torch.cat([steps, covariates[:, : self.context]], -1)  # (N, C, 1 + F)
            state = [covariates[:, self.context :].flatten(1)]  # (N, H * F): what is known of the future
        out, _ = self.rnn(steps)  # (N, C, hidden)
        last = torch.cat([self.drop(out[:, -1]), *state], -1)
        raw = self.head(last).unflatten(-1, (self.horizon, -1))  # (N, H, Q)
        median = raw[..., self.median] + self.linear(z)  # (N, H)
        # quantiles that cannot cross: positive gaps accumulated outwards from the median
        gaps = nn.functional.softplus(raw)
        below = median.unsqueeze(-1) - gaps[..., : self.median].flip(-1).cumsum(-1).flip(-1)
        above = median.unsqueeze(-1) + gaps[..., self.median + 1 :].cumsum(-1)
        q = torch.cat([below, median.unsqueeze(-1), above], -1) + self.widen  # (N, H, Q), scaled
        return loc.unsqueeze(-1) + scale.unsqueeze(-1) * q.sort(-1).values

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor, future: torch.Tensor) -> dict:
        """Split-conformal interval widths from held-out windows: for each central interval (quantiles i and Q-1-i),
        the conformity score max(lower - y, y - upper) in scaled units, and its ceil((n+1)(1-alpha))/n empirical
        quantile moved onto both bounds (negative: the intervals were too wide)."""
        if not self.cfg.calibrate or len(x) == 0:
            return {}
        self.widen.zero_()
        self.eval()
        loc, scale = _scale(self.split(x)[0])
        q = (self(x) - loc.unsqueeze(-1)) / scale.unsqueeze(-1)  # (N, H, Q)
        t = (future - loc) / scale  # (N, H)
        levels, widths = self.cfg.quantiles, {}
        for i in range(self.median):
            j = len(levels) - 1 - i
            score = torch.maximum(q[..., i] - t, t - q[..., j]).flatten()
            coverage = levels[j] - levels[i]
            k = min(1.0, math.ceil((len(score) + 1) * coverage) / len(score))
            c = torch.quantile(score, k).item()
            self.widen[i], self.widen[j] = -c, c
            widths[f"{coverage:.0%}"] = c
        return {"interval_adjustment": widths, "calibration_points": int(t.numel())}


class Baseline(Forecaster):
    """A point forecast and its residual standard deviation sigma_h, both from the history alone; quantile
    q = point + sigma_h * Phi^-1(q) (normal intervals, FPP3 5.5). It reads whatever history it is given (at least
    one season and a step): the whole series before the origin when backtested."""

    full_history = True

    def __init__(self, cfg: BaselineConfig, context: int, horizon: int, season: int):
        super().__init__(cfg, context, horizon)
        self.season = min(cfg.season or season, context)
        normal = torch.distributions.Normal(0.0, 1.0)
        self.register_buffer("z", normal.icdf(torch.tensor(cfg.quantiles)), persistent=False)

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        n, t = history.shape
        h = torch.arange(1, self.horizon + 1, dtype=history.dtype, device=history.device)  # (H,)
        m, kind = self.season, self.cfg.kind
        if kind == "naive":
            point, fitted_error = history[:, -1:].expand(n, self.horizon), history[:, 1:] - history[:, :-1]
            spread = h.sqrt()
        elif kind == "seasonal-naive":
            last_season = history[:, t - m :]  # (N, m)
            point = last_season[:, (h.long() - 1) % m]
            fitted_error = history[:, m:] - history[:, :-m]
            spread = (((h - 1) // m) + 1).sqrt()
        elif kind == "drift":
            slope = (history[:, -1:] - history[:, :1]) / (t - 1)
            point = history[:, -1:] + slope * h
            fitted_error = history[:, 1:] - history[:, :-1] - slope
            spread = (h * (1 + h / (t - 1))).sqrt()
        else:  # season-mean: the mean of the last season, and the spread of the values around it
            last_season = history[:, t - m :]
            point = last_season.mean(1, keepdim=True).expand(n, self.horizon)
            fitted_error = last_season - point[:, :1]
            spread = torch.full_like(h, math.sqrt(1 + 1 / m))
        dof = max(fitted_error.shape[1] - (kind == "drift"), 1)
        sigma = fitted_error.pow(2).sum(1, keepdim=True).div(dof).sqrt()  # (N, 1)
        return point.unsqueeze(-1) + (sigma * spread).unsqueeze(-1) * self.z  # (N, H, Q)


def build_rnn(cfg: RNNConfig, input_shape, num_classes, mean, std) -> RNNForecaster:
    """The registry's builder: context, horizon and covariates come from the config, which the data resolved at
    training; mean and std standardize the covariates."""
    return RNNForecaster(cfg, cfg.context, cfg.horizon, mean, std)


def build_baseline(cfg: BaselineConfig, input_shape, num_classes, mean, std) -> Baseline:
    return Baseline(cfg, cfg.context, cfg.horizon, cfg.season or 1)


class RowRNNConfig(_KindConfig):
    """A recurrent classifier of images read as sequences of rows (row-by-row MNIST, Le et al. 2015)."""

    kind: Literal["rowrnn"] = "rowrnn"
    cell: Literal["lstm", "gru", "rnn"] = "lstm"
    hidden: int = Field(128, ge=1)
    layers: int = Field(2, ge=1)
    bidirectional: bool = False  # read the rows top-down and bottom-up
    dropout: float = Field(0.1, ge=0, lt=1)


class RowReader(nn.Module):
    """(N, C, H, W) normalized images -> logits: each of the H rows (C*W values) is one step of the sequence."""

    def __init__(self, cfg: RowRNNConfig, input_shape: tuple[int, ...], num_classes: int, binary: bool):
        super().__init__()
        c, _, w = input_shape
        self.rnn = CELLS[cfg.cell](c * w, cfg.hidden, cfg.layers, batch_first=True, bidirectional=cfg.bidirectional,
                                   dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        width = cfg.hidden * (2 if cfg.bidirectional else 1)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(width, 1 if binary else num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        rows = x.permute(0, 2, 1, 3).reshape(n, h, c * w)  # (N, H, C*W)
        out, _ = self.rnn(rows)  # (N, H, width)
        summary = out.max(1).values  # max over the rows: every row's state counts, not only the last (and the
        return self.head(summary)  # backward direction's last state would have read a single row)


def build_rowrnn(cfg: RowRNNConfig, input_shape: tuple[int, ...], num_classes: int):
    binary = num_classes == 2
    return RowReader(cfg, input_shape, num_classes, binary), binary
