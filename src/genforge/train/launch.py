"""Launching data-parallel training and restarting it: `genforge train --nproc N` starts torchrun's own launcher
(torch.distributed.run) on this machine, and each of its workers joins the group, agrees with the others on one run
directory (the same one after torchrun restarts the group) and resumes from its checkpoint when there is one.

The workers are handed the function that trains (train(cfg, run_dir, resume=, quiet=) -> summary): the
application's, which knows the run's task; train/ sits below it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from genforge import rundir
from genforge.config import RunConfig
from genforge.errors import GenforgeError
from genforge.train import distributed

RUN_ID_ENV = "TORCHELASTIC_RUN_ID"  # torchrun's name for this launch: the same in every restart of its group
RESTART_ENV = "TORCHELASTIC_RESTART_COUNT"  # 0 at the first start, then 1, 2... after each restart


def check_processes(nproc: int | None, max_restarts: int | None) -> None:
    """--nproc and --max-restarts themselves, before any process starts or any config loads."""
    if nproc is None:
        raise GenforgeError("--max-restarts restarts the processes of --nproc N: give --nproc too")
    if nproc < 1:
        raise GenforgeError(f"--nproc {nproc}: give the number of processes, 1 or more")
    if max_restarts is not None and max_restarts < 0:
        raise GenforgeError(f"--max-restarts {max_restarts}: give 0 or more")
    if distributed.launched():
        raise GenforgeError("--nproc inside a torchrun launch: torchrun already started the processes; drop --nproc")


def check_config(cfg: RunConfig, nproc: int) -> None:
    """What a config must allow to train in `nproc` processes."""
    if cfg.train.privacy is not None and nproc > 1:
        raise GenforgeError("train.privacy with --nproc: Opacus' distributed mode is not wired into genforge; train "
                            "privately in one process (drop --nproc)")
    if cfg.train.batch_size % nproc:
        raise GenforgeError(f"train.batch_size={cfg.train.batch_size} is the global batch, split evenly over the "
                            f"processes: make it a multiple of --nproc {nproc}")


def launch(nproc: int, max_restarts: int, worker_args: list[str]) -> int:
    """torchrun's own launcher (torch.distributed.run) on this machine, starting `nproc` workers of
    `python -m genforge train WORKER_ARGS`; its exit code, 130 after a Ctrl-C. Its flags and environment variables
    behave as its documentation says (https://pytorch.org/docs/stable/elastic/run.html)."""
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            f"--max-restarts={max_restarts}", "-m", "genforge", "train", *worker_args]
    interrupted = False

    def note(signum, frame):  # torchrun got the same Ctrl-C and stops its workers (they checkpoint): keep waiting
        nonlocal interrupted
        interrupted = True

    # a handler of our own, not Python's KeyboardInterrupt: a process started in the background inherits SIGINT
    # ignored, and Python then installs none, while torchrun's agent always handles it
    previous = signal.signal(signal.SIGINT, note)
    try:
        code = subprocess.Popen(argv).wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    return 130 if interrupted else code  # torchrun itself ends a Ctrl-C with a traceback and exit code 1


def elastic_run_dir(runs_dir: Path, cfg: RunConfig) -> Path:
    """Rank 0's choice of the run directory under torchrun: a new one at the first start, the same one when torchrun
    restarts the group (TORCHELASTIC_RESTART_COUNT > 0), found through a marker named by the launch's run ID."""
    marker = runs_dir / ".torchrun" / os.environ.get(RUN_ID_ENV, "none")
    if int(os.environ.get(RESTART_ENV, "0")) > 0 and marker.is_file():
        return Path(marker.read_text())
    run_dir = rundir.create_run(runs_dir, cfg.name, cfg)
    marker.parent.mkdir(parents=True, exist_ok=True)
    rundir.write_text(marker, str(run_dir))
    return run_dir


def train_worker(cfg: RunConfig, run_dir: Path | None, runs_dir: Path, quiet: bool, train: Callable[..., dict],
                 say: Callable[[str], object]) -> tuple[Path, dict | None]:
    """One rank of a torchrun launch: join the group, agree on the run directory (rank 0's: `run_dir` to resume,
    else elastic_run_dir's), resume from its checkpoint when there is one (a restarted group), train. Rank 0 says
    where and returns the summary; the others return None."""
    with distributed.process_group(cfg.train.device) as world:
        if run_dir is None:
            run_dir = Path(distributed.from_main(lambda: str(elastic_run_dir(runs_dir, cfg))))
        elif distributed.from_main(lambda: rundir.read_json(run_dir / "summary.json").get("status") == "complete"):
            raise GenforgeError(f"{run_dir} finished training already; there is nothing to resume")
        resume = distributed.from_main((run_dir / rundir.CHECKPOINT).is_file)
        if world.is_main:
            say(f"run directory: {run_dir} ({world.size} processes, {world.backend or 'one process'}"
                f"{', resumed' if resume else ''})")
        summary = train(cfg, run_dir, resume=resume, quiet=quiet or not world.is_main)
    return run_dir, summary if world.is_main else None
