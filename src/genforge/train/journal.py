"""What a run says while it trains: metrics.jsonl (one line per epoch), the plain log lines of a quiet run, the
progress bar of one that is not, and the trackers (track.py) that follow the run directory. Rank 0's alone under
torch.distributed.

metrics.jsonl is the one file of the run dir not written through rundir.write_bytes: it gets one appended line per
epoch, since rewriting the whole log each epoch would cost O(epochs) per epoch for no gain; a line torn by a crash is
dropped when the run resumes (truncate_metrics, atomic)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from genforge import rundir, track


def _logged_step(line: str) -> int | None:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):  # a line torn by a crash mid-append
        return None


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop what the interrupted process logged after its last checkpoint (and a torn last line)."""
    if path.is_file():
        keep = [line for line in path.read_text().splitlines() if (logged := _logged_step(line)) is not None
                and logged <= step]
        rundir.write_text(path, "".join(line + "\n" for line in keep))


class Journal:
    """The run's metrics.jsonl, log lines, progress bar and trackers."""

    def __init__(self, run_dir: Path, quiet: bool, main: bool = True, tracking: track.Tracking | None = None):
        self.path, self.quiet, self.main = run_dir / "metrics.jsonl", quiet, main
        self.tracking = tracking or track.Tracking(run_dir, [])
        self.progress: Progress | None = None
        self.bar = None

    def line(self, text: str) -> None:
        """A plain log line on stderr (a quiet run's; the progress bar says it otherwise)."""
        if self.quiet and self.main:
            print(text, file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        """A line on stderr whether the run is quiet or not: a choice the run made for the user (its threads)."""
        if self.main:
            print(text, file=sys.stderr, flush=True)

    def epoch(self, record: dict) -> None:
        """An epoch's record: appended to metrics.jsonl, and said as a log line."""
        if self.main:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())  # once per epoch: the line survives a crash of the machine, not just the process
        self.line(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))

    def resumed(self, step: int) -> None:
        """A resumed run forgets what it logged after its checkpoint at `step`."""
        if self.main:
            truncate_metrics(self.path, step)

    def sync(self) -> None:
        """The trackers take the lines metrics.jsonl holds: after the checkpoint, so a resume keeps every line they
        were given."""
        self.tracking.sync()

    @contextmanager
    def showing(self, total: int, completed: int) -> Iterator[None]:
        """The progress bar over the run's `total` steps, `completed` done already."""
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 disable=self.quiet or not self.main, transient=False)
        with self.progress:
            self.bar = self.progress.add_task("train", total=total, completed=completed, stats="")
            yield

    def step(self, description: str, metrics: dict[str, float], rate: float, unit: str = "img") -> None:
        """One applied update: the bar advances and shows the step's metrics (the learning rate aside) and the rate in
        the task's unit (images, windows, tokens a second)."""
        shown = " ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k != "lr")
        self.progress.update(self.bar, advance=1, description=description, stats=f"{shown} {rate:,.0f} {unit}/s")

    def describe(self, description: str) -> None:
        self.progress.update(self.bar, description=description)
