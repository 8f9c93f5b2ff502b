"""Hyperparameter tuning with Optuna: a study whose trials are ordinary training runs.

A search space maps dotted config keys to distributions (space.py: a space YAML such as `train.lr: {low: 1.0e-4,
high: 1.0e-2, log: true}`); a plan (plan.py) is what every worker of a study agrees on; each trial (trial.py) trains
the base config with its sampled values into a run directory under the study directory (RUNS/tune-STUDY/trials/)
and is scored on the metric of the weights the run keeps. The study (study.py) lives in Optuna's storage (storage.py:
SQLite in the study directory by default, PostgreSQL for workers on several machines, workers.py for several
processes on this one); the study directory (studydir.py) gets the best config as a ready-to-train YAML, trials.csv
and report.html. A tracked study is an MLflow run with its trials as children (tracking.py).

Optuna is the optional `tune` extra: require() says how to install it, and the modules import it where they use it.
The names below are what the CLI and the tests call."""

from genforge.tune.plan import (
    Plan,
    check_pruner,
    metric_overrides,
    reports_per_epoch,
    study_metric,
)
from genforge.tune.space import check_space, load_space
from genforge.tune.storage import StorageError, engine_url, scrubbed, shown_url, sqlite_url
from genforge.tune.study import existing_attrs, open_study, optimize, require
from genforge.tune.studydir import trial_rows, write_study_dir
from genforge.tune.workers import STORAGE_ENV, run_workers

__all__ = ["STORAGE_ENV", "Plan", "StorageError", "check_pruner", "check_space", "engine_url", "existing_attrs",
           "load_space", "metric_overrides", "open_study", "optimize", "reports_per_epoch", "require", "run_workers",
           "scrubbed", "shown_url", "sqlite_url", "study_metric", "trial_rows", "write_study_dir"]
