"""One table: model kind -> its config class, its builder and its task. Add a kind here, nowhere else; what a task
does (train, evaluate, report, export, serve) is its module's under tasks/."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from pydantic import BaseModel
from torch import nn

from genforge.models import classifier as clf
from genforge.models import rnn, scattering
from genforge.models.gan import GAN, GANConfig
from genforge.models.vae import VAE, VAEConfig
from genforge.tasks import classify, forecast, gan, vae
from genforge.tasks.base import Task


@dataclass(frozen=True)
class ModelSpec:
    config: type[BaseModel]
    build: Callable[..., nn.Module]  # (config, input_shape, num_classes, mean, std) -> nn.Module
    task: Task  # the step function, evaluation, report, export parts and serving verbs (tasks/)
    image_only: bool  # needs (C, H, W) uint8 images: refused on tabular data before training starts


def _generator(cls: type[nn.Module]) -> Callable[..., nn.Module]:
    """Generators scale their inputs to a fixed range themselves: the data statistics are not needed."""
    return lambda cfg, input_shape, num_classes, mean, std: cls(cfg, input_shape, num_classes)


MODELS: dict[str, ModelSpec] = {
    "logreg": ModelSpec(clf.LogRegConfig, clf.classifier(clf.build_logreg), classify.TASK, image_only=False),
    "mlp": ModelSpec(clf.MLPConfig, clf.classifier(clf.build_mlp), classify.TASK, image_only=False),
    "cnn": ModelSpec(clf.CNNConfig, clf.classifier(clf.build_cnn), classify.TASK, image_only=True),
    "fastcnn": ModelSpec(clf.FastCNNConfig, clf.classifier(clf.build_fastcnn), classify.TASK, image_only=True),
    "scatternet": ModelSpec(scattering.ScatterNetConfig, clf.classifier(scattering.build_scatternet), classify.TASK,
                            image_only=True),
    "gan": ModelSpec(GANConfig, _generator(GAN), gan.TASK, image_only=True),
    # a VAE's likelihood is defined on 8-bit pixels (binarized or dequantized), its verbs (sample, interpolate,
    # reconstruct, serve) return images: real-valued features have neither (docs/decisions.md)
    "vae": ModelSpec(VAEConfig, _generator(VAE), vae.TASK, image_only=True),
    "rowrnn": ModelSpec(rnn.RowRNNConfig, clf.classifier(rnn.build_rowrnn), classify.TASK, image_only=True),
    "rnn": ModelSpec(rnn.RNNConfig, rnn.build_rnn, forecast.TASK, image_only=False),
    # the classical baselines: run directories like any model's, so a user compares in the same tool
    **{kind: ModelSpec(rnn.BaselineConfig, rnn.build_baseline, forecast.TASK, image_only=False)
       for kind in ("naive", "seasonal-naive", "drift", "season-mean")},
}


def build_model(cfg: BaseModel, input_shape: tuple[int, ...], num_classes: int, mean: torch.Tensor,
                std: torch.Tensor) -> nn.Module:
    """Build the model of cfg.kind; classifiers get a first layer that normalizes raw inputs with (mean, std)."""
    return MODELS[cfg.kind].build(cfg, tuple(input_shape), num_classes, mean, std)


def task_of(kind: str) -> Task:
    """The task of a model kind (a run's: its config.model.kind)."""
    return MODELS[kind].task
