"""Options that commands of more than one family take, spelled and explained once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

RunsDir = Annotated[Path, typer.Option("--runs-dir", help="Parent folder of run directories.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Plain log lines instead of a progress bar.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]
