"""The evaluator network: a genforge classifier trained on the dataset's own train split, whose penultimate
features the generator metrics (FD, KID, precision/recall) are computed on.

ImageNet Inception is meaningless on 28x28 grayscale (and its weights cannot be downloaded offline), so the
feature space is a classifier of the same data. The application trains it once per dataset (genforge.training) into
a cache found by the dataset's content checksum, from which this module loads it; every score records the hash of
its weights, so two numbers are comparable only when the hashes match.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from genforge import rundir
from genforge.data.idx_datasets import cache_dir
from genforge.errors import GenforgeError


@dataclass
class Evaluator:
    model: torch.nn.Module  # a Classifier, eval mode, on the CPU
    hash: str  # first 16 hex digits of the sha256 of its safetensors weights
    test_accuracy: float
    path: Path

    @torch.inference_mode()
    def features(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """(N, D) float32 penultimate features of raw uint8 images."""
        return torch.cat([self.model.features(x[i: i + batch_size]).float() for i in range(0, len(x), batch_size)])

    @torch.inference_mode()
    def predict(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """(N,) predicted class of raw uint8 images."""
        return torch.cat([self.model(x[i: i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])

    @torch.inference_mode()
    def features_and_predictions(self, x: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
        """`features` and `predict` of the same images from one pass of the network: (N, D) float32, (N,)."""
        feats, predicted = [], []
        for i in range(0, len(x), batch_size):
            h, logits = self.model.features_and_logits(x[i: i + batch_size])
            feats.append(h.float())
            predicted.append(logits.argmax(1))
        return torch.cat(feats), torch.cat(predicted)


def evaluator_dir(ds) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in ds.name)
    return cache_dir() / "evaluators" / f"{safe}-{ds.checksum[:16]}"


def load_evaluator(ds, data_dir: str | None = None) -> Evaluator:
    """The cached evaluator network of this dataset (by content checksum). It is trained by the application, before
    a generative run or its evaluation (genforge.training.load_or_train_evaluator, with the same arguments: data_dir
    is where the dataset's files are, which only its training reads)."""
    target = evaluator_dir(ds)
    if not (target / rundir.WEIGHTS).is_file():
        raise GenforgeError(f"no evaluator network for {ds.name} in {target}: genforge trains it before a generative "
                            f"run or its evaluation (genforge.training.load_or_train_evaluator)")
    _, _, model = rundir.load_model(target)
    digest = hashlib.sha256((target / rundir.WEIGHTS).read_bytes()).hexdigest()[:16]
    accuracy = rundir.read_json(target / "summary.json").get("test_accuracy", float("nan"))
    return Evaluator(model.float().eval(), digest, accuracy, target)
