"""The commands on run directories: runs (a list with headline metrics), runs compare (two runs side by side) and
runs track (export runs to MLflow or TensorBoard)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.table import Table

from genforge.cli.console import out
from genforge.cli.options import RunsDir
from genforge.errors import GenforgeError

# deferred: genforge's modules (errors aside) import torch: `genforge --help` took 4.0 s with these imports at the
# top, 0.28 s with them in the commands (median of 5 starts)


def runs_list(ctx: typer.Context, runs_dir: RunsDir = Path("runs")):
    """List runs with their headline metrics."""
    if ctx.invoked_subcommand is not None:
        return
    from genforge.rundir import list_runs

    rows = list_runs(runs_dir)
    if not rows:
        out.print(f"no runs in {runs_dir}; train one with `genforge train quickstart`")
        return
    table = Table("run", "kind", "dataset", "status", "test acc", "train s")
    for r in rows:
        acc = r.get("test_accuracy")
        table.add_row(r["run"], r.get("kind", "?"), r.get("dataset", "?"), r["status"],
                      f"{acc:.4f}" if acc is not None else "-", str(r.get("train_seconds", "-")))
    out.print(table)


def _flat(d: dict, prefix: str = "") -> dict:
    """A nested dict's leaves under dotted keys."""
    items = {}
    for k, v in d.items():
        items.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return items


def runs_compare(a: Path, b: Path, diff: Annotated[bool, typer.Option("--diff", help="Only the keys that differ.")]
                 = False):
    """Put two runs' configs and metrics side by side; differences are highlighted (--diff: only those)."""
    from genforge.rundir import read_json, resolve_run

    left, right = ({**_flat(yaml.safe_load((resolve_run(r) / "config.yaml").read_text())),
                    **_flat(read_json(r / "summary.json"), "summary.")} for r in (a, b))
    table = Table("key", a.name, b.name)
    for key in sorted(set(left) | set(right)):
        va, vb = left.get(key, "-"), right.get(key, "-")
        if diff and va == vb:
            continue
        fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
        style = "bold yellow" if va != vb else None
        table.add_row(key, fmt(va), fmt(vb), style=style)
    out.print(table)


def runs_track(
    run_paths: Annotated[list[Path], typer.Argument(metavar="RUN...", help="Run directories.")],
    to: Annotated[str, typer.Option(help="mlflow, tensorboard or both (mlflow,tensorboard).")],
    uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: the run's track.mlflow.uri, else "
                                                 "sqlite:///RUNS/mlruns/mlflow.db).")] = None,
    experiment: Annotated[str | None, typer.Option(help="MLflow experiment (default: the run's config name).")]
    = None,
    log_dir: Annotated[Path | None, typer.Option(help="TensorBoard folder (default: RUNS/tensorboard).")] = None,
):
    """Export run directories to MLflow or TensorBoard: config, every metric with its step, tags, the report and
    plots. Exporting again adds only what is new (a run that was tracked while it trained continues its view)."""
    from genforge import rundir, track
    from genforge.config import TrackConfig, load_config

    names = [name.strip() for name in to.split(",") if name.strip()]
    if not names or set(names) - set(TrackConfig.model_fields):
        raise GenforgeError(f"--to {to}: give mlflow, tensorboard or mlflow,tensorboard")
    given = {"mlflow": {"uri": uri, "experiment": experiment}, "tensorboard": {"log_dir": log_dir and str(log_dir)}}
    for path in run_paths:
        run = rundir.resolve_run(path)
        cfg = load_config(str(run / "config.yaml"))
        track.export_run(run, cfg, names, given)
        out.print(run.name, markup=False, highlight=False)
        for line in track.views(run):
            out.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
