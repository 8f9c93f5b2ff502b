"""Micro-batching: classify requests for one model share forward passes on the single inference thread.

A request that finds the batcher idle starts a drain job on the inference thread at once. The job takes whatever
is queued (up to max_batch rows), runs it as one batch, hands the results to the event loop, and takes the next
batch straight away, so batches grow with load, no request waits for a timer, and the thread never waits for the
busy event loop between batches. After `quantum_s` the job queues itself behind the thread's other work
(generate, other models), so one model's steady load cannot starve them."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor

import torch

Request = tuple[torch.Tensor, int, asyncio.Future]  # rows, their count, the caller's future


class MicroBatcher:
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], executor: Executor, max_batch: int = 256,
                 on_batch: Callable[[int], None] | None = None, max_wait_ms: float = 2.0, quantum_s: float = 0.02):
        self.fn, self.executor, self.max_batch, self.quantum = fn, executor, max_batch, quantum_s
        self.max_wait = max_wait_ms / 1000
        self.on_batch = on_batch or (lambda size: None)
        self.lock = threading.Lock()  # guards pending and running between the event loop and the inference thread
        self.pending: deque[Request] = deque()
        self.rows = 0  # rows in pending
        self.running = False  # a drain job is queued or running; it takes what is submitted meanwhile
        self.coming = 0  # requests for this model being read and parsed: they will be submitted in a moment
        self.arrived = threading.Event()  # wakes a drain that waits for the coming ones
        self.waiting = False  # the drain waits on `arrived`: only then does a submit pay for setting it

    def reset(self) -> None:
        """Forget queued work, for an app that starts again in another event loop (as test clients do)."""
        with self.lock:
            self.pending, self.rows, self.running, self.coming = deque(), 0, False, 0

    def submit(self, x: torch.Tensor) -> asyncio.Future:
        """x: (n, ...) rows of one request -> a future of their outputs, computed in a shared batch. A plain
        future, not a coroutine: awaiting it with a timeout costs no extra task."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        n = x.shape[0]
        with self.lock:
            self.pending.append((x, n, future))
            self.rows += n
            start, self.running = not self.running, True
        if self.waiting and (self.coming <= 0 or self.rows >= self.max_batch):
            self.arrived.set()  # the last one expected: the waiting drain goes now (woken once, not per request)
        if start:
            self.executor.submit(self._drain, loop)
        return future

    def _take(self) -> list[Request]:
        """The oldest requests that fit in max_batch rows (at least one), skipping callers that gave up
        (a cancelled future: its timeout expired or its client left)."""
        batch, rows = [], 0
        with self.lock:
            while self.pending and (not batch or rows + self.pending[0][1] <= self.max_batch):
                request = self.pending.popleft()
                self.rows -= request[1]
                if not request[2].cancelled():
                    batch.append(request)
                    rows += request[1]
            if not batch:
                self.running = False
        return batch

    def _wait_for_coming(self) -> None:
        """Before a batch: while requests that are already being parsed may still join it (and it has room),
        wait up to max_wait for them. Fewer, larger batches cost less per row on the thread and fewer hand-offs
        on the event loop; a request never waits for one that has not arrived."""
        deadline = time.perf_counter() + self.max_wait
        while True:
            self.arrived.clear()
            self.waiting = True  # before the check: a submit after it sees the flag and wakes us
            left = deadline - time.perf_counter()
            if self.coming <= 0 or not self.pending or self.rows >= self.max_batch or left <= 0:
                self.waiting = False
                return
            self.arrived.wait(left)

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the inference thread: batches back to back until the queue is empty or the quantum is spent."""
        end = time.perf_counter() + self.quantum
        while True:
            self._wait_for_coming()
            if not (batch := self._take()):
                return
            try:
                rows = [x for x, _, _ in batch]
                out, error = self.fn(rows[0] if len(rows) == 1 else torch.cat(rows)), None
            except Exception as e:  # noqa: BLE001 - handed to every caller of this batch
                out, error = None, e
            try:
                loop.call_soon_threadsafe(self._deliver, batch, out, error)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                self.reset()
                return
            if time.perf_counter() > end:
                try:
                    self.executor.submit(self._drain, loop)  # behind whatever else waits for the thread
                except RuntimeError:  # the executor is shut down: the app is gone
                    self.reset()
                return

    def _deliver(self, batch: list[Request], out: torch.Tensor | None, error: Exception | None) -> None:
        """On the event loop: every caller gets its rows, or the batch's error."""
        self.on_batch(sum(n for _, n, _ in batch))
        start = 0
        for _, n, future in batch:
            if not future.done():
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(out[start: start + n])
            start += n
