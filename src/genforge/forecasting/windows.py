"""Series cut by time into (context, horizon) windows, never at random.

The last `data.series.test_windows` horizons of every series are the test set, the `data.series.val_windows` horizons
before them the validation set, and training windows end before those. The training windows are every
(context + horizon) slice of the training part, cut by Tensor.unfold on the device.
"""

from __future__ import annotations

import torch

from genforge.errors import GenforgeError
from genforge.models.rnn import pack


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


def cut_windows(values: torch.Tensor, origins: list[int], context: int, horizon: int,
                features: torch.Tensor | None = None):
    """(W, context) histories, packed with their (W, context + horizon, F) covariates when features (T, F) are
    given, and (W, horizon) futures at the given origins."""
    x = torch.stack([values[o - context : o] for o in origins])
    y = torch.stack([values[o : o + horizon] for o in origins])
    if features is not None:
        x = pack(x, torch.stack([features[o - context : o + horizon] for o in origins]))
    return x, y


def reads_covariates(cfg) -> bool:
    """Whether the model kind of cfg reads covariates (the recurrent one; the baselines do not)."""
    return "covariates" in type(cfg.model).model_fields


def check_lengths(ds, context: int, horizon: int, opts) -> None:
    """Every series of ds holds a training window and the held-out horizons after it, or a one-line error."""
    held = horizon * (opts.val_windows + opts.test_windows)
    for s in ds.series:
        need = context + horizon + held
        if len(s.values) < need:
            raise GenforgeError(f"{ds.name}: series {s.id!r} has {len(s.values)} values; it needs context "
                                f"{context} + horizon {horizon} + {opts.val_windows + opts.test_windows} held-out "
                                f"horizons = {need}; lower model.context or model.horizon, or "
                                f"data.series.test_windows / val_windows")


def training_windows(ds, context: int, horizon: int, opts, covariates: bool, device: torch.device):
    """Per series: every (context + horizon) window of its training part and its `opts.val_windows` validation
    windows, histories packed with their covariates when `covariates`. Returns lists (one tensor per series) of
    training inputs and targets (on the device), of validation inputs and targets (on the CPU), and of the training
    parts' covariates (on the CPU; empty without covariates)."""
    held = horizon * (opts.val_windows + opts.test_windows)
    xs, ys, xv, yv, train_features = [], [], [], [], []
    for s in ds.series:
        values = torch.tensor(s.values, dtype=torch.float32, device=device)
        val_start = len(values) - held
        pairs = values[:val_start].unfold(0, context + horizon, 1)  # (W, C + H): every training window
        features = torch.tensor(ds.features(s), device=device) if covariates else None
        windowed = None
        if features is not None:
            train_features.append(features[:val_start].cpu())
            windowed = features[:val_start].unfold(0, context + horizon, 1).transpose(1, 2)  # (W, C + H, F)
        xs.append(pack(pairs[:, :context], windowed))
        ys.append(pairs[:, context:])
        origins = [val_start + k * horizon for k in range(opts.val_windows)]
        if origins:
            x, y = cut_windows(values, origins, context, horizon, features)
            xv.append(x.cpu())
            yv.append(y.cpu())
    return xs, ys, xv, yv, train_features


def covariate_stats(ds, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std), each (F,), of the covariates over the training parts of the series; calendar features, already
    in [-1, 1], keep 0 and 1, and a constant covariate gets std 1."""
    rows = torch.cat(features)
    mean, std = rows.mean(0), rows.std(0) if len(rows) > 1 else torch.ones(rows.shape[1])
    calendar = len(ds.feature_names) - len(ds.covariates)
    mean[:calendar], std[:calendar] = 0.0, 1.0
    return mean, torch.where(std > 0, std, torch.ones_like(std))


def check_features(model, ds) -> None:
    """A model that reads covariates gets the ones it was trained with, or a one-line error."""
    if model.features and ds.feature_names != list(model.cfg.covariates):
        raise GenforgeError(f"{ds.name}: this model reads the features {', '.join(model.cfg.covariates)}; the data "
                            f"gives {', '.join(ds.feature_names) or 'none'} (set data.series.covariates and "
                            f"data.series.calendar as the run's config.yaml does)")
