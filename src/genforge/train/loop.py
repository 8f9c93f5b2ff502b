"""The one training loop. A model kind supplies its step function (train/steps.py); the loop does the rest:
batching, progress, validation, early stopping, checkpoints, resume, interrupts and the non-finite guard.

Every file of the run dir is written through runs.write_bytes (temp file, fsync, rename, fsync of the folder),
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

from genforge import runs, track
from genforge.config import RunConfig
from genforge.errors import GenforgeError
from genforge.registry import MODELS, build_model
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
    def __init__(self, path: Path, quiet: bool):
        self.path, self.quiet = path, quiet

    def metrics(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())  # once per epoch: the line survives a crash of the machine, not just the process

    def line(self, text: str) -> None:
        if self.quiet:
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
        runs.write_text(path, "".join(line + "\n" for line in keep))


def train(cfg: RunConfig, run_dir: Path, resume: bool = False, quiet: bool = False,
          fold: tuple[int, int] | None = None, init: Callable[[torch.nn.Module], None] | None = None,
          on_step: Callable[[object, int, int], None] | None = None,
          on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Train `cfg` into `run_dir` (created by runs.create_run) and return the summary.

    fold=(k, folds): cross-validation; fold k of a stratified k-fold split of train is the validation set.
    init(model): called on the freshly built model before training (and before a resume restores it), to start
    from given weights; fine-tuning a pruned model uses it.
    on_step(step, t, total): called after each applied update t of total (gradual pruning re-masks weights there);
    when it has state_dict/load_state_dict, its state is checkpointed and restored with the step's.
    on_epoch(record): called with each epoch's metrics.jsonl record once it is checkpointed; it may raise Stop.

    The process-wide torch settings the run changes (threads, deterministic algorithms) are restored on return.
    The trackers the config names (`track`) follow the run directory: metrics after each epoch's checkpoint, the
    report at the end."""
    tracking = track.for_training(cfg, run_dir)  # before the data: a missing package fails at once
    try:
        with restored_torch_settings():
            summary = _train(cfg, run_dir, resume, quiet, fold, init, on_step, on_epoch, tracking)
    except BaseException as e:
        tracking.close("KILLED" if isinstance(e, (Interrupted, KeyboardInterrupt, Stop)) else "FAILED")
        raise
    tracking.finish()
    return summary


def _train(cfg: RunConfig, run_dir: Path, resume: bool, quiet: bool, fold: tuple[int, int] | None,
           init: Callable[[torch.nn.Module], None] | None, on_step: Callable[[object, int, int], None] | None,
           on_epoch: Callable[[dict], None] | None, tracking: track.Tracking) -> dict:
    tcfg = cfg.train
    device = pick_device(tcfg.device)
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
    if data.model_config is not None and data.model_config != cfg.model:  # defaults the data decides (a horizon)
        cfg = cfg.model_copy(update={"model": data.model_config})
        runs.write_config(run_dir, cfg)
    mean, std = data.mean, data.std
    if tcfg.privacy is not None:  # the training data's statistics would be released with the model, unprotected
        from genforge.train.privacy import public_normalization

        mean, std = public_normalization(mean, data.is_image)
    model = build_model(cfg.model, data.input_shape, data.num_classes, mean, std).to(device)
    if init is not None:
        init(model)
    log = _Log(run_dir / "metrics.jsonl", quiet)
    transfer = start_transfer(cfg, model, data.meta["classes"], run_dir, resume, say=log.line)  # init_from, freeze
    channels_last = use_channels_last(tcfg, device, data.is_image)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    bf16 = use_bf16(tcfg, device)
    runs.write_json(run_dir / "meta.json", {**data.meta, **transfer.meta(), "bf16": bf16,
                                            "channels_last": channels_last})
    runs.write_json(run_dir / "env.json", runs.environment(device))

    bs = min(tcfg.batch_size, len(x))
    steps_per_epoch = len(x) // bs  # drop the ragged last batch: BatchNorm needs more than one sample
    step = task.step(model, cfg, steps_per_epoch, autocast=bf16, channels_last=channels_last)
    transfer.attach(step)  # parameter groups and frozen layers, before privacy wraps the optimizer
    total = tcfg.epochs * steps_per_epoch
    privacy = None
    if tcfg.privacy is not None:  # DP-SGD: Poisson batches, per-sample clipping and noise, the accountant
        from genforge.train.privacy import Privacy

        privacy = Privacy(step, tcfg.privacy, len(x), bs, total, cfg.model.kind)
    # nonfinite counts the bad steps in a row (a good step resets it): sporadic bad batches are skipped, a run of
    # them rolls back. best_epoch: the epoch of best_val, whose weights runs.BEST holds with early stopping
    state = {"epoch": 0, "batch": 0, "step": 0, "best_val": None, "best_epoch": None, "bad_epochs": 0,
             "nonfinite": 0, "skipped": 0, "rollbacks": 0, "train_seconds": 0.0}
    ckpt_path, best_path = run_dir / runs.CHECKPOINT, run_dir / runs.BEST
    keep_best = tcfg.early_stopping is not None and len(x_val) > 0
    stateful_hook = hasattr(on_step, "state_dict") and hasattr(on_step, "load_state_dict")

    def save_checkpoint() -> None:
        if not all(torch.isfinite(p).all() for p in model.parameters()):  # never overwrite a good checkpoint with NaN
            _rollback(state, tcfg, ckpt_path, restore, log, task.divergence_hint)
            return
        checkpoint = {"step_fn": step.state_dict(), "loop": state, "rng": rng_state()}
        if privacy is not None:
            checkpoint["privacy"] = privacy.state_dict()
        if stateful_hook:
            checkpoint["hook"] = on_step.state_dict()
        runs.save_state(ckpt_path, checkpoint)

    def restore(checkpoint: dict, with_rng: bool) -> None:
        step.load_state_dict(checkpoint["step_fn"])
        if privacy is not None:
            privacy.load_state_dict(checkpoint["privacy"])
        if stateful_hook and "hook" in checkpoint:
            on_step.load_state_dict(checkpoint["hook"])
        if with_rng:
            state.update(checkpoint["loop"])
            set_rng_state(checkpoint["rng"])

    if resume:
        if not ckpt_path.is_file():
            raise GenforgeError(f"{run_dir} has no checkpoint to resume from; start a new run instead")
        restore(runs.load_state(ckpt_path), with_rng=True)
        _truncate_metrics(log.path, state["step"])
        log.line(f"resumed at epoch {state['epoch'] + 1}, batch {state['batch']}, step {state['step']}")
    else:
        save_checkpoint()  # the initial state is the first rollback target

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[stats]}"),
                        TimeElapsedColumn(), TimeRemainingColumn(), disable=quiet, transient=False)
    try:
        with _interrupt_flag() as interrupt, progress:
            bar = progress.add_task("train", total=total, completed=state["step"], stats="")
            while state["epoch"] < tcfg.epochs:
                t_epoch = time.perf_counter()
                transfer.epoch(step, state["epoch"])  # train.unfreeze_epoch
                order = _epoch_order(len(x), cfg.seed, state["epoch"]).to(device)
                sums, count, seen, out_of_time, spent = {}, 0, 0, False, None
                for b in range(state["batch"], steps_per_epoch):
                    idx = (order[b * bs : (b + 1) * bs] if privacy is None
                           else privacy.draw(cfg.seed, state["epoch"], b, device))
                    metrics = step(x[idx], y[idx])
                    if privacy is not None:
                        privacy.spent_step()
                    state["batch"], state["step"] = b + 1, state["step"] + 1
                    if metrics is None:
                        state["skipped"] += 1
                        state["nonfinite"] += 1
                        if state["nonfinite"] >= tcfg.max_nonfinite:
                            _rollback(state, tcfg, ckpt_path, restore, log, task.divergence_hint)
                    else:
                        state["nonfinite"] = 0
                        if on_step is not None:
                            on_step(step, state["step"], total)
                        count, seen = count + 1, seen + len(idx)
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
                    if interrupt["signal"] is not None:
                        state["train_seconds"] += time.perf_counter() - t_epoch
                        save_checkpoint()
                        raise Interrupted(f"interrupted at step {state['step']}; resume with: "
                                          f"genforge train --resume {run_dir}")
                    elapsed = state["train_seconds"] + time.perf_counter() - t_epoch
                    if out_of_time := bool(tcfg.max_seconds and elapsed >= tcfg.max_seconds):
                        break
                    if privacy is not None and (spent := privacy.exhausted()):
                        break
                val = task.validate(step.eval_model(), x_val, y_val, ds, cfg) if len(x_val) else {}
                state["train_seconds"] += time.perf_counter() - t_epoch
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
                if keep_best and state["best_epoch"] == state["epoch"]:  # before the checkpoint that records it
                    runs.save_weights(step.eval_model(), best_path)
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
        runs.save_weights(step.eval_model(), run_dir / runs.WEIGHTS)
        runs.write_json(run_dir / "summary.json", {"status": getattr(e, "status", "diverged"), "kind": cfg.model.kind,
                                                   "dataset": ds.name, "epochs": state["epoch"],
                                                   "steps": state["step"], "skipped_steps": state["skipped"],
                                                   "rollbacks": state["rollbacks"]})
        raise
    model = step.eval_model()
    if keep_best and best_path.is_file():  # early stopping keeps the best validation epoch, not the last one
        runs.load_weights(model, best_path)
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


def _rollback(state: dict, tcfg, ckpt_path: Path, restore, log: _Log, hint: str) -> None:
    """Restore the last good weights and optimizer state, keep the data position: the bad batches are skipped."""
    state["rollbacks"] += 1
    state["nonfinite"] = 0
    restore(runs.load_state(ckpt_path), with_rng=False)
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
    runs.save_weights(model, run_dir / runs.WEIGHTS)
    model = model.float().to(memory_format=torch.contiguous_format)
    result = task.test(model, ds, cfg)
    runs.write_json(run_dir / "eval.json", result)
    summary = {**_summary(cfg, ds, state), **(fitted or {}), **task.headline(result)}
    runs.write_json(run_dir / "summary.json", summary)
    task.report(run_dir, model, ds, result, summary)
    return summary


def finish_fold(cfg: RunConfig, run_dir: Path, model, accuracy: float, ds, state: dict, fold: tuple[int, int]) -> dict:
    """A cross-validation fold ends with its validation score and its weights (a loadable run, e.g. to ensemble the
    folds): no test evaluation, speed measurement or report, which nobody reads for a fold."""
    runs.save_weights(model, run_dir / runs.WEIGHTS)
    summary = {**_summary(cfg, ds, state), "fold": fold[0], "folds": fold[1], "fold_accuracy": accuracy}
    runs.write_json(run_dir / "summary.json", summary)
    return summary
