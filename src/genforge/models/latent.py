"""Walks in a generator's latent space (interpolate) and the pixel error of reconstructions: what the CLI, the Python
API and the server's interpolate and reconstruct verbs compute. Every walk returns uint8 images (N, C, H, W)."""

from __future__ import annotations

import torch

from genforge.errors import GenforgeError
from genforge.models.layers import standard_normal


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation (Shoemake 1985; White 2016 for GAN latents): stays on the Gaussian shell.

    z0, z1: (D,); t: (S,) in [0, 1]. Returns (S, D)."""
    omega = torch.arccos(torch.clamp(torch.dot(z0 / z0.norm(), z1 / z1.norm()), -1.0, 1.0))
    if omega.abs() < 1e-6:  # (anti)parallel: linear is exact enough
        return torch.lerp(z0[None], z1[None], t[:, None])
    s = torch.sin(omega)
    return (torch.sin((1 - t) * omega)[:, None] * z0 + torch.sin(t * omega)[:, None] * z1) / s


def interpolate(model, steps: int, seed: int = 0, from_label: int | None = None,
                to_label: int | None = None) -> torch.Tensor:
    """uint8 (steps, C, H, W): a walk from one latent to another, spherical since the prior is Gaussian. For a
    class-conditional model the class conditioning moves from from_label to to_label along the same path
    (a weighted mix of the two classes), so the walk also morphs one class into the other."""
    if steps < 2:
        raise GenforgeError(f"--steps {steps}: a walk needs at least 2 steps")
    conditional = bool(getattr(model.cfg, "conditional", False))
    if not conditional and (from_label is not None or to_label is not None):
        raise GenforgeError("this model is not class-conditional: interpolate without --from-label/--to-label")
    z = standard_normal((2, model.latent_dim), torch.Generator().manual_seed(seed))  # (2, D)
    t = torch.linspace(0, 1, steps)
    path = slerp(z[0], z[1], t)  # (steps, D)
    labels = None
    if conditional:
        k = model.num_classes
        a = 0 if from_label is None else from_label
        b = a if to_label is None else to_label
        for which, label in (("from", a), ("to", b)):
            if not 0 <= label < k:
                raise GenforgeError(f"the {which} label {label} is out of range 0-{k - 1}")
        labels = torch.zeros(steps, k)
        labels[:, a] += 1 - t
        labels[:, b] += t  # (steps, K) class weights summing to 1
    return model.render(path, labels.to(model.device) if labels is not None else None)


def reconstruction_errors(inputs: torch.Tensor, outputs: torch.Tensor) -> list[float]:
    """Per-image mean absolute error in pixel units (0-255)."""
    return (inputs.float() - outputs.float()).abs().flatten(1).mean(1).tolist()
