"""The micro-batcher on its own: batching, errors, cancelled callers, max_batch, fairness."""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from genforge.serve.batching import InferenceThread, MicroBatcher


@pytest.fixture
def executor():
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


def recording(sizes: list, hold: threading.Event | None = None, holding: threading.Event | None = None):
    """The model: x -> 10 x, recording each batch's size. hold: the first batch waits for it (and sets `holding`
    first), so that the test knows what is queued behind it, with no timing."""
    def fn(x: torch.Tensor) -> torch.Tensor:
        sizes.append(len(x))
        if hold is not None and len(sizes) == 1:
            holding.set()
            assert hold.wait(timeout=30)
        return x * 10
    return fn


def held():
    """(hold, holding): the events of recording's first batch."""
    return threading.Event(), threading.Event()


def test_concurrent_requests_share_batches_and_get_their_own_rows(executor):
    sizes, (hold, holding) = [], held()
    batcher = MicroBatcher(recording(sizes, hold, holding), executor)

    async def main():
        inputs = [torch.full((1 + i % 3, 2), float(i)) for i in range(12)]
        first = batcher.submit(inputs[0])
        assert holding.wait(timeout=30)  # the first batch runs; the others queue behind it
        rest = [batcher.submit(x) for x in inputs[1:]]
        hold.set()
        return inputs, await asyncio.gather(first, *rest)

    inputs, outputs = asyncio.run(main())
    for x, y in zip(inputs, outputs):
        assert torch.equal(y, x * 10)
    assert sizes == [len(inputs[0]), sum(len(x) for x in inputs[1:])]  # the first alone, the rest as one batch


def test_a_failing_batch_fails_each_of_its_callers_and_the_next_batch_runs(executor):
    calls = []

    def fn(x):
        calls.append(len(x))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return x

    batcher = MicroBatcher(fn, executor)

    async def main():
        first = batcher.submit(torch.ones(1, 1))
        with pytest.raises(RuntimeError, match="boom"):
            await first
        return await batcher.submit(torch.ones(2, 1))

    assert asyncio.run(main()).shape == (2, 1)


def test_a_cancelled_request_is_skipped(executor):
    sizes, (hold, holding) = [], held()
    batcher = MicroBatcher(recording(sizes, hold, holding), executor)

    async def main():
        first = batcher.submit(torch.zeros(1, 1))  # occupies the thread
        assert holding.wait(timeout=30)
        gone = batcher.submit(torch.zeros(5, 1))
        kept = batcher.submit(torch.zeros(2, 1))
        gone.cancel()  # its timeout expired, or its client left
        hold.set()
        await first
        return await kept

    assert asyncio.run(main()).shape == (2, 1)
    assert sizes == [1, 2]


def test_max_batch_bounds_the_rows_of_a_batch(executor):
    sizes, (hold, holding) = [], held()
    batcher = MicroBatcher(recording(sizes, hold, holding), executor, max_batch=4)

    async def main():
        first = batcher.submit(torch.zeros(1, 1))
        assert holding.wait(timeout=30)
        rest = [batcher.submit(torch.zeros(1, 1)) for _ in range(10)]
        hold.set()
        await asyncio.gather(first, *rest)

    asyncio.run(main())
    assert sizes == [1, 4, 4, 2]  # batched, up to the bound


def test_steady_load_does_not_starve_other_work_on_the_thread(executor):
    """The drain job queues itself again after its quantum, so a job submitted meanwhile (a generate request) runs
    while classify requests are still queued. A quantum of 0: after every batch, so the test needs no timing."""
    sizes, (hold, holding) = [], held()
    batcher = MicroBatcher(recording(sizes, hold, holding), executor, max_batch=1, quantum_s=0.0)

    async def main():
        first = batcher.submit(torch.zeros(1, 1))
        assert holding.wait(timeout=30)
        queued = [batcher.submit(torch.zeros(1, 1)) for _ in range(20)]  # 20 batches of one behind the first
        other = asyncio.get_running_loop().run_in_executor(executor, lambda: len(sizes))  # behind the drain job
        hold.set()
        await asyncio.gather(first, *queued)
        return await other

    batches_before_other = asyncio.run(main())
    assert batches_before_other < 21  # it ran while batches were still queued, not after all 21


def test_the_heap_loaded_before_serving_is_left_out_of_collections_and_later_garbage_is_still_collected():
    """The classify tail: a full collection of the loaded heap (torch, ONNX Runtime, the app) took about 100 ms under
    load. settle_heap, run before serving, freezes what is loaded; cycles that requests make later must still be
    freed. In a fresh interpreter, so that the test's own heap stays as it was."""
    import subprocess
    import sys

    script = """
import gc, weakref
from genforge.serve.server import settle_heap

class Node:
    pass

loaded = [[i] for i in range(50_000)]
settle_heap()
assert gc.get_freeze_count() >= 50_000, gc.get_freeze_count()
later = Node(); later.me = later; gone = weakref.ref(later); del later
gc.collect()
assert gone() is None, "a cycle made after settle_heap was not collected"
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def where(threads: list, took: float = 0.0):
    """The model: x -> x + 1, recording the thread it ran on (sleeping `took` seconds a call)."""
    def fn(x):
        threads.append(threading.current_thread().name)
        if took:
            threading.Event().wait(took)
        return x + 1
    return fn


def test_a_lone_quick_request_is_answered_on_the_event_loop_and_concurrent_ones_are_batched():
    threads, alone = [], [True]
    pool = InferenceThread("inference")
    batcher = MicroBatcher(where(threads), pool, alone=lambda: alone[0])

    async def main():
        loop_thread = threading.current_thread().name
        first = await batcher.submit(torch.zeros(1, 2))  # no timing yet: the inference thread, which measures it
        pool.submit(int).result()  # the thread has finished that drain job (its answer can arrive before it ends)
        second = await batcher.submit(torch.zeros(1, 2))  # alone, quick, the thread idle: here
        too_many = await batcher.submit(torch.zeros(9, 2))  # more rows than the event loop takes
        alone[0] = False  # another client is sending
        crowded = await batcher.submit(torch.zeros(1, 2))
        return loop_thread, (first, second, too_many, crowded)

    try:
        loop_thread, outputs = asyncio.run(main())
    finally:
        pool.shutdown()
    assert all(torch.equal(y, torch.ones_like(y)) for y in outputs)
    assert threads[1] == loop_thread
    assert threads[0] != loop_thread and threads[2] != loop_thread and threads[3] != loop_thread


def test_a_slow_model_never_runs_on_the_event_loop():
    threads = []
    pool = InferenceThread("inference")
    batcher = MicroBatcher(where(threads, took=0.005), pool, alone=lambda: True)  # 5 ms a call: over the limit

    async def main():
        for _ in range(3):
            await batcher.submit(torch.zeros(1, 2))
        return threading.current_thread().name

    try:
        loop_thread = asyncio.run(main())
    finally:
        pool.shutdown()
    assert len(threads) == 3 and loop_thread not in threads
