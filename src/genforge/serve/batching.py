"""Micro-batching: classify requests for one model share forward passes on the single inference thread.

A request that finds the batcher idle starts a drain job on the inference thread at once. The job takes whatever
is queued (up to max_batch rows), runs it as one batch, hands the results to the event loop, and takes the next
batch straight away, so batches grow with load and the thread never waits for the busy event loop between
batches. After `quantum_s` the job queues itself behind the thread's other work (generate, other models), so one
model's steady load cannot starve them.

A request that is the only one in flight (`alone()`), with the inference thread idle and a model that answers a few
rows in well under a millisecond (measured on its earlier calls), is answered on the event loop itself: two thread
hand-offs cost more than such a forward pass, and on a machine that is not idle each hand-off waits for the
scheduler to wake a thread (the 1-connection p99 beside a busy loop went from 3 ms to under 1 ms).

The inference thread itself is an InferenceThread: it knows since when its current job runs, so that a job past the
inference timeout (whose caller had its 504) can be seen for what it is, a thread lost to it until it ends."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor

import torch

INLINE_S, INLINE_ROWS = 0.001, 8  # at most this long and this many rows on the event loop
Request = tuple[torch.Tensor, int, asyncio.Future]  # rows, their count, the caller's future


class MicroBatcher:
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], executor: Executor, max_batch: int = 256,
                 on_batch: Callable[[int], None] | None = None, quantum_s: float = 0.02,
                 alone: Callable[[], bool] | None = None):
        self.fn, self.executor, self.max_batch, self.quantum, self.alone = fn, executor, max_batch, quantum_s, alone
        self.row_s: float | None = None  # seconds per row of fn, a running mean (None: not called yet)
        self.on_batch = on_batch or (lambda size: None)
        self.lock = threading.Lock()  # guards pending and running between the event loop and the inference thread
        self.pending: deque[Request] = deque()
        self.running = False  # a drain job is queued or running; it takes what is submitted meanwhile

    def reset(self) -> None:
        """Forget queued work, for an app that starts again in another event loop (as test clients do)."""
        with self.lock:
            self.pending, self.running = deque(), False

    def submit(self, x: torch.Tensor) -> asyncio.Future:
        """x: (n, ...) rows of one request -> a future of their outputs, computed in a shared batch (or at once on
        the event loop, when it is alone and quick: see the module's notes). A plain future, not a coroutine:
        awaiting it with a timeout costs no extra task."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self.lock:
            inline = not self.running and self._quick(x.shape[0])
            if not inline:
                self.pending.append((x, x.shape[0], future))
                start, self.running = not self.running, True
        if inline:
            try:
                future.set_result(self._timed(x))
            except Exception as e:  # noqa: BLE001 - the caller's, as from a batch
                future.set_exception(e)
            self.on_batch(x.shape[0])
        elif start:
            self.executor.submit(self._drain, loop)
        return future

    def _quick(self, rows: int) -> bool:
        """Whether these rows may run on the event loop: the only request in flight, the inference thread idle, and
        earlier calls of this model that took under INLINE_S for as many rows."""
        return (self.alone is not None and rows <= INLINE_ROWS and self.row_s is not None
                and self.row_s * rows < INLINE_S and self.alone()
                and isinstance(self.executor, InferenceThread) and self.executor.since is None)

    def _timed(self, x: torch.Tensor) -> torch.Tensor:
        """fn(x), keeping a running mean of its seconds per row."""
        t0 = time.perf_counter()
        out = self.fn(x)
        took = (time.perf_counter() - t0) / max(1, x.shape[0])
        self.row_s = took if self.row_s is None else 0.8 * self.row_s + 0.2 * took
        return out

    def _take(self) -> list[Request]:
        """The oldest requests that fit in max_batch rows (at least one), skipping callers that gave up
        (a cancelled future: its timeout expired or its client left)."""
        batch, rows = [], 0
        with self.lock:
            while self.pending and (not batch or rows + self.pending[0][1] <= self.max_batch):
                request = self.pending.popleft()
                if not request[2].cancelled():
                    batch.append(request)
                    rows += request[1]
            if not batch:
                self.running = False
        return batch

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the inference thread: batches back to back until the queue is empty or the quantum is spent."""
        end = time.perf_counter() + self.quantum
        while batch := self._take():
            try:
                rows = [x for x, _, _ in batch]
                out, error = self._timed(rows[0] if len(rows) == 1 else torch.cat(rows)), None
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


class InferenceThread(ThreadPoolExecutor):
    """One worker thread that records since when its current job runs. Python cannot stop a thread: a job that
    overruns its request's timeout holds the thread until it ends, and every job queued behind it waits."""

    def __init__(self, name: str):
        super().__init__(max_workers=1, thread_name_prefix=name)
        self.since: float | None = None  # time.monotonic() when the running job started; None while idle

    def submit(self, fn, /, *args, **kwargs):
        return super().submit(self._timed, fn, args, kwargs)

    def _timed(self, fn, args, kwargs):
        self.since = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            self.since = None

    def busy_for(self) -> float:
        """Seconds the current job has run; 0 while idle."""
        since = self.since
        return 0.0 if since is None else time.monotonic() - since
