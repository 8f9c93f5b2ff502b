"""Limits on every request, enforced where the input enters: the body's size before it is buffered and its
deadline while it arrives. What is sent is checked by each verb's decode (tasks/), against the same Limits."""

from __future__ import annotations

import asyncio
import json

from genforge.tasks.verb import Limits, RequestError

__all__ = ["BodySizeLimit", "Limits", "RequestError", "read_body", "replay", "too_large"]


class BodySizeLimit:
    """ASGI middleware: 413 at once when Content-Length says too much, before anything is read. The body itself
    is read by read_body, behind the bearer token's check (Gate)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        # bytes.isdigit() passes 0-9 only; int() refuses over 4,300 digits (a 500), and 100 are too large anyway
        if length is not None and (not length.isdigit() or len(length) > 100 or int(length) > self.max_bytes):
            return await _reject(send, 413, too_large(self.max_bytes))
        await self.app(scope, receive, send)


def too_large(max_bytes: int) -> str:
    return f"request body is larger than {max_bytes:,} bytes; send fewer or smaller images"


async def read_body(receive, max_bytes: int, timeout_s: float) -> bytes | None:
    """The whole request body, None when the client left. RequestError 413 when it grows past max_bytes (a streamed
    body, chunked, has no length to check first) and 408 when it has not all come within timeout_s: a client that
    sends headers and then a trickle holds nothing for longer than that. Read in full before the app sees it: the
    Gate counts a request against max_concurrency only once its body is in, and an error raised from inside the
    app's receive would reach FastAPI's body parsing and starlette's form parser, which answer it with their own 400
    or 500."""
    task, expired = asyncio.current_task(), []

    def expire():
        expired.append(True)
        task.cancel()  # delivered at the `await receive()` below: the only place this task waits until the timer ends

    # a timer on the task, not asyncio.wait_for: that adds a task per request (~30 us, measured, on the hot path)
    timer = asyncio.get_running_loop().call_later(timeout_s, expire)
    chunks, received = [], 0
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            if received > max_bytes:
                raise RequestError(too_large(max_bytes), 413)
            if not message.get("more_body", False):
                return b"".join(chunks)
    except asyncio.CancelledError:
        if not expired:
            raise  # cancelled from outside (shutdown)
        if hasattr(task, "uncancel"):  # Python 3.11+: this cancellation is handled here
            task.uncancel()
        raise RequestError(f"the request body did not arrive within {timeout_s:g} s of its headers ({received:,} "
                           f"bytes came); send it whole, at once", 408) from None
    finally:
        timer.cancel()


def replay(body: bytes, receive):
    """A receive that gives the already-read body once, then whatever the connection says next."""
    sent = False

    async def replayed():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


async def _reject(send, status: int, message: str) -> None:
    """An error answer from the layers in front of the app; the connection closes after it, since the rest of the
    body was not read."""
    body = json.dumps({"error": {"status": status, "message": message}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})

