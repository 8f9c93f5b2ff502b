"""What every protocol shares: the served models, the limits, the inference threads with their timeout, the
micro-batchers, readiness and the state the ASGI layers read. A protocol decodes a request into a verb's inputs, asks
the Runtime to run the verb, and encodes its answer."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from concurrent.futures import Executor
from contextlib import asynccontextmanager

import torch

from genforge.registry import TASKS
from genforge.serve.adapters import ServedModel
from genforge.serve.batching import InferenceThread, MicroBatcher
from genforge.serve.metrics import Metrics
from genforge.tasks.verb import Limits, RequestError, Verb

log = logging.getLogger("genforge.serve")


def verb_table() -> dict[str, Verb]:
    """Every verb of every task, with their companions, by name, in the tasks' order: the routes one app serves."""
    table = {}
    for offering in dict.fromkeys(TASKS.values()):
        for verb in offering.verbs:
            table |= {v.name: v for v in (verb, *verb.companions) if v.name not in table}
    return table


SOLO_S = 0.005


class Runtime:
    """`state` is the dict the ASGI layers and the server read (app.state.genforge): token, limits, metrics, requests
    in flight and receiving, ready, draining, lost (why not ready while an inference overruns), the decode semaphore
    and the inference threads."""

    def __init__(self, models: dict[str, ServedModel], token: str | None = None, limits: Limits = Limits()):
        self.models, self.limits, self.verbs = models, limits, verb_table()
        self.metrics = Metrics()
        # one inference thread: no contention; the work of gradients (explanations: backward passes, up to seconds)
        # on a thread of its own: classify's queue never waits on it
        self.threads: dict[str, Executor] = {"inference": InferenceThread("inference"),
                                             "gradients": InferenceThread("gradients")}
        self.state = {"token": token, "limits": limits, "in_flight": 0, "receiving": 0, "metrics": self.metrics,
                      "last_client": None, "mixed_at": 0.0,  # the gate's: who sent the last POST, when another did
                      "ready": False, "draining": False, "lost": None,
                      "decodes": asyncio.Semaphore(limits.max_decodes),
                      "threads": tuple(self.threads.values())}  # watched for overruns (here, and the server's exit)
        self.metrics.follow(self.state)  # readiness (SIGTERM included) and requests in flight
        self.batchers = {(id(model), verb): MicroBatcher(functools.partial(verb.run, model), self.threads["inference"],
                                                    limits.max_batch, on_batch=self.metrics.batch.labels(name).observe,
                                                    alone=self.alone)
                         for name, model in models.items() for verb in model.verbs() if verb.thread == "batched"}

    def alone(self) -> bool:
        """Whether the request being answered is the only one: none other in flight, and no other client has sent
        one for SOLO_S (a busy server's next requests may still wait unread in their sockets)."""
        state = self.state
        return state["in_flight"] <= 1 and time.perf_counter() - state["mixed_at"] > SOLO_S

    def model(self, name: str, verb: Verb) -> ServedModel:
        """The served model that answers `verb`, or the RequestError that says why none does."""
        model = self.models.get(name)
        if model is None:
            raise RequestError(f"no model named {name!r}; GET /v1/models lists them: {', '.join(self.models)}", 404)
        if verb in model.task.verbs and (why := verb.refusal(model)):
            raise RequestError(why, 409)
        needed = verb.requires or verb
        if needed.name not in model.verbs():  # by name: a task may answer the route with its own verb of that name
            raise RequestError(f"{name} is a {model.task.name} model: it offers {', '.join(model.verbs())}, not "
                               f"{needed}")
        return model

    async def call(self, verb: Verb, served: ServedModel, inputs: dict) -> tuple[object, float]:
        """The verb's checked result for decoded inputs, and the milliseconds it took."""
        t0 = time.perf_counter()
        if verb.thread == "batched":
            rows = verb.rows(inputs)
            result = await self.batched(served, verb, rows) if len(rows) else verb.nothing(served)
        elif verb.thread is None:
            result = verb.run(served, inputs)
        else:
            result = await self.infer(verb.run, served, inputs, fewer=verb.fewer, pool=self.threads[verb.thread])
        result = verb.check(served, inputs, result)
        return result, (time.perf_counter() - t0) * 1000

    async def batched(self, served: ServedModel, verb: Verb, rows: torch.Tensor) -> torch.Tensor:
        """The rows' outputs through the model's micro-batcher; 504 past the timeout."""
        future = self.batchers[id(served), verb].submit(rows)
        expired = []

        def expire():
            expired.append(True)
            future.cancel()  # the batcher skips a cancelled request

        timer = asyncio.get_running_loop().call_later(self.limits.timeout_s, expire)
        try:  # a timer on the future itself: asyncio.wait_for would add a task and a waiter per request
            return await future
        except asyncio.CancelledError:
            if not expired:
                raise  # the request itself was cancelled (client gone, shutdown), not timed out
            raise RequestError(f"inference took longer than {self.limits.timeout_s:g} s", 504) from None
        finally:
            timer.cancel()

    async def infer(self, fn, *args, fewer: str = "images", pool: Executor | None = None):
        """fn(*args) on the inference thread (or `pool`); 504 when it takes longer than the limit."""
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(pool or self.threads["inference"], fn, *args),
                                          self.limits.timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(f"inference took longer than {self.limits.timeout_s:g} s; ask for fewer {fewer}",
                               504) from None

    @asynccontextmanager
    async def lifespan(self, app):
        """Start (again: a test client may start an app several times): batchers emptied, the models warmed up on the
        inference thread, ready, the overrun watch running; at the end, not ready."""
        for batcher in self.batchers.values():
            batcher.reset()
        self.state["decodes"] = asyncio.Semaphore(self.limits.max_decodes)  # of this event loop
        loop = asyncio.get_running_loop()
        for model in self.models.values():
            await loop.run_in_executor(self.threads["inference"], model.warm_up)
        self.state["ready"], self.state["lost"] = True, None
        watchdog = asyncio.create_task(watch_threads(self.state))
        yield
        watchdog.cancel()
        self.state["ready"] = False  # the threads live as long as the app


async def watch_threads(state: dict) -> None:
    """Readiness follows the inference threads. A job that runs past the inference timeout (its caller had its
    504) holds its thread until it ends, Python cannot stop it, and every request queued behind it times out too:
    the server says not ready (/readyz 503, the ready gauge 0) until the job ends, so that a load balancer sends the
    traffic elsewhere, and SIGTERM leaves the thread behind (server.py). Checked every min(1 s, timeout / 2)."""
    timeout = state["limits"].timeout_s
    while True:
        await asyncio.sleep(min(1.0, timeout / 2))
        busy = max(thread.busy_for() for thread in state["threads"])  # s
        if busy > timeout:
            if not state["lost"]:
                log.warning("an inference has run for %.1f s, past the %g s timeout: not ready until it ends",
                            busy, timeout)
            state["ready"], state["lost"] = False, (f"not ready: an inference has run for {busy:.0f} s, past the "
                                                    f"{timeout:g} s timeout; requests wait until it ends")
        elif state["lost"]:
            log.warning("the overrunning inference ended: ready again")
            state["ready"], state["lost"] = not state["draining"], None
