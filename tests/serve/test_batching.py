"""The micro-batcher on its own: batching, errors, cancelled callers, max_batch, fairness."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from genforge.serve.batching import MicroBatcher


@pytest.fixture
def executor():
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


def recording(sizes: list, delay: float = 0.0):
    def fn(x: torch.Tensor) -> torch.Tensor:
        sizes.append(len(x))
        time.sleep(delay)
        return x * 10
    return fn


def test_concurrent_requests_share_batches_and_get_their_own_rows(executor):
    sizes = []
    batcher = MicroBatcher(recording(sizes, delay=0.01), executor)

    async def main():
        inputs = [torch.full((1 + i % 3, 2), float(i)) for i in range(12)]
        return inputs, await asyncio.gather(*[batcher.submit(x) for x in inputs])

    inputs, outputs = asyncio.run(main())
    for x, y in zip(inputs, outputs):
        assert torch.equal(y, x * 10)
    assert sum(sizes) == sum(len(x) for x in inputs)
    assert len(sizes) < 12  # the first goes alone at once; the rest queued behind it and went together
    assert sizes[0] == len(inputs[0])


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
    sizes = []
    batcher = MicroBatcher(recording(sizes, delay=0.05), executor)

    async def main():
        first = batcher.submit(torch.zeros(1, 1))  # occupies the thread
        gone = batcher.submit(torch.zeros(5, 1))
        kept = batcher.submit(torch.zeros(2, 1))
        gone.cancel()  # its timeout expired, or its client left
        await first
        return await kept

    assert asyncio.run(main()).shape == (2, 1)
    assert sizes == [1, 2]


def test_max_batch_bounds_the_rows_of_a_batch(executor):
    sizes = []
    batcher = MicroBatcher(recording(sizes, delay=0.02), executor, max_batch=4)

    async def main():
        await asyncio.gather(*[batcher.submit(torch.zeros(1, 1)) for _ in range(11)])

    asyncio.run(main())
    assert max(sizes) <= 4 and sum(sizes) == 11 and 4 in sizes  # batched, up to the bound


def test_steady_load_does_not_starve_other_work_on_the_thread(executor):
    """The drain job re-queues itself after its quantum, so a job submitted meanwhile (a generate request) runs
    while classify requests keep coming."""
    batcher = MicroBatcher(recording([], delay=0.005), executor, quantum_s=0.02)
    other_done = threading.Event()

    async def main():
        stop = time.perf_counter() + 0.5

        async def client():
            while time.perf_counter() < stop:
                await batcher.submit(torch.zeros(1, 1))

        async def other():
            await asyncio.sleep(0.05)
            await asyncio.get_running_loop().run_in_executor(executor, other_done.set)
            return time.perf_counter() < stop  # ran while the load went on

        results = await asyncio.gather(other(), *[client() for _ in range(4)])
        return results[0]

    assert asyncio.run(main()) and other_done.is_set()
