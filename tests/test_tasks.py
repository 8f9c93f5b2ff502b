"""A task is one object: every kind's task implements the whole interface, and no shared code branches on a task's
name (adding a task is its module under tasks/ plus registry lines)."""

import io
import re
import tokenize
from pathlib import Path

import pytest

import genforge
from genforge.registry import MODELS
from genforge.tasks.base import Task

SRC = Path(genforge.__file__).parent
OWNERS = ("tasks", "models", "registry.py", "presets")  # where a task's or a kind's own name may appear
TASK_NAMES = {spec.task.name for spec in MODELS.values()}
VERBS = {verb for spec in MODELS.values() for verb in spec.task.verbs}  # "classify", "forecast": verbs too
BRANCH = re.compile(r"""\btask\s*(==|!=)|\btask\s+(not\s+)?in\b|["']task["']\s*[],)]""")
ABSTRACT = ("step", "test", "headline", "report", "print_evaluation", "warm_up")


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_every_kind_has_a_whole_task(kind):
    task = MODELS[kind].task
    assert isinstance(task, Task) and task.name in TASK_NAMES and task.verbs and task.parts
    missing = [name for name in ABSTRACT if getattr(type(task), name) is getattr(Task, name)]
    assert not missing, f"{kind}'s task {type(task).__name__} does not implement {missing}"


def _shared_files():
    for path in sorted(SRC.rglob("*.py")):
        if path.relative_to(SRC).parts[0] not in OWNERS:
            yield path


def test_no_shared_code_branches_on_a_task_name():
    found = []
    for path in _shared_files():
        text = path.read_text()
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.STRING and token.string.strip("\"'") in TASK_NAMES - VERBS:
                found.append(f"{path.relative_to(SRC)}:{token.start[0]}: {token.line.strip()}")
        for number, line in enumerate(text.splitlines(), 1):
            if BRANCH.search(line):
                found.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
    assert not found, "shared code that branches on a task's name (ask the task instead):\n" + "\n".join(found)


def test_the_branch_check_catches_what_it_is_for():
    for line in ('if task == "gan":', 'if spec.task != "classify":', 'parts = PARTS[run.meta.get("task", "x")]',
                 'if task in ("gan", "vae"):', 'kind = meta["task"]'):
        assert BRANCH.search(line), line
