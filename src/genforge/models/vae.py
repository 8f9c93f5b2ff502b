"""Variational autoencoders (Kingma & Welling 2014): a fully connected and a small convolutional VAE, optionally
class-conditional (CVAE, Sohn et al. 2015), with a Bernoulli or a Gaussian pixel likelihood.

Model space is [0, 1]: `prepare` turns raw uint8 into a binarized (Bernoulli) or dequantized (Gaussian) batch,
so the likelihood is a proper density or mass on that data and the ELBO is a bound in nats.
No BatchNorm anywhere: every sample's loss depends on that sample only (per-sample gradients stay exact).
With arch mlp and hidden [] the encoder and decoder are single linear maps; with a Gaussian likelihood that
VAE's optimum is probabilistic PCA (Tipping & Bishop 1999; Lucas et al. 2019), which tests can check exactly.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from genforge.models.classifier import _KindConfig
from genforge.models.layers import InputError, check_labels, evaluating, sample_labels, standard_normal

MEAN_FIELD_STEPS = 8  # autoregressive VAEs: iterations of the mean-field estimate of E[x|z] (see mean_image)


class VAEConfig(_KindConfig):
    kind: Literal["vae"] = "vae"
    arch: Literal["mlp", "conv"] = "conv"  # mlp: fully connected; conv: two stride-2 convs each way
    latent_dim: int = Field(16, ge=1)  # size of z
    hidden: list[int] = Field(default_factory=lambda: [512, 256])  # mlp: encoder hidden units, the decoder
    # mirrors them; [] = linear encoder and decoder (probabilistic PCA with the gaussian likelihood)
    width: int = Field(32, ge=4)  # conv: base channel count
    beta: float = Field(1.0, ge=0)  # weight of the KL term (beta-VAE, Higgins et al. 2017)
    conditional: bool = False  # CVAE (Sohn et al. 2015): encoder and decoder both see the one-hot label
    likelihood: Literal["bernoulli", "gaussian"] = "bernoulli"  # p(x|z) per pixel; gaussian: one learned sigma
    autoregressive: bool = False  # bernoulli images: p(x|z) = prod_i p(x_i | z, pixels above and left of i)
    context: int = Field(7, ge=3, le=15)  # autoregressive: side of the causal window (odd)

    @model_validator(mode="after")
    def _autoregressive_needs_bernoulli(self):
        if self.autoregressive and self.likelihood != "bernoulli":
            raise ValueError("autoregressive needs likelihood: bernoulli (it conditions on binary pixels)")
        if self.context % 2 == 0:
            raise ValueError(f"context must be odd (a window centred on the pixel), got {self.context}")
        return self


class CausalConv2d(nn.Conv2d):
    """A masked convolution (PixelCNN's mask A, van den Oord et al. 2016): the output at pixel i sees, in every
    channel, only the pixels above i and to its left in its window, never i itself. Starts at zero, so an
    autoregressive VAE begins as the factorized one."""

    def __init__(self, channels: int, size: int):
        super().__init__(channels, channels, size, padding=size // 2)
        mask = torch.ones_like(self.weight)  # (C, C, k, k)
        mask[:, :, size // 2, size // 2:] = 0  # the pixel itself and those to its right
        mask[:, :, size // 2 + 1:] = 0  # the rows below
        self.register_buffer("mask", mask, persistent=False)  # derived from the shape: not in the weights
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


def _mlp(units: list[int], in_features: int) -> tuple[list[nn.Module], int]:
    layers: list[nn.Module] = []
    for u in units:
        layers += [nn.Linear(in_features, u), nn.ReLU(inplace=True)]
        in_features = u
    return layers, in_features


class VAE(nn.Module):
    """q(z|x, y) = N(mu, diag(exp(logvar))), p(z) = N(0, I), p(x|z, y) Bernoulli(logits) or N(mean, sigma^2 I).

    Attributes: `features` (x -> flat features), `encoder` (features [+ one-hot] -> [mu, logvar]),
    `decoder` (z [+ one-hot] -> distribution parameters (N, *input_shape)).
    The gaussian mean is sigmoid(.) in [0, 1], except for arch mlp with hidden [], where it is the linear
    map W z + b itself (so the model is exactly linear-Gaussian).
    """

    def __init__(self, cfg: VAEConfig, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        input_shape = tuple(int(s) for s in input_shape)
        if cfg.arch == "conv":
            if len(input_shape) != 3 or input_shape[1] % 4 or input_shape[2] % 4:
                raise InputError(f"arch conv needs images (C, H, W) with H and W divisible by 4, got {input_shape}; "
                                 "use arch: mlp for other shapes")
        if cfg.conditional and num_classes < 1:
            raise InputError(f"a conditional VAE needs num_classes >= 1, got {num_classes}")
        self.cfg = cfg
        self.input_shape = input_shape
        self.num_classes = num_classes
        self.latent_dim = cfg.latent_dim
        label_dim = num_classes if cfg.conditional else 0
        pixels = int(torch.Size(input_shape).numel())

        if cfg.arch == "mlp":
            self.features = nn.Flatten()  # (N, D): the CVAE label joins the raw pixels
            trunk, width = _mlp(cfg.hidden, pixels + label_dim)
            self.encoder = nn.Sequential(*trunk, nn.Linear(width, 2 * cfg.latent_dim))
            trunk, width = _mlp(cfg.hidden[::-1], cfg.latent_dim + label_dim)
            decoder = [*trunk, nn.Linear(width, pixels), nn.Unflatten(1, input_shape)]
        else:
            c, h, w = input_shape
            maps = (2 * cfg.width, h // 4, w // 4)
            self.features = nn.Sequential(
                nn.Conv2d(c, cfg.width, 4, stride=2, padding=1), nn.ReLU(inplace=True),  # (w, H/2, W/2)
                nn.Conv2d(cfg.width, 2 * cfg.width, 4, stride=2, padding=1), nn.ReLU(inplace=True),  # (2w, H/4, W/4)
                nn.Flatten(),  # (2w * H/4 * W/4)
            )
            self.encoder = nn.Sequential(
                nn.Linear(math.prod(maps) + label_dim, 256), nn.ReLU(inplace=True),
                nn.Linear(256, 2 * cfg.latent_dim),
            )
            decoder = [
                nn.Linear(cfg.latent_dim + label_dim, 256), nn.ReLU(inplace=True),
                nn.Linear(256, math.prod(maps)), nn.ReLU(inplace=True),
                nn.Unflatten(1, maps),  # (2w, H/4, W/4)
                nn.ConvTranspose2d(2 * cfg.width, cfg.width, 4, stride=2, padding=1),  # (w, H/2, W/2)
                nn.ReLU(inplace=True),
                nn.ConvTranspose2d(cfg.width, c, 4, stride=2, padding=1),  # (C, H, W)
            ]
        self.linear = cfg.arch == "mlp" and not cfg.hidden
        if cfg.likelihood == "gaussian":
            if not self.linear:
                decoder.append(nn.Sigmoid())  # means in [0, 1], where the dequantized data lives
            # observation noise std shared by all pixels, learned (Rybkin et al. 2021); starting near the
            # scale of pixel errors makes the reconstruction term count from the first step
            self.log_sigma = nn.Parameter(torch.tensor(math.log(0.1)))
        else:
            self.register_parameter("log_sigma", None)  # attribute exists, nothing in the state dict
        self.decoder = nn.Sequential(*decoder)
        if cfg.autoregressive and len(input_shape) != 3:
            raise InputError(f"autoregressive needs images (C, H, W), got inputs of shape {input_shape}")
        # the local autoregressive term (PixelVAE, Gulrajani et al. 2017, reduced to one linear masked conv):
        # logits_i = decoder(z)_i + sum of weights x pixels above/left of i; it models the local texture that 32
        # latents leave uncertain, for a ~2 nats better test NLL on binarized Fashion-MNIST at 18% more time
        self.context = CausalConv2d(input_shape[0], cfg.context) if cfg.autoregressive else None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _onehot(self, labels: torch.Tensor | None, n: int, dtype: torch.dtype) -> torch.Tensor | None:
        check_labels(labels, n, self.cfg.conditional)
        if not self.cfg.conditional:
            return None
        if labels.is_floating_point():  # class weights (N, K): a walk between classes
            return labels.to(dtype)
        return F.one_hot(labels, self.num_classes).to(dtype)  # (N, K)

    def prepare(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Raw 0-255 -> model space [0, 1]. bernoulli: dynamic binarization, a fresh draw every call
        (Salakhutdinov & Murray 2008); gaussian: uniform dequantization (x + u) / 256, u ~ U[0, 1)
        (Theis et al. 2016). `generator` must live on x's device."""
        if self.cfg.likelihood == "bernoulli":
            return torch.bernoulli(x.float() / 255.0, generator=generator)
        u = torch.rand(x.shape, generator=generator, device=x.device)
        return (x.float() + u) / 256.0

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Model-space x (N, *input_shape) -> (mu, logvar), each (N, latent_dim)."""
        if not x.is_floating_point():
            raise InputError(f"encode takes model-space floats in [0, 1], got {x.dtype}: call prepare first")
        h = self.features(x)  # (N, F)
        onehot = self._onehot(labels, x.shape[0], h.dtype)
        if onehot is not None:
            h = torch.cat([h, onehot], dim=1)  # (N, F + K)
        mu, logvar = self.encoder(h).chunk(2, dim=1)  # (N, latent_dim) each
        return mu, logvar

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I) (Kingma & Welling 2014 eq. 10)."""
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps  # (N, latent_dim)

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(N, latent_dim) -> distribution parameters (N, *input_shape): bernoulli logits or gaussian means."""
        onehot = self._onehot(labels, z.shape[0], z.dtype)
        if onehot is not None:
            z = torch.cat([z, onehot], dim=1)  # (N, latent_dim + K)
        return self.decoder(z)

    def context_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Autoregressive models: the logits that pixels above/left of each pixel add, (N, *input_shape), for
        model-space x (binary, or means in [0, 1])."""
        return self.context(x)

    def log_likelihood(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """log p(x|z) in nats, summed over the pixels: (N,) for params (N, *input_shape); params with extra
        leading dims (S, N, ...) broadcast against x and give (S, N). An autoregressive model adds the logits
        of each pixel's causal context in x, so this is log prod_i p(x_i | z, x_<i)."""
        if self.context is not None:
            params = params + self.context_logits(x)
        if self.cfg.likelihood == "bernoulli":
            logp = -F.binary_cross_entropy_with_logits(params, x.expand_as(params), reduction="none")
        else:  # log N(x; mean, sigma^2), sigma shared by all pixels
            logp = (-0.5 * ((x - params) * torch.exp(-self.log_sigma)).pow(2)
                    - self.log_sigma - 0.5 * math.log(2 * math.pi))
        return logp.sum(dim=tuple(range(-len(self.input_shape), 0)))

    @staticmethod
    def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL(N(mu, diag(exp(logvar))) || N(0, I)) per sample, (N,), closed form (Kingma & Welling 2014 app. B)."""
        return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=-1)

    def loss(self, x: torch.Tensor, labels: torch.Tensor | None = None, *,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Negative beta-ELBO, mean over the batch, for model-space x (see prepare); one z per sample.
        stats: recon = mean -log p(x|z), kl = mean KL, elbo = mean ELBO at beta = 1, in nats per sample."""
        mu, logvar = self.encode(x, labels)
        z = self.reparameterize(mu, logvar, generator)  # (N, latent_dim)
        recon = -self.log_likelihood(x, self.decode(z, labels))  # (N,)
        kl = self.kl_divergence(mu, logvar)  # (N,)
        loss = (recon + self.cfg.beta * kl).mean()
        values = torch.stack([recon.mean(), kl.mean(), -(recon + kl).mean()]).detach().float().tolist()
        return loss, dict(zip(["recon", "kl", "elbo"], values))

    def mean_image(self, params: torch.Tensor) -> torch.Tensor:
        """The distribution's mean in [0, 1]: sigmoid(logits), or the gaussian mean clamped. For an
        autoregressive model, the mean-field estimate of E[x|z]: m = sigmoid(logits + context(m)), iterated
        from sigmoid(logits) (deterministic, and a few steps settle it: the context weights are local)."""
        if self.cfg.likelihood != "bernoulli":
            return params.clamp(0.0, 1.0)
        mean = torch.sigmoid(params)
        if self.context is not None:
            for _ in range(MEAN_FIELD_STEPS):
                mean = torch.sigmoid(params + self.context_logits(mean))
        return mean

    @staticmethod
    def to_uint8(x01: torch.Tensor) -> torch.Tensor:
        """[0, 1] -> uint8 0-255, rounded and clamped."""
        return (x01.float() * 255.0).round().clamp(0, 255).to(torch.uint8)

    def render(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 mean images (N, *input_shape) on the CPU for given latents, in eval mode (the mode is restored)."""
        with evaluating(self):
            return self.to_uint8(self.mean_image(self.decode(z.to(self.device), labels))).cpu()

    def sample(self, n: int, labels: torch.Tensor | None = None, seed: int | None = None,
               truncation: float | None = None) -> torch.Tensor:
        """uint8 (n, *input_shape) on the CPU: z ~ N(0, I) (truncated to [-T, T] when asked), decoded, the
        mean image. The same seed gives the same images; the train/eval mode is restored afterwards."""
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        labels = sample_labels(n, labels, self.num_classes, self.cfg.conditional, self.device)
        return self.render(standard_normal((n, self.latent_dim), generator, truncation), labels)

    def reconstruct(self, x_uint8: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 reconstructions, (N, *input_shape) on the CPU: decode(mu) of x / 255 (no binarization or
        noise, so the result is deterministic), the mean image."""
        with evaluating(self):
            x01 = x_uint8.to(self.device).float() / 255.0
            if labels is not None:  # checked in range here: off the training hot path
                labels = sample_labels(len(x01), labels, self.num_classes, self.cfg.conditional, self.device)
            mu, _ = self.encode(x01, labels)
            return self.to_uint8(self.mean_image(self.decode(mu, labels))).cpu()
