"""Model kind -> its task: what training, evaluation, reports, export and serving do for it (tasks/). A kind's
config class and builder are in models/catalogue.py; nothing below this module imports it."""

from __future__ import annotations

from dataclasses import dataclass

from genforge.models.catalogue import KINDS, Kind
from genforge.tasks import classify, forecast, gan, language, vae
from genforge.tasks.base import Task

TASKS: dict[str, Task] = {
    **{kind: classify.TASK for kind in ("logreg", "mlp", "cnn", "fastcnn", "scatternet", "rowrnn")},
    "gan": gan.TASK,
    "vae": vae.TASK,
    **{kind: forecast.TASK for kind in ("rnn", "naive", "seasonal-naive", "drift", "season-mean")},
    "transformer": language.TASK,
}


@dataclass(frozen=True)
class ModelSpec(Kind):
    task: Task = None  # the step function, evaluation, report, export parts and serving verbs (tasks/)


MODELS: dict[str, ModelSpec] = {kind: ModelSpec(**vars(spec), task=TASKS[kind]) for kind, spec in KINDS.items()}


def task_of(kind: str) -> Task:
    """The task of a model kind (a run's: its config.model.kind)."""
    return TASKS[kind]


def verb_of_command(command: str):
    """The verb that the genforge command `command` runs (tasks.verb.Verb.command): the CLI reads its options'
    bounds from it, so that a command and every protocol refuse the same values."""
    verbs = {v for task in TASKS.values() for verb in task.verbs for v in (verb, *verb.companions)}
    return next(verb for verb in verbs if verb.command == command)
