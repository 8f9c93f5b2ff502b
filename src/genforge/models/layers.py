"""Blocks two models share: latent noise, label checks, and running a model for inference."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from genforge.errors import GenforgeError


class InputError(GenforgeError, ValueError):
    """An input the model cannot take (labels, truncation, shape): a user's mistake, one line in the CLI."""


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter; the CPU for a model without any (one run by ONNX Runtime)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def standard_normal(shape: tuple[int, ...], generator: torch.Generator | None = None,
                    truncation: float | None = None) -> torch.Tensor:
    """N(0, I) drawn on the CPU (so a seed gives the same z on every device).

    truncation T: every entry with |z| > T is redrawn from the normal truncated to [-T, T] (truncation trick,
    Brock et al. 2019 sec. 3.1). Entries already inside keep their values, so a large T changes nothing. The redraw
    is one inverse-CDF draw per entry, z = Phi^-1(u) with u uniform in [Phi(-T), 1/2) and a random sign, not
    rejection sampling: its work does not grow as T shrinks (rejection needs ~1/P(|z| <= T) rounds, 10^29 for
    T = 1e-30, which held a server's inference thread for good).
    """
    z = torch.randn(shape, generator=generator)
    if truncation is None:
        return z
    if not truncation > 0:
        raise InputError(f"truncation must be > 0 (or None for no truncation), got {truncation}")
    outside = z.abs() > truncation
    k = int(outside.sum())
    if k:
        # float64: Phi(-T) keeps T's digits down to T ~ 1e-16; below that u is 1/2, z is 0, and the clamp keeps
        # the rounding of Phi^-1 inside [-T, T]
        low = torch.special.ndtr(torch.tensor(-float(truncation), dtype=torch.float64))  # Phi(-T)
        u = low + (0.5 - low) * torch.rand(k, generator=generator, dtype=torch.float64)  # in [Phi(-T), 1/2)
        sign = torch.where(torch.rand(k, generator=generator) < 0.5, -1.0, 1.0).double()
        z[outside] = (sign * torch.special.ndtri(u)).clamp(-truncation, truncation).float()
    return z


def sample_labels(n: int, labels, num_classes: int, conditional: bool, device: torch.device) -> torch.Tensor | None:
    """Labels for sample(): checked, on `device`. A conditional model with labels=None cycles 0, 1, ...,
    num_classes - 1 so a grid shows every class."""
    if not conditional:
        if labels is not None:
            raise InputError("this model is unconditional (conditional: false); sample it with labels=None")
        return None
    if labels is None:
        return torch.arange(n, device=device) % num_classes
    labels = torch.as_tensor(labels).reshape(-1)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.shape != (n,):
        raise InputError(f"labels must be {n} integers (one per sample), got dtype {labels.dtype}, "
                         f"shape {tuple(labels.shape)}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise InputError(f"labels must lie in 0..{num_classes - 1}, got {int(labels.min())}..{int(labels.max())}")
    return labels.long().to(device)


def check_labels(labels: torch.Tensor | None, n: int, conditional: bool) -> None:
    """Shape-only check on the hot path (a range check would synchronize with the device)."""
    if not conditional:
        return
    if labels is None:
        raise InputError("this model is class-conditional (conditional: true): pass labels, a (N,) long tensor")
    if labels.shape[:1] != (n,) or labels.ndim > (2 if labels.is_floating_point() else 1):
        raise InputError(f"labels must have shape ({n},) (class indices) or ({n}, classes) (class weights, "
                         f"float); got {tuple(labels.shape)}")


@contextmanager
def evaluating(module: nn.Module):
    """Eval mode and inference mode inside the block; the module's previous train/eval mode is restored."""
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        module.train(was_training)
