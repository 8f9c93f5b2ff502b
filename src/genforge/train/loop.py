"""The one training loop. A model kind supplies its step function (train/steps.py); the loop does the rest:
batching, progress, validation, early stopping, checkpoints, resume, interrupts and the non-finite guard.

Every file of the run dir is written through rundir.write_bytes (temp file, fsync, rename, fsync of the folder),
except metrics.jsonl, which gets one appended line per epoch: rewriting the whole log each epoch would cost O(epochs)
per epoch for no gain, since a line torn by a crash is dropped when the run resumes (the atomic truncation)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from genforge import rundir, track
from genforge.config import RunConfig
from genforge.errors import GenforgeError
from genforge.models.catalogue import build_model
from genforge.registry import MODELS
from genforge.train import distributed
from genforge.train.device import (
    pick_device,
    restored_torch_settings,
    rng_state,
    seed_everything,
    set_rng_state,
    use_bf16,
    use_channels_last,
)
from genforge.train.transfer import start_transfer


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: a checkpoint was written; the run can be resumed."""


class Diverged(GenforgeError):
    """Too many rollbacks: the run stops with its last good weights."""


WITHIN_EPOCH_VAL = 1000  # validation items of a report within an epoch: a third of fashion-cnn-fast's split, a third
# of the time (0.7 s for 3,000 on one thread); every trial reports on the same items at the same point


class Stop(Exception):
    """Raised by on_epoch to end the run after this epoch (a tuning trial that is pruned): the epoch's weights and a
    summary.json with `status` are written, then Stop reaches the caller."""

    def __init__(self, status: str, message: str = ""):
        super().__init__(message or status)
        self.status = status


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


class _Log:
    """metrics.jsonl and the plain log lines: rank 0's alone under torch.distributed."""

    def __init__(self, path: Path, quiet: bool, main: bool = True):
        self.path, self.quiet, self.main = path, quiet, main

    def metrics(self, record: dict) -> None:
        if not self.main:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())  # once per epoch: the line survives a crash of the machine, not just the process

    def line(self, text: str) -> None:
        if self.quiet and self.main:
            print(text, file=sys.stderr, flush=True)


def _logged_step(line: str) -> int | None:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):  # a line torn by a crash mid-append
        return None


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop what the interrupted process logged after its last checkpoint (and a torn last line)."""
    if path.is_file():
        keep = [line for line in path.read_text().splitlines() if (logged := _logged_step(line)) is not None
                and logged <= step]
        rundir.write_text(path, "".join(line + "\n" for line in keep))


def train(cfg: RunConfig, run_dir: Path, resume: bool = False, quiet: bool = False,
          fold: tuple[int, int] | None = None, init: Callable[[torch.nn.Module], None] | None = None,
          on_step: Callable[[object, int, int], None] | None = None,
          on_epoch: Callable[[dict], None] | None = None, reports_per_epoch: int = 1) -> dict:
    """Train `cfg` into `run_dir` (created by rundir.create_run) and return the summary.

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
    try:
        with restored_torch_settings():
            summary = _train(cfg, run_dir, resume, quiet, fold, init, on_step, on_epoch, tracking, reports_per_epoch)
    except BaseException as e:
        tracking.close("KILLED" if isinstance(e, (Interrupted, KeyboardInterrupt, Stop)) else "FAILED")
        raise
    tracking.finish()
    return summary


def _train(cfg: RunConfig, run_dir: Path, resume: bool, quiet: bool, fold: tuple[int, int] | None,
           init: Callable[[torch.nn.Module], None] | None, on_step: Callable[[object, int, int], None] | None,
           on_epoch: Callable[[dict], None] | None, tracking: track.Tracking, reports_per_epoch: int = 1) -> dict:
    tcfg = cfg.train
    w = distributed.world()
    if w.size > 1 and tcfg.privacy is not None:
        raise GenforgeError(f"train.privacy under {w.size} processes: Opacus' distributed mode is not wired into "
                            f"genforge; train privately in one process (without --nproc or torchrun)")
    if w.size > 1 and tcfg.batch_size % w.size:
        raise GenforgeError(f"train.batch_size={tcfg.batch_size} is the global batch, split evenly over the "
                            f"{w.size} processes: make it a multiple of {w.size}")
    device = distributed.device_of(pick_device(tcfg.device))
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    seed_everything(cfg.seed, cfg.deterministic)
    task = MODELS[cfg.model.kind].task

    ds = task.dataset(cfg, quiet=quiet)
    if fold is not None and not task.cross_validation:
        scored = ", ".join(kind for kind, s in MODELS.items() if s.task.cross_validation)
        raise GenforgeError(f"cross-validation scores each fold by its validation accuracy: it takes model.kind "
                            f"{scored}, not {cfg.model.kind}")
    data = task.prepare(cfg, ds, device, fold)
    ds = data.ds
    x, y, x_val, y_val = data.x, data.y, data.x_val, data.y_val  # the training split is on the device
    given = cfg
    chosen = getattr(ds, "found", {}).get("image_size")  # an image folder's most common size (series have no found)
    if cfg.data.image_size is None and chosen:  # recorded, so that evaluate and predict on another folder resize it
        # to the trained size, not to that folder's own most common one
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"image_size": tuple(chosen)})})
    if data.model_config is not None and data.model_config != cfg.model:  # defaults the data decides (a horizon)
        cfg = cfg.model_copy(update={"model": data.model_config})
    if cfg != given and w.is_main:
        rundir.write_config(run_dir, cfg)
    mean, std = data.mean, data.std
    if tcfg.privacy is not None:  # the training data's statistics would be released with the model, unprotected
        from genforge.train.privacy import public_normalization

        mean, std = public_normalization(mean, data.is_image)
    model = build_model(cfg.model, data.input_shape, data.num_classes, mean, std).to(device)
    if init is not None:
        init(model)
    model = distributed.sync_batchnorm(model, device)
    log = _Log(run_dir / "metrics.jsonl", quiet, w.is_main)
    transfer = start_transfer(cfg, model, data.meta["classes"], run_dir, resume, say=log.line)  # init_from, freeze
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
        rundir.write_json(run_dir / "env.json", {**rundir.environment(device), "world_size": w.size,
                                               "backend": w.backend})

    bs = min(tcfg.batch_size, len(x))
    if w.size > 1 and bs % w.size:
        raise GenforgeError(f"the {len(x)} training items make a batch of {bs}, which {w.size} processes cannot "
                            f"split evenly: use fewer processes or more data")
    shard = bs // w.size  # each rank's slice of every batch
    steps_per_epoch = len(x) // bs  # drop the ragged last batch: BatchNorm needs more than one sample
    step = task.step(model, cfg, steps_per_epoch, autocast=bf16, channels_last=channels_last)
    if getattr(step, "epochs", None) is not None and tcfg.epochs > step.epochs:  # a baseline: epochs would repeat
        log.line(f"nothing to train: {step.epochs} epoch instead of train.epochs={tcfg.epochs}")
        tcfg = tcfg.model_copy(update={"epochs": step.epochs})
    transfer.attach(step)  # parameter groups and frozen layers, before privacy wraps the optimizer
    total = tcfg.epochs * steps_per_epoch
    privacy = None
    if tcfg.privacy is not None:  # DP-SGD: Poisson batches, per-sample clipping and noise, the accountant
        from genforge.train.privacy import Privacy

        privacy = Privacy(step, tcfg.privacy, len(x), bs, total, cfg.model.kind)
    # nonfinite counts the bad steps in a row (a good step resets it): sporadic bad batches are skipped, a run of
    # them rolls back. best_epoch: the epoch of best_val, whose weights rundir.BEST holds with early stopping
    state = {"epoch": 0, "batch": 0, "step": 0, "best_val": None, "best_epoch": None, "bad_epochs": 0,
             "nonfinite": 0, "skipped": 0, "rollbacks": 0, "train_seconds": 0.0}
    ckpt_path, best_path = run_dir / rundir.CHECKPOINT, run_dir / rundir.BEST
    keep_best = tcfg.early_stopping is not None and len(x_val) > 0
    # batch -> k: after that batch, k R-ths of the epoch are done (a report within the epoch for on_epoch)
    within = ({round(k * steps_per_epoch / reports_per_epoch): k for k in range(1, reports_per_epoch)}
              if on_epoch is not None and len(x_val) else {})
    within.pop(steps_per_epoch, None)
    within.pop(0, None)
    stateful_hook = hasattr(on_step, "state_dict") and hasattr(on_step, "load_state_dict")

    def load_checkpoint() -> dict:  # read by rank 0, sent to every rank: no shared file system needed
        return distributed.from_main(lambda: rundir.load_state(ckpt_path))

    def save_checkpoint() -> None:
        if not all(torch.isfinite(p).all() for p in model.parameters()):  # never overwrite a good checkpoint with NaN
            _rollback(state, tcfg, load_checkpoint, restore, log, task.divergence_hint)
            return
        distributed.average_buffers(step.model)
        rngs = distributed.gather(rng_state())  # every rank's RNG, so a restarted group draws what it would have
        checkpoint = {"step_fn": step.state_dict(), "loop": state, "rng": rngs[0]}
        if w.size > 1:
            checkpoint["rng_ranks"] = rngs
        if privacy is not None:
            checkpoint["privacy"] = privacy.state_dict()
        if stateful_hook:
            checkpoint["hook"] = on_step.state_dict()
        if w.is_main:
            rundir.save_state(ckpt_path, checkpoint)

    def restore(checkpoint: dict, with_rng: bool) -> None:
        step.load_state_dict(checkpoint["step_fn"])
        if privacy is not None:
            privacy.load_state_dict(checkpoint["privacy"])
        if stateful_hook and "hook" in checkpoint:
            on_step.load_state_dict(checkpoint["hook"])
        if with_rng:
            state.update(checkpoint["loop"])
            ranks = checkpoint.get("rng_ranks", [checkpoint["rng"]])
            set_rng_state(ranks[w.rank] if len(ranks) == w.size else checkpoint["rng"])
            if len(ranks) != w.size and w.rank > 0:  # resumed with another number of processes
                seed_everything(cfg.seed + 1_000_003 * w.rank + state["step"], cfg.deterministic)

    if resume:
        if not distributed.from_main(ckpt_path.is_file):
            raise GenforgeError(f"{run_dir} has no checkpoint to resume from; start a new run instead")
        restore(load_checkpoint(), with_rng=True)
        if w.is_main:
            _truncate_metrics(log.path, state["step"])
        log.line(f"resumed at epoch {state['epoch'] + 1}, batch {state['batch']}, step {state['step']}")
    else:
        save_checkpoint()  # the initial state is the first rollback target

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[stats]}"),
                        TimeElapsedColumn(), TimeRemainingColumn(), disable=quiet or not w.is_main, transient=False)
    try:
        with _interrupt_flag() as interrupt, progress:
            bar = progress.add_task("train", total=total, completed=state["step"], stats="")
            while state["epoch"] < tcfg.epochs:
                t_epoch = time.perf_counter()
                transfer.epoch(step, state["epoch"])  # train.unfreeze_epoch
                order = _epoch_order(len(x), cfg.seed, state["epoch"]).to(device)
                sums, count, seen, out_of_time, spent = {}, 0, 0, False, None
                for b in range(state["batch"], steps_per_epoch):
                    start = b * bs + w.rank * shard  # rank r's contiguous slice of batch b of the same order
                    idx = (order[start : start + shard] if privacy is None
                           else privacy.draw(cfg.seed, state["epoch"], b, device))
                    metrics = step(x[idx], y[idx])
                    if privacy is not None:
                        privacy.spent_step()
                    state["batch"], state["step"] = b + 1, state["step"] + 1
                    if metrics is None:
                        state["skipped"] += 1
                        state["nonfinite"] += 1
                        if state["nonfinite"] >= tcfg.max_nonfinite:
                            _rollback(state, tcfg, load_checkpoint, restore, log, task.divergence_hint)
                    else:
                        state["nonfinite"] = 0
                        if on_step is not None:
                            on_step(step, state["step"], total)
                        count, seen = count + 1, seen + len(idx) * w.size
                        for k, v in metrics.items():
                            sums[k] = sums.get(k, 0.0) + v
                        rate = seen / max(time.perf_counter() - t_epoch, 1e-9)
                        shown = " ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k != "lr")
                        progress.update(bar, advance=1, description=f"epoch {state['epoch'] + 1}/{tcfg.epochs}",
                                        stats=f"{shown} {rate:,.0f} img/s")
                    if tcfg.checkpoint_every and state["step"] % tcfg.checkpoint_every == 0:
                        state["train_seconds"] += time.perf_counter() - t_epoch
                        t_epoch = time.perf_counter()
                        save_checkpoint()
                    elapsed = state["train_seconds"] + time.perf_counter() - t_epoch
                    interrupted, out_of_time = distributed.any_rank(  # every rank stops at the same step
                        interrupt["signal"] is not None, bool(tcfg.max_seconds and elapsed >= tcfg.max_seconds))
                    if interrupted:
                        state["train_seconds"] += time.perf_counter() - t_epoch
                        save_checkpoint()
                        raise Interrupted(f"interrupted at step {state['step']}; resume with: "
                                          f"genforge train --resume {run_dir}")
                    if out_of_time:
                        break
                    if privacy is not None and (spent := privacy.exhausted()):
                        break
                    if (k := within.get(state["batch"])) is not None:
                        distributed.average_buffers(step.model)
                        val = task.validate(step.eval_model(), x_val[:WITHIN_EPOCH_VAL], y_val[:WITHIN_EPOCH_VAL], ds,
                                            cfg)
                        on_epoch({"step": state["step"], "epoch": state["epoch"] + k / reports_per_epoch,
                                  "partial": True, **{f"val_{key}": v for key, v in val.items()}})
                distributed.average_buffers(step.model)  # every rank validates the same model
                sums, count = distributed.mean_over_ranks(sums, count)
                val = task.validate(step.eval_model(), x_val, y_val, ds, cfg) if len(x_val) else {}
                state["train_seconds"] += time.perf_counter() - t_epoch
                if w.is_main:
                    task.on_evaluation(step.eval_model(), run_dir, state["epoch"] + 1, cfg)
                record = {"step": state["step"], "epoch": state["epoch"] + 1, "train_seconds": state["train_seconds"],
                          **{f"train_{k}": v / max(count, 1) for k, v in sums.items()},
                          **{f"val_{k}": v for k, v in val.items()}, "skipped_steps": state["skipped"]}
                if privacy is not None:
                    record["epsilon"] = privacy.epsilon()
                    progress.update(bar, description=f"epoch {state['epoch'] + 1}/{tcfg.epochs} "
                                                     f"ε {record['epsilon']:.2f}")
                log.metrics(record)
                log.line(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
                state["epoch"], state["batch"] = state["epoch"] + 1, 0
                stop = _early_stop(state, val, tcfg.early_stopping)
                if keep_best and w.is_main and state["best_epoch"] == state["epoch"]:  # before the checkpoint
                    rundir.save_weights(step.eval_model(), best_path)
                save_checkpoint()
                tracking.sync()  # after the checkpoint: a resume keeps every line a tracker was given
                if on_epoch is not None:
                    on_epoch(record)
                if stop:
                    log.line(f"early stopping: no validation improvement for {tcfg.early_stopping} epochs")
                    break
                if out_of_time:
                    log.line(f"time limit: stopped after {state['train_seconds']:.1f} s (train.max_seconds)")
                    break
                if spent:
                    log.line(spent)
                    break
    except (Diverged, Stop) as e:  # the last good weights (after a rollback) or this epoch's: usable like any run's
        if not w.is_main:
            raise
        rundir.save_weights(step.eval_model(), run_dir / rundir.WEIGHTS)
        rundir.write_json(run_dir / "summary.json", {"status": getattr(e, "status", "diverged"), "kind": cfg.model.kind,
                                                   "dataset": ds.name, "epochs": state["epoch"],
                                                   "steps": state["step"], "skipped_steps": state["skipped"],
                                                   "rollbacks": state["rollbacks"]})
        raise
    distributed.leave()  # the test evaluation and report are rank 0's alone: no peer waits on it in a collective
    if not w.is_main:
        return _summary(cfg, ds, state)
    model = step.eval_model()
    if keep_best and best_path.is_file():  # early stopping keeps the best validation epoch, not the last one
        rundir.load_weights(model, best_path)
    if fold is not None:
        return finish_fold(cfg, run_dir, model, task.validate(model, x_val, y_val, ds, cfg)["acc"], ds, state, fold)
    fitted = {**task.after_training(model, data), **(privacy.summary() if privacy is not None else {}),
              **transfer.summary()}
    if privacy is not None:
        privacy.close()
    return finish(cfg, run_dir, model, ds, task, state, fitted=fitted)


def _early_stop(state: dict, val: dict, patience: int | None) -> bool:
    if "loss" not in val:  # nothing held out, or a generator's FD only: it ranks tune trials, not epochs
        return False
    if state["best_val"] is None or val["loss"] < state["best_val"]:
        state["best_val"], state["best_epoch"], state["bad_epochs"] = val["loss"], state["epoch"], 0
    else:
        state["bad_epochs"] += 1
    return patience is not None and state["bad_epochs"] >= patience


def _rollback(state: dict, tcfg, load_checkpoint, restore, log: _Log, hint: str) -> None:
    """Restore the last good weights and optimizer state, keep the data position: the bad batches are skipped."""
    state["rollbacks"] += 1
    state["nonfinite"] = 0
    restore(load_checkpoint(), with_rng=False)
    if state["rollbacks"] > tcfg.max_rollbacks:
        raise Diverged(f"training diverged: {state['skipped']} bad steps and {tcfg.max_rollbacks} rollbacks; "
                       f"the last good weights were kept; {hint}")
    log.line(f"warning: {tcfg.max_nonfinite} bad steps (non-finite or unhealthy); rolled back to the last checkpoint "
             f"(rollback {state['rollbacks']}/{tcfg.max_rollbacks})")


def _summary(cfg: RunConfig, ds, state: dict) -> dict:
    summary = {"status": "complete", "kind": cfg.model.kind, "dataset": ds.name,
               "train_seconds": round(state["train_seconds"], 2), "epochs": state["epoch"], "steps": state["step"],
               "skipped_steps": state["skipped"], "rollbacks": state["rollbacks"]}
    if state.get("best_epoch") is not None:  # the weights saved are the best epoch's with early stopping
        keep_best = cfg.train.early_stopping is not None
        summary.update(best_epoch=state["best_epoch"], best_val_loss=state["best_val"],
                       weights_epoch=state["best_epoch"] if keep_best else state["epoch"])
    return summary


def finish(cfg: RunConfig, run_dir: Path, model, ds, task, state: dict, fitted: dict | None = None) -> dict:
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


def finish_fold(cfg: RunConfig, run_dir: Path, model, accuracy: float, ds, state: dict, fold: tuple[int, int]) -> dict:
    """A cross-validation fold ends with its validation score and its weights (a loadable run, e.g. to ensemble the
    folds): no test evaluation, speed measurement or report, which nobody reads for a fold."""
    rundir.save_weights(model, run_dir / rundir.WEIGHTS)
    summary = {**_summary(cfg, ds, state), "fold": fold[0], "folds": fold[1], "fold_accuracy": accuracy}
    rundir.write_json(run_dir / "summary.json", summary)
    return summary
