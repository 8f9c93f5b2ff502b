"""Training as the application runs it: the task of the config's model kind, looked up in the registry and handed to
the one loop (train/loop.py), and the evaluator network a generative run is scored in, trained into the cache before
the run starts (once per dataset; evaluate/features.py only loads it)."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from genforge import rundir
from genforge.config import RunConfig, load_config
from genforge.errors import GenforgeError
from genforge.evaluate.features import Evaluator, evaluator_dir, load_evaluator
from genforge.models.catalogue import KINDS
from genforge.registry import task_of
from genforge.tasks.base import Task
from genforge.train import distributed, loop

# the fashion-cnn-fast recipe, wider at the end: 128-d features, ~92% on Fashion-MNIST in about a minute of CPU
EVALUATOR_OVERRIDES = ["model={kind: fastcnn, channels: [32, 64, 128]}", "train.epochs=3",
                       "train.batch_size=256", "train.lr=0.004", "train.label_smoothing=0.1", "data.val_fraction=0.05"]


def train(cfg: RunConfig, run_dir: Path, resume: bool = False, quiet: bool = False,
          fold: tuple[int, int] | None = None, init: Callable[[torch.nn.Module], None] | None = None,
          on_step: Callable[[object, int, int], None] | None = None,
          on_epoch: Callable[[dict], None] | None = None, reports_per_epoch: int = 1) -> dict:
    """Train `cfg` into `run_dir` (created by rundir.create_run) and return the summary: the loop
    (genforge.train.loop.train, which documents the arguments) with the task of cfg.model.kind, once the evaluator
    network of a generative run's dataset is in the cache."""
    task = scored(task_of(cfg.model.kind))
    if fold is not None and not task.cross_validation:
        kinds = ", ".join(kind for kind in KINDS if task_of(kind).cross_validation)
        raise GenforgeError(f"cross-validation scores each fold by its validation accuracy: it takes model.kind "
                            f"{kinds}, not {cfg.model.kind}")
    dataset = _evaluated_dataset(task, cfg, quiet) if fold is None else None
    return loop.train(cfg, run_dir, task=task, dataset=dataset, resume=resume, quiet=quiet, fold=fold, init=init,
                      on_step=on_step, on_epoch=on_epoch, reports_per_epoch=reports_per_epoch)


def scored(task: Task) -> Task:
    """The task as the application runs it: a generator's is scored by an evaluator network trained on first use."""
    return task.scored_by(load_or_train_evaluator) if task.needs_evaluator else task


def _evaluated_dataset(task: Task, cfg: RunConfig, quiet: bool):
    """A generative run's data, loaded here (the loop trains on it) to train its dataset's evaluator network before
    the run starts rather than in its first validation or its test; None for the other runs. Under torch.distributed
    too: a training inside the process group would leave it, so the task trains the evaluator where it first needs
    it (rank 0's test evaluation, once the group is left)."""
    if not task.needs_evaluator or distributed.world().size > 1:
        return None
    ds = task.dataset(cfg, quiet=quiet)
    if getattr(ds, "is_image", False):  # other data: the task refuses it, as it would without an evaluator
        ensure_evaluator(ds, cfg.data.data_dir)
    return ds


def ensure_evaluator(ds, data_dir: str | None = None, quiet: bool = True) -> Path:
    """The cache entry of the evaluator of `ds` (by content checksum), trained first when the cache has none."""
    target = evaluator_dir(ds)
    if not (target / rundir.WEIGHTS).is_file():
        print(f"training the evaluator network for {ds.name} (once; cached in {target})", file=sys.stderr)
        train_evaluator(ds, data_dir, quiet)
    return target


def load_or_train_evaluator(ds, data_dir: str | None = None, quiet: bool = True) -> Evaluator:
    """The evaluator network of `ds`, trained on first use (quiet: log lines instead of a progress bar)."""
    ensure_evaluator(ds, data_dir, quiet)
    return load_evaluator(ds, data_dir)


def train_evaluator(ds, data_dir: str | None = None, quiet: bool = True, overrides: list[str] = ()) -> Path:
    """Train the evaluator of `ds` into the cache (overrides: a cheaper recipe for tests). Trained in a temp dir
    beside the cache entry, then renamed: a crash never leaves half an evaluator."""
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
