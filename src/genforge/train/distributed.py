"""Data-parallel training on torch.distributed: the process group, who writes, and the few collectives the loop and
the update need. Launched by torchrun (or `genforge train --nproc N`, a thin wrapper over it), which sets RANK,
WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT; without them everything here is a no-op for one process.

Gradients are averaged in the one update function (steps.apply_update), not by wrapping models in
DistributedDataParallel: the steps call model methods other than forward (a GAN's d_loss and g_loss, a VAE's loss),
which DDP's forward hooks never see (docs/decisions.md)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from genforge.errors import GenforgeError
from genforge.train.device import pick_device

TIMEOUT_ENV = "GENFORGE_DIST_TIMEOUT"  # seconds a collective waits for a peer before failing (default 300)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """True in a worker that torchrun started (its environment names a world)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def world() -> World:
    """This process's place in the process group (one process: rank 0 of 1)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_backend())


def timeout() -> timedelta:
    raw = os.environ.get(TIMEOUT_ENV, "300")
    try:
        seconds = float(raw)
    except ValueError:
        raise GenforgeError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    return timedelta(seconds=seconds)


@contextmanager
def process_group(device: str = "auto") -> Iterator[World]:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA, chosen by the device the run trains on),
    and leave it cleanly: a barrier before destroy_process_group, since destroying right after a collective killed a
    gloo rank in 4 of 12 runs (/work/shared/DEPENDENCIES.md). A peer that dies makes the others' next collective fail
    within timeout() instead of hanging."""
    if not launched() or int(os.environ["WORLD_SIZE"]) < 2:
        yield World()
        return
    picked = pick_device(device)
    backend = "nccl" if picked.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    # torch._dynamo imported while a group is up keeps the group alive after destroy_process_group (torch 2.13), so
    # its gloo threads ran into interpreter exit, where a rank sometimes died of SIGABRT ("terminate called without
    # an active exception") after training had finished. train imports it (torch.use_deterministic_algorithms
    # imports torch._inductor.config): import it before joining (docs/decisions.md)
    importlib.import_module("torch._dynamo")

    dist.init_process_group(backend, store=_store(), rank=int(os.environ["RANK"]),
                            world_size=int(os.environ["WORLD_SIZE"]), timeout=timeout())
    ok = False
    try:
        yield world()
        ok = True
    except Exception as e:
        if isinstance(e, dist.DistError) or any(word in str(e) for word in ("gloo", "Gloo", "NCCL", "Timed out")):
            rank = dist.get_rank() if dist.is_initialized() else os.environ["RANK"]
            raise GenforgeError(f"rank {rank}: the process group failed, a peer process died or stopped answering "
                                f"within {TIMEOUT_ENV}={timeout().total_seconds():g} s "
                                f"({str(e).splitlines()[0][:300]})") from e
        raise
    finally:
        if dist.is_initialized():
            if ok:  # after an error a peer may be gone: a barrier would wait for it until the timeout
                dist.barrier()
            dist.destroy_process_group()


def _store() -> dist.Store:
    """torchrun's TCPStore, with keys under this restart's own prefix. torchrun (torch 2.13) keeps one store across
    the restarts of a group and its env:// client adds no per-attempt prefix: a restarted gloo group failed with
    `Gloo connectFullMesh failed ... Connection refused` (reading, we infer, the dead group's addresses), and with its
    own prefix it does not (docs/decisions.md)."""
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), int(os.environ["WORLD_SIZE"]),
                          is_master=os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
                          and os.environ["RANK"] == "0", timeout=timeout())
    return dist.PrefixStore(f"/genforge/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def leave() -> None:
    """Leave the process group once every rank is here (barrier, then destroy): what follows is one rank's alone."""
    if world().size > 1:
        dist.barrier()
        dist.destroy_process_group()


def device_of(device: torch.device) -> torch.device:
    """The device of this rank: its own GPU (LOCAL_RANK) when training on CUDA."""
    w = world()
    if device.type == "cuda" and w.size > 1 and device.index is None:
        return torch.device("cuda", w.local_rank)
    return device


def average_gradients(params: list[nn.Parameter], refused: bool) -> bool:
    """Average the gradients of `params` over the ranks in one all-reduce (what DDP does, in one bucket), and agree
    on refusing the update: True when any rank refused (its loss was not finite). A parameter without a gradient
    counts as zeros, so every rank sends the same shape, and stays without one (unused on every rank alike)."""
    if world().size < 2:
        return refused
    used = [p.grad is not None for p in params]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads]
                     + [torch.tensor([float(refused)], device=grads[0].device if grads else "cpu")])
    dist.all_reduce(flat)
    if flat[-1].item() > 0:
        return True
    flat = flat[:-1] / world().size
    offset = 0
    for p, g, has in zip(params, grads, used):
        n = g.numel()
        if has:  # in place: the gradient keeps its layout (channels_last), so later backwards accumulate into it
            p.grad.copy_(flat[offset:offset + n].view(p.shape))
        offset += n
    return False


def _collective_device() -> torch.device:
    """Where a small tensor must live to be all-reduced: NCCL reduces CUDA tensors only."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def any_rank(*flags: bool) -> tuple[bool, ...]:
    """Each flag OR-ed over the ranks: decisions every rank must take together (stop on a signal or a time limit,
    a GAN's collapse), since the next collective would otherwise pair with a different one on a peer."""
    if world().size < 2:
        return flags
    t = torch.tensor([float(f) for f in flags], device=_collective_device())
    dist.all_reduce(t)
    return tuple(bool(v > 0) for v in t.tolist())


def mean_over_ranks(sums: dict[str, float], count: int) -> tuple[dict[str, float], int]:
    """An epoch's per-rank metric sums and step counts, added over the ranks (every rank logs its steps' means)."""
    if world().size < 2:
        return sums, count
    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys] + [float(count)], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    values = t.tolist()
    return dict(zip(keys, values[:-1])), int(values[-1])


@torch.no_grad()
def average_buffers(module: nn.Module) -> None:
    """Average the floating buffers (BatchNorm running statistics) over the ranks. On CPU each rank normalizes with
    its own shard's batch statistics (SyncBatchNorm is GPU-only); what is saved and evaluated is their mean."""
    if world().size < 2:
        return
    for b in module.buffers():
        if b.is_floating_point():
            dist.all_reduce(b)
            b.div_(world().size)


@torch.no_grad()
def broadcast_parameters(module: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (what DDP does when it wraps a model)."""
    if world().size < 2:
        return
    for t in [*module.parameters(), *module.buffers()]:
        dist.broadcast(t.data, 0)


def gather(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if world().size < 2:
        return [obj]
    out = [None] * world().size
    dist.all_gather_object(out, obj)
    return out


def from_main(make):
    """make() run on rank 0 and its result sent to every rank (a checkpoint read once, a path decided once)."""
    if world().size < 2:
        return make()
    box = [make() if world().is_main else None]
    dist.broadcast_object_list(box, 0)
    return box[0]


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm layers synchronized across the ranks on CUDA; on CPU they stay per-rank (see average_buffers)."""
    if world().size > 1 and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model
