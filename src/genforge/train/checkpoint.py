"""The run's checkpoint and what returns to it: the loop's position (LoopState), the step function's weights and
optimizers, every rank's RNG, the privacy accountant and a stateful on_step hook, saved as one safetensors file
(rundir.CHECKPOINT); the resume from it, the rollback to it when steps go non-finite, and the best epoch's weights
(rundir.BEST) that early stopping keeps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch

from genforge import rundir
from genforge.config import RunConfig
from genforge.errors import GenforgeError
from genforge.train import distributed
from genforge.train.device import rng_state, seed_everything, set_rng_state


class Diverged(GenforgeError):
    """Too many rollbacks: the run stops with its last good weights."""


@dataclass
class LoopState:
    """Where the loop is, checkpointed with the weights (a dict of these fields under "loop")."""

    epoch: int = 0  # epochs done
    batch: int = 0  # batches done of the current epoch
    step: int = 0  # batches done in all, skipped ones included
    best_val: float | None = None  # the lowest validation loss so far
    best_epoch: int | None = None  # the epoch of best_val, whose weights rundir.BEST holds with early stopping
    bad_epochs: int = 0  # epochs in a row without a better validation loss
    nonfinite: int = 0  # bad steps in a row (a good step resets it): sporadic ones are skipped, a run rolls back
    skipped: int = 0  # bad steps in all
    rollbacks: int = 0
    train_seconds: float = 0.0  # time in the loop, summed over the processes that trained this run


class Checkpoint:
    """The checkpoint of one run: read by rank 0 and sent to every rank (no shared file system needed), written by
    rank 0 alone."""

    def __init__(self, run_dir: Path, step, state: LoopState, cfg: RunConfig, privacy=None, hook=None,
                 hint: str = "", say: Callable[[str], None] = print):
        self.path, self.best_path = run_dir / rundir.CHECKPOINT, run_dir / rundir.BEST
        self.step, self.state, self.cfg, self.privacy = step, state, cfg, privacy
        # an on_step hook with state (gradual pruning's masks) is checkpointed and restored with the step's
        self.hook = hook if hasattr(hook, "state_dict") and hasattr(hook, "load_state_dict") else None
        self.hint, self.say = hint, say  # what a divergence tells the user to change; where warnings go
        self.world = distributed.world()

    def exists(self) -> bool:
        return distributed.from_main(self.path.is_file)

    def load(self) -> dict:
        return distributed.from_main(partial(rundir.load_state, self.path))

    def save(self) -> None:
        """Checkpoint the present state, unless a weight is not finite: a good checkpoint is never overwritten with
        NaN, the run rolls back to it instead."""
        if not all(torch.isfinite(p).all() for p in self.step.model.parameters()):
            self.rollback()
            return
        distributed.average_buffers(self.step.model)
        rngs = distributed.gather(rng_state())  # every rank's RNG, so a restarted group draws what it would have
        checkpoint = {"step_fn": self.step.state_dict(), "loop": asdict(self.state), "rng": rngs[0]}
        if self.world.size > 1:
            checkpoint["rng_ranks"] = rngs
        if self.privacy is not None:
            checkpoint["privacy"] = self.privacy.state_dict()
        if self.hook is not None:
            checkpoint["hook"] = self.hook.state_dict()
        if self.world.is_main:
            rundir.save_state(self.path, checkpoint)

    def restore(self, checkpoint: dict, with_rng: bool) -> None:
        """The weights and optimizers of `checkpoint`; with_rng: its loop position and RNG too (a resume)."""
        self.step.load_state_dict(checkpoint["step_fn"])
        if self.privacy is not None:
            self.privacy.load_state_dict(checkpoint["privacy"])
        if self.hook is not None and "hook" in checkpoint:
            self.hook.load_state_dict(checkpoint["hook"])
        if with_rng:
            for key, value in checkpoint["loop"].items():
                setattr(self.state, key, value)
            ranks = checkpoint.get("rng_ranks", [checkpoint["rng"]])
            w = self.world
            set_rng_state(ranks[w.rank] if len(ranks) == w.size else checkpoint["rng"])
            if len(ranks) != w.size and w.rank > 0:  # resumed with another number of processes
                seed_everything(self.cfg.seed + 1_000_003 * w.rank + self.state.step, self.cfg.deterministic)

    def rollback(self) -> None:
        """Restore the last good weights and optimizer state, keep the data position: the bad batches are skipped."""
        tcfg = self.cfg.train
        self.state.rollbacks += 1
        self.state.nonfinite = 0
        self.restore(self.load(), with_rng=False)
        if self.state.rollbacks > tcfg.max_rollbacks:
            raise Diverged(f"training diverged: {self.state.skipped} bad steps and {tcfg.max_rollbacks} rollbacks; "
                           f"the last good weights were kept; {self.hint}")
        self.say(f"warning: {tcfg.max_nonfinite} bad steps (non-finite or unhealthy); rolled back to the last "
                 f"checkpoint (rollback {self.state.rollbacks}/{tcfg.max_rollbacks})")

    def bad_step(self) -> None:
        """The non-finite guard: a step was refused; max_nonfinite of them in a row roll back."""
        self.state.skipped += 1
        self.state.nonfinite += 1
        if self.state.nonfinite >= self.cfg.train.max_nonfinite:
            self.rollback()

    def save_best(self, model: torch.nn.Module) -> None:
        rundir.save_weights(model, self.best_path)

    def load_best(self, model: torch.nn.Module) -> None:
        """The best validation epoch's weights into `model`, when early stopping kept them."""
        if self.best_path.is_file():
            rundir.load_weights(model, self.best_path)
