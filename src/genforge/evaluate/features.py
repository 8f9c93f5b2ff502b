"""The evaluator network: a genforge classifier trained on the dataset's own train split, whose penultimate
features the generator metrics (FD, KID, precision/recall) are computed on.

ImageNet Inception is meaningless on 28x28 grayscale (and its weights cannot be downloaded offline), so the
feature space is a classifier of the same data. It is trained once per dataset (by content checksum) and
cached; every score records the hash of its weights, so two numbers are comparable only when the hashes match.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from genforge.data.idx_datasets import cache_dir

# the fashion-cnn-fast recipe, wider at the end: 128-d features, ~92% on Fashion-MNIST in about a minute of CPU
EVALUATOR_OVERRIDES = ["model={kind: fastcnn, channels: [32, 64, 128]}", "train.epochs=3",
                       "train.batch_size=256", "train.lr=0.004", "train.label_smoothing=0.1", "data.val_fraction=0.05"]


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


def train_evaluator(ds, data_dir: str | None = None, quiet: bool = True, overrides: list[str] = ()) -> Path:
    """Train the evaluator of `ds` into the cache (overrides: a cheaper recipe for tests). Trained in a temp dir
    beside the cache entry, then renamed: a crash never leaves half an evaluator."""
    from genforge import rundir
    from genforge.config import load_config
    from genforge.train.loop import train

    target = evaluator_dir(ds)
    cfg = load_config("fashion-cnn-fast", [f"data.name={ds.name}", *EVALUATOR_OVERRIDES, *overrides])
    cfg.name, cfg.data.data_dir = "evaluator", data_dir
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        run = rundir.create_run(tmp, cfg.name, cfg)
        train(cfg, run, quiet=quiet)
        try:
            run.rename(target)
        except OSError:  # another process cached one first: keep theirs
            if not (target / rundir.WEIGHTS).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_evaluator(ds, data_dir: str | None = None, quiet: bool = True) -> Evaluator:
    """The cached evaluator for this dataset (by content checksum); trained on first use (quiet: log lines)."""
    from genforge import rundir

    target = evaluator_dir(ds)
    if not (target / rundir.WEIGHTS).is_file():
        print(f"training the evaluator network for {ds.name} (once; cached in {target})", file=sys.stderr)
        train_evaluator(ds, data_dir, quiet)
    _, _, model = rundir.load_model(target)
    digest = hashlib.sha256((target / rundir.WEIGHTS).read_bytes()).hexdigest()[:16]
    accuracy = rundir.read_json(target / "summary.json").get("test_accuracy", float("nan"))
    return Evaluator(model.float().eval(), digest, accuracy, target)
