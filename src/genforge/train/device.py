"""Device, threads, precision and seeding: the machine-dependent choices, made in one place."""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from genforge.config import TrainConfig
from genforge.errors import GenforgeError


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GenforgeError(f"train.device '{name}' is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GenforgeError("train.device=cuda but no CUDA device is visible; use train.device=auto")
    return device


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 (AVX512-BF16 / AMX), where autocast speeds up convolutions."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast pays on this device: CUDA with bf16, or a CPU with native bf16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_fast_bf16()


def use_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    if cfg.precision != "auto":
        return cfg.precision == "bf16"
    return fast_bf16(device)


def use_channels_last(cfg: TrainConfig, device: torch.device, is_image: bool) -> bool:
    if cfg.channels_last != "auto":
        return cfg.channels_last == "on"
    return is_image and device.type in ("cpu", "cuda")


PROC_STAT = Path("/proc/stat")
BUSY_SAMPLE = 0.1  # seconds over which busy_cores watches the machine (10 ms jiffies: 20 of them on 2 cores)


def busy_cores(seconds: float = BUSY_SAMPLE) -> float | None:
    """How many cores were busy over the next `seconds` while this process sleeps (so: with other work), from the
    aggregate cpu line of /proc/stat; None where there is none (not Linux)."""
    def jiffies() -> tuple[int, int]:
        values = [int(v) for v in PROC_STAT.read_text().split("\n", 1)[0].split()[1:9]]  # user .. steal
        return sum(values) - values[3] - values[4], sum(values)  # (busy: not idle, not iowait; all)

    try:
        busy0, all0 = jiffies()
        time.sleep(seconds)
        busy1, all1 = jiffies()
    except (OSError, ValueError, IndexError):
        return None
    return usable_cores() * (busy1 - busy0) / max(1, all1 - all0)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it, else all of them)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pick_threads(requested: int | None, device: torch.device) -> tuple[int, str]:
    """The intra-op threads of a run, and why: train.threads if set; on a CPU, torch's default (the physical cores)
    less the cores other work keeps busy when training starts, at least 1. Threads that wait for a core another
    process holds hold back every parallel region, so a fair share of the cores beats all of them (issue 33's busy
    machine: 31% of the idle speed beside one busy loop with 2 threads on 2 cores)."""
    default = torch.get_num_threads()
    if requested:
        return requested, f"{requested} (train.threads)"
    if device.type != "cpu":
        return default, f"{default} (torch's default; the model runs on {device.type})"
    busy = busy_cores()
    if busy is None:
        return default, f"{default} (torch's default; no /proc/stat to see what else runs)"
    threads = max(1, min(default, math.floor(default - busy + 0.5)))
    return threads, f"{threads} of {default} (other work kept {busy:.1f} cores busy when training started)"


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by cuBLAS for determinism
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


@contextmanager
def restored_torch_settings() -> Iterator[None]:
    """train() sets process-wide torch settings (threads, deterministic algorithms, cuDNN autotuning); put back what
    the caller had when it returns or raises, so a library user's second train() gets its own settings."""
    threads, benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas


def rng_state() -> dict:
    state = {
        "python": list(random.getstate()),
        "numpy": [x.tolist() if isinstance(x, np.ndarray) else x for x in np.random.get_state()],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
