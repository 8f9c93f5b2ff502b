"""Sampling verbs shared by the CLI, the Python API and the server: sample, interpolate, reconstruct, grids.

Every verb returns uint8 images (N, C, H, W); `save_images` writes them as a PNG grid or a .npy array.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch

from genforge.errors import GenforgeError


def image_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2, scale: int = 1):
    """A PIL image of uint8 (N, C, H, W) images in rows of nrow (default: a near-square grid)."""
    from PIL import Image

    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = np.zeros((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), dtype=np.uint8)
    for i, img in enumerate(images.cpu().numpy()):
        r, col = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y: y + h, x: x + w] = img.transpose(1, 2, 0)  # (H, W, C)
    pil = Image.fromarray(grid[..., 0] if c == 1 else grid)
    return pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST) if scale > 1 else pil


def png_bytes(images: torch.Tensor, nrow: int | None = None, scale: int = 1, compress_level: int = 6) -> bytes:
    """A PNG grid. compress_level 1 (zlib) encodes an 8x8 grid of 28x28 images ~3x faster than the default 6
    for a ~17% larger file: the server's choice, where the answer's latency counts more than its bytes."""
    buffer = io.BytesIO()
    image_grid(images, nrow, scale=scale).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def save_images(images: torch.Tensor, out: Path, nrow: int | None = None) -> Path:
    """.png: a grid (scaled up so 28x28 images show); .npy: uint8 (N, H, W) for one channel, else (N, C, H, W)."""
    from genforge import runs

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".npy":
        array = images.cpu().numpy()
        runs.write_with(out, lambda f: np.save(f, array[:, 0] if array.shape[1] == 1 else array, allow_pickle=False))
    elif out.suffix.lower() == ".png":
        runs.write_bytes(out, png_bytes(images, nrow, scale=2 if images.shape[-1] < 64 else 1))
    else:
        raise GenforgeError(f"--out {out}: use a .png (image grid) or .npy (uint8 array) file name")
    return out


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
    from genforge.models.layers import standard_normal

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
