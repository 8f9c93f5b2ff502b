"""One trial: the base config with the sampled values, trained into a run directory under the study directory
(RUNS/tune-STUDY/trials/NAME-trialNNN-STAMP), reporting its metric a few times per epoch so the pruner can stop it
early, and scored on the metric of the weights the run keeps.

A trial that raises or diverges is recorded as failed with its message (TrialFailed) and the sweep goes on; Ctrl-C
ends it (its run keeps a checkpoint) and the study; a storage failure stops the study. Each run directory keeps its
trial's number, state and value in summary.json, written before the storage is told."""

from __future__ import annotations

import contextlib
import math
import os
import socket
import traceback
from pathlib import Path

from genforge import rundir, training
from genforge.config import RunConfig
from genforge.errors import GenforgeError
from genforge.evaluate.report import read_metrics
from genforge.train import loop
from genforge.tune.plan import Plan
from genforge.tune.storage import StorageError, scrubbed, shown_url, storage_failure
from genforge.tune.tracking import nested


class TrialFailed(Exception):
    """A trial's training raised or diverged: Optuna records it as failed and the study goes on."""


class MetricMissing(GenforgeError):
    """The metric is in neither the epoch records nor the summary: every trial would fail, so the study stops."""


def metric_value(run_dir: Path, summary: dict, metric: str) -> float:
    """The run's metric for the weights it keeps: of the epoch early stopping kept, else the last one logged, else
    the summary's."""
    records = read_metrics(run_dir)
    kept = summary.get("weights_epoch")  # early stopping keeps an earlier epoch's weights
    for record in reversed(records):
        if metric in record and (kept is None or record.get("epoch") == kept):
            return float(record[metric])
    if isinstance(summary.get(metric), (int, float)):
        return float(summary[metric])
    keys = sorted({k for r in records[-1:] for k, v in r.items() if k.startswith("val_")}
                  | {k for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    raise MetricMissing(f"--metric {metric}: the runs log no such value; pick one of: {', '.join(keys)}")


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}" if not isinstance(e, GenforgeError) else \
        " ".join(str(e).split())


def _link(run_dir: Path, trial, plan: Plan, status: str | None = None, error: str | None = None,
          value: float | None = None) -> None:
    """Name the trial in the run's summary.json (written by the loop, or here when training never got that far), with
    the value it is scored on: written before the storage is told, so that a result the storage never heard of (it
    stopped answering) is kept."""
    summary = rundir.read_json(run_dir / "summary.json")
    if status is not None and summary.get("status") in (None, "complete"):
        summary["status"] = status
    if error is not None:
        summary["error"] = error
    summary["tune"] = {"study": plan.study, "trial": trial.number, "storage": shown_url(plan.storage),
                       **({"value": value} if value is not None else {})}
    rundir.write_json(run_dir / "summary.json", summary)


def objective(plan: Plan, trial) -> float:
    """Train one trial's config into its run directory; the value is the metric of the weights the run keeps."""
    cfg = _trial_config(plan, trial)
    run_dir = rundir.create_run(plan.study_dir / "trials", cfg.name, cfg)
    trial.set_user_attr("run", str(run_dir.resolve()))
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    summary = _train(plan, trial, cfg, run_dir)
    value = metric_value(run_dir, summary, plan.metric)
    _link(run_dir, trial, plan, value=value)
    if not math.isfinite(value):
        trial.set_user_attr("error", f"{plan.metric} is {value}")
        raise TrialFailed(f"{plan.metric} is {value}")
    return value


def _trial_config(plan: Plan, trial) -> RunConfig:
    """The base config with the trial's sampled values, named NAME-trialNNN; a combination of values the config
    refuses fails the trial."""
    params = {p.key: p.suggest(trial) for p in plan.space}
    base = plan.base()
    try:
        cfg = plan.config(params, f"{base.name}-trial{trial.number:03d}", nested(plan, trial, base))
    except GenforgeError as e:
        trial.set_user_attr("error", _one_line(e))
        raise TrialFailed(_one_line(e)) from None
    if cfg.train.threads is None and plan.threads:
        cfg.train.threads = plan.threads
    return cfg


def _reporter(plan: Plan, trial, cfg: RunConfig):
    """The loop's on_epoch: report the value (at the end of each epoch, and reports_per_epoch - 1 times within it);
    stop the run if the pruner says so. A trial that trained to its last epoch is complete: pruning it then would
    save only its test evaluation, and cost the sampler its final value."""
    def on_epoch(record: dict) -> None:
        if plan.metric in record:
            try:
                trial.report(float(record[plan.metric]), round(record["epoch"] * plan.reports_per_epoch))
                prune = record["epoch"] < cfg.train.epochs and trial.should_prune()
            except Exception as e:
                if (why := storage_failure(e)) is None:
                    raise
                raise StorageError(scrubbed(why, plan.storage)) from e  # optimize names the storage
            if prune:
                raise loop.Stop("pruned", f"pruned at epoch {record['epoch']:.3g}: {plan.metric} "
                                          f"{record[plan.metric]:.4g}")

    return on_epoch


def _train(plan: Plan, trial, cfg: RunConfig, run_dir: Path) -> dict:
    """The trial's training, its outcome linked to its run directory: pruned, interrupted, failed with the study's
    storage (the study stops), or failed on its own (recorded, and the sweep goes on)."""
    import optuna  # deferred: the optional `tune` extra

    with (run_dir / "log.txt").open("w") as log:  # the loop's epoch lines, warnings and any traceback
        try:
            with contextlib.redirect_stderr(log):
                return training.train(cfg, run_dir, quiet=True, on_epoch=_reporter(plan, trial, cfg),
                                  reports_per_epoch=plan.reports_per_epoch)
        except loop.Stop as e:
            _link(run_dir, trial, plan)
            raise optuna.TrialPruned(str(e)) from None
        except (loop.Interrupted, KeyboardInterrupt):  # the run directory first, the storage second: it may be gone
            _link(run_dir, trial, plan, "interrupted", "interrupted")
            trial.set_user_attr("error", "interrupted")
            raise
        except StorageError as e:  # not the trial's fault: the study stops (optimize says why)
            traceback.print_exc(file=log)
            _link(run_dir, trial, plan, "failed", f"the study storage failed: {e}")
            raise
        except Exception as e:  # diverged, or a bug: recorded, and the sweep goes on
            traceback.print_exc(file=log)
            _link(run_dir, trial, plan, "failed", _one_line(e))
            trial.set_user_attr("error", _one_line(e))
            raise TrialFailed(_one_line(e)) from None


def trial_line(trial, metric: str, reports_per_epoch: int = 1) -> str:
    """A finished trial as the line the study prints: number, state, value, sampled values, seconds, error."""
    state = trial.state.name.lower()
    value = f"{metric} {trial.value:.4g}" if trial.value is not None else ""
    if value and trial.state.name == "PRUNED":  # the last value it reported
        value += f" at epoch {max(trial.intermediate_values) / reports_per_epoch:.3g}"
    params = " ".join(f"{k.rsplit('.', 1)[-1]}={v:.3g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
                      for k, v in trial.params.items())
    seconds = f"{trial.duration.total_seconds():.1f} s" if trial.duration is not None else ""
    error = f"  ({trial.user_attrs['error']})" if trial.user_attrs.get("error") else ""
    return " ".join(p for p in (f"trial {trial.number:>3} {state:8}", value, params, seconds) if p) + error
