"""A tracked study (`track: [mlflow]` in its base config) is an MLflow run, and its trials' runs are its children, in
the base config's experiment rather than one per trial."""

from __future__ import annotations

import json
from pathlib import Path

from genforge import track
from genforge.config import RunConfig
from genforge.tune.plan import Plan
from genforge.tune.space import yaml_value


def mlflow_settings(plan: Plan, base: RunConfig) -> dict | None:
    """Where a tracked study's runs go: the base config's MLflow store and experiment, or the defaults of a run
    trained beside the study directory (RUNS/mlruns/mlflow.db, the config's name), not one experiment per trial."""
    if base.track.mlflow is None:
        return None
    uri = base.track.mlflow.uri or f"sqlite:///{(plan.study_dir.parent / 'mlruns' / 'mlflow.db').resolve()}"
    return {"uri": uri, "experiment": base.track.mlflow.experiment or base.name}


def mlflow_parent(plan: Plan, study, base: RunConfig) -> str | None:
    """With `track: [mlflow]`, the study is an MLflow run and its trials' runs are its children; its id is kept in
    the study, so every worker nests under the same run."""
    settings = mlflow_settings(plan, base)
    if settings is None or (run_id := study.user_attrs.get("mlflow_run_id")):
        return study.user_attrs.get("mlflow_run_id")
    track.require(["mlflow"])
    if settings["uri"].startswith("sqlite:///"):
        Path(settings["uri"].removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = track.mlflow_client_class()(tracking_uri=settings["uri"])
    experiment = track.mlflow_experiment(client, settings["uri"], settings["experiment"])
    run_id = client.create_run(experiment, run_name=f"tune-{plan.study}",
                               tags={"genforge.study": plan.study, "genforge.metric": plan.metric}).info.run_id
    study.set_user_attr("mlflow_run_id", run_id)
    return run_id


def mlflow_finish(plan: Plan, study, result: dict) -> None:
    """The study's MLflow run gets the best value, the best values as tags and the study directory's files."""
    settings, run_id = mlflow_settings(plan, plan.base()), study.user_attrs.get("mlflow_run_id")
    if settings is None or run_id is None:
        return
    client = track.mlflow_client_class()(tracking_uri=settings["uri"])
    if result["best"]:
        client.log_metric(run_id, f"best_{plan.metric}", result["best"]["value"], step=result["trials"])
        for key, value in result["best"]["params"].items():
            client.set_tag(run_id, f"best.{key}", json.dumps(value))
    for name in ("report.html", "trials.csv", "best.yaml", "study.json"):
        if (plan.study_dir / name).is_file():
            client.log_artifact(run_id, str(plan.study_dir / name))
    client.set_terminated(run_id, "FINISHED")


def nested(plan: Plan, trial, base: RunConfig) -> list[str]:
    """The override that makes a tracked trial's run a child of the study's MLflow run, in the study's experiment;
    none for an untracked study."""
    if (parent := trial.study.user_attrs.get("mlflow_run_id")) and (settings := mlflow_settings(plan, base)):
        tracked = base.track.model_dump(mode="json")
        tracked["mlflow"].update(settings, parent_run_id=parent)
        return [f"track={yaml_value(tracked)}"]
    return []
