"""The interface every task implements, with the defaults most tasks share.

Module-level imports stay light (the registry imports the tasks, and config imports the registry): what a method
needs from the step functions, the evaluation or the reports, it imports when it runs."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from genforge.compress.parts import Part


class Task:
    name: str  # recorded in meta.json and the served model's card
    verbs: tuple[str, ...]  # what `serve` offers for the kind (and `predict`, for "classify")
    parts: tuple[Part, ...]  # the ONNX parts an export holds, the main one (classifier, generator, decoder) last
    divergence_hint = "lower train.lr or set train.grad_clip=1.0"  # said when training diverges
    cross_validation = False  # `genforge cv` scores its folds (by validation accuracy)
    structured_pruning = False  # `compress --prune --structured` can remove whole channels

    def step(self, model: nn.Module, cfg, steps_per_epoch: int, autocast: bool, channels_last: bool):
        """The step function (train/steps.py) that owns the optimizers of one run."""
        raise NotImplementedError

    def validate(self, model, x: torch.Tensor, y: torch.Tensor, ds) -> dict:
        """Cheap held-out metrics after each epoch; "loss", when there is one, drives early stopping."""
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

    def export_parts(self, model: nn.Module) -> tuple[Part, ...]:
        """The parts this model exports (a model's options may add one)."""
        return self.parts

    def inference_module(self, model: nn.Module) -> nn.Module:
        """What the kind ships and runs at inference: what compression prunes, counts and times."""
        return model

    def onnx_threads(self) -> int:
        """ONNX Runtime threads per call when served: every core by default."""
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    def warm_up(self, served) -> None:
        """One call of each serving verb on dummy data (served: serve.adapters.ServedModel)."""
        raise NotImplementedError
