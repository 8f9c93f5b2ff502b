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
running trial (its run keeps a checkpoint), stops the study and still writes the study directory. A storage that
stops answering stops the study with a StorageError (PostgreSQL connections and statements time out rather than
wait forever); the study directory is then written from the trials' run directories, each of which keeps its
trial's number, state and value in summary.json.

Secrets: a storage URL may carry a password (user:password@host, or ?password=...). Everything genforge prints or
writes shows it through shown_url(), which masks them, and --workers hands it to its processes in the environment
(GENFORGE_TUNE_STORAGE), not on their command lines, which every user of the machine can read."""

from __future__ import annotations

import contextlib
import csv
import html
import importlib.util
import io
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import traceback
import urllib.parse
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from genforge import rundir
from genforge.config import RunConfig, dump_config, load_config
from genforge.errors import GenforgeError

INSTALL = "pip install 'optuna>=4.0' (or `pip install -e '.[tune]'` in a checkout)"
HEARTBEAT = 10  # seconds between a running trial's heartbeats; a trial silent for 3 of them is failed as stale
STORAGE_ENV = "GENFORGE_TUNE_STORAGE"  # --storage's environment variable: how --workers hands the URL to its processes
# PostgreSQL (libpq) limits, unless the URL's query sets them: a server that does not answer fails the connection after
# CONNECT_TIMEOUT s and a statement after STATEMENT_TIMEOUT s, instead of a worker waiting forever
CONNECT_TIMEOUT = 10  # seconds, libpq's connect_timeout (the whole start-up: TCP, TLS and authentication)
STATEMENT_TIMEOUT = 60  # seconds, the server's statement_timeout; Optuna's statements take milliseconds
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}  # TCP probes
# after 30 s idle, every 10 s, 3 unanswered: a connection whose server vanished (host down, network cut) dies in ~60 s
SECRET_KEYS = ("pass", "pwd", "secret", "token", "key", "odbc_connect")  # query keys holding one of these carry a
# credential: libpq's password, sslpassword and passfile, MySQL's passwd, ODBC's PWD inside odbc_connect, tokens
IGNORED_ON_RESUME = ("train.threads", "train.device", "data.data_dir", "track")  # may differ between workers


class TrialFailed(Exception):
    """A trial's training raised or diverged: Optuna records it as failed and the study goes on."""


class StorageError(GenforgeError):
    """The study's storage could not be opened, or failed mid-study (it stopped answering): the study stops."""


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


# user:password@ of a URL, as SQLAlchemy reads it (the user has no ':' or '/'), to the last '@': a password with an
# unescaped '@' is masked whole, where SQLAlchemy would take its end for the host
_NETLOC_PASSWORD = re.compile(r"^([\w+.-]+://[^:/]*:)(.*)@", re.S)


def shown_url(url: str) -> str:
    """The storage URL with its credentials masked, for everything genforge prints or writes: the password of
    user:password@ and the value of every query key that carries one (SECRET_KEYS). It works on the text, so a URL
    that SQLAlchemy cannot parse is masked as well."""
    masked = _NETLOC_PASSWORD.sub(r"\1***@", url)
    base, mark, query = masked.partition("?")
    return base + mark + "&".join(_masked_pair(pair) for pair in query.split("&")) if mark else masked


def _masked_pair(pair: str) -> str:
    key, equals, _ = pair.partition("=")
    return f"{key}=***" if equals and _secret_key(key) else pair


def _secret_key(key: str) -> bool:
    return any(word in urllib.parse.unquote_plus(key).lower() for word in SECRET_KEYS)


def scrubbed(text: str, url: str) -> str:
    """text (a driver's error message) without the URL's secrets: each in full, and its pieces between the characters
    a parser splits a URL at, which is what a host or port parsed from a password with an unescaped '@' shows."""
    found = [m.group(2) for m in [_NETLOC_PASSWORD.match(url)] if m]
    found += [value for key, value in re.findall(r"[?&]([^=&]*)=([^&]*)", url) if _secret_key(key)]
    pieces = set()
    for secret in found:
        for form in (secret, urllib.parse.unquote(secret), urllib.parse.unquote_plus(secret)):
            pieces.add(form)
            pieces.update(re.split(r"[@:/?&=]", form))
    for piece in sorted((p for p in pieces if len(p) >= 3), key=len, reverse=True):  # shorter: too common to mask
        text = text.replace(piece, "***")
    return text


def _reason(e: BaseException, url: str) -> str:
    """An exception as one line without the URL's secrets: the first line of SQLAlchemy's (the rest is its SQL)."""
    return scrubbed(" ".join(str(e).strip().split("\n")[0].split()) or type(e).__name__, url)


def engine_url(url: str) -> str:
    """The URL SQLAlchemy is given: postgresql:// (or postgres://) without a driver names psycopg2 where it is
    installed (the tune extra's driver; SQLAlchemy 2.1 would pick psycopg 3, with which Optuna has had a bug: optuna
    issue 6096), else SQLAlchemy's default driver."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        return url
    if importlib.util.find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2://{rest}"
    if importlib.util.find_spec("psycopg") is None:
        raise StorageError("a postgresql:// storage needs psycopg2; install it with: pip install psycopg2-binary "
                           "(or `pip install -e '.[tune]'` in a checkout)")
    return f"postgresql://{rest}"


def _engine_kwargs(url: str) -> dict:
    if url.startswith("sqlite"):  # wait for the lock rather than fail when workers write at once
        return {"connect_args": {"timeout": 60}}
    from sqlalchemy.engine import make_url

    engine = {"pool_pre_ping": True}  # a pooled connection that died is replaced, not used
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("psycopg2", "psycopg"):
        limits = {"connect_timeout": CONNECT_TIMEOUT, "options": f"-c statement_timeout={STATEMENT_TIMEOUT * 1000}",
                  **KEEPALIVES}  # libpq's parameters: the URL's own query wins (connect_args would override it)
        engine["connect_args"] = {k: v for k, v in limits.items() if k not in parsed.query}
    return engine


def _storage(url: str, heartbeat: int = HEARTBEAT):
    import optuna
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        given = engine_url(url)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(given, engine_kwargs=_engine_kwargs(given), heartbeat_interval=heartbeat,
                                              grace_period=3 * heartbeat)
    except (SQLAlchemyError, ArgumentError, ImportError, ValueError) as e:
        raise StorageError(f"cannot open the study storage {shown_url(url)}: {_reason(e, url)}") from None


def storage_failure(e: BaseException) -> str | None:
    """Why the storage failed, where it did anywhere in e's chain: Optuna, meeting a storage error while it records
    a trial, may raise another exception (its own, or the next statement's) with the first as its context."""
    from sqlalchemy.exc import SQLAlchemyError

    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, (SQLAlchemyError, StorageError)):
            return str(e) if isinstance(e, StorageError) else " ".join(str(e).strip().split("\n")[0].split())
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


@contextlib.contextmanager
def _quiet_storage_threads():
    """Optuna's heartbeat thread meets a storage failure too: its traceback would go to stderr, while the main thread
    meets the same failure and says it once. Other exceptions in threads are shown as before."""
    previous = threading.excepthook

    def hook(args):
        if args.exc_value is None or storage_failure(args.exc_value) is None:
            previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


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
    storage = _storage(plan.storage, plan.heartbeat)
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
    """The user attributes of a study already in the storage ({} when there is none yet). A storage that cannot be
    opened fails here, with StorageError's one line."""
    if plan_storage.startswith("sqlite:///") and not Path(plan_storage.removeprefix("sqlite:///")).is_file():
        return {}  # a new study directory: nothing to create before the rest of the command line is checked
    studies = _storage(plan_storage).get_all_studies()
    return next((s.user_attrs for s in studies if s.study_name == study), {})


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
    import optuna

    from genforge.train.loop import Interrupted, Stop
    from genforge.training import train

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
    run_dir = rundir.create_run(plan.study_dir / "trials", name, cfg)
    trial.set_user_attr("run", str(run_dir.resolve()))
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")

    def on_epoch(record: dict) -> None:
        """Report the value (at the end of each epoch, and reports_per_epoch - 1 times within it); stop the run if
        the pruner says so. A trial that trained to its last epoch is complete: pruning it then would save only its
        test evaluation, and cost the sampler its final value."""
        if plan.metric in record:
            try:
                trial.report(float(record[plan.metric]), round(record["epoch"] * plan.reports_per_epoch))
                prune = record["epoch"] < cfg.train.epochs and trial.should_prune()
            except Exception as e:
                if (why := storage_failure(e)) is None:
                    raise
                raise StorageError(scrubbed(why, plan.storage)) from e  # optimize names the storage
            if prune:
                raise Stop("pruned", f"pruned at epoch {record['epoch']:.3g}: {plan.metric} "
                                     f"{record[plan.metric]:.4g}")

    with (run_dir / "log.txt").open("w") as log:  # the loop's epoch lines, warnings and any traceback
        try:
            with contextlib.redirect_stderr(log):
                summary = train(cfg, run_dir, quiet=True, on_epoch=on_epoch, reports_per_epoch=plan.reports_per_epoch)
        except Stop as e:
            _link(run_dir, trial, plan)
            raise optuna.TrialPruned(str(e)) from None
        except (Interrupted, KeyboardInterrupt):  # the run directory first, the storage second: it may be gone
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
    value = _metric_value(run_dir, summary, plan.metric)
    _link(run_dir, trial, plan, value=value)
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
        with _stop_on_signal(study, stopped), warnings.catch_warnings(), _quiet_storage_threads():
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


def worker_command(plan: Plan, trials: int, timeout: float | None, worker: int, runs_dir: Path,
                   space_path: Path) -> list[str]:
    """A worker's command line; the storage URL goes in its environment (STORAGE_ENV): a command line is readable by
    every user of the machine (ps, /proc/PID/cmdline), a process's environment by its user only."""
    return [sys.executable, "-m", "genforge", "tune", plan.source, *plan.overrides, "--trials", str(trials),
            "--space", str(space_path), "--study", plan.study, "--metric", plan.metric,
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
    env = {**os.environ, STORAGE_ENV: plan.storage}
    procs = [subprocess.Popen(worker_command(plan, share, timeout, i, runs_dir, space_path), env=env)
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
    from genforge.plots import figure

    plt = figure()
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
    rundir.write_with(path, lambda f: fig.savefig(f, format="png", dpi=90))
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
    """best.yaml, trials.csv, plots/ and report.html from the study as the storage holds it now, or, where the
    storage cannot be read (it stopped answering), from the trials' run directories: then result["storage_error"]
    says why, and the page has no plots (they are Optuna's, drawn from a study)."""
    try:
        study, result = _write_from_storage(plan)
    except Exception as e:
        if (why := storage_failure(e)) is None:
            raise
        return _write_from_runs(plan, scrubbed(why, plan.storage))
    _mlflow_finish(plan, study, result)  # outside: MLflow's own SQL store failing is not the study's storage failing
    return result


def _write_from_storage(plan: Plan) -> tuple:
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
    _write_table(d, rows)

    result = {"study": plan.study, "storage": shown_url(plan.storage), "metric": plan.metric,
              "direction": plan.direction, "trials": len(trials), **counts, "best": None}
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    if complete:
        best = study.best_trial
        decoded = {p.key: p.decode(best.params[p.key]) for p in plan.space if p.key in best.params}
        result["best"] = _write_best(plan, best.number, best.value, decoded, best.user_attrs.get("run"))
    rundir.write_json(d / "study.json", result)

    notes = {}
    plots = _clear_plots(d)
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
    return study, result


_RUN_NAME = re.compile(r"-trial(\d+)-\d{8}-\d{6}(?:-\d+)?$")  # objective's NAME-trialNNN, then create_run's stamp


def _write_from_runs(plan: Plan, why: str) -> dict:
    """The study directory from what its run directories know, when the storage cannot be read: each run names its
    trial and keeps its value in summary.json (_link), its sampled values in config.yaml. Trials that made no run
    directory (a config the values made invalid) or ran on another machine are missing from it."""
    d = plan.study_dir
    known: dict[int, dict] = {}
    for run in sorted(p.parent for p in (d / "trials").glob("*/config.yaml")):
        summary = rundir.read_json(run / "summary.json")
        number = summary.get("tune", {}).get("trial")
        if number is None:  # a run that never reached _link: its name says its trial
            if (match := _RUN_NAME.search(run.name)) is None:
                continue
            number = int(match[1])
        status = summary.get("status")  # none: it was training when the storage (or its worker) stopped
        state = {"complete": "complete", "pruned": "pruned", None: "running"}.get(status, "fail")
        value = summary.get("tune", {}).get("value")
        if state == "complete" and value is None:  # trained, and stopped before it was scored
            with contextlib.suppress(GenforgeError, ValueError, OSError):
                value = _metric_value(run, summary, plan.metric)
            state = "complete" if value is not None else "fail"
        config = yaml.safe_load((run / "config.yaml").read_text()) or {}
        known[number] = {"trial": number, "state": state, plan.metric: value if state == "complete" else None,
                         **{p.key: _dotted(config, p.key) for p in plan.space},
                         "epochs": summary.get("epochs"), "seconds": summary.get("train_seconds"),
                         "run": str(run.resolve()), "error": summary.get("error", "")}
    rows = [known[n] for n in sorted(known)]
    d.mkdir(parents=True, exist_ok=True)
    _write_table(d, rows)
    counts = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "fail", "running")}
    result = {"study": plan.study, "storage": shown_url(plan.storage), "storage_error": why,
              "written_from": "the run directories", "metric": plan.metric, "direction": plan.direction,
              "trials": len(rows), **counts, "best": None}
    complete = [r for r in rows if r["state"] == "complete"]
    if complete:
        best = (min if plan.direction == "min" else max)(complete, key=lambda r: r[plan.metric])
        params = {p.key: best[p.key] for p in plan.space}
        result["best"] = _write_best(plan, best["trial"], best[plan.metric], params, best["run"])
    rundir.write_json(d / "study.json", result)
    _clear_plots(d)
    _write_report(d, result, rows, {"plots": f"not drawn: the storage could not be read ({why}); this page was "
                                             f"written from the trials' run directories"})
    return result


def _dotted(tree, key: str):
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _write_table(d: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["trial"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    rundir.write_text(d / "trials.csv", buffer.getvalue())


def _write_best(plan: Plan, number: int, value: float, params: dict, run: str | None) -> dict:
    """best.yaml: the base config with the best trial's values, ready to train; its entry of study.json."""
    d = plan.study_dir
    header = (f"# best of study {plan.study}: trial {number}, {plan.metric} {value:.6g} "
              f"({plan.direction}); train it with: genforge train {d / 'best.yaml'}\n")
    rundir.write_text(d / "best.yaml", header + dump_config(plan.config(params)))
    return {"trial": number, "value": value, "params": params, "run": run, "config": str(d / "best.yaml")}


def _clear_plots(d: Path) -> Path:
    plots = d / "plots"
    plots.mkdir(exist_ok=True)
    for stale in plots.glob("*.png"):
        stale.unlink()
    return plots


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
    rundir.write_text(d / "report.html", page)

