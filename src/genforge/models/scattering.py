"""A classifier on wavelet scattering features (ScatterNet): a fixed, untrained 2-D scattering transform (Mallat
2012; Bruna and Mallat 2013) of order 2, GroupNorm, and a linear head (or a small CNN).

Tramer and Boneh 2021 showed that these handcrafted features make the best private image classifiers at small
budgets: nothing is learned in the transform, so DP-SGD's noise falls on a linear model's few thousand weights
instead of a deep network's. Morlet filters as in kymatio (sigma 0.8 * 2^j, centre frequency 3 pi / 4 / 2^j, slant
4 / L), applied as real convolutions with reflect padding, so the model exports to ONNX like any other; J = 2 and
L = 8 give 1 + J L + L^2 J (J - 1) / 2 = 81 channels at (H / 4, W / 4).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class ScatterNetConfig(BaseModel):
    """Scattering features (J = 2 scales, `orientations` angles), GroupNorm, then a linear or small-CNN head."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["scatternet"] = "scatternet"
    orientations: int = Field(8, ge=1, le=16)  # L: wavelet angles per scale
    head: Literal["linear", "cnn"] = "linear"  # cnn: two 3x3 conv layers (GroupNorm, ReLU) before the linear head
    width: int = Field(64, ge=8)  # channels of the cnn head
    groups: int = Field(27, ge=1)  # GroupNorm groups over the 81 scattering channels (Tramer and Boneh's 27)


def _gabor(size: int, sigma: float, theta: float, xi: float, slant: float) -> torch.Tensor:
    """A complex Gabor filter on a size x size grid centred on 0 (kymatio's gabor_2d, without periodization)."""
    r = torch.arange(size, dtype=torch.float64) - size // 2
    y, x = torch.meshgrid(r, r, indexing="ij")
    c, s = math.cos(theta), math.sin(theta)
    u, v = c * x + s * y, -s * x + c * y  # coordinates along and across the wave
    envelope = torch.exp(-(u**2 + slant**2 * v**2) / (2 * sigma**2)) / (2 * math.pi * sigma**2 / slant)
    return envelope * torch.exp(1j * xi * u)


def _morlet(size: int, sigma: float, theta: float, xi: float, slant: float) -> torch.Tensor:
    """A Gabor filter minus the multiple of its envelope that makes its mean zero: a wavelet."""
    wave, envelope = _gabor(size, sigma, theta, xi, slant), _gabor(size, sigma, theta, 0.0, slant)
    return wave - wave.sum() / envelope.sum() * envelope


def _kernel_size(sigma: float) -> int:
    return 2 * math.ceil(3 * sigma) + 1  # +-3 sigma of the envelope


def _low_pass_matrix(g: torch.Tensor, n: int, stride: int) -> torch.Tensor:
    """(n // stride, n): a length-n signal convolved with g after reflect padding, every `stride`-th output."""
    p = len(g) // 2
    out = torch.zeros(n // stride, n)
    for i in range(n // stride):
        for k, weight in enumerate(g.tolist()):
            t = i * stride + k - p  # the input index the tap reads, before reflection
            t = -t if t < 0 else (2 * (n - 1) - t if t > n - 1 else t)
            out[i, t] += weight
    return out


class Scattering(nn.Module):
    """(N, C, H, W) -> (N, C * 81, H / 4, W / 4) for J = 2, L = 8: order 0 (the low-pass), order 1 (|x * psi_j,l|
    low-passed, J L channels) and order 2 (||x * psi_0,l1| * psi_1,l2| low-passed, L^2 channels), each image channel
    on its own. No parameters: the filters are buffers, not saved (they are rebuilt from the config)."""

    J = 2

    def __init__(self, orientations: int = 8, size: tuple[int, int] = (28, 28)):
        super().__init__()
        self.L = L = orientations
        thetas = [(L - L // 2 - 1 - i) * math.pi / L for i in range(L)]
        slant = 4 / L

        def bank(j: int) -> torch.Tensor:  # (2 L, 1, k, k): real parts, then imaginary parts
            sigma, xi = 0.8 * 2**j, 3 * math.pi / 4 / 2**j
            k = _kernel_size(sigma)
            psi = torch.stack([_morlet(k, sigma, t, xi, slant) for t in thetas])
            return torch.cat([psi.real, psi.imag]).unsqueeze(1).float()

        def low_pass(j: int) -> torch.Tensor:  # (k,): the Gaussian low-pass is separable, g(x) g(y)
            sigma = 0.8 * 2**j
            r = torch.arange(_kernel_size(sigma), dtype=torch.float64) - _kernel_size(sigma) // 2
            return (torch.exp(-(r**2) / (2 * sigma**2)) / math.sqrt(2 * math.pi * sigma**2)).float()

        self.register_buffer("psi0", bank(0), persistent=False)
        self.register_buffer("psi1", bank(1), persistent=False)
        h, w = size
        s = 2**self.J  # the low-pass as matrices: A X B^T low-passes and subsamples an (h, w) map X
        self.register_buffer("rows", _low_pass_matrix(low_pass(self.J), h, s), persistent=False)
        self.register_buffer("cols", _low_pass_matrix(low_pass(self.J), w, s), persistent=False)
        self.register_buffer("rows_half", _low_pass_matrix(low_pass(self.J - 1), h // 2, s // 2), persistent=False)
        self.register_buffer("cols_half", _low_pass_matrix(low_pass(self.J - 1), w // 2, s // 2), persistent=False)

    @staticmethod
    def _conv(x: torch.Tensor, w: torch.Tensor, stride: int = 1) -> torch.Tensor:
        """Each channel of x convolved with every filter of w (reflect padding): (N, C, H, W) -> (N, C * F, ...)."""
        n, c, h, width = x.shape
        p = w.shape[-1] // 2
        x = F.pad(x.reshape(n * c, 1, h, width), (p, p, p, p), mode="reflect")
        out = F.conv2d(x, w, stride=stride)
        return out.reshape(n, c * w.shape[0], *out.shape[-2:])


    def _modulus(self, x: torch.Tensor, w: torch.Tensor, stride: int = 1) -> torch.Tensor:
        """|x * psi| for a bank of complex wavelets stored as [real; imaginary]: (N, C, H, W) -> (N, C * L, ...)."""
        n, c = x.shape[:2]
        z = self._conv(x, w, stride).unflatten(1, (c, 2, self.L))  # (N, C, 2, L, h, w)
        return torch.sqrt(z[:, :, 0] ** 2 + z[:, :, 1] ** 2 + 1e-12).flatten(1, 2)  # (N, C * L, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        s0 = self.rows @ x @ self.cols.T  # (N, C, H/4, W/4)
        u1_0 = self._modulus(x, self.psi0)  # (N, C L, H, W): scale 0
        u1_1 = self._modulus(x, self.psi1)  # (N, C L, H, W): scale 1
        s1 = self.rows @ torch.cat([u1_0, u1_1], 1) @ self.cols.T  # (N, 2 C L, H/4, W/4)
        # order 2 needs j2 > j1: |u1 at scale 0| filtered at scale 1, computed at half resolution (its band allows it)
        u2 = self._modulus(u1_0, self.psi1, stride=2)  # (N, C L L, H/2, W/2)
        s2 = self.rows_half @ u2 @ self.cols_half.T  # (N, C L L, H/4, W/4)
        out = torch.cat([s0.unflatten(1, (c, 1)), s1.unflatten(1, (2, c, self.L)).transpose(1, 2).flatten(2, 3),
                         s2.unflatten(1, (c, self.L * self.L))], 2)  # (N, C, 81, H/4, W/4)
        return out.flatten(1, 2)

    def channels(self, image_channels: int) -> int:
        return image_channels * (1 + self.J * self.L + self.L * self.L)


def build_scatternet(cfg: ScatterNetConfig, input_shape: tuple[int, ...], num_classes: int) -> tuple[nn.Module, bool]:
    c, h, w = input_shape
    if h % 4 or w % 4 or min(h, w) < 16:
        raise ValueError(f"scatternet needs images whose sides are multiples of 4, at least 16; got {h}x{w}")
    scattering = Scattering(cfg.orientations, (h, w))
    k = scattering.channels(c)
    groups = math.gcd(cfg.groups, k)
    layers: list[nn.Module] = [scattering, nn.GroupNorm(groups, k)]
    features = k * (h // 4) * (w // 4)
    if cfg.head == "cnn":
        g = math.gcd(8, cfg.width)
        layers += [nn.Conv2d(k, cfg.width, 3, padding=1), nn.GroupNorm(g, cfg.width), nn.ReLU(),
                   nn.Conv2d(cfg.width, cfg.width, 3, padding=1), nn.GroupNorm(g, cfg.width), nn.ReLU(),
                   nn.AdaptiveAvgPool2d(2)]
        features = cfg.width * 4
    binary = num_classes == 2
    layers += [nn.Flatten(), nn.Linear(features, 1 if binary else num_classes)]
    return nn.Sequential(*layers), binary
