"""One table: model kind -> its config class and its builder. Add a kind here, nowhere else."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from pydantic import BaseModel

from genforge.models import classifier as clf


@dataclass(frozen=True)
class ModelSpec:
    config: type[BaseModel]
    build_net: Callable  # (config, input_shape, num_classes) -> (nn.Module, binary: bool)
    task: str  # "classify"; the step function and evaluation are chosen by task
    image_only: bool  # needs (C, H, W) inputs


MODELS: dict[str, ModelSpec] = {
    "logreg": ModelSpec(clf.LogRegConfig, clf.build_logreg, "classify", image_only=False),
    "mlp": ModelSpec(clf.MLPConfig, clf.build_mlp, "classify", image_only=False),
    "cnn": ModelSpec(clf.CNNConfig, clf.build_cnn, "classify", image_only=True),
    "fastcnn": ModelSpec(clf.FastCNNConfig, clf.build_fastcnn, "classify", image_only=True),
}


def build_model(
    cfg: BaseModel, input_shape: tuple[int, ...], num_classes: int, mean: torch.Tensor, std: torch.Tensor
) -> clf.Classifier:
    """Build a classifier whose first layer normalizes raw inputs with (mean, std)."""
    spec = MODELS[cfg.kind]
    net, binary = spec.build_net(cfg, tuple(input_shape), num_classes)
    scale = 1 / 255 if len(input_shape) == 3 else 1.0
    return clf.Classifier(net, clf.Normalize(mean, std, scale), num_classes, binary)
