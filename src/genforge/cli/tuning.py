"""The tune command: a hyperparameter study with Optuna, every trial a run directory, the study directory with the
best config, trials.csv and report.html; in one process, in --workers processes, or in many machines on one
storage."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from genforge.cli.console import err, out
from genforge.cli.options import RunsDir
from genforge.errors import GenforgeError

# deferred: genforge.tune imports torch (and Optuna only when a study runs): `genforge --help` took 4.0 s with
# genforge's modules imported at the top, 0.28 s with them in the commands (median of 5 starts)


def tune(
    config: Annotated[str, typer.Argument(help="A preset name or a YAML file.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value, applied to every trial before the "
                                                                "sampled values.")] = None,
    trials: Annotated[int, typer.Option(min=1, help="Trials to run now, split between the workers; an existing "
                                                    "study gets this many more.")] = ...,
    space: Annotated[Path | None, typer.Option(help="Search space YAML (default: the preset's, or NAME.space.yaml "
                                                    "beside a config file).")] = None,
    storage: Annotated[str | None, typer.Option(
        envvar="GENFORGE_TUNE_STORAGE",  # tune.STORAGE_ENV: a URL with a password stays off the command line
        help="Optuna storage URL (default: SQLite in the study directory; postgresql://USER@HOST/DB for workers on "
             "many machines). A password in it is better given in the environment variable or ~/.pgpass than on "
             "the command line, which every user of the machine can read.")] = None,
    study: Annotated[str | None, typer.Option(help="Study name (default: the config's name).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes on this machine, on the same study.")] = 1,
    timeout: Annotated[float | None, typer.Option(min=1, help="Start no trial after this many seconds.")] = None,
    metric: Annotated[str | None, typer.Option(help="What a trial is scored on: a key of metrics.jsonl (pruned "
                                                    "per epoch) or of summary.json (default: val_acc for "
                                                    "classifiers, else val_loss).")] = None,
    direction: Annotated[str | None, typer.Option(help="min or max (with --metric).")] = None,
    pruner: Annotated[str, typer.Option(help="hyperband, median or none.")] = "hyperband",
    reports_per_epoch: Annotated[int | None, typer.Option(
        min=1, max=100, help="Validations per epoch, each a point where the pruner may stop a trial (default: 4 for "
                             "a validation metric with a pruner, else 1; a resumed study keeps its own).")] = None,
    seed: Annotated[int | None, typer.Option(help="Sampler seed (worker i adds i).")] = None,
    threads: Annotated[int, typer.Option(min=1, help="torch threads per trial when the config sets no "
                                                     "train.threads; for more speed, add workers.")] = 1,
    heartbeat: Annotated[int, typer.Option(min=1, help="Seconds between a trial's heartbeats; a trial silent for 3 "
                                                       "of them (its worker died) is marked failed.")] = 10,
    worker_index: Annotated[int | None, typer.Option(hidden=True)] = None,  # a worker that --workers started
    runs_dir: RunsDir = Path("runs"),
):
    """Tune hyperparameters with Optuna: every trial is a run directory; the study directory RUNS/tune-STUDY gets
    the best config (best.yaml), trials.csv and report.html. The same --storage and --study in several processes
    or machines share one study; running the command again resumes and extends it."""
    from genforge import tune as tuning

    plan, space_path = _plan(config, overrides or [], space, storage, study, metric, direction, pruner,
                             reports_per_epoch, seed, threads, heartbeat, runs_dir, say=worker_index is None)
    if worker_index is not None:  # one of --workers' processes: trials only, the parent writes the study directory
        if tuning.optimize(plan, trials, timeout, worker_index, say=err.print)["interrupted"]:
            raise typer.Exit(130)
        return
    before = len(tuning.open_study(plan).trials)  # creates the study, or checks that it tunes the same thing
    err.print(f"study {plan.study} ({tuning.shown_url(plan.storage)}): {plan.metric} ({plan.direction}), "
              f"{len(plan.space)} parameters from {space_path if space else 'the default space of ' + config}"
              + (f"; {plan.reports_per_epoch} reports per epoch to the {pruner} pruner" if pruner != "none" else "")
              + (f"; resuming after {before} trials" if before else ""), markup=False)
    started, lost = time.perf_counter(), None
    try:
        if workers == 1:
            ran = tuning.optimize(plan, trials, timeout, say=err.print)
        else:
            ran = tuning.run_workers(plan, trials, timeout, workers, runs_dir, space_path)
    except tuning.StorageError as e:  # said once the study directory is written from what is known
        ran, lost = {"interrupted": False}, str(e)
    result = tuning.write_study_dir(plan)  # from the run directories where the storage is gone
    _print_study(plan, result, result["trials"] - before, time.perf_counter() - started)
    lost = lost or result.get("storage_error")  # --workers: the workers said why; this process says it once more
    _finish(plan, ran, result, lost, trials, bool(storage), runs_dir)


def _plan(config: str, overrides: list[str], space: Path | None, storage: str | None, study: str | None,
          metric: str | None, direction: str | None, pruner: str, reports_per_epoch: int | None, seed: int | None,
          threads: int, heartbeat: int, runs_dir: Path, say: bool):
    """The study's tune.Plan from the command's options, checked before any trial; and the space's file."""
    from genforge import tune as tuning
    from genforge.config import load_config

    tuning.require()
    if direction not in (None, "min", "max"):
        raise GenforgeError(f"--direction {direction}: give min or max")
    tuning.check_pruner(pruner)
    cfg = load_config(config, overrides)
    params, space_path = tuning.load_space(config, space)
    tuning.check_space(config, overrides, params)
    name = study or cfg.name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}", name):
        raise GenforgeError(f"--study {name}: a study name is letters, digits, '.', '_' and '-'")
    study_dir = runs_dir / f"tune-{name}"
    url = storage or tuning.sqlite_url(study_dir)
    existing = tuning.existing_attrs(url, name)
    metric, direction = tuning.study_metric(metric, direction, cfg, existing)
    reports = tuning.reports_per_epoch(reports_per_epoch, metric, pruner, existing)
    if extra := tuning.metric_overrides(cfg, metric):
        if say:
            err.print(f"{metric} needs {' '.join(extra)}: every trial gets it", markup=False)
        overrides = [*overrides, *extra]
    return tuning.Plan(config, overrides, params, name, study_dir, url, metric, direction, pruner, seed,
                       None if cfg.train.threads else threads, heartbeat, reports), space_path


def _print_study(plan, result: dict, ran: int, seconds: float) -> None:
    counts = f"{result['complete']} complete, {result['pruned']} pruned, {result['fail']} failed"
    out.print(f"study {plan.study}: {result['trials']} trials ({counts}), {ran} in {seconds:.0f} s", highlight=False)
    if result["best"]:
        best = result["best"]
        out.print(f"best: trial {best['trial']}, {plan.metric} {best['value']:.4g}", highlight=False)
        table = Table(show_header=False, box=None)
        for key, value in best["params"].items():
            table.add_row(f"  {key}", f"{value:.4g}" if isinstance(value, float) else str(value))
        out.print(table)
        out.print(f"best config: {best['config']}", highlight=False)
    out.print(f"report:      {plan.study_dir / 'report.html'}", highlight=False)


def _finish(plan, ran: dict, result: dict, lost: str | None, trials: int, stored: bool, runs_dir: Path) -> None:
    """What went wrong, said after the study's summary: failed workers, a lost storage, an interruption (with the
    command that continues), no completed trial; and the exit code."""
    from genforge import tune as tuning

    for worker, code in ran.get("failed", []):  # killed, or an error it printed; its trial fails once stale
        err.print(f"worker {worker} exited with code {code}; a trial it was running is marked failed when its "
                  f"heartbeat is {3 * plan.heartbeat} s old", markup=False)
    if lost:
        source = ("the trials' run directories (each keeps its result in summary.json)" if "storage_error" in result
                  else "the storage")
        raise tuning.StorageError(f"{lost}; {plan.study_dir} was written from {source}; run the command again to "
                                  f"resume once the storage answers")
    if ran["interrupted"]:
        again = " ".join(["genforge tune", plan.source, *plan.overrides, "--trials", str(trials), "--study",
                          plan.study, *(["--storage", tuning.shown_url(plan.storage)] if stored else []),
                          "--runs-dir", str(runs_dir)])
        err.print(f"interrupted; the study keeps every finished trial; continue it with: {again}", markup=False)
        raise typer.Exit(130)
    if not result["best"]:
        err.print(f"no trial completed; see the errors in {plan.study_dir / 'trials.csv'}", markup=False)
    if not result["best"] or ran.get("failed"):
        raise typer.Exit(1)
