"""The training commands: train (a new run, --resume, --nproc N processes, a torchrun worker), cv, quickstart and
presets (what there is to train)."""

from __future__ import annotations

import os
import statistics
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer
import yaml

from genforge.cli.console import err, out, print_comparison, print_summary
from genforge.cli.options import Quiet, RunsDir
from genforge.errors import GenforgeError

# deferred: genforge's modules (errors aside) import torch: `genforge --help` took 4.0 s with these imports at the
# top, 0.28 s with them in the commands (median of 5 starts)

RESUME_ALONE = ("--resume continues a run with its own config.yaml: give no preset, overrides, --name or --track (to "
                "change the config, train a new run; to mirror a run into a tracker, genforge runs track RUN)")
NO_CONFIG = "give a preset or a config file; list presets with `genforge presets`"


def train(
    config: Annotated[str | None, typer.Argument(help="A preset name or a YAML file.")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value, e.g. train.lr=3e-4 seed=1")] = None,
    name: Annotated[str | None, typer.Option(help="Run name (prefix of the run directory).")] = None,
    runs_dir: RunsDir = Path("runs"),
    resume: Annotated[Path | None, typer.Option(help="Continue this run directory in place.")] = None,
    track: Annotated[str | None, typer.Option(help="Mirror the run into trackers: mlflow, tensorboard or both "
                                                   "(mlflow,tensorboard); the same as track=[...].")] = None,
    quiet: Quiet = False,
    nproc: Annotated[int | None, typer.Option("--nproc", help="Data-parallel training in N processes on this machine "
                                                               "(torchrun --standalone; gloo on CPU, NCCL on CUDA); "
                                                               "train.batch_size is the global batch.")] = None,
    max_restarts: Annotated[int | None, typer.Option("--max-restarts", help="With --nproc: restart the group up "
                                                                            "to K times after a process dies; "
                                                                            "training resumes from the last "
                                                                            "checkpoint.")] = None,
):
    """Train a model into a new run directory, or --resume an interrupted one."""
    from genforge.train import distributed, launch
    from genforge.train.loop import Interrupted

    launching = nproc is not None or max_restarts is not None
    if launching:
        launch.check_processes(nproc, max_restarts)
    if resume is not None and (config is not None or overrides or name is not None or track is not None):
        raise GenforgeError(RESUME_ALONE)
    if resume is None and config is None:
        raise GenforgeError(NO_CONFIG)
    if launching:
        raise typer.Exit(_launch(config, overrides or [], name, runs_dir, resume, track, quiet, nproc,
                                 max_restarts or 0))
    try:
        if distributed.launched():  # a worker of torchrun (or of --nproc)
            trained = _train_worker(_config(config, overrides, name, track, resume), resume, runs_dir, quiet)
        elif resume is not None:
            trained = _resume(resume, quiet)
        else:
            trained = _train_new(_config(config, overrides, name, track, None), runs_dir, quiet)
    except Interrupted as e:
        if not distributed.launched() or os.environ["RANK"] == "0":  # one message for a group of processes
            err.print(str(e), markup=False)
        raise typer.Exit(130) from None
    if trained is not None:  # None: a rank other than 0, or a pruned run that printed its comparison
        _print_trained(*trained)


def _config(config: str | None, overrides: list[str] | None, name: str | None, track: str | None,
            resume: Path | None):
    """The run's config: a resumed run's own config.yaml, else the preset or file with the overrides, --track and
    --name, validated like any key."""
    from genforge import rundir
    from genforge.config import load_config

    if resume is not None:
        return load_config(str(rundir.resolve_run(resume) / "config.yaml"))
    tracked = [f"track=[{track}]"] if track is not None else []
    return load_config(config, [*(overrides or []), *tracked, *([f"name={name}"] if name else [])])


def _launch(config: str | None, overrides: list[str], name: str | None, runs_dir: Path, resume: Path | None,
            track: str | None, quiet: bool, nproc: int, max_restarts: int) -> int:
    """`genforge train ... --nproc N`: the config checked here, before any process starts, then torchrun starting N
    workers of `genforge train` with the same arguments; its exit code."""
    from genforge.train import launch

    launch.check_config(_config(config, overrides, name, track, resume), nproc)
    if resume is not None:
        args = ["--resume", str(resume)]
    else:
        args = [config, *overrides, *(["--name", name] if name else []), *(["--track", track] if track else [])]
    return launch.launch(nproc, max_restarts, [*args, "--runs-dir", str(runs_dir), *(["--quiet"] if quiet else [])])


def _train_worker(cfg, resume: Path | None, runs_dir: Path, quiet: bool) -> tuple[Path, dict] | None:
    """One rank of a torchrun launch (genforge.train.launch.train_worker); None on the ranks other than 0."""
    from genforge import rundir
    from genforge.train import launch
    from genforge.training import train as train_loop

    run_dir = rundir.resolve_run(resume) if resume is not None else None
    run_dir, summary = launch.train_worker(cfg, run_dir, runs_dir, quiet, train_loop,
                                           say=lambda line: err.print(line, markup=False))
    return None if summary is None else (run_dir, summary)


def _resume(run: Path, quiet: bool) -> tuple[Path, dict] | None:
    """Continue an interrupted run in place; a pruned run (compression.json) finishes its schedule and prints the
    comparison with its parent (then None)."""
    from genforge import rundir
    from genforge.compress.prune import resume_prune
    from genforge.config import load_config
    from genforge.training import train as train_loop

    run_dir = rundir.resolve_run(run)
    if (run_dir / "compression.json").is_file():
        print_comparison(*resume_prune(run_dir, quiet, progress=err.print))
        return None
    if rundir.read_json(run_dir / "summary.json").get("status") == "complete":
        raise GenforgeError(f"{run_dir} finished training already; there is nothing to resume")
    return run_dir, train_loop(load_config(str(run_dir / "config.yaml")), run_dir, resume=True, quiet=quiet)


def _train_new(cfg, runs_dir: Path, quiet: bool) -> tuple[Path, dict]:
    from genforge import rundir, track
    from genforge.training import train as train_loop

    track.require(cfg.track.names())  # before the run directory: a refused run leaves nothing behind
    run_dir = rundir.create_run(runs_dir, cfg.name, cfg)
    err.print(f"run directory: {run_dir}")
    return run_dir, train_loop(cfg, run_dir, quiet=quiet)


def _print_trained(run_dir: Path, summary: dict) -> None:
    from genforge.track import views

    print_summary(summary)
    out.print(f"run: {run_dir}\nreport: {run_dir / 'report.html'}")
    for line in views(run_dir):  # where `track` mirrored the run
        out.print(line, markup=False, highlight=False, soft_wrap=True)


def cv(
    config: Annotated[str, typer.Argument(help="A preset name or a YAML file.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides.")] = None,
    folds: Annotated[int, typer.Option(min=2, help="Number of stratified folds.")] = 5,
    runs_dir: RunsDir = Path("runs"),
    quiet: Quiet = False,
):
    """Stratified k-fold cross-validation on the training split: mean ± sd of the fold accuracies."""
    from genforge import rundir
    from genforge.config import load_config
    from genforge.training import train as train_loop

    cfg = load_config(config, overrides or [])
    parent = rundir.create_run(runs_dir, f"{cfg.name}-cv", cfg)
    scores = []
    for k in range(folds):  # a fold trains and scores on its validation part only: no test evaluation or report
        fold_dir = rundir.create_run(parent, f"fold{k}", cfg)
        summary = train_loop(cfg, fold_dir, quiet=quiet, fold=(k, folds))
        scores.append(summary["fold_accuracy"])
        err.print(f"fold {k + 1}/{folds}: accuracy {summary['fold_accuracy']:.4f}")
    result = {"folds": folds, "accuracies": scores, "mean": statistics.mean(scores), "sd": statistics.stdev(scores)}
    rundir.write_json(parent / "cv.json", result)
    out.print(f"cross-validated accuracy: {result['mean']:.4f} ± {result['sd']:.4f} over {folds} folds  ({parent})")


def presets():
    """List the shipped presets."""
    from genforge.config import preset_names

    for name in preset_names():
        text = resources.files("genforge.presets").joinpath(f"{name}.yaml").read_text()
        first = text.splitlines()[0].lstrip("# ") if text.startswith("#") else ""
        model = (yaml.safe_load(text) or {}).get("model", {}).get("kind", "")
        out.print(f"[bold]{name:18}[/] {model:8} {first}")


def quickstart(runs_dir: RunsDir = Path("runs"), quiet: Quiet = False):
    """Train a CNN on MNIST (or the offline 5k sample), evaluate it, and show what to try next."""
    from genforge.config import load_config
    from genforge.data import load_dataset

    dataset = "mnist"
    try:
        load_dataset("mnist", progress=not quiet)
    except GenforgeError as e:
        err.print(f"mnist is not available ({e}); using the offline mnist-5k sample instead")
        dataset = "mnist-5k"
    run_dir, summary = _train_new(load_config("quickstart", [f"data.name={dataset}"]), runs_dir, quiet)
    print_summary(summary)
    out.print(f"\nrun directory: {run_dir}\nreport:        {run_dir / 'report.html'}\n\nnext, try:\n"
              f"  genforge evaluate {run_dir}\n"
              f"  genforge train fashion-cnn-fast\n"
              f"  genforge runs")
