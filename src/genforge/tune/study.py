"""The study: created in its storage, or loaded (resumed, or joined by another worker) after checking that it tunes
the same base config for the same metric; and run in this process, trial after trial, until its trials or its time
are spent, Ctrl-C or SIGTERM stops it, or its storage fails.

Any number of processes started with the same storage and study name share it, and starting one again resumes and
extends it. A worker that dies mid-trial stops its heartbeat, and the next trial started on the study marks that
trial failed."""

from __future__ import annotations

import contextlib
import importlib.util
import signal
import warnings
from pathlib import Path

import yaml

from genforge.config import RunConfig
from genforge.errors import GenforgeError
from genforge.train.loop import Interrupted
from genforge.tune.plan import Plan, check_pruner
from genforge.tune.storage import (
    StorageError,
    open_storage,
    quiet_storage_threads,
    scrubbed,
    shown_url,
    storage_failure,
)
from genforge.tune.tracking import mlflow_parent
from genforge.tune.trial import TrialFailed, objective, trial_line

INSTALL = "pip install 'optuna>=4.0' (or `pip install -e '.[tune]'` in a checkout)"
IGNORED_ON_RESUME = ("train.threads", "train.device", "data.data_dir", "track")  # may differ between workers


def require() -> None:
    if importlib.util.find_spec("optuna") is None:
        raise GenforgeError(f"genforge tune needs optuna; install it with: {INSTALL}")


def _pruner(plan: Plan, epochs: int):
    import optuna  # deferred: the optional `tune` extra

    if not isinstance(plan.pruner, str):
        return plan.pruner
    if plan.pruner == "median":  # a trial below the median of earlier trials at the same point stops
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if plan.pruner == "hyperband":  # Li et al. 2018, over reports (reports_per_epoch of them per epoch); the default:
        # Optuna's benchmarks pair it with TPE; on fashion-cnn-fast it cut 44-46%, the median rule 29-32%
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs * plan.reports_per_epoch,
                                              reduction_factor=3)
    if plan.pruner == "none":
        return optuna.pruners.NopPruner()
    check_pruner(plan.pruner)  # raises: not a name of PRUNERS


def _comparable(cfg: RunConfig) -> str:
    tree = cfg.model_dump(mode="json")
    for key in IGNORED_ON_RESUME:
        *section, leaf = key.split(".")
        (tree[section[0]] if section else tree).pop(leaf, None)
    tree.pop("name", None)
    return yaml.safe_dump(tree, sort_keys=True)


def open_study(plan: Plan, worker: int = 0):
    """Create the study, or load it (resume, or join as another worker) after checking it tunes the same base
    config for the same metric."""
    import optuna  # deferred: the optional `tune` extra

    base = plan.base()
    storage = open_storage(plan.storage, plan.heartbeat)
    sampler = optuna.samplers.TPESampler(seed=None if plan.seed is None else plan.seed + worker)
    direction = "maximize" if plan.direction == "max" else "minimize"
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created" / "Using an existing study"
    try:
        study = optuna.create_study(storage=storage, study_name=plan.study, direction=direction, sampler=sampler,
                                    pruner=_pruner(plan, base.train.epochs), load_if_exists=True)
    finally:
        optuna.logging.set_verbosity(verbosity)
    if not study.user_attrs.get("metric"):  # a new study (two workers creating it at once both write the same values)
        study.set_user_attr("metric", plan.metric)
        study.set_user_attr("direction", plan.direction)
        study.set_user_attr("reports_per_epoch", plan.reports_per_epoch)
        study.set_user_attr("base_config", _comparable(base))
        study.set_user_attr("source", plan.source)
        study.set_user_attr("overrides", plan.overrides)
    else:
        _check_same(plan, study.user_attrs, base)
    mlflow_parent(plan, study, base)
    return study


def _check_same(plan: Plan, attrs: dict, base: RunConfig) -> None:
    """A study resumed or joined must have the same metric, reports per epoch and base config as this plan."""
    if (attrs.get("metric"), attrs.get("direction")) != (plan.metric, plan.direction):
        raise GenforgeError(f"study {plan.study} optimizes {attrs.get('metric')} ({attrs.get('direction')}); "
                            f"give --metric {attrs.get('metric')} --direction {attrs.get('direction')}, or start a "
                            f"new study with --study NAME")
    if (reports := attrs.get("reports_per_epoch", 1)) != plan.reports_per_epoch:  # pruners compare report indices
        raise GenforgeError(f"study {plan.study} reports {reports} time(s) per epoch; give --reports-per-epoch "
                            f"{reports}, or start a new study with --study NAME")
    if attrs.get("base_config") != _comparable(base):
        raise GenforgeError(f"study {plan.study} tunes another base config ({attrs.get('source')} "
                            f"{' '.join(attrs.get('overrides', []))}); give the same config and overrides to resume "
                            f"it, or start a new study with --study NAME")


def existing_attrs(plan_storage: str, study: str) -> dict:
    """The user attributes of a study already in the storage ({} when there is none yet). A storage that cannot be
    opened fails here, with StorageError's one line."""
    if plan_storage.startswith("sqlite:///") and not Path(plan_storage.removeprefix("sqlite:///")).is_file():
        return {}  # a new study directory: nothing to create before the rest of the command line is checked
    studies = open_storage(plan_storage).get_all_studies()
    return next((s.user_attrs for s in studies if s.study_name == study), {})


@contextlib.contextmanager
def _stop_on_signal(study, stopped: dict):
    """Ctrl-C or SIGTERM between trials: finish the bookkeeping and stop before the next trial. (During a trial
    the training loop's own handler takes over: it checkpoints and raises Interrupted.)"""
    def handler(signum, _frame):
        stopped["signal"] = signum
        try:
            study.stop()
        except RuntimeError:  # the signal came before optimize started: nothing to finish
            raise KeyboardInterrupt from None

    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def optimize(plan: Plan, trials: int | None, timeout: float | None, worker: int = 0,
             say=lambda line: None) -> dict:
    """Run up to `trials` trials (None: until the timeout) in this process; {"interrupted": bool}."""
    import optuna  # deferred: the optional `tune` extra

    study = open_study(plan, worker)
    stopped = {"signal": None}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a line per trial is said here, without tracebacks
    try:
        with _stop_on_signal(study, stopped), warnings.catch_warnings(), quiet_storage_threads():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(lambda trial: objective(plan, trial), n_trials=trials, timeout=timeout,
                           catch=(TrialFailed,),
                           callbacks=[lambda s, t: say(trial_line(t, plan.metric, plan.reports_per_epoch))])
    except (Interrupted, KeyboardInterrupt):
        return {"interrupted": True}
    except Exception as e:
        if (why := storage_failure(e)) is None:
            raise
        raise StorageError(f"the study storage {shown_url(plan.storage)} failed mid-study: "
                           f"{scrubbed(why, plan.storage)}") from None
    finally:
        optuna.logging.set_verbosity(verbosity)
    return {"interrupted": stopped["signal"] is not None}
