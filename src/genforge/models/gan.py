"""Generative adversarial networks: the articles' fully connected G and D done right, and a small DCGAN.

Images live in model space [-1, 1] (G ends in tanh); `to_model_space` and `to_uint8` convert at the edges.
The objective (d_loss, g_loss) lives here; the alternating two-optimizer update lives in the GAN step function.
D has no BatchNorm: the WGAN-GP penalty is per sample (Gulrajani et al. 2017 sec. 4; minibatch_std's batch
spread is held constant inside it), and per-sample gradient training (differential privacy) needs samples that
do not see each other.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from genforge.models.classifier import _KindConfig
from genforge.models.layers import InputError, check_labels, evaluating, sample_labels, standard_normal


class GANConfig(_KindConfig):
    kind: Literal["gan"] = "gan"
    arch: Literal["mlp", "dcgan"] = "dcgan"  # mlp: the articles' fully connected G and D, done right
    loss: Literal["bce", "hinge", "wgan-gp"] = "bce"  # bce: non-saturating G loss (Goodfellow et al. 2014 sec. 3)
    latent_dim: int = Field(64, ge=1)  # size of z
    width: int = Field(64, ge=8)  # dcgan: base channel count; mlp: hidden units are width*4, width*8, width*16
    conditional: bool = False  # class-conditional G (label embedding concatenated to z) and D
    conditioning: Literal["projection", "concat"] = "projection"  # how D sees the label: projection
    # (Miyato & Koyama 2018) or one-hot label maps concatenated to its input
    spectral_norm: bool = False  # on every conv/linear/embedding of D (Miyato et al. 2018)
    gp_weight: float = Field(10.0, ge=0)  # WGAN-GP lambda (Gulrajani et al. 2017 alg. 1)
    mode_seeking: float = Field(0.0, ge=0)  # weight of the mode-seeking term in G's loss (Mao et al. 2019):
    # two latents with one label must give different images, against a conditional G that ignores z
    minibatch_std: bool = True  # D sees its batch's spread (Karras et al. 2018 sec. 3), against mode collapse;
    # false keeps samples independent, as per-sample-gradient (DP) training needs


def embed_labels(embedding: nn.Embedding, labels: torch.Tensor) -> torch.Tensor:
    """Class indices (N,) or class weights (N, K) -> (N, D): a weighted mix of class embeddings lets a latent walk
    move between classes (genforge interpolate --from-label A --to-label B)."""
    return labels.to(embedding.weight.dtype) @ embedding.weight if labels.is_floating_point() else embedding(labels)


def _init_dcgan(module: nn.Module) -> None:
    """Radford et al. 2016 sec. 4: weights N(0, 0.02), BatchNorm scales N(1, 0.02), biases zero."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    """z (+ label embedding) -> image in [-1, 1]."""

    def __init__(self, body: nn.Module, latent_dim: int, num_classes: int, conditional: bool):
        super().__init__()
        # N(0, 1) like z (default Embedding init), so the label speaks as loudly as the noise
        self.embed = nn.Embedding(num_classes, latent_dim) if conditional else None
        self.body = body

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, embed_labels(self.embed, labels)], dim=1)  # (N, 2 * latent_dim)
        return self.body(z)  # (N, C, H, W)


class Discriminator(nn.Module):
    """image (+ label) -> (N,) raw score. `features` maps the input to h (N, F), a linear head scores h.

    Label conditioning: "projection" adds <embed(y), h> to the score (Miyato & Koyama 2018 eq. 3);
    "concat" appends the one-hot label to the input, as K constant maps (conv) or K units (flat, mlp).
    """

    def __init__(self, features: nn.Module, feature_dim: int, num_classes: int, conditioning: str | None,
                 flat: bool):
        super().__init__()
        self.features = features
        self.head = nn.Linear(feature_dim, 1)
        self.num_classes = num_classes
        self.conditioning = conditioning  # None when unconditional
        self.flat = flat
        self.embed = nn.Embedding(num_classes, feature_dim) if conditioning == "projection" else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.conditioning == "concat":
            onehot = F.one_hot(labels, self.num_classes).to(x.dtype)  # (N, K)
            if self.flat:
                x = torch.cat([x.flatten(1), onehot], dim=1)  # (N, C*H*W + K)
            else:
                maps = onehot[:, :, None, None].expand(-1, -1, *x.shape[2:])  # (N, K, H, W)
                x = torch.cat([x, maps], dim=1)  # (N, C + K, H, W)
        h = self.features(x)  # (N, F)
        score = self.head(h).squeeze(1)  # (N,)
        if self.embed is not None:
            score = score + (self.embed(labels) * h).sum(dim=1)  # (N,)
        return score


def _dcgan_generator(cfg: GANConfig, in_features: int, input_shape: tuple[int, int, int]) -> nn.Sequential:
    """The last transposed conv writes the image channels directly (Radford et al. 2016 fig. 1): a further
    width-channel stage at full resolution would double G's cost on a CPU for little gain at 28x28."""
    c, h, w = input_shape
    width = cfg.width
    return nn.Sequential(
        nn.Linear(in_features, 4 * width * (h // 4) * (w // 4), bias=False),
        nn.Unflatten(1, (4 * width, h // 4, w // 4)),  # (4w, H/4, W/4)
        nn.BatchNorm2d(4 * width), nn.ReLU(inplace=True),
        nn.ConvTranspose2d(4 * width, 2 * width, 4, stride=2, padding=1, bias=False),  # (2w, H/2, W/2)
        nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True),
        nn.ConvTranspose2d(2 * width, c, 4, stride=2, padding=1),  # (C, H, W)
        nn.Tanh(),
    )


class MinibatchStd(nn.Module):
    """Append the batch's spread as one more feature (channel): the standard deviation of every feature over
    the batch, averaged (Karras et al. 2018 sec. 3). Without batch statistics a D cannot tell a varied batch
    from one image repeated, and G collapses to one image per class."""

    fixed = False  # True inside GAN.gradient_penalty: the spread is a constant of the batch (see there)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        stats = h.detach() if self.fixed else h
        spread = stats.float().std(dim=0, unbiased=False).mean().to(h.dtype)  # scalar, over the batch
        return torch.cat([h, spread.expand(h.shape[0], 1, *h.shape[2:])], dim=1)  # (N, C + 1, ...)


@contextmanager
def fixed_batch_statistics(module: nn.Module):
    """Inside the block every MinibatchStd of `module` treats its batch's spread as a constant, so output i is a
    function of input i alone (and of that constant)."""
    layers = [m for m in module.modules() if isinstance(m, MinibatchStd)]
    for m in layers:
        m.fixed = True
    try:
        yield
    finally:
        for m in layers:
            m.fixed = False


def _dcgan_discriminator(cfg: GANConfig, in_channels: int, input_shape: tuple[int, int, int]):
    _, h, w = input_shape
    width = cfg.width
    extra = int(cfg.minibatch_std)
    features = nn.Sequential(
        nn.Conv2d(in_channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True),  # (w, H/2, W/2)
        nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True),  # (2w, H/4, W/4)
        *([MinibatchStd()] if extra else []),  # (2w + 1, H/4, W/4)
        nn.Flatten(),  # ((2w + 1) * H/4 * W/4)
    )
    return features, (2 * width + extra) * (h // 4) * (w // 4)


def _mlp_generator(cfg: GANConfig, in_features: int, input_shape: tuple[int, int, int]) -> nn.Sequential:
    units = [4 * cfg.width, 8 * cfg.width, 16 * cfg.width]  # 256, 512, 1024 at width 64
    layers: list[nn.Module] = []
    for u in units:  # BatchNorm makes the bias redundant
        layers += [nn.Linear(in_features, u, bias=False), nn.BatchNorm1d(u), nn.LeakyReLU(0.2, inplace=True)]
        in_features = u
    layers += [nn.Linear(in_features, int(torch.Size(input_shape).numel())), nn.Tanh(), nn.Unflatten(1, input_shape)]
    return nn.Sequential(*layers)


def _mlp_discriminator(cfg: GANConfig, in_features: int, input_shape: tuple[int, int, int]):
    units = [8 * cfg.width, 4 * cfg.width]  # 512, 256 at width 64
    layers: list[nn.Module] = [nn.Flatten()]
    for u in units:
        layers += [nn.Linear(in_features, u), nn.LeakyReLU(0.2, inplace=True)]
        in_features = u
    if cfg.minibatch_std:
        layers.append(MinibatchStd())  # (N, F + 1)
    return nn.Sequential(*layers), in_features + int(cfg.minibatch_std)


class GAN(nn.Module):
    """A generator and a discriminator (critic), with the adversarial objective of cfg.loss.

    `labels` are (N,) long tensors; a conditional model requires them, an unconditional one ignores them
    (sample() alone rejects them, since there they are a user's request).
    """

    def __init__(self, cfg: GANConfig, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        if len(input_shape) != 3:
            raise InputError(f"a GAN generates images: input_shape must be (C, H, W), got {tuple(input_shape)}")
        c, h, w = input_shape
        if cfg.arch == "dcgan" and (h % 4 or w % 4):
            raise InputError(f"arch dcgan halves H and W twice: they must be divisible by 4, got {h}x{w}; "
                             "use arch: mlp for other sizes")
        if cfg.conditional and num_classes < 1:
            raise InputError(f"a conditional GAN needs num_classes >= 1, got {num_classes}")
        self.cfg = cfg
        self.input_shape = (c, h, w)
        self.num_classes = num_classes
        self.latent_dim = cfg.latent_dim

        g_in = cfg.latent_dim * (2 if cfg.conditional else 1)
        conditioning = cfg.conditioning if cfg.conditional else None
        concat = num_classes if conditioning == "concat" else 0
        if cfg.arch == "dcgan":
            body = _dcgan_generator(cfg, g_in, self.input_shape)
            features, feature_dim = _dcgan_discriminator(cfg, c + concat, self.input_shape)
        else:
            body = _mlp_generator(cfg, g_in, self.input_shape)
            features, feature_dim = _mlp_discriminator(cfg, c * h * w + concat, self.input_shape)
        self.generator = Generator(body, cfg.latent_dim, num_classes, cfg.conditional)
        self.discriminator = Discriminator(features, feature_dim, num_classes, conditioning, flat=cfg.arch == "mlp")

        self.generator.body.apply(_init_dcgan)
        self.discriminator.apply(_init_dcgan)
        if self.discriminator.embed is not None:
            nn.init.normal_(self.discriminator.embed.weight, 0.0, 0.02)
        if cfg.spectral_norm:  # after the init: the parametrization keeps the initialized weight as `original`
            for module in self.discriminator.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear, nn.Embedding)):
                    _spectral_norm(module)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def noise(self, n: int, generator: torch.Generator | None = None, truncation: float | None = None) -> torch.Tensor:
        """z ~ N(0, I), (n, latent_dim) on the model's device; drawn on the CPU with `generator` (a CPU
        torch.Generator) so results do not depend on the device. truncation: see standard_normal."""
        return standard_normal((n, self.latent_dim), generator, truncation).to(self.device)

    def generate(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(N, latent_dim) -> float (N, C, H, W) in [-1, 1]. An unconditional model ignores labels."""
        check_labels(labels, z.shape[0], self.cfg.conditional)
        return self.generator(z, labels if self.cfg.conditional else None)

    def critic(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(N, C, H, W) in model space [-1, 1] -> (N,) raw scores (logits for bce)."""
        if not x.is_floating_point():
            raise InputError(f"critic takes model-space floats in [-1, 1], got {x.dtype}: call to_model_space first")
        check_labels(labels, x.shape[0], self.cfg.conditional)
        return self.discriminator(x, labels if self.cfg.conditional else None)

    def gradient_penalty(self, real: torch.Tensor, fake: torch.Tensor,
                         labels: torch.Tensor | None = None) -> torch.Tensor:
        """E[(||grad_x_hat D(x_hat)||_2 - 1)^2] on x_hat = eps * real + (1 - eps) * fake, one eps ~ U(0, 1) per
        sample (Gulrajani et al. 2017 alg. 1). The norm is sqrt(sum g^2 + 1e-12): at g = 0 a plain norm has
        an infinite derivative and turns the penalty's gradient into NaN.

        The penalty is on the gradient of a per-sample critic. With minibatch_std, D(x_hat)_i also depends on
        every x_hat_j through the batch's spread, and grad of sum_i D_i w.r.t. x_hat_i would add the other
        samples' terms dD_j/dx_hat_i. So the spread of the interpolates is held constant here (detached): then
        dD_i/dx_hat_j = 0 for j != i and the norm is that of x -> D(x; spread) at sample i alone."""
        eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)  # (N, 1, 1, 1)
        x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)  # (N, C, H, W)
        with fixed_batch_statistics(self.discriminator):
            score = self.critic(x_hat, labels)  # (N,)
        (grad,) = torch.autograd.grad(score.sum(), x_hat, create_graph=True)  # (N, C, H, W)
        norm = torch.sqrt(grad.flatten(1).pow(2).sum(dim=1) + 1e-12)  # (N,)
        return (norm - 1).pow(2).mean()

    def d_loss(self, real: torch.Tensor, fake: torch.Tensor,
               labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss for D on model-space real and (detached) fake images sharing `labels`; stats as floats."""
        d_real = self.critic(real, labels)  # (N,)
        d_fake = self.critic(fake, labels)  # (N,)
        logged = {"d_real": d_real.mean(), "d_fake": d_fake.mean()}
        if self.cfg.loss == "bce":  # -log D(x) - log(1 - D(G(z))), D = sigmoid(score)
            loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        elif self.cfg.loss == "hinge":  # Lim & Ye 2017; Miyato et al. 2018 eq. 16
            loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        else:  # WGAN critic loss (Arjovsky et al. 2017) plus the penalty (Gulrajani et al. 2017 eq. 3)
            logged["gp"] = self.gradient_penalty(real, fake, labels)
            loss = d_fake.mean() - d_real.mean() + self.cfg.gp_weight * logged["gp"]
        logged["d_loss"] = loss
        values = torch.stack([v.detach().float() for v in logged.values()]).tolist()  # one device sync
        return loss, dict(zip(logged, values))

    def g_loss(self, fake: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar loss for G on fake images that still carry G's graph."""
        score = self.critic(fake, labels)  # (N,)
        if self.cfg.loss == "bce":  # non-saturating: maximize log D(G(z)) (Goodfellow et al. 2014 sec. 3)
            return F.softplus(-score).mean()
        return -score.mean()  # hinge and WGAN: the generator raises the critic's score

    def mode_seeking_loss(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """1 / (mean |G(z1) - G(z2)| / mean |z1 - z2|) for pairs that share a label (Mao et al. 2019 eq. 3), on
        half the batch: z1 = z[:B/2], z2 fresh. Small when images move with the latent."""
        half = z.shape[0] // 2
        z1, z2 = z[:half], torch.randn_like(z[:half])
        pair_labels = None if labels is None else labels[:half].repeat(2)
        images = self.generate(torch.cat([z1, z2]), pair_labels)  # (2 * half, C, H, W)
        ratio = (images[:half] - images[half:]).abs().mean() / (z1 - z2).abs().mean()
        return 1.0 / (ratio + 1e-5)

    @staticmethod
    def to_model_space(x: torch.Tensor) -> torch.Tensor:
        """uint8 or float 0-255 -> float in [-1, 1]."""
        return x.float() / 127.5 - 1.0

    @staticmethod
    def to_uint8(x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> uint8 0-255, rounded and clamped."""
        return ((x.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)

    def render(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 images (N, C, H, W) on the CPU for given latents, in eval mode (the mode is restored)."""
        with evaluating(self):
            return self.to_uint8(self.generate(z.to(self.device), labels)).cpu()

    def sample(self, n: int, labels: torch.Tensor | None = None, seed: int | None = None,
               truncation: float | None = None) -> torch.Tensor:
        """uint8 (n, C, H, W) on the CPU, in eval mode (BatchNorm running statistics). The same seed gives the
        same images; the train/eval mode is restored afterwards."""
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        labels = sample_labels(n, labels, self.num_classes, self.cfg.conditional, self.device)
        return self.render(self.noise(n, generator, truncation), labels)
