"""The study directory, RUNS/tune-STUDY: best.yaml (the base config with the best trial's values, ready to train),
trials.csv, study.json, plots/ (Optuna's: optimization history, parameter importances, parallel coordinates,
intermediate values) and report.html (written by evaluate.report's page writer), with the trials' run directories
under trials/.

It is written from the study as the storage holds it, or, where the storage cannot be read (it stopped answering),
from the trials' run directories, each of which keeps its trial's number, state and value in summary.json."""

from __future__ import annotations

import contextlib
import csv
import html
import io
import re
import warnings
from pathlib import Path

import yaml

from genforge import rundir
from genforge.config import dump_config
from genforge.errors import GenforgeError
from genforge.evaluate.report import rows_table, write_html
from genforge.plots import figure
from genforge.tune.plan import Plan
from genforge.tune.storage import scrubbed, shown_url, storage_failure
from genforge.tune.study import open_study
from genforge.tune.tracking import mlflow_finish
from genforge.tune.trial import metric_value

STATES = ("complete", "pruned", "fail", "running")  # the trial states study.json counts


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
    mlflow_finish(plan, study, result)  # outside: MLflow's own SQL store failing is not the study's storage failing
    return result


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


def _write_from_storage(plan: Plan) -> tuple:
    import optuna  # deferred: the optional `tune` extra

    study = open_study(plan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a dead worker's trial is failed, not shown as running
    trials = study.trials
    d = plan.study_dir
    d.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(study, plan)
    _write_table(d, rows)

    result = {"study": plan.study, "storage": shown_url(plan.storage), "metric": plan.metric,
              "direction": plan.direction, "trials": len(trials),
              **{s: sum(t.state.name.lower() == s for t in trials) for s in STATES}, "best": None}
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    if complete:
        best = study.best_trial
        decoded = {p.key: p.decode(best.params[p.key]) for p in plan.space if p.key in best.params}
        result["best"] = _write_best(plan, best.number, best.value, decoded, best.user_attrs.get("run"))
    rundir.write_json(d / "study.json", result)
    _write_report(d, result, rows, _draw_plots(plan, study, len(complete)))
    return study, result


def _draw_plots(plan: Plan, study, complete: int) -> dict:
    """plots/: Optuna's plots of the study; {name: why it is missing} for those it could not draw."""
    import optuna.visualization.matplotlib as vis  # deferred: the optional `tune` extra

    notes = {}
    plots = _clear_plots(plan.study_dir)
    target = [("history", lambda: vis.plot_optimization_history(study)),
              ("importances", lambda: vis.plot_param_importances(study)),
              ("parallel_coordinates", lambda: vis.plot_parallel_coordinate(study)),
              ("intermediate_values", lambda: _xlabel(vis.plot_intermediate_values(study),
                                                      f"report ({plan.reports_per_epoch} per epoch)"))]
    for name, draw in target:
        if complete < (2 if name == "importances" else 1):
            notes[name] = "needs more complete trials"
            continue
        if (why := _plot(plots / f"{name}.png", draw)) is not None:
            notes[name] = why
    return notes


def _xlabel(ax, label: str):
    ax.set_xlabel(label)
    return ax


def _plot(path: Path, draw) -> str | None:
    """Draw one of optuna.visualization.matplotlib's plots into path; None, or why it could not be drawn."""
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


_RUN_NAME = re.compile(r"-trial(\d+)-\d{8}-\d{6}(?:-\d+)?$")  # objective's NAME-trialNNN, then create_run's stamp


def _write_from_runs(plan: Plan, why: str) -> dict:
    """The study directory from what its run directories know, when the storage cannot be read: each run names its
    trial and keeps its value in summary.json (trial._link), its sampled values in config.yaml. Trials that made no
    run directory (a config the values made invalid) or ran on another machine are missing from it."""
    d = plan.study_dir
    known = {row["trial"]: row for run in sorted(p.parent for p in (d / "trials").glob("*/config.yaml"))
             if (row := _run_row(plan, run)) is not None}
    rows = [known[n] for n in sorted(known)]
    d.mkdir(parents=True, exist_ok=True)
    _write_table(d, rows)
    result = {"study": plan.study, "storage": shown_url(plan.storage), "storage_error": why,
              "written_from": "the run directories", "metric": plan.metric, "direction": plan.direction,
              "trials": len(rows), **{s: sum(r["state"] == s for r in rows) for s in STATES}, "best": None}
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


def _run_row(plan: Plan, run: Path) -> dict | None:
    """A trial's row of trials.csv from its run directory; None for a run that names no trial."""
    summary = rundir.read_json(run / "summary.json")
    number = summary.get("tune", {}).get("trial")
    if number is None:  # a run that never reached _link: its name says its trial
        if (match := _RUN_NAME.search(run.name)) is None:
            return None
        number = int(match[1])
    status = summary.get("status")  # none: it was training when the storage (or its worker) stopped
    state = {"complete": "complete", "pruned": "pruned", None: "running"}.get(status, "fail")
    value = summary.get("tune", {}).get("value")
    if state == "complete" and value is None:  # trained, and stopped before it was scored
        with contextlib.suppress(GenforgeError, ValueError, OSError):
            value = metric_value(run, summary, plan.metric)
        state = "complete" if value is not None else "fail"
    config = yaml.safe_load((run / "config.yaml").read_text()) or {}
    return {"trial": number, "state": state, plan.metric: value if state == "complete" else None,
            **{p.key: _dotted(config, p.key) for p in plan.space},
            "epochs": summary.get("epochs"), "seconds": summary.get("train_seconds"),
            "run": str(run.resolve()), "error": summary.get("error", "")}


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
    """report.html: the summary with the best trial, the plots (and why any is missing), the trials, best.yaml."""
    summary = {k: v for k, v in result.items() if k != "best"}
    if result["best"]:
        summary.update({"best trial": result["best"]["trial"], f"best {result['metric']}": result["best"]["value"],
                        **{f"best {k}": v for k, v in result["best"]["params"].items()}})
    missing = "".join(f"<li>{html.escape(k.replace('_', ' '))}: {html.escape(v)}</li>" for k, v in notes.items())
    best_yaml = (d / "best.yaml").read_text() if result["best"] else "no complete trial yet"
    sections = [*([("Not drawn", f"<ul>{missing}</ul>")] if missing else []), ("Trials", rows_table(rows)),
                ("Best config", f"<pre>{html.escape(best_yaml)}</pre>")]
    write_html(d / "report.html", f"study {result['study']}", summary, d / "plots", sections)
