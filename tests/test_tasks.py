"""A task is one object: every kind's task implements the whole interface, and no shared code branches on a task's
name (adding a task is its module under tasks/ plus registry lines). Its verbs are defined there too, once: the
protocols (serve/, the client) name none."""

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

import genforge
from genforge.registry import MODELS
from genforge.tasks.base import Task
from genforge.tasks.verb import Verb

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


SERVING = {v.name: v for spec in MODELS.values() for verb in spec.task.verbs for v in (verb, *verb.companions)}
ROUTE = re.compile(rf"^\S*/({'|'.join(SERVING)})\b")  # a path that names a verb: /v1/models/{name}/classify
PROTOCOLS = ("serve", "client.py")  # the codecs over the verbs: no verb of their own
# shared code that still asks for a verb by its name (a CLI command, a library call that needs a classifier), to be
# moved behind the verbs' definitions with the CLI's package (issue 31); the check below keeps the list from growing
ASKS_BY_NAME = ("cli", "runs.py", "evaluate/privacy.py", "compress/prune.py")


def _strings(path: Path):
    """(line, text) of every string literal, and every literal part of an f-string (Python 3.12 tokenizes those)."""
    for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if token.type == tokenize.STRING:
            try:
                yield token.start[0], ast.literal_eval(token.string)
            except (ValueError, SyntaxError):  # an f-string before 3.12: its literal text is checked whole
                yield token.start[0], token.string
        elif token.type == getattr(tokenize, "FSTRING_MIDDLE", None):
            yield token.start[0], token.string


def test_every_verb_is_one_definition_with_its_inputs():
    """A verb is its name (a str) with its definition: inputs in a pydantic model whose bulk input exists, and the
    tensors, decode, run and answer that every protocol reads."""
    assert {"classify", "explain", "generate", "interpolate", "reconstruct", "forecast", "series"} <= set(SERVING)
    for name, verb in SERVING.items():
        assert isinstance(verb, Verb) and verb == name and verb.summary, name
        if verb.request is not None:
            assert verb.array is None or verb.array in verb.request.model_fields, name
            assert verb.form is None or set(verb.form.model_fields) <= set(verb.request.model_fields), name
        assert type(verb).run is not Verb.run and type(verb).answer is not Verb.answer, name


def test_the_protocols_name_no_verb():
    """serve/ and the client read the verbs' definitions: not one string of theirs is a verb's name or a route of
    one. Elsewhere, only the modules listed ask for a verb by its name (`"classify" in task.verbs`)."""
    found, asking = [], set()
    for path in _shared_files():
        where = path.relative_to(SRC)
        for line, text in _strings(path):
            if not isinstance(text, str) or not (text in SERVING or ROUTE.search(text)):
                continue
            if where.parts[0] in PROTOCOLS:
                found.append(f"{where}:{line}: {text!r}")
            elif re.search(rf"""require\(\s*["']{text}["']|["']{text}["']\s+(not\s+)?in\s+[\w.]*verbs""",
                           path.read_text().splitlines()[line - 1]):
                asking.add(str(where))
    assert not found, "the protocols name a verb (read its definition instead):\n" + "\n".join(found)
    new = sorted(w for w in asking if not w.startswith(ASKS_BY_NAME))
    assert not new, f"shared code that asks for a verb by its name: {new}"
