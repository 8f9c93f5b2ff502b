"""Classifiers: logistic regression, MLP, the articles' CNN, and a compact fast CNN.

Every classifier takes raw inputs (uint8 images in 0-255, or raw float features) and normalizes
them itself with statistics stored as buffers, so a saved model needs nothing else to predict.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn


class _KindConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LogRegConfig(_KindConfig):
    kind: Literal["logreg"] = "logreg"
    binary: bool = True  # one sigmoid unit when the data has 2 classes; else multinomial softmax


class MLPConfig(_KindConfig):
    kind: Literal["mlp"] = "mlp"
    hidden: list[int] = Field(default_factory=lambda: [256, 128])  # units per hidden layer
    dropout: float = Field(0.2, ge=0, lt=1)  # drop probability after each hidden layer


class CNNConfig(_KindConfig):
    """The articles' simple convnet, done right: conv32-conv64-maxpool-dropout-fc128-fc10, softmax."""

    kind: Literal["cnn"] = "cnn"
    dropout: float = Field(0.25, ge=0, lt=1)  # after the pooling layer; twice that before the head


class FastCNNConfig(_KindConfig):
    """A compact CNN tuned for accuracy per CPU second."""

    kind: Literal["fastcnn"] = "fastcnn"
    channels: list[int] = Field(default_factory=lambda: [16, 32, 64], min_length=1)  # per block; each halves H, W
    depth: list[int] | None = None  # conv layers per block (default: 1, then 2 for every later block)
    norm: Literal["batch", "group"] = "batch"  # group: per-sample friendly (differential privacy)
    dropout: float = Field(0.0, ge=0, lt=1)  # before the linear head

    @model_validator(mode="after")
    def _depth_matches_channels(self):
        if self.depth is None:
            self.depth = [1] + [2] * (len(self.channels) - 1)
        if len(self.depth) != len(self.channels) or min(self.depth) < 1:
            raise ValueError(f"depth needs one count >= 1 per block ({len(self.channels)} blocks), got {self.depth}")
        return self


class Normalize(nn.Module):
    """(x - mean) / std with the training data's statistics, kept in the state dict."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, scale: float):
        super().__init__()
        self.register_buffer("mean", mean.float().clone())
        self.register_buffer("std", std.float().clamp_min(1e-6).clone())
        self.scale = scale  # 1/255 for uint8 images, 1 for features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() * self.scale - self.mean) / self.std


class Classifier(nn.Module):
    """A network with its preprocessing and its objective. logits: (N, classes) or (N, 1) binary."""

    def __init__(self, net: nn.Module, normalize: Normalize, num_classes: int, binary: bool):
        super().__init__()
        self.normalize = normalize
        self.net = net
        self.num_classes = num_classes
        self.binary = binary

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (N, D): the input of the last linear layer."""
        return self.net[:-1](self.normalize(x)).flatten(1)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (N, D), logits) from one pass through the network: the head applied to `features`."""
        h = self.features(x)
        return h, self.net[-1](h)

    def loss(self, logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        if self.binary:
            target = y.float() * (1 - label_smoothing) + 0.5 * label_smoothing
            return F.binary_cross_entropy_with_logits(logits.squeeze(1).float(), target)
        return F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)

    def log_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, num_classes) log-probabilities, also for the one-unit binary model."""
        if self.binary:
            return torch.cat([F.logsigmoid(-logits.float()), F.logsigmoid(logits.float())], dim=1)
        return logits.float().log_softmax(dim=1)

    def distillation_loss(self, logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """T^2 * KL(teacher || student) of the distributions softened by T (Hinton et al. 2015): T^2 keeps the
        gradient's scale independent of T."""
        student = self.log_probabilities(logits / temperature)
        teacher = self.log_probabilities(teacher_logits / temperature)
        return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature ** 2

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, num_classes) probabilities, also for the one-unit binary model."""
        if self.binary:
            p1 = torch.sigmoid(logits.float())
            return torch.cat([1 - p1, p1], dim=1)
        return logits.float().softmax(dim=1)


def classifier(build_net):
    """Turn a network builder (cfg, input_shape, num_classes) -> (net, binary) into a model builder that adds the
    input normalization: (cfg, input_shape, num_classes, mean, std) -> Classifier."""

    def build(cfg, input_shape: tuple[int, ...], num_classes: int, mean: torch.Tensor, std: torch.Tensor):
        net, binary = build_net(cfg, tuple(input_shape), num_classes)
        scale = 1 / 255 if len(input_shape) == 3 else 1.0  # uint8 images; features are taken as they are
        return Classifier(net, Normalize(mean, std, scale), num_classes, binary)

    return build


def _conv_block(c_in: int, c_out: int, norm: str) -> nn.Sequential:
    norm_layer = nn.BatchNorm2d(c_out) if norm == "batch" else nn.GroupNorm(min(8, c_out), c_out)
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), norm_layer, nn.ReLU(inplace=True))


def build_logreg(cfg: LogRegConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    binary = cfg.binary and num_classes == 2
    features = int(torch.Size(input_shape).numel())
    return nn.Sequential(nn.Flatten(), nn.Linear(features, 1 if binary else num_classes)), binary


def build_mlp(cfg: MLPConfig, input_shape: tuple[int, ...], num_classes: int):
    layers: list[nn.Module] = [nn.Flatten()]
    width = int(torch.Size(input_shape).numel())
    for units in cfg.hidden:
        layers += [nn.Linear(width, units), nn.ReLU(inplace=True), nn.Dropout(cfg.dropout)]
        width = units
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers), False


def build_cnn(cfg: CNNConfig, input_shape: tuple[int, ...], num_classes: int):
    c, h, w = input_shape
    net = nn.Sequential(
        nn.Conv2d(c, 32, 3), nn.ReLU(inplace=True),  # (32, H-2, W-2)
        nn.Conv2d(32, 64, 3), nn.ReLU(inplace=True),  # (64, H-4, W-4)
        nn.MaxPool2d(2), nn.Dropout(cfg.dropout),  # (64, (H-4)/2, (W-4)/2)
        nn.Flatten(),
        nn.Linear(64 * ((h - 4) // 2) * ((w - 4) // 2), 128), nn.ReLU(inplace=True),
        nn.Dropout(min(2 * cfg.dropout, 0.9)),
        nn.Linear(128, num_classes),
    )
    return net, False


def build_fastcnn(cfg: FastCNNConfig, input_shape: tuple[int, ...], num_classes: int):
    """(conv-norm-relu) x depth, then maxpool, per block: one cheap conv at full resolution, the depth where
    the maps are small (28x28 -> 14 -> 7 -> 3), so the compute buys the most accuracy per CPU second."""
    layers: list[nn.Module] = []
    c_in = input_shape[0]
    for c_out, depth in zip(cfg.channels, cfg.depth):
        for _ in range(depth):
            layers.append(_conv_block(c_in, c_out, cfg.norm))
            c_in = c_out
        layers.append(nn.MaxPool2d(2))
    layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Dropout(cfg.dropout), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*layers), False
