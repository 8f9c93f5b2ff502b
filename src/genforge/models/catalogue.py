"""The model kinds: kind -> its config class, its builder and what data it reads. Add a kind here (and its task in
registry.py); config.py builds the union of model configs from this table, and load_run rebuilds a run's model with
build_model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from pydantic import BaseModel
from torch import nn

from genforge.models import classifier as clf
from genforge.models import rnn, scattering
from genforge.models.gan import GAN, GANConfig
from genforge.models.transformer import TransformerConfig, build_transformer
from genforge.models.vae import VAE, VAEConfig


@dataclass(frozen=True)
class Kind:
    config: type[BaseModel]
    build: Callable[..., nn.Module]  # (config, input_shape, num_classes, mean, std) -> nn.Module
    image_only: bool  # needs (C, H, W) uint8 images: refused on tabular data before training starts
    family: str  # classifier, generator, forecaster or language: what the kind is (config checks read it)

    @property
    def classifier(self) -> bool:
        """A class head: takes transfer (train.init_from, data.classes, ...) and trains under train.privacy."""
        return self.family == "classifier"

    @property
    def transfer(self) -> bool:
        """Starts from another run's weights (train.init_from, train.freeze) and reads a labelled subset of the data
        (data.classes, data.labels_per_class): classifiers, and language models fine-tuned into text classifiers."""
        return self.family in ("classifier", "language")


def _generator(cls: type[nn.Module]) -> Callable[..., nn.Module]:
    """Generators scale their inputs to a fixed range themselves: the data statistics are not needed."""
    return lambda cfg, input_shape, num_classes, mean, std: cls(cfg, input_shape, num_classes)


KINDS: dict[str, Kind] = {
    "logreg": Kind(clf.LogRegConfig, clf.classifier(clf.build_logreg), image_only=False, family="classifier"),
    "mlp": Kind(clf.MLPConfig, clf.classifier(clf.build_mlp), image_only=False, family="classifier"),
    "cnn": Kind(clf.CNNConfig, clf.classifier(clf.build_cnn), image_only=True, family="classifier"),
    "fastcnn": Kind(clf.FastCNNConfig, clf.classifier(clf.build_fastcnn), image_only=True, family="classifier"),
    "scatternet": Kind(scattering.ScatterNetConfig, clf.classifier(scattering.build_scatternet), image_only=True,
                       family="classifier"),
    "gan": Kind(GANConfig, _generator(GAN), image_only=True, family="generator"),
    # a VAE's likelihood is defined on 8-bit pixels (binarized or dequantized), its verbs (sample, interpolate,
    # reconstruct, serve) return images: real-valued features have neither (docs/decisions.md)
    "vae": Kind(VAEConfig, _generator(VAE), image_only=True, family="generator"),
    "rowrnn": Kind(rnn.RowRNNConfig, clf.classifier(rnn.build_rowrnn), image_only=True, family="classifier"),
    "rnn": Kind(rnn.RNNConfig, rnn.build_rnn, image_only=False, family="forecaster"),
    # the classical baselines: run directories like any model's, so a user compares in the same tool
    **{kind: Kind(rnn.BaselineConfig, rnn.build_baseline, image_only=False, family="forecaster")
       for kind in ("naive", "seasonal-naive", "drift", "season-mean")},
    # a language model (head=lm) or, fine-tuned from one, a classifier of entries (head=classes): its family is
    # "language" so that the image classifiers' transfer and privacy options do not reach it (docs/decisions.md)
    "transformer": Kind(TransformerConfig, build_transformer, image_only=False, family="language"),
}


def build_model(cfg: BaseModel, input_shape: tuple[int, ...], num_classes: int, mean: torch.Tensor,
                std: torch.Tensor) -> nn.Module:
    """Build the model of cfg.kind; classifiers get a first layer that normalizes raw inputs with (mean, std)."""
    return KINDS[cfg.kind].build(cfg, tuple(input_shape), num_classes, mean, std)
