"""Experiment tracking: MLflow and TensorBoard as views of a run directory (config `track: [mlflow, tensorboard]`).

The run directory stays the source of truth. A tracker copies what the run directory holds: the resolved config
(config.yaml) as parameters, every line of metrics.jsonl with its step, tags (kind, dataset, git commit) and, when
the run ends, the report, plots and sample grids. The loop syncs after each epoch's checkpoint, so a tracker only
ever holds lines that a resume keeps (a resume truncates metrics.jsonl back to its checkpoint). track.json in the
run directory says where each view is and up to which step it holds the metrics; `genforge runs track RUN --to
mlflow` (re)builds a view of any run directory from it.

No network: MLflow writes to a local SQLite file unless given another URI, and its telemetry is turned off."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from genforge import rundir
from genforge.errors import GenforgeError

# what each tracker needs installed: (module to import, its pip requirement); pyproject's `track` extra lists them all
PACKAGES = {
    "mlflow": (("mlflow", "mlflow-skinny>=3.1"), ("sqlalchemy", "sqlalchemy>=2"), ("alembic", "alembic>=1.13")),
    "tensorboard": (("tensorboard", "tensorboard>=2.16"),),
}
ARTIFACTS_SKIPPED = ("checkpoints", "export")  # weights and ONNX files stay in the run directory (large)


def require(names: list[str]) -> None:
    """A one-line error with the install command unless every package the named trackers need is installed."""
    missing = [req for name in names for module, req in PACKAGES[name] if importlib.util.find_spec(module) is None]
    if missing:
        wanted = [name for name in names if any(req in missing for _, req in PACKAGES[name])]
        raise GenforgeError(f"track: {' and '.join(wanted)} {'is' if len(wanted) == 1 else 'are'} not installed; "
                            f"install with: pip install {' '.join(repr(r) if '>' in r else r for r in missing)} "
                            f"(or `pip install -e '.[track]'` in a checkout), or remove `track`")


def flat_config(tree: dict, prefix: str = "") -> dict[str, str]:
    """config.yaml's nested mapping -> {"train.lr": "0.001", ...}; values that are not strings as JSON."""
    items = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            items.update(flat_config(v, f"{prefix}{k}."))
        else:
            items[f"{prefix}{k}"] = v if isinstance(v, str) else json.dumps(v)
    return items


def metric_lines(run_dir: Path) -> list[dict]:
    """metrics.jsonl's records (a torn last line, left by a crash, is skipped: the resume drops it too)."""
    path = run_dir / "metrics.jsonl"
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def describe(run_dir: Path) -> dict[str, str]:
    """Tags from the run directory: what the run trains (kind, dataset) and the code it was trained with."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    meta, env = rundir.read_json(run_dir / "meta.json"), rundir.read_json(run_dir / "env.json")
    tags = {"genforge.kind": cfg.get("model", {}).get("kind", ""), "genforge.run_dir": str(run_dir.resolve()),
            "genforge.dataset": meta.get("dataset") or cfg.get("data", {}).get("name", "")}
    if env.get("git"):
        tags["mlflow.source.git.commit"] = env["git"]  # the tag MLflow's UI shows as the source version
    if env.get("genforge"):
        tags["genforge.version"] = env["genforge"]
    return tags


def artifact_files(run_dir: Path) -> list[Path]:
    """The report, plots, sample grids and the small JSON/YAML files: everything but weights and exports."""
    return sorted(p for p in run_dir.rglob("*") if p.is_file() and p.suffix not in (".safetensors", ".onnx", ".data")
                  and p.relative_to(run_dir).parts[0] not in ARTIFACTS_SKIPPED and not p.name.startswith(".")
                  and p.name != "track.json")  # where the views are, not what they show


class Tracker:
    """One view of a run directory. `start` opens it (reopens it after a resume) and returns the last step it holds;
    `describe` gives it the run's config and tags (once per process); `log` the metric records after that step;
    `finish` the artifacts; `close` ends it with a status (FINISHED, KILLED, FAILED)."""
    name: str

    def __init__(self, run_dir: Path, settings: dict, record: dict):
        self.run_dir, self.settings, self.record = run_dir, settings, record

    def start(self) -> int:
        raise NotImplementedError

    def describe(self, config: dict[str, str], tags: dict[str, str], first: bool) -> None:
        raise NotImplementedError

    def log(self, records: list[dict]) -> None:
        raise NotImplementedError

    def finish(self, files: list[Path], summary: dict) -> None:
        raise NotImplementedError

    def close(self, status: str) -> None:
        raise NotImplementedError


def _scalars(record: dict) -> dict[str, float]:
    return {k: float(v) for k, v in record.items() if k != "step" and isinstance(v, (int, float))
            and not isinstance(v, bool)}


def mlflow_client_class():
    """MlflowClient, imported with MLflow's telemetry off: MLflow sends usage events to its developers' servers
    unless MLFLOW_DISABLE_TELEMETRY is set when it is imported (or re-initialized, if something imported it first)."""
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    imported = "mlflow" in sys.modules
    # deferred: optional (the track extra), imported when an MLflow tracker is used
    from mlflow import MlflowClient

    if imported:
        from mlflow.telemetry.client import set_telemetry_client

        set_telemetry_client()  # reads the variable again: no client
    return MlflowClient


def mlflow_experiment(client, uri: str, name: str) -> str:
    """The id of MLflow experiment `name`, created if needed. In a SQLite store its artifacts go beside the database
    (ARTIFACTS/<name>, ARTIFACTS = the database's folder/artifacts); MLflow's own default, ./mlruns, would follow the
    current directory. A tune study's run is created in the experiment this returns."""
    found = client.get_experiment_by_name(name)
    if found is None:
        root = Path(uri.removeprefix("sqlite:///")).parent / "artifacts" if uri.startswith("sqlite:///") else None
        try:
            return client.create_experiment(name, artifact_location=(root / name).as_uri() if root else None)
        except Exception:  # another process created it first
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if found.lifecycle_stage == "deleted":
        client.restore_experiment(found.experiment_id)
    return found.experiment_id


class MLflowTracker(Tracker):
    """One MLflow run per run directory, in an experiment named after the config's name (runs of one recipe side by
    side). Default store: RUNS/mlruns/mlflow.db (SQLite) with artifacts under RUNS/mlruns/artifacts."""
    name = "mlflow"

    def start(self) -> int:
        MlflowClient = mlflow_client_class()  # noqa: N806
        runs_root = self.run_dir.resolve().parent
        uri = self.settings.get("uri") or f"sqlite:///{runs_root / 'mlruns' / 'mlflow.db'}"
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        experiment = self.settings.get("experiment") or self.settings["name"]
        self.client = client = MlflowClient(tracking_uri=uri)
        if self.record.get("uri") != uri or self.record.get("experiment") != experiment:
            self.record.clear()  # another store or experiment: a new view
        experiment_id = mlflow_experiment(client, uri, experiment)
        run_id = self.record.get("run_id")
        if run_id is not None:
            try:
                if client.get_run(run_id).info.lifecycle_stage == "deleted":
                    client.restore_run(run_id)
            except Exception:  # the run is gone from the store: a new view
                run_id = None
        if run_id is None:
            parent = self.settings.get("parent_run_id")
            run_id = client.create_run(experiment_id, run_name=self.run_dir.name,
                                       tags={"mlflow.parentRunId": parent} if parent else None).info.run_id
            self.record.update(uri=uri, experiment=experiment, run_id=run_id, step=-1)
        else:
            client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        # the store is the authority on what it holds: a process killed after logging and before track.json was
        # written must not log the same step again; every record has `epoch`
        held = [m.step for m in client.get_metric_history(run_id, "epoch")]
        return max([self.record["step"], *held])

    def describe(self, config: dict[str, str], tags: dict[str, str], first: bool) -> None:
        # deferred: optional (the track extra), imported when an MLflow tracker is used
        from mlflow.entities import Param, RunTag

        params = [] if self.client.get_run(self.run_id).data.params else [Param(k, v) for k, v in config.items()]
        tag_list = [RunTag(k, v) for k, v in tags.items()]
        for i in range(0, max(len(params), len(tag_list)), 100):  # log_batch takes at most 100 params and tags
            self.client.log_batch(self.run_id, params=params[i : i + 100], tags=tag_list[i : i + 100])

    def log(self, records: list[dict]) -> None:
        # deferred: optional (the track extra), imported when an MLflow tracker is used
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, r["step"]) for r in records for k, v in _scalars(r).items()]
        for i in range(0, len(metrics), 1000):  # log_batch takes at most 1000 metrics
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def finish(self, files: list[Path], summary: dict) -> None:
        # deferred: optional (the track extra), imported when an MLflow tracker is used
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        step = summary.get("steps", 0)
        held = self.client.get_run(self.run_id).data.metrics  # a second export logs only what changed
        final = [Metric(f"summary.{k}", v, now, step) for k, v in _scalars(summary).items()
                 if held.get(f"summary.{k}") != v]
        if final:
            self.client.log_batch(self.run_id, metrics=final)
        for path in files:
            parent = path.parent.relative_to(self.run_dir)
            self.client.log_artifact(self.run_id, str(path), None if parent == Path() else parent.as_posix())

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


class TensorBoardTracker(Tracker):
    """Event files in LOG_DIR/<run directory name> (default LOG_DIR: RUNS/tensorboard): scalars per step, the config
    and tags as text, the plots as images."""
    name = "tensorboard"

    def start(self) -> int:
        # deferred: optional (the track extra), imported when TensorBoard is used
        from torch.utils.tensorboard import SummaryWriter

        log_dir = Path(self.settings.get("log_dir") or self.run_dir.resolve().parent / "tensorboard")
        log_dir = log_dir / self.run_dir.name
        if self.record.get("log_dir") != str(log_dir):
            self.record.clear()
            self.record.update(log_dir=str(log_dir), step=-1)
        step = self.record["step"]
        # a process killed after writing events and before track.json was written: TensorBoard's readers drop the
        # events from step+1 on that older files hold, so no step is shown twice
        resumed = log_dir.is_dir() and any(log_dir.glob("events.out.tfevents.*"))
        self.writer = SummaryWriter(str(log_dir), purge_step=step + 1 if resumed else None)
        return step

    def describe(self, config: dict[str, str], tags: dict[str, str], first: bool) -> None:
        if first:
            lines = [f"| {k} | {v} |" for k, v in {**tags, **config}.items()]
            self.writer.add_text("run", "\n".join(["| key | value |", "|---|---|", *lines]), 0)

    def log(self, records: list[dict]) -> None:
        for r in records:
            for k, v in _scalars(r).items():
                self.writer.add_scalar(k, v, r["step"])
        self.writer.flush()

    def finish(self, files: list[Path], summary: dict) -> None:
        if self.record.get("artifacts"):  # a second export would show the images twice
            return

        step = summary.get("steps", 0)
        for path in files:
            if path.suffix == ".png":
                with Image.open(path) as image:
                    pixels = np.asarray(image.convert("RGB"))
                self.writer.add_image(path.relative_to(self.run_dir).with_suffix("").as_posix(), pixels, step,
                                      dataformats="HWC")
        self.writer.add_text("summary", "\n".join(["| key | value |", "|---|---|",
                                                   *(f"| {k} | {v} |" for k, v in summary.items())]), step)
        self.record["artifacts"] = True

    def close(self, status: str) -> None:
        self.writer.close()


TRACKERS = {cls.name: cls for cls in (MLflowTracker, TensorBoardTracker)}


class Tracking:
    """The trackers of one run directory, kept in step with it: sync() exports what metrics.jsonl holds beyond each
    tracker's last step and records it in track.json."""
    def __init__(self, run_dir: Path, trackers: list[Tracker]):
        self.run_dir, self.trackers = Path(run_dir), trackers
        self.steps = {t.name: t.start() for t in trackers}
        self.described = False
        self._save()

    def _save(self) -> None:
        if self.trackers:
            saved = rundir.read_json(self.run_dir / "track.json")
            rundir.write_json(self.run_dir / "track.json", {**saved, **{t.name: t.record for t in self.trackers}})

    def sync(self) -> None:
        """Export the metrics logged since the last sync (call it once they are checkpointed)."""
        if not self.trackers:
            return
        records = metric_lines(self.run_dir)
        if not self.described and records:  # config.yaml is final once the data decided its part (first epoch)
            config = flat_config(yaml.safe_load((self.run_dir / "config.yaml").read_text()) or {})
            tags = describe(self.run_dir)
            for t in self.trackers:
                t.describe(config, tags, first=self.steps[t.name] < 0)
            self.described = True
        for t in self.trackers:
            new = [r for r in records if r["step"] > self.steps[t.name]]
            if new:
                t.log(new)
                self.steps[t.name] = t.record["step"] = new[-1]["step"]
        self._save()

    def finish(self) -> None:
        """The run ended: last metrics, the summary's numbers, the report and plots; the views are closed."""
        if not self.trackers:
            return
        self.sync()
        summary = rundir.read_json(self.run_dir / "summary.json")
        files = artifact_files(self.run_dir)
        for t in self.trackers:
            t.finish(files, summary)
        self._save()
        self.close("FINISHED" if summary.get("status", "complete") == "complete" else "FAILED")

    def close(self, status: str) -> None:
        """End every view with an MLflow run status: FINISHED, KILLED (interrupted, resumable) or FAILED."""
        for t in self.trackers:
            try:
                t.close(status)
            except Exception:
                if status == "FINISHED":
                    raise
                # closing after an error or an interrupt: the status is lost, the error that ended the run is not
        self.trackers = []


def views(run_dir: Path) -> list[str]:
    """Where a run's views are (track.json), one line each, e.g. `mlflow: run ID in URI (experiment NAME)`."""
    recorded = rundir.read_json(Path(run_dir) / "track.json")
    lines = []
    if m := recorded.get("mlflow"):
        lines.append(f"mlflow: run {m['run_id']} in {m['uri']} (experiment {m['experiment']})")
    if t := recorded.get("tensorboard"):
        lines.append(f"tensorboard: {t['log_dir']}")
    return lines


def open_tracking(run_dir: Path, names: list[str], settings: dict[str, dict]) -> Tracking:
    """The named trackers of `run_dir`, reopened where track.json says they are; settings: per tracker (mlflow: uri,
    experiment, name; tensorboard: log_dir)."""
    if not names:
        return Tracking(run_dir, [])
    require(names)
    recorded = rundir.read_json(Path(run_dir) / "track.json")
    return Tracking(run_dir, [TRACKERS[n](Path(run_dir), settings.get(n, {}), dict(recorded.get(n, {})))
                              for n in names])


def settings_of(cfg) -> tuple[list[str], dict[str, dict]]:
    """The trackers a RunConfig turns on, and their settings."""
    names = cfg.track.names()
    settings = {n: {**(getattr(cfg.track, n).model_dump()), "name": cfg.name} for n in names}
    return names, settings


def for_training(cfg, run_dir: Path) -> Tracking:
    """The trackers a run's config asks for (none: a Tracking that does nothing)."""
    return open_tracking(run_dir, *settings_of(cfg))


def export_run(run_dir: Path, cfg, names: list[str], given: dict[str, dict]) -> None:
    """Mirror a run directory into the named trackers after it ran (`genforge runs track`): the settings of its
    config (cfg) for each, where `given` (per tracker; None: the config's) does not override them. A run without a
    status (interrupted, or still training) is mirrored as far as it got and closed as KILLED; exporting again adds
    only what is new."""
    settings = {n: {"name": cfg.name, **(getattr(cfg.track, n).model_dump() if getattr(cfg.track, n) else {}),
                    **{k: v for k, v in given.get(n, {}).items() if v is not None}} for n in names}
    tracking = open_tracking(run_dir, names, settings)
    if rundir.read_json(run_dir / "summary.json").get("status") is None:
        tracking.sync()
        tracking.close("KILLED")
    else:
        tracking.finish()
