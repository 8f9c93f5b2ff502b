"""The plan of a study: what every worker of it agrees on (base config, space, metric, pruner, storage), and the
defaults the command line leaves to the kind (its metric) or to the study being resumed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from genforge.config import RunConfig, load_config
from genforge.errors import GenforgeError
from genforge.registry import task_of
from genforge.tune.space import Param, yaml_value
from genforge.tune.storage import HEARTBEAT


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
    return task_of(cfg.model.kind).tune_metric


def metric_overrides(cfg: RunConfig, metric: str) -> list[str]:
    """What a study's metric needs that the config leaves off: a validation split for a val_ metric (the GAN presets
    train on every image), and the per-epoch FD (off by default: it costs a pass of the evaluator) for val_fd."""
    extra = []
    if metric.startswith("val_") and cfg.data.val_fraction == 0:
        extra.append("data.val_fraction=0.1")
    if metric == "val_fd" and cfg.eval.val_samples == 0:
        extra.append(f"eval.val_samples={VAL_FD_SAMPLES}")
    return extra


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
