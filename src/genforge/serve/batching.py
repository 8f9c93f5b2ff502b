"""Micro-batching: concurrent classify requests for one model are collected for up to max_wait_ms (or until
max_batch rows), run as one batch on the single inference thread, then split back to their callers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor

import torch


class MicroBatcher:
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], executor: Executor, max_batch: int = 256,
                 max_wait_ms: float = 2.0, on_batch: Callable[[int], None] | None = None):
        self.fn, self.executor = fn, executor
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self.on_batch = on_batch or (lambda size: None)
        self.pending: list[tuple[torch.Tensor, asyncio.Future]] = []
        self.wake: asyncio.Event | None = None
        self.task: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Run the collector in the current event loop (again, if the app moved to another loop, as test
        clients do)."""
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done() or self.loop is not loop:
            self.loop, self.wake, self.pending = loop, asyncio.Event(), []
            self.task = loop.create_task(self._run())

    async def stop(self) -> None:
        task, self.task = self.task, None
        if task is None:
            return
        if self.loop is asyncio.get_running_loop():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(task.cancel)

    async def submit(self, x: torch.Tensor) -> torch.Tensor:
        """x: (n, ...) rows of one request -> their outputs, computed in a shared batch."""
        self.start()
        future = asyncio.get_running_loop().create_future()
        self.pending.append((x, future))
        self.wake.set()
        return await future

    def _take(self) -> list[tuple[torch.Tensor, asyncio.Future]]:
        """The oldest requests that fit in max_batch rows (at least one), skipping callers that gave up."""
        batch, rows = [], 0
        while self.pending and (not batch or rows + len(self.pending[0][0]) <= self.max_batch):
            x, future = self.pending.pop(0)
            if not future.cancelled():
                batch.append((x, future))
                rows += len(x)
        if not self.pending:
            self.wake.clear()
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        busy = False  # the last batch just finished and requests came in meanwhile
        while True:
            busy = busy and bool(self.pending)
            await self.wake.wait()
            if not busy and sum(len(x) for x, _ in self.pending) < self.max_batch:
                await asyncio.sleep(self.max_wait)  # after idle: give concurrent callers a moment to join
            busy = True  # under load, what arrived during the last batch is the next batch, at once
            batch = self._take()
            if not batch:
                continue
            self.on_batch(sum(len(x) for x, _ in batch))
            try:  # while this runs on the inference thread, new requests pile up for the next batch
                out = await loop.run_in_executor(self.executor, self.fn, torch.cat([x for x, _ in batch]))
            except Exception as e:  # noqa: BLE001 - handed to every caller of this batch
                for _, f in batch:
                    if not f.done():
                        f.set_exception(e)
                continue
            start = 0
            for x, f in batch:
                if not f.done():
                    f.set_result(out[start: start + len(x)])
                start += len(x)
