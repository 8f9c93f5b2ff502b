"""Hyperparameter tuning with Optuna: a study whose trials are ordinary training runs.

A search space maps dotted config keys to distributions (space YAML, e.g. `train.lr: {low: 1.0e-4, high: 1.0e-2,
log: true}`); each trial trains the base config with its sampled values into a run directory under the study
directory (RUNS/tune-STUDY/trials/), reports the metric a few times per epoch so the pruner can stop it early, and is
scored on the metric of the weights the run keeps. The study lives in Optuna's storage (SQLite in the study
directory by default, PostgreSQL for workers on several machines); any number of processes started with the same
storage and study name share it, and starting one again resumes and extends it. The study directory also gets the
best config as a ready-to-train YAML, trials.csv and report.html (optimization history, parameter importances,
parallel coordinates).

Faults: a trial that raises or diverges is recorded as failed with its message and the sweep goes on; a worker that
dies mid-trial stops its heartbeat, and the next trial started on the study marks that trial failed; Ctrl-C ends the
running trial (its run keeps a checkpoint), stops the study and still writes the study directory."""

from __future__ import annotations

import contextlib
import csv
import html
import importlib.util
import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import traceback
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from genforge import runs
from genforge.config import RunConfig, dump_config, load_config
from genforge.errors import GenforgeError

INSTALL = "pip install 'optuna>=4.0' (or `pip install -e '.[tune]'` in a checkout)"
HEARTBEAT = 10  # seconds between a running trial's heartbeats; a trial silent for 3 of them is failed as stale
IGNORED_ON_RESUME = ("train.threads", "train.device", "data.data_dir", "track")  # may differ between workers


class TrialFailed(Exception):
    """A trial's training raised or diverged: Optuna records it as failed and the study goes on."""


def require() -> None:
    if importlib.util.find_spec("optuna") is None:
        raise GenforgeError(f"genforge tune needs optuna; install it with: {INSTALL}")


# --- the search space -------------------------------------------------------------------------------------------


@dataclass
class Param:
    """One dotted config key and its distribution. Categorical choices that Optuna cannot store (lists, mappings)
    travel as their JSON text and are decoded back before they reach the config."""

    key: str
    distribution: object  # an optuna.distributions.BaseDistribution
    decoded: dict = field(default_factory=dict)  # JSON text -> the choice it stands for

    def suggest(self, trial):
        d = self.distribution
        if hasattr(d, "choices"):
            return self.decode(trial.suggest_categorical(self.key, d.choices))
        suggest = trial.suggest_int if isinstance(d.low, int) else trial.suggest_float
        return suggest(self.key, d.low, d.high, step=d.step, log=d.log)

    def decode(self, value):
        return self.decoded.get(value, value) if isinstance(value, str) else value

    def bounds(self) -> list:
        d = self.distribution
        return [self.decode(c) for c in d.choices] if hasattr(d, "choices") else [d.low, d.high]


def yaml_value(value) -> str:
    """A value as override text that YAML reads back as the same value (1e-05 stays a float, 'on' a string)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**9).removesuffix("\n...\n").strip()


def _number(key: str, name: str, value) -> int | float:
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as text
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GenforgeError(f"search space: {key}: {name} must be a number, got {value!r}")
    return value


def _distribution(key: str, spec) -> Param:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not isinstance(spec, dict) or not spec:
        raise GenforgeError(f"search space: {key}: give {{low, high}} (optionally log: true or step) or "
                            f"{{choices: [...]}}, got {spec!r}")
    if "choices" in spec:
        if set(spec) != {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
            raise GenforgeError(f"search space: {key}: a categorical is {{choices: [a, b, ...]}} alone, got {spec!r}")
        decoded = {json.dumps(c): c for c in spec["choices"] if isinstance(c, (list, dict))}
        choices = [json.dumps(c) if isinstance(c, (list, dict)) else c for c in spec["choices"]]
        if len(set(map(json.dumps, choices))) < len(choices):
            raise GenforgeError(f"search space: {key}: a choice is listed twice: {spec['choices']}")
        return Param(key, CategoricalDistribution(choices), decoded)
    unknown = set(spec) - {"low", "high", "log", "step"}
    if unknown or not {"low", "high"} <= set(spec):
        what = f"unknown field {sorted(unknown)[0]!r}" if unknown else "needs both low and high"
        raise GenforgeError(f"search space: {key}: {what}; a range is {{low, high}} with optional log: true or step")
    low, high = _number(key, "low", spec["low"]), _number(key, "high", spec["high"])
    step, log = spec.get("step"), spec.get("log", False)
    if not isinstance(log, bool):
        raise GenforgeError(f"search space: {key}: log is true or false, got {log!r}")
    step = None if step is None else _number(key, "step", step)
    integer = all(isinstance(v, int) for v in (low, high, step if step is not None else 1))
    try:
        if integer:
            return Param(key, IntDistribution(low, high, log=log, step=step or 1))
        return Param(key, FloatDistribution(float(low), float(high), log=log, step=step))
    except ValueError as e:  # low > high, log with low <= 0, log with a step
        raise GenforgeError(f"search space: {key}: {' '.join(str(e).split())}") from None


def default_space_path(source: str) -> Path | None:
    """A preset's shipped space (presets/spaces/NAME.yaml), or NAME.space.yaml beside a config file."""
    path = Path(source)
    if source.endswith((".yaml", ".yml")) or path.exists():
        beside = path.with_name(f"{path.stem}.space.yaml")
        return beside if beside.is_file() else None
    shipped = resources.files("genforge.presets").joinpath(f"spaces/{source}.yaml")
    return Path(str(shipped)) if shipped.is_file() else None


def load_space(source: str, space: str | Path | None) -> tuple[list[Param], Path]:
    path = Path(space) if space is not None else default_space_path(source)
    if path is None:
        raise GenforgeError(f"{source} ships no search space; give one with --space space.yaml (dotted config keys "
                            f"to distributions, e.g. train.lr: {{low: 1.0e-4, high: 1.0e-2, log: true}})")
    if not path.is_file():
        raise GenforgeError(f"search space {path} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise GenforgeError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict) or not raw:
        raise GenforgeError(f"{path}: a search space is a mapping of dotted config keys to distributions")
    return [_distribution(str(key), spec) for key, spec in raw.items()], path


def check_space(source: str, overrides: list[str], space: list[Param]) -> None:
    """Every bound of every distribution (each choice of a categorical) must make a valid config with the others at
    the base config's values: an unknown key or an out-of-range bound fails here, before any trial runs."""
    for param in space:
        for value in param.bounds():
            try:
                load_config(source, [*overrides, f"{param.key}={yaml_value(value)}"])
            except GenforgeError as e:
                raise GenforgeError(f"search space: {param.key}={yaml_value(value)}: {e}") from None


# --- the plan of a study ----------------------------------------------------------------------------------------


@dataclass
class Plan:
    """What every worker of a study agrees on, and how this one runs."""

    source: str  # preset name or config file
    overrides: list[str]  # applied before the sampled values
    space: list[Param]
    study: str  # study name
    study_dir: Path  # RUNS/tune-STUDY: trials/, best.yaml, trials.csv, report.html (and study.db by default)
    storage: str  # SQLAlchemy URL
    metric: str  # a key of metrics.jsonl's epoch records (prunable) or of summary.json
    direction: str  # "min" or "max"
    pruner: object = "hyperband"  # hyperband, median, none, or an optuna pruner
    seed: int | None = None  # the sampler's seed (worker i of --workers adds i)
    threads: int | None = 1  # torch threads per trial when the config leaves train.threads unset
    heartbeat: int = HEARTBEAT
    reports_per_epoch: int = 1  # validations (pruner decision points) per epoch, see reports_per_epoch()

    def base(self) -> RunConfig:
        return load_config(self.source, self.overrides)

    def config(self, params: dict, name: str | None = None, extra: list[str] = ()) -> RunConfig:
        sampled = [f"{key}={yaml_value(value)}" for key, value in params.items()]
        return load_config(self.source, [*self.overrides, *sampled, *extra, *([f"name={name}"] if name else [])])


PRUNERS = ("hyperband", "median", "none")  # --pruner; the first is the default (docs/decisions.md)


def check_pruner(name: str) -> None:
    """A one-line error for a pruner name that is not one of PRUNERS."""
    if name not in PRUNERS:
        raise GenforgeError(f"--pruner {name}: give {', '.join(PRUNERS[:-1])} or {PRUNERS[-1]}")


REPORTS_PER_EPOCH = 4  # the default where validating is cheap and something prunes (docs/decisions.md)


def reports_per_epoch(given: int | None, metric: str, pruner: str, existing: dict) -> int:
    """How often a trial reports its metric to the pruner: as given, else the study's own (resuming), else 4 times
    per epoch for a validation metric a pruner acts on, once for val_fd (a pass of the evaluator each) or none."""
    if given is not None:
        return given
    if existing.get("metric"):
        return existing.get("reports_per_epoch", 1)
    return REPORTS_PER_EPOCH if metric.startswith("val_") and metric != "val_fd" and pruner != "none" else 1


VAL_FD_SAMPLES = 1000  # samples (and validation images) per epoch's FD when a study ranks by val_fd


def default_metric(cfg: RunConfig) -> tuple[str, str]:
    """What a kind's epochs are judged by (its task's tune_metric): classifiers' validation accuracy, GANs' validation
    FD (they have no held-out loss), else the validation loss (a VAE's negative ELBO, a forecaster's)."""
    from genforge.registry import MODELS

    return MODELS[cfg.model.kind].task.tune_metric


def metric_overrides(cfg: RunConfig, metric: str) -> list[str]:
    """What a study's metric needs that the config leaves off: a validation split for a val_ metric (the GAN presets
    train on every image), and the per-epoch FD (off by default: it costs a pass of the evaluator) for val_fd."""
    extra = []
    if metric.startswith("val_") and cfg.data.val_fraction == 0:
        extra.append("data.val_fraction=0.1")
    if metric == "val_fd" and cfg.eval.val_samples == 0:
        extra.append(f"eval.val_samples={VAL_FD_SAMPLES}")
    return extra


def sqlite_url(study_dir: Path) -> str:
    return f"sqlite:///{(study_dir / 'study.db').resolve()}"


def shown_url(url: str) -> str:
    """The storage URL without its password, for messages and reports."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: shown as given (it holds no parsable password)
        return url


def _storage(plan: Plan):
    import optuna
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    url = plan.storage
    default_driver = url.startswith("postgresql") and "+" not in url.split(":", 1)[0]  # SQLAlchemy's is psycopg2
    if default_driver and importlib.util.find_spec("psycopg2") is None:
        raise GenforgeError("a postgresql:// storage needs psycopg2; install it with: pip install psycopg2-binary "
                            "(or `pip install -e '.[tune]'` in a checkout)")
    # SQLite: wait for the lock rather than fail when workers write at once; PostgreSQL: drop dead pooled connections
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=plan.heartbeat,
                                              grace_period=3 * plan.heartbeat)
    except (SQLAlchemyError, ArgumentError, ImportError, ValueError) as e:
        reason = " ".join(str(e).split("\n")[0].split())
        raise GenforgeError(f"cannot open the study storage {shown_url(url)}: {reason}") from None


def _pruner(plan: Plan, epochs: int):
    import optuna

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
    import optuna

    base = plan.base()
    storage = _storage(plan)
    sampler = optuna.samplers.TPESampler(seed=None if plan.seed is None else plan.seed + worker)
    direction = "maximize" if plan.direction == "max" else "minimize"
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created" / "Using an existing study"
    try:
        study = optuna.create_study(storage=storage, study_name=plan.study, direction=direction, sampler=sampler,
                                    pruner=_pruner(plan, base.train.epochs), load_if_exists=True)
    finally:
        optuna.logging.set_verbosity(verbosity)
    attrs = study.user_attrs
    if not attrs.get("metric"):  # a new study (two workers creating it at once both write the same values)
        study.set_user_attr("metric", plan.metric)
        study.set_user_attr("direction", plan.direction)
        study.set_user_attr("reports_per_epoch", plan.reports_per_epoch)
        study.set_user_attr("base_config", _comparable(base))
        study.set_user_attr("source", plan.source)
        study.set_user_attr("overrides", plan.overrides)
        mlflow_parent(plan, study, base)
        return study
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
    mlflow_parent(plan, study, base)
    return study


def _mlflow_settings(plan: Plan, base: RunConfig) -> dict | None:
    """Where a tracked study's runs go: the base config's MLflow store and experiment, or the defaults of a run
    trained beside the study directory (RUNS/mlruns/mlflow.db, the config's name), not one experiment per trial."""
    if base.track.mlflow is None:
        return None
    uri = base.track.mlflow.uri or f"sqlite:///{(plan.study_dir.parent / 'mlruns' / 'mlflow.db').resolve()}"
    return {"uri": uri, "experiment": base.track.mlflow.experiment or base.name}


def mlflow_parent(plan: Plan, study, base: RunConfig) -> str | None:
    """With `track: [mlflow]`, the study is an MLflow run and its trials' runs are its children; its id is kept in
    the study, so every worker nests under the same run."""
    settings = _mlflow_settings(plan, base)
    if settings is None or (run_id := study.user_attrs.get("mlflow_run_id")):
        return study.user_attrs.get("mlflow_run_id")
    from genforge import track

    track.require(["mlflow"])
    if settings["uri"].startswith("sqlite:///"):
        Path(settings["uri"].removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = track.mlflow_client_class()(tracking_uri=settings["uri"])
    experiment = track.mlflow_experiment(client, settings["uri"], settings["experiment"])
    run_id = client.create_run(experiment, run_name=f"tune-{plan.study}",
                               tags={"genforge.study": plan.study, "genforge.metric": plan.metric}).info.run_id
    study.set_user_attr("mlflow_run_id", run_id)
    return run_id


def _mlflow_finish(plan: Plan, study, result: dict) -> None:
    """The study's MLflow run gets the best value, the best values as tags and the study directory's files."""
    settings, run_id = _mlflow_settings(plan, plan.base()), study.user_attrs.get("mlflow_run_id")
    if settings is None or run_id is None:
        return
    from genforge import track

    client = track.mlflow_client_class()(tracking_uri=settings["uri"])
    if result["best"]:
        client.log_metric(run_id, f"best_{plan.metric}", result["best"]["value"], step=result["trials"])
        for key, value in result["best"]["params"].items():
            client.set_tag(run_id, f"best.{key}", json.dumps(value))
    for name in ("report.html", "trials.csv", "best.yaml", "study.json"):
        if (plan.study_dir / name).is_file():
            client.log_artifact(run_id, str(plan.study_dir / name))
    client.set_terminated(run_id, "FINISHED")


def study_metric(plan_metric: str | None, plan_direction: str | None, cfg: RunConfig, existing: dict) -> tuple:
    """--metric/--direction as given, else the study's own (resuming), else the kind's default."""
    if plan_metric is None and existing.get("metric"):
        return existing["metric"], plan_direction or existing["direction"]
    metric, direction = default_metric(cfg)
    if plan_metric is not None and plan_metric != metric:
        if plan_direction is None:
            raise GenforgeError(f"--metric {plan_metric}: say which way is better with --direction min or max")
        return plan_metric, plan_direction
    return metric, plan_direction or direction


def existing_attrs(plan_storage: str, study: str) -> dict:
    """The user attributes of a study already in the storage ({} when there is none yet)."""
    import optuna

    try:
        summaries = optuna.get_all_study_summaries(plan_storage, include_best_trial=False)
    except Exception:  # no tables yet, or a storage that opens below with a clear error
        return {}
    return next((s.user_attrs for s in summaries if s.study_name == study), {})


# --- one trial ----------------------------------------------------------------------------------------------------


class MetricMissing(GenforgeError):
    """The metric is in neither the epoch records nor the summary: every trial would fail, so the study stops."""


def _metric_value(run_dir: Path, summary: dict, metric: str) -> float:
    from genforge.evaluate.report import read_metrics

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


def _link(run_dir: Path, trial, plan: Plan, status: str | None = None, error: str | None = None) -> None:
    """Name the trial in the run's summary.json (written by the loop, or here when training never got that far)."""
    summary = runs.read_json(run_dir / "summary.json")
    if status is not None and summary.get("status") in (None, "complete"):
        summary["status"] = status
    if error is not None:
        summary["error"] = error
    summary["tune"] = {"study": plan.study, "trial": trial.number, "storage": shown_url(plan.storage)}
    runs.write_json(run_dir / "summary.json", summary)


def objective(plan: Plan, trial) -> float:
    """Train one trial's config into its run directory; the value is the metric of the weights the run keeps."""
    import optuna

    from genforge.train.loop import Interrupted, Stop, train

    params = {p.key: p.suggest(trial) for p in plan.space}
    base = plan.base()
    name = f"{base.name}-trial{trial.number:03d}"
    nested = []  # a tracked trial: a child of the study's MLflow run, in the study's experiment
    if (parent := trial.study.user_attrs.get("mlflow_run_id")) and (settings := _mlflow_settings(plan, base)):
        tracked = base.track.model_dump(mode="json")
        tracked["mlflow"].update(settings, parent_run_id=parent)
        nested = [f"track={yaml_value(tracked)}"]
    try:
        cfg = plan.config(params, name, nested)
    except GenforgeError as e:  # a combination of values the config refuses
        trial.set_user_attr("error", _one_line(e))
        raise TrialFailed(_one_line(e)) from None
    if cfg.train.threads is None and plan.threads:
        cfg.train.threads = plan.threads
    run_dir = runs.create_run(plan.study_dir / "trials", name, cfg)
    trial.set_user_attr("run", str(run_dir.resolve()))
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")

    def on_epoch(record: dict) -> None:
        """Report the value (at the end of each epoch, and reports_per_epoch - 1 times within it); stop the run if
        the pruner says so. A trial that trained to its last epoch is complete: pruning it then would save only its
        test evaluation, and cost the sampler its final value."""
        if plan.metric in record:
            trial.report(float(record[plan.metric]), round(record["epoch"] * plan.reports_per_epoch))
            if record["epoch"] < cfg.train.epochs and trial.should_prune():
                raise Stop("pruned", f"pruned at epoch {record['epoch']:.3g}: {plan.metric} "
                                     f"{record[plan.metric]:.4g}")

    with (run_dir / "log.txt").open("w") as log:  # the loop's epoch lines, warnings and any traceback
        try:
            with contextlib.redirect_stderr(log):
                summary = train(cfg, run_dir, quiet=True, on_epoch=on_epoch, reports_per_epoch=plan.reports_per_epoch)
        except Stop as e:
            _link(run_dir, trial, plan)
            raise optuna.TrialPruned(str(e)) from None
        except (Interrupted, KeyboardInterrupt):
            trial.set_user_attr("error", "interrupted")
            _link(run_dir, trial, plan, "interrupted", "interrupted")
            raise
        except Exception as e:  # diverged, or a bug: recorded, and the sweep goes on
            traceback.print_exc(file=log)
            trial.set_user_attr("error", _one_line(e))
            _link(run_dir, trial, plan, "failed", _one_line(e))
            raise TrialFailed(_one_line(e)) from None
    value = _metric_value(run_dir, summary, plan.metric)
    _link(run_dir, trial, plan)
    if not math.isfinite(value):
        trial.set_user_attr("error", f"{plan.metric} is {value}")
        raise TrialFailed(f"{plan.metric} is {value}")
    return value


# --- running a study ----------------------------------------------------------------------------------------------


def trial_line(trial, metric: str, reports_per_epoch: int = 1) -> str:
    state = trial.state.name.lower()
    value = f"{metric} {trial.value:.4g}" if trial.value is not None else ""
    if value and trial.state.name == "PRUNED":  # the last value it reported
        value += f" at epoch {max(trial.intermediate_values) / reports_per_epoch:.3g}"
    params = " ".join(f"{k.rsplit('.', 1)[-1]}={v:.3g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
                      for k, v in trial.params.items())
    seconds = f"{trial.duration.total_seconds():.1f} s" if trial.duration is not None else ""
    error = f"  ({trial.user_attrs['error']})" if trial.user_attrs.get("error") else ""
    return " ".join(p for p in (f"trial {trial.number:>3} {state:8}", value, params, seconds) if p) + error


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
    import optuna

    from genforge.train.loop import Interrupted

    study = open_study(plan, worker)
    stopped = {"signal": None}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a line per trial is said here, without tracebacks
    try:
        with _stop_on_signal(study, stopped), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(lambda trial: objective(plan, trial), n_trials=trials, timeout=timeout,
                           catch=(TrialFailed,),
                           callbacks=[lambda s, t: say(trial_line(t, plan.metric, plan.reports_per_epoch))])
    except (Interrupted, KeyboardInterrupt):
        return {"interrupted": True}
    finally:
        optuna.logging.set_verbosity(verbosity)
    return {"interrupted": stopped["signal"] is not None}


def worker_command(plan: Plan, trials: int, timeout: float | None, worker: int, runs_dir: Path,
                   space_path: Path) -> list[str]:
    return [sys.executable, "-m", "genforge", "tune", plan.source, *plan.overrides, "--trials", str(trials),
            "--space", str(space_path), "--study", plan.study, "--storage", plan.storage, "--metric", plan.metric,
            "--direction", plan.direction, "--pruner", str(plan.pruner), "--runs-dir", str(runs_dir),
            "--heartbeat", str(plan.heartbeat), "--reports-per-epoch", str(plan.reports_per_epoch),
            "--worker-index", str(worker),
            *(["--seed", str(plan.seed)] if plan.seed is not None else []),
            *(["--threads", str(plan.threads)] if plan.threads else []),
            *(["--timeout", str(timeout)] if timeout else [])]


def run_workers(plan: Plan, trials: int, timeout: float | None, workers: int, runs_dir: Path,
                space_path: Path) -> dict:
    """K worker processes on the same storage and study, the trials split between them; Ctrl-C reaches them all
    (the terminal sends it to the process group; a signal sent to this process alone is passed on)."""
    shares = [trials // workers + (i < trials % workers) for i in range(workers)]
    procs = [subprocess.Popen(worker_command(plan, share, timeout, i, runs_dir, space_path))
             for i, share in enumerate(shares) if share]
    interrupted = False
    while True:
        try:
            for proc in procs:
                proc.wait()
            break
        except KeyboardInterrupt:
            interrupted = True
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
    codes = [proc.returncode for proc in procs]
    failed = [(i, code) for i, code in enumerate(codes) if code not in (0, 130)]
    return {"interrupted": interrupted or 130 in codes, "failed": failed}


# --- the study directory ------------------------------------------------------------------------------------------


def _xlabel(ax, label: str):
    ax.set_xlabel(label)
    return ax


def _plot(path: Path, draw) -> str | None:
    """Draw one of optuna.visualization.matplotlib's plots into path; None, or why it could not be drawn."""
    from genforge.evaluate.report import _figure

    plt = _figure()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the matplotlib backend is experimental in Optuna
            ax = draw()
    except (ValueError, RuntimeError, ZeroDivisionError, IndexError) as e:
        plt.close("all")
        return " ".join(str(e).split()) or type(e).__name__
    fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
    fig.set_size_inches(8, 4.5)
    fig.tight_layout()
    runs.write_with(path, lambda f: fig.savefig(f, format="png", dpi=90))
    plt.close(fig)
    return None


def trial_rows(study, plan: Plan) -> list[dict]:
    keys = [p.key for p in plan.space]
    keys += sorted({k for t in study.trials for k in t.params} - set(keys))  # from an earlier space of the study
    rows = []
    for t in study.trials:
        error = t.user_attrs.get("error") or t.system_attrs.get("fail_reason")
        if t.state.name == "FAIL" and not error:
            error = "its worker stopped without finishing it (killed, or the machine went down)"
        rows.append({"trial": t.number, "state": t.state.name.lower(),
                     plan.metric: t.value, **{k: t.params.get(k) for k in keys},
                     "epochs": (max(t.intermediate_values) / plan.reports_per_epoch
                                if t.intermediate_values else None),
                     "seconds": round(t.duration.total_seconds(), 2) if t.duration else None,
                     "run": t.user_attrs.get("run", ""), "error": error or ""})
    return rows


def write_study_dir(plan: Plan) -> dict:
    """best.yaml, trials.csv, plots/ and report.html from the study as the storage holds it now."""
    import optuna
    import optuna.visualization.matplotlib as vis

    study = open_study(plan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a dead worker's trial is failed, not shown as running
    trials = study.trials
    counts = {s: sum(t.state.name.lower() == s for t in trials) for s in ("complete", "pruned", "fail", "running")}
    d = plan.study_dir
    d.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(study, plan)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["trial"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    runs.write_text(d / "trials.csv", buffer.getvalue())

    result = {"study": plan.study, "storage": shown_url(plan.storage), "metric": plan.metric,
              "direction": plan.direction, "trials": len(trials), **counts, "best": None}
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    if complete:
        best = study.best_trial
        decoded = {p.key: p.decode(best.params[p.key]) for p in plan.space if p.key in best.params}
        cfg = plan.config(decoded)
        header = (f"# best of study {plan.study}: trial {best.number}, {plan.metric} {best.value:.6g} "
                  f"({plan.direction}); train it with: genforge train {d / 'best.yaml'}\n")
        runs.write_text(d / "best.yaml", header + dump_config(cfg))
        result["best"] = {"trial": best.number, "value": best.value, "params": decoded,
                          "run": best.user_attrs.get("run"), "config": str(d / "best.yaml")}
    runs.write_json(d / "study.json", result)

    plots, notes = d / "plots", {}
    plots.mkdir(exist_ok=True)
    for stale in plots.glob("*.png"):
        stale.unlink()
    target = [("history", lambda: vis.plot_optimization_history(study)),
              ("importances", lambda: vis.plot_param_importances(study)),
              ("parallel_coordinates", lambda: vis.plot_parallel_coordinate(study)),
              ("intermediate_values", lambda: _xlabel(vis.plot_intermediate_values(study),
                                                      f"report ({plan.reports_per_epoch} per epoch)"))]
    for name, draw in target:
        if len(complete) < (2 if name == "importances" else 1):
            notes[name] = "needs more complete trials"
            continue
        if (why := _plot(plots / f"{name}.png", draw)) is not None:
            notes[name] = why
    _write_report(d, result, rows, notes)
    _mlflow_finish(plan, study, result)
    return result


def _write_report(d: Path, result: dict, rows: list[dict], notes: dict) -> None:
    import base64

    def cell(v) -> str:
        return f"{v:.4g}" if isinstance(v, float) else html.escape("" if v is None else str(v))

    summary = {k: v for k, v in result.items() if k != "best"}
    if result["best"]:
        summary.update({"best trial": result["best"]["trial"], f"best {result['metric']}": result["best"]["value"],
                        **{f"best {k}": v for k, v in result["best"]["params"].items()}})
    head = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{cell(v)}</td></tr>" for k, v in summary.items())
    images = "".join(
        f'<figure><img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        f"<figcaption>{p.stem.replace('_', ' ')}</figcaption></figure>" for p in sorted((d / "plots").glob("*.png")))
    missing = "".join(f"<li>{html.escape(k.replace('_', ' '))}: {html.escape(v)}</li>" for k, v in notes.items())
    columns = list(rows[0]) if rows else []
    table = "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{cell(r[c])}</td>" for c in columns) + "</tr>" for r in rows)
    best_yaml = (d / "best.yaml").read_text() if result["best"] else "no complete trial yet"
    page = f"""<!doctype html><html lang="en"><meta charset="utf-8"><title>study {html.escape(result['study'])}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem}}
table{{border-collapse:collapse;font-size:.9rem}}
td,th{{padding:.2rem .5rem;border-bottom:1px solid #ddd;text-align:left}}
figure{{display:inline-block;margin:.5rem}}img{{max-width:100%}}pre{{background:#f6f6f6;padding:1rem}}</style>
<h1>study {html.escape(result['study'])}</h1><h2>Summary</h2><table>{head}</table>
<h2>Plots</h2>{images}{f'<ul>{missing}</ul>' if missing else ''}
<h2>Trials</h2><table>{table}</table>
<h2>Best config</h2><pre>{html.escape(best_yaml)}</pre></html>"""
    runs.write_text(d / "report.html", page)

