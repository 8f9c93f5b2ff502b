"""The interface every task implements, with the defaults most tasks share.

Module-level imports stay light (the registry imports the tasks, and config imports the registry): what a method
needs from the step functions, the evaluation or the reports, it imports when it runs."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from genforge.data import labelled_subset, load_dataset, select_classes, split_validation, stratified_kfold
from genforge.data.images import light_border
from genforge.errors import GenforgeError
from genforge.models.catalogue import KINDS
from genforge.onnx.parts import Part
from genforge.tasks.verb import array_inputs, input_tensor
from genforge.train.device import usable_cores


@dataclass
class Prepared:
    """What the loop trains on: the task's data cut into (inputs, targets) tensors, and how to build the model."""
    ds: object  # what validate, test and report read (data.Dataset for the image and tabular tasks)
    x: torch.Tensor  # training inputs, on the device
    y: torch.Tensor  # training targets, on the device
    x_val: torch.Tensor
    y_val: torch.Tensor
    input_shape: tuple[int, ...]  # what build_model gets
    num_classes: int
    mean: torch.Tensor  # normalization statistics of the training inputs (classifiers' first layer)
    std: torch.Tensor
    meta: dict  # meta.json: what load_run needs beyond config.yaml, and the data's provenance
    is_image: bool = False
    model_config: object = None  # the model config with what the data decides filled in (None: as given)


def normalization_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (images, in 0-1) or per-feature statistics of the training split."""
    if x.ndim == 4:
        flat = x.float().div(255).transpose(0, 1).reshape(x.shape[1], -1)  # (C, N*H*W)
        return flat.mean(1)[:, None, None], flat.std(1)[:, None, None]  # (C, 1, 1)
    return x.float().mean(0), x.float().std(0)  # (D,)


class Task:
    name: str  # recorded in meta.json and the served model's card
    verbs: tuple[str, ...]  # what `serve` offers for the kind (and `predict`, for "classify")
    parts: tuple[Part, ...]  # the ONNX parts an export holds, the main one (classifier, generator, decoder) last
    divergence_hint = "lower train.lr or set train.grad_clip=1.0"  # said when training diverges
    cross_validation = False  # `genforge cv` scores its folds (by validation accuracy)
    needs_evaluator = False  # scored in an evaluator network's features (generators: scored_by, evaluate/features.py)
    structured_pruning = False  # `compress --prune --structured` can remove whole channels
    int8_method = "static"  # what `compress --quantize int8` does without --method: calibrated activation ranges
    tune_metric = ("val_loss", "min")  # what `genforge tune` ranks and prunes trials by: metrics.jsonl key, direction
    reads_strings = False  # its inputs are strings (`explain --text`), not arrays

    def rate_unit(self, cfg) -> tuple[str, int]:
        """What the progress bar counts a second (its unit, and how many of them one training item holds)."""
        return "img", 1

    def dataset(self, cfg, name: str | None = None, quiet: bool = True):
        """The run's data (or the dataset `name`, e.g. `evaluate --data`), loaded and cleaned."""
        name = name or cfg.data.name
        # the run's image size resizes any folder to what the model reads; a built-in dataset has its own fixed shape
        size = cfg.data.image_size if name.startswith("imagefolder:") else None
        ds = load_dataset(name, cfg.data.data_dir, seed=cfg.seed, progress=not quiet, image_size=size)
        ds = select_classes(ds, cfg.data.classes) if cfg.data.classes else ds
        if cfg.data.test_subset:  # the same dataset (its checksum too), fewer of its test images
            n = cfg.data.test_subset
            ds = replace(ds, test_x=ds.test_x[:n], test_y=ds.test_y[:n])
        return ds

    def prepare(self, cfg, ds, device: torch.device, fold: tuple[int, int] | None = None) -> Prepared:
        """Split the data (a validation share of train, or fold k of a stratified k-fold), put the training split on
        the device, and compute what the model is built with. The image and tabular tasks share this."""
        spec = KINDS[cfg.model.kind]
        if not hasattr(ds, "train_x"):
            raise GenforgeError(f"model.kind={cfg.model.kind} trains on images or features, not on {ds.name}")
        if spec.image_only and not ds.is_image:
            tabular = ", ".join(kind for kind, s in KINDS.items() if not s.image_only and s.family == spec.family)
            raise GenforgeError(f"model.kind={cfg.model.kind} needs images but {ds.name} is tabular"
                                + (f"; use one of: {tabular}" if tabular else ""))
        pool = torch.arange(len(ds.train_y))  # the labelled images: all, or N per class (data.labels_per_class)
        if cfg.data.labels_per_class:
            pool = labelled_subset(ds.train_y, cfg.data.labels_per_class, cfg.seed, ds.classes)
        labels = ds.train_y[pool]
        if fold is None:
            train_idx, val_idx = split_validation(len(labels), cfg.data.val_fraction, cfg.seed, labels)
        else:
            train_idx, val_idx = stratified_kfold(labels, fold[1], cfg.seed)[fold[0]]
        train_idx, val_idx = pool[train_idx], pool[val_idx]
        if cfg.data.train_subset:
            train_idx = train_idx[: cfg.data.train_subset]
        x = ds.train_x[train_idx]
        mean, std = normalization_stats(x)
        meta = {"dataset": ds.name, "source": ds.source, "checksum": ds.checksum, "classes": ds.classes,
                "input_shape": list(ds.input_shape), "norm_shape": list(mean.shape), "task": self.name,
                "n_train": len(train_idx), "n_val": len(val_idx)}
        if ds.is_image and ds.input_shape[0] == 1:  # what predict and serve invert a grayscale upload to match
            meta["light_background"] = light_border(x.numpy())
        return Prepared(ds, x.to(device), ds.train_y[train_idx].to(device), ds.train_x[val_idx],
                        ds.train_y[val_idx], tuple(ds.input_shape), len(ds.classes), mean, std, meta, ds.is_image)

    def check_fits(self, ds, meta: dict) -> None:
        """`evaluate --data`: refuse a dataset the run's model cannot read."""
        if tuple(ds.input_shape) != tuple(meta["input_shape"]) or len(ds.classes) != len(meta["classes"]):
            raise GenforgeError(f"{ds.name} (shape {tuple(ds.input_shape)}, {len(ds.classes)} classes) does not fit "
                                f"this model (shape {tuple(meta['input_shape'])}, {len(meta['classes'])})")

    def heldout(self, run, n: int, seed: int, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
        """n random items of the run's data (`split`), raw model inputs with their targets: export checks and
        calibration batches."""
        ds = self.dataset(run.config)
        x, y = (ds.test_x, ds.test_y) if split == "test" else (ds.train_x, ds.train_y)
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
        return x[idx], y[idx]

    def step(self, model: nn.Module, cfg, steps_per_epoch: int, autocast: bool, channels_last: bool):
        """The step function (train/steps.py) that owns the optimizers of one run."""
        raise NotImplementedError

    def validate(self, model, x: torch.Tensor, y: torch.Tensor, ds, cfg) -> dict:
        """Cheap held-out metrics after each epoch; "loss", when there is one, drives early stopping."""
        return {}

    def after_training(self, model, data: Prepared) -> dict:
        """A last fit with the trained weights (a forecaster's intervals on the validation windows), before the test;
        what it returns goes into summary.json."""
        return {}

    def on_evaluation(self, model, run_dir: Path, epoch: int, cfg) -> None:
        """Side outputs at each evaluation (a generator's sample grid)."""
    def test(self, model, ds, cfg) -> dict:
        """The final evaluation: the function training ends with and `genforge evaluate` calls."""
        raise NotImplementedError

    def headline(self, result: dict) -> dict:
        """The few numbers of `test`'s result that go into summary.json."""
        raise NotImplementedError

    def report(self, run_dir: Path, model, ds, result: dict, summary: dict, extra=()) -> Path:
        """Plots and report.html, with extra (title, html) sections."""
        raise NotImplementedError

    def print_evaluation(self, out, name: str, result: dict) -> None:
        """`genforge evaluate`'s console view of `test`'s result (out: a rich Console)."""
        raise NotImplementedError

    def part_example(self, run, part: Part, n: int, seed: int, split: str) -> tuple[torch.Tensor, ...] | None:
        """n inputs of an exported part whose inputs are the task's own (onnx/export.part_inputs), or None for the
        usual ones: held-out data (heldout), or noise for latents."""
        return None

    def export_parts(self, model: nn.Module) -> tuple[Part, ...]:
        """The parts this model exports (a model's options may add one)."""
        return self.parts

    def inference_module(self, model: nn.Module) -> nn.Module:
        """What the kind ships and runs at inference: what compression prunes, counts and times."""
        return model

    def onnx_threads(self) -> int:
        """ONNX Runtime threads per call when served: every core by default; a worker of `genforge serve
        --workers N` its share (GENFORGE_SERVE_THREADS, set by the supervisor: cores // N)."""
        share = os.environ.get("GENFORGE_SERVE_THREADS", "")
        if share.isascii() and share.isdigit() and int(share) > 0:  # isdigit alone: '²' too, which int() refuses
            return int(share)
        return usable_cores()

    def warm_up(self, served) -> None:
        """One call of each serving verb on dummy data (served: serve.adapters.ServedModel)."""
        raise NotImplementedError

    def served_verbs(self, served) -> tuple:
        """The verbs a served run of this task answers: those of `verbs` it is offered (Verb.offered)."""
        return tuple(verb for verb in self.verbs if verb.offered(served))

    def request_inputs(self, served, values, fields: dict) -> np.ndarray:
        """A classify request's inputs (JSON lists, or an array an upload or a tensor made) -> the (N, *input_shape)
        rows the model reads, checked (RequestError): images or feature vectors here."""
        return array_inputs(values, served.input_shape, fields["range"])

    def input_tensor(self, served) -> dict:
        """The classify input as an Open Inference Protocol tensor."""
        return input_tensor(served)
