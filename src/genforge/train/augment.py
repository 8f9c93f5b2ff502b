"""Batch augmentation on the device: one affine warp and one crop for the whole batch, no Python loop."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from genforge.config import AugmentConfig


def is_identity(cfg: AugmentConfig) -> bool:
    return not (cfg.rotation or cfg.scale or cfg.translate or cfg.crop_padding or cfg.flip)


def augment_batch(x: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """x: (B, C, H, W) float in raw units (0-255). Returns the same shape, randomly transformed."""
    B, C, H, W = x.shape
    dev = x.device
    if cfg.rotation or cfg.scale or cfg.translate:
        angle = (torch.rand(B, device=dev) * 2 - 1) * math.radians(cfg.rotation)
        zoom = 1 + (torch.rand(B, device=dev) * 2 - 1) * cfg.scale
        shift = (torch.rand(B, 2, device=dev) * 2 - 1) * cfg.translate * 2  # grid units span 2
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, (B, C, H, W), align_corners=False)  # (B, H, W, 2)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if cfg.crop_padding:
        p = cfg.crop_padding
        padded = F.pad(x, (p, p, p, p))  # (B, C, H+2p, W+2p)
        dy = torch.randint(0, 2 * p + 1, (B, 1), device=dev)
        dx = torch.randint(0, 2 * p + 1, (B, 1), device=dev)
        rows = (torch.arange(H, device=dev)[None] + dy)[:, None, :, None]  # (B, 1, H, 1)
        cols = (torch.arange(W, device=dev)[None] + dx)[:, None, None, :]  # (B, 1, 1, W)
        batch = torch.arange(B, device=dev)[:, None, None, None]
        chan = torch.arange(C, device=dev)[None, :, None, None]
        x = padded[batch, chan, rows, cols]
    if cfg.flip:
        flip = torch.rand(B, 1, 1, 1, device=dev) < 0.5
        x = torch.where(flip, x.flip(-1), x)
    return x
