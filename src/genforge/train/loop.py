"""The one training loop, handed its task (tasks/: the data, the step function, validation, the test and the report)
by the application (genforge.training). The loop does the rest: batching, validation, early stopping, interrupts and
the time limit, read top to bottom in _loop. The checkpoint, the resume and the non-finite guard's rollback are in
train/checkpoint.py; what the run says (metrics.jsonl, log lines, the progress bar, the trackers) in
train/journal.py."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from genforge import rundir, track
from genforge.config import RunConfig, TrainConfig
from genforge.errors import GenforgeError
from genforge.models.catalogue import build_model
from genforge.train import distributed
from genforge.train.checkpoint import Checkpoint, Diverged, LoopState
from genforge.train.device import (
    pick_device,
    pick_threads,
    restored_torch_settings,
    seed_everything,
    use_bf16,
    use_channels_last,
)
from genforge.train.journal import Journal
from genforge.train.privacy import Privacy, public_normalization
from genforge.train.transfer import Transfer, start_transfer


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: a checkpoint was written; the run can be resumed."""


class Stop(Exception):
    """Raised by on_epoch to end the run after this epoch (a tuning trial that is pruned): the epoch's weights and a
    summary.json with `status` are written, then Stop reaches the caller."""

    def __init__(self, status: str, message: str = ""):
        super().__init__(message or status)
        self.status = status


WITHIN_EPOCH_VAL = 1000  # validation items of a report within an epoch: a third of fashion-cnn-fast's split, a third
# of the time (0.7 s for 3,000 on one thread); every trial reports on the same items at the same point


@dataclass
class Run:
    """What the loop trains with, built once by _setup."""

    cfg: RunConfig  # as trained: with what the data decided (an image folder's size, a forecaster's horizon)
    run_dir: Path
    task: object  # tasks.base.Task
    data: object  # tasks.base.Prepared: the training split on the device, the validation split
    device: torch.device
    world: distributed.World
    step: object  # the step function (train/steps.py): it owns the model and its optimizers
    transfer: Transfer
    privacy: Privacy | None
    epochs: int  # train.epochs, or the one epoch of a baseline that has nothing to train
    batch_size: int  # the global batch
    steps_per_epoch: int  # the ragged last batch is dropped: BatchNorm needs more than one sample
    on_step: Callable[[object, int, int], None] | None = None
    on_epoch: Callable[[dict], None] | None = None
    reports_per_epoch: int = 1
    within: dict[int, int] = field(default_factory=dict)  # batch -> k: after it, k R-ths of the epoch are done

    @property
    def ds(self):
        return self.data.ds  # what validate, test and report read

    @property
    def shard(self) -> int:
        return self.batch_size // self.world.size  # each rank's slice of every batch

    @property
    def total(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def keep_best(self) -> bool:
        return self.cfg.train.early_stopping is not None and len(self.data.x_val) > 0


@dataclass
class _Epoch:
    """The epoch under way: its metric sums (the train_* of its record are their means) and why it ended early."""

    start: float  # perf_counter at its start, or at its last checkpoint: state.train_seconds holds the time before
    sums: dict[str, float] = field(default_factory=dict)
    count: int = 0  # applied updates
    seen: int = 0  # training items, over every rank
    out_of_time: bool = False  # train.max_seconds reached
    spent: str | None = None  # the privacy budget is spent: why

    def clock(self, state: LoopState) -> None:
        """Add the time since `start` to state.train_seconds (before a checkpoint)."""
        now = time.perf_counter()
        state.train_seconds += now - self.start
        self.start = now

    def elapsed(self, state: LoopState) -> float:
        return state.train_seconds + time.perf_counter() - self.start

    def add(self, metrics: dict[str, float], items: int) -> float:
        """Count an applied update of `items` training items; the items per second of the epoch so far."""
        self.count, self.seen = self.count + 1, self.seen + items
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        return self.seen / max(time.perf_counter() - self.start, 1e-9)


@contextmanager
def _interrupt_flag():
    """SIGINT/SIGTERM set a flag that the loop checks between steps, so a checkpoint is never torn."""
    flag = {"signal": None}
    handler = lambda signum, _frame: flag.__setitem__("signal", signum)  # noqa: E731
    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: no handlers, Ctrl-C behaves as usual
        pass
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of an epoch depends only on (seed, epoch): resuming mid-epoch recreates it."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def train(cfg: RunConfig, run_dir: Path, task, *, dataset=None, resume: bool = False, quiet: bool = False,
          fold: tuple[int, int] | None = None, init: Callable[[torch.nn.Module], None] | None = None,
          on_step: Callable[[object, int, int], None] | None = None,
          on_epoch: Callable[[dict], None] | None = None, reports_per_epoch: int = 1) -> dict:
    """Train `cfg` into `run_dir` (created by rundir.create_run) the way `task` trains its kind, and return the
    summary. The application (genforge.training.train) looks the task up and hands it over: the loop names no kind.

    dataset: the task's data for cfg, already loaded (task.dataset), or None to load it here.
    fold=(k, folds): cross-validation; fold k of a stratified k-fold split of train is the validation set.
    init(model): called on the freshly built model before training (and before a resume restores it), to start
    from given weights; fine-tuning a pruned model uses it.
    on_step(step, t, total): called after each applied update t of total (gradual pruning re-masks weights there);
    when it has state_dict/load_state_dict, its state is checkpointed and restored with the step's.
    on_epoch(record): called with each epoch's metrics.jsonl record once it is checkpointed; it may raise Stop.
    reports_per_epoch R > 1: on_epoch is also called R - 1 times within each epoch, after the batches that end each
    R-th of it, with the validation metrics of that moment on the first WITHIN_EPOCH_VAL validation items, `epoch` the
    fraction done (1.25: a quarter into the second) and `partial` True; these records are not logged. A tuning
    pruner gets R decision points per epoch.

    The process-wide torch settings the run changes (threads, deterministic algorithms) are restored on return.
    The trackers the config names (`track`) follow the run directory: metrics after each epoch's checkpoint, the
    report at the end.

    Under torch.distributed (a torchrun launch, train/distributed.py) every rank calls train with the same config and
    run directory: each trains on its shard of every batch (train.batch_size is the global batch), rank 0 alone writes
    the run directory, and the group is left once training ends, before rank 0's test evaluation and report."""
    w = distributed.world()
    # before the data: a missing package fails at once
    tracking = track.for_training(cfg, run_dir) if w.is_main else track.Tracking(run_dir, [])
    journal = Journal(run_dir, quiet, w.is_main, tracking)
    try:
        with restored_torch_settings():
            run = _setup(cfg, run_dir, task, dataset, fold, init, resume, journal)
            run.on_step, run.on_epoch, run.reports_per_epoch = on_step, on_epoch, reports_per_epoch
            run.within = _within(run)
            summary = _train(run, resume, fold, journal)
    except BaseException as e:
        tracking.close("KILLED" if isinstance(e, (Interrupted, KeyboardInterrupt, Stop)) else "FAILED")
        raise
    tracking.finish()
    return summary


def _train(run: Run, resume: bool, fold: tuple[int, int] | None, journal: Journal) -> dict:
    state = LoopState()
    ckpt = Checkpoint(run.run_dir, run.step, state, run.cfg, run.privacy, run.on_step, run.task.divergence_hint,
                      say=journal.line)
    if resume:
        _resume(ckpt, journal, run.run_dir)
    else:
        ckpt.save()  # the initial state is the first rollback target
    try:
        _loop(run, state, ckpt, journal)
    except (Diverged, Stop) as e:  # the last good weights (after a rollback) or this epoch's: usable like any run's
        if run.world.is_main:
            _save_stopped(run, state, getattr(e, "status", "diverged"))
        raise
    distributed.leave()  # the test evaluation and report are rank 0's alone: no peer waits on it in a collective
    if not run.world.is_main:
        return _summary(run.cfg, run.ds, state)
    model = run.step.eval_model()
    if run.keep_best:  # early stopping keeps the best validation epoch, not the last one
        ckpt.load_best(model)
    if fold is not None:
        accuracy = run.task.validate(model, run.data.x_val, run.data.y_val, run.ds, run.cfg)["acc"]
        return finish_fold(run.cfg, run.run_dir, model, accuracy, run.ds, state, fold)
    fitted = {**run.task.after_training(model, run.data), **(run.privacy.summary() if run.privacy is not None else {}),
              **run.transfer.summary()}
    if run.privacy is not None:
        run.privacy.close()
    return finish(run.cfg, run.run_dir, model, run.ds, run.task, state, fitted=fitted)


def _resume(ckpt: Checkpoint, journal: Journal, run_dir: Path) -> None:
    if not ckpt.exists():
        raise GenforgeError(f"{run_dir} has no checkpoint to resume from; start a new run instead")
    ckpt.restore(ckpt.load(), with_rng=True)
    state = ckpt.state
    journal.resumed(state.step)
    journal.line(f"resumed at epoch {state.epoch + 1}, batch {state.batch}, step {state.step}")


def _loop(run: Run, state: LoopState, ckpt: Checkpoint, journal: Journal) -> None:
    """Epochs of batches until train.epochs, early stopping, the time limit or the privacy budget ends the run."""
    tcfg = run.cfg.train
    with _interrupt_flag() as interrupt, journal.showing(run.total, state.step):
        while state.epoch < run.epochs:
            epoch = _Epoch(time.perf_counter())
            run.transfer.epoch(run.step, state.epoch)  # train.unfreeze_epoch
            order = _epoch_order(len(run.data.x), run.cfg.seed, state.epoch).to(run.device)
            for b in range(state.batch, run.steps_per_epoch):
                _train_batch(run, state, ckpt, journal, epoch, order, b)
                if tcfg.checkpoint_every and state.step % tcfg.checkpoint_every == 0:
                    epoch.clock(state)
                    ckpt.save()
                interrupted, epoch.out_of_time = distributed.any_rank(  # every rank stops at the same step
                    interrupt["signal"] is not None,
                    bool(tcfg.max_seconds and epoch.elapsed(state) >= tcfg.max_seconds))
                if interrupted:
                    epoch.clock(state)
                    ckpt.save()
                    raise Interrupted(f"interrupted at step {state.step}; resume with: "
                                      f"genforge train --resume {run.run_dir}")
                if epoch.out_of_time:
                    break
                if run.privacy is not None and (spent := run.privacy.exhausted()):
                    epoch.spent = spent
                    break
                if (k := run.within.get(state.batch)) is not None:
                    _report_within(run, state, k)
            if _end_epoch(run, state, ckpt, journal, epoch):
                break


def _train_batch(run: Run, state: LoopState, ckpt: Checkpoint, journal: Journal, epoch: _Epoch,
                 order: torch.Tensor, b: int) -> None:
    """Batch b of the epoch's order: one step, then the non-finite guard, or the sums and the progress bar."""
    start = b * run.batch_size + run.world.rank * run.shard  # rank r's contiguous slice of batch b of the same order
    idx = (order[start : start + run.shard] if run.privacy is None
           else run.privacy.draw(run.cfg.seed, state.epoch, b, run.device))  # DP-SGD: Poisson batches
    metrics = run.step(run.data.x[idx], run.data.y[idx])
    if run.privacy is not None:
        run.privacy.spent_step()
    state.batch, state.step = b + 1, state.step + 1
    if metrics is None:  # the step refused a non-finite (or unhealthy) update
        ckpt.bad_step()
        return
    state.nonfinite = 0
    if run.on_step is not None:
        run.on_step(run.step, state.step, run.total)
    rate = epoch.add(metrics, len(idx) * run.world.size)
    unit, per_item = run.task.rate_unit(run.cfg)
    journal.step(f"epoch {state.epoch + 1}/{run.epochs}", metrics, rate * per_item, unit)


def _report_within(run: Run, state: LoopState, k: int) -> None:
    """on_epoch within the epoch, k R-ths into it: the validation metrics on the first WITHIN_EPOCH_VAL items."""
    distributed.average_buffers(run.step.model)
    x_val, y_val = run.data.x_val[:WITHIN_EPOCH_VAL], run.data.y_val[:WITHIN_EPOCH_VAL]
    val = run.task.validate(run.step.eval_model(), x_val, y_val, run.ds, run.cfg)
    run.on_epoch({"step": state.step, "epoch": state.epoch + k / run.reports_per_epoch, "partial": True,
                  **{f"val_{key}": v for key, v in val.items()}})


def _end_epoch(run: Run, state: LoopState, ckpt: Checkpoint, journal: Journal, epoch: _Epoch) -> bool:
    """Validate, log and checkpoint the epoch (the best weights too, with early stopping); True when the run stops
    after it."""
    tcfg = run.cfg.train
    distributed.average_buffers(run.step.model)  # every rank validates the same model
    sums, count = distributed.mean_over_ranks(epoch.sums, epoch.count)
    val = run.task.validate(run.step.eval_model(), run.data.x_val, run.data.y_val, run.ds, run.cfg) \
        if len(run.data.x_val) else {}
    epoch.clock(state)
    if run.world.is_main:
        run.task.on_evaluation(run.step.eval_model(), run.run_dir, state.epoch + 1, run.cfg)
    record = {"step": state.step, "epoch": state.epoch + 1, "train_seconds": state.train_seconds,
              **{f"train_{k}": v / max(count, 1) for k, v in sums.items()},
              **{f"val_{k}": v for k, v in val.items()}, "skipped_steps": state.skipped}
    if run.privacy is not None:
        record["epsilon"] = run.privacy.epsilon()
        journal.describe(f"epoch {state.epoch + 1}/{run.epochs} ε {record['epsilon']:.2f}")
    journal.epoch(record)
    state.epoch, state.batch = state.epoch + 1, 0
    stop = _early_stop(state, val, tcfg.early_stopping)
    if run.keep_best and run.world.is_main and state.best_epoch == state.epoch:  # before the checkpoint
        ckpt.save_best(run.step.eval_model())
    ckpt.save()
    journal.sync()
    if run.on_epoch is not None:
        run.on_epoch(record)
    reason = (f"early stopping: no validation improvement for {tcfg.early_stopping} epochs" if stop
              else f"time limit: stopped after {state.train_seconds:.1f} s (train.max_seconds)" if epoch.out_of_time
              else epoch.spent)
    if reason:
        journal.line(reason)
    return bool(reason)


def _early_stop(state: LoopState, val: dict, patience: int | None) -> bool:
    if "loss" not in val:  # nothing held out, or a generator's FD only: it ranks tune trials, not epochs
        return False
    if state.best_val is None or val["loss"] < state.best_val:
        state.best_val, state.best_epoch, state.bad_epochs = val["loss"], state.epoch, 0
    else:
        state.bad_epochs += 1
    return patience is not None and state.bad_epochs >= patience


def _check_world(tcfg: TrainConfig, w: distributed.World) -> None:
    if w.size > 1 and tcfg.privacy is not None:
        raise GenforgeError(f"train.privacy under {w.size} processes: Opacus' distributed mode is not wired into "
                            f"genforge; train privately in one process (without --nproc or torchrun)")
    if w.size > 1 and tcfg.batch_size % w.size:
        raise GenforgeError(f"train.batch_size={tcfg.batch_size} is the global batch, split evenly over the "
                            f"{w.size} processes: make it a multiple of {w.size}")


def _setup(cfg: RunConfig, run_dir: Path, task, dataset, fold: tuple[int, int] | None,
           init: Callable[[torch.nn.Module], None] | None, resume: bool, journal: Journal) -> Run:
    """The device, the seeds, the data and the model (from init's weights or train.init_from's), in the order a
    resumed run rebuilds them; meta.json and env.json."""
    tcfg, w = cfg.train, distributed.world()
    _check_world(tcfg, w)
    device = distributed.device_of(pick_device(tcfg.device))
    if w.size == 1:
        threads, threads_why = pick_threads(tcfg.threads, device)
        torch.set_num_threads(threads)
    else:  # a torchrun launch gives each rank its own OMP_NUM_THREADS
        if tcfg.threads:
            torch.set_num_threads(tcfg.threads)
        threads_why = f"{torch.get_num_threads()} (one rank of {w.size})"
    seed_everything(cfg.seed, cfg.deterministic)
    ds = dataset if dataset is not None else task.dataset(cfg, quiet=journal.quiet)
    cfg, data = _prepare(cfg, run_dir, task, ds, device, fold, w)
    model = _build(cfg, data, device, init)
    transfer = start_transfer(cfg, model, data.meta["classes"], run_dir, resume, say=journal.line)  # init_from, freeze
    channels_last = use_channels_last(tcfg, device, data.is_image)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    distributed.broadcast_parameters(model)  # every rank starts from rank 0's weights
    if w.rank > 0:  # rank 0 keeps the stream one process would draw; the others draw their own (noise, dropout)
        seed_everything(cfg.seed + 1_000_003 * w.rank, cfg.deterministic)
    bf16 = use_bf16(tcfg, device)
    if w.is_main:
        rundir.write_json(run_dir / "meta.json", {**data.meta, **transfer.meta(), "bf16": bf16,
                                                "channels_last": channels_last})
        rundir.write_json(run_dir / "env.json", {**rundir.environment(device), "threads_why": threads_why,
                                               "world_size": w.size, "backend": w.backend})
        journal.note(f"threads: {threads_why}")  # once the data and the model are ready: a refused run says one line
    return _make_run(cfg, run_dir, task, data, device, w, model, transfer, bf16, channels_last, journal)


def _make_run(cfg: RunConfig, run_dir: Path, task, data, device: torch.device, w: distributed.World, model,
               transfer: Transfer, bf16: bool, channels_last: bool, journal: Journal) -> Run:
    """The batch size, the task's step function around the model, its parameter groups, DP-SGD's accountant."""
    tcfg = cfg.train
    bs = min(tcfg.batch_size, len(data.x))
    if w.size > 1 and bs % w.size:
        raise GenforgeError(f"the {len(data.x)} training items make a batch of {bs}, which {w.size} processes cannot "
                            f"split evenly: use fewer processes or more data")
    steps_per_epoch = len(data.x) // bs
    step = task.step(model, cfg, steps_per_epoch, autocast=bf16, channels_last=channels_last)
    epochs = tcfg.epochs
    if getattr(step, "epochs", None) is not None and epochs > step.epochs:  # a baseline: epochs would repeat
        journal.line(f"nothing to train: {step.epochs} epoch instead of train.epochs={tcfg.epochs}")
        epochs = step.epochs
    transfer.attach(step)  # parameter groups and frozen layers, before privacy wraps the optimizer
    privacy = None
    if tcfg.privacy is not None:  # DP-SGD: Poisson batches, per-sample clipping and noise, the accountant
        privacy = Privacy(step, tcfg.privacy, len(data.x), bs, epochs * steps_per_epoch, cfg.model.kind)
    return Run(cfg, run_dir, task, data, device, w, step, transfer, privacy, epochs, bs, steps_per_epoch)


def _prepare(cfg: RunConfig, run_dir: Path, task, ds, device: torch.device, fold: tuple[int, int] | None,
             w: distributed.World):
    """The task's data for the run (the training split on the device), and the config with what the data decided,
    recorded in config.yaml."""
    data = task.prepare(cfg, ds, device, fold)
    given = cfg
    chosen = getattr(data.ds, "found", {}).get("image_size")  # an image folder's most common size (series have none)
    if cfg.data.image_size is None and chosen:  # recorded, so that evaluate and predict on another folder resize it
        # to the trained size, not to that folder's own most common one
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"image_size": tuple(chosen)})})
    if data.model_config is not None and data.model_config != cfg.model:  # defaults the data decides (a horizon)
        cfg = cfg.model_copy(update={"model": data.model_config})
    if cfg != given and w.is_main:
        rundir.write_config(run_dir, cfg)
    return cfg, data


def _build(cfg: RunConfig, data, device: torch.device, init) -> torch.nn.Module:
    mean, std = data.mean, data.std
    if cfg.train.privacy is not None:  # the training data's statistics would be released with the model, unprotected
        mean, std = public_normalization(mean, data.is_image)
    model = build_model(cfg.model, data.input_shape, data.num_classes, mean, std).to(device)
    if init is not None:
        init(model)
    return distributed.sync_batchnorm(model, device)


def _within(run: Run) -> dict[int, int]:
    """batch -> k: after that batch, k R-ths of the epoch are done (a report within the epoch for on_epoch)."""
    if run.on_epoch is None or not len(run.data.x_val):
        return {}
    spe, r = run.steps_per_epoch, run.reports_per_epoch
    within = {round(k * spe / r): k for k in range(1, r)}
    within.pop(spe, None)
    within.pop(0, None)
    return within


def _save_stopped(run: Run, state: LoopState, status: str) -> None:
    """A run stopped early (diverged, or a pruned trial) keeps its weights and says why in summary.json."""
    rundir.save_weights(run.step.eval_model(), run.run_dir / rundir.WEIGHTS)
    rundir.write_json(run.run_dir / "summary.json", {"status": status, "kind": run.cfg.model.kind,
                                                   "dataset": run.ds.name, "epochs": state.epoch, "steps": state.step,
                                                   "skipped_steps": state.skipped, "rollbacks": state.rollbacks})


def _summary(cfg: RunConfig, ds, state: LoopState) -> dict:
    summary = {"status": "complete", "kind": cfg.model.kind, "dataset": ds.name,
               "train_seconds": round(state.train_seconds, 2), "epochs": state.epoch, "steps": state.step,
               "skipped_steps": state.skipped, "rollbacks": state.rollbacks}
    if state.best_epoch is not None:  # the weights saved are the best epoch's with early stopping
        keep_best = cfg.train.early_stopping is not None
        summary.update(best_epoch=state.best_epoch, best_val_loss=state.best_val,
                       weights_epoch=state.best_epoch if keep_best else state.epoch)
    return summary


def finish(cfg: RunConfig, run_dir: Path, model, ds, task, state: LoopState, fitted: dict | None = None) -> dict:
    """Final weights, the task's test evaluation, summary.json (with what the task fitted after training) and the
    report."""
    rundir.save_weights(model, run_dir / rundir.WEIGHTS)
    model = model.float().to(memory_format=torch.contiguous_format)
    result = task.test(model, ds, cfg)
    rundir.write_json(run_dir / "eval.json", result)
    summary = {**_summary(cfg, ds, state), **(fitted or {}), **task.headline(result)}
    rundir.write_json(run_dir / "summary.json", summary)
    task.report(run_dir, model, ds, result, summary)
    return summary


def finish_fold(cfg: RunConfig, run_dir: Path, model, accuracy: float, ds, state: LoopState,
                fold: tuple[int, int]) -> dict:
    """A cross-validation fold ends with its validation score and its weights (a loadable run, e.g. to ensemble the
    folds): no test evaluation, speed measurement or report, which nobody reads for a fold."""
    rundir.save_weights(model, run_dir / rundir.WEIGHTS)
    summary = {**_summary(cfg, ds, state), "fold": fold[0], "folds": fold[1], "fold_accuracy": accuracy}
    rundir.write_json(run_dir / "summary.json", summary)
    return summary
