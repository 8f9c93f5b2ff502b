"""Where the commands print: results on stdout, progress and messages on stderr; and the tables that commands of more
than one family print."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

out = Console()
err = Console(stderr=True, soft_wrap=True, highlight=False)  # messages stay one line, paths unbroken


def print_summary(summary: dict) -> None:
    """A training summary, key and value per line."""
    table = Table(show_header=False, box=None)
    for k, v in summary.items():
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    out.print(table)


def _cell(v) -> str:
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    return f"{v:,}" if isinstance(v, int) else f"{v:.4g}" if isinstance(v, float) else str(v)


def print_comparison(child: Path, comparison: dict) -> None:
    """A compressed run beside its parent (compress, and train --resume of a pruned run)."""
    rows = comparison["rows"]
    table = Table(title=f"{child.name} vs its parent ({comparison['threads']} thread(s))")
    table.add_column("")
    for name in rows:
        table.add_column(name, justify="right")
    fields = list(dict.fromkeys(k for row in rows.values() for k in row))
    for field in fields:
        table.add_row(field, *(_cell(row.get(field)) for row in rows.values()))
    out.print(table)
    out.print(f"run directory: {child}\nreport:        {child / 'report.html'}")
