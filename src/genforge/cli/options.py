"""Options that commands of more than one family take, spelled and explained once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

RunsDir = Annotated[Path, typer.Option("--runs-dir", help="Parent folder of run directories.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Plain log lines instead of a progress bar.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def by_verb(command: str, field: str):
    """An option's check: the value of `field` as the verb that `command` runs defines it (the bounds every protocol
    applies, the same words); typer shows a refusal as `Invalid value for '--option': ...`, exit 2."""

    def check(value):
        if value is None:
            return value
        from genforge.registry import verb_of_command  # deferred: the registry imports torch (see __init__.py)
        from genforge.tasks.verb import RequestError  # deferred, as above

        try:
            verb_of_command(command).fields({field: value})
        except RequestError as e:
            raise typer.BadParameter(str(e).removeprefix(f"{field}: ")) from None
        return value

    return check
