"""Limits on every request, enforced where the input enters: body size before buffering, then shape, dtype,
range and counts of what was sent."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from itertools import chain

import numpy as np

from genforge.errors import GenforgeError


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1 << 20  # 1 MiB: refused before the body is read into memory
    max_pixels: int = 1024 * 1024  # decoded pixels per uploaded image (more for models above 128x128: 64x theirs)
    max_decodes: int = 2  # image uploads decoded at once (one per core); the others wait their turn
    max_batch: int = 256  # images or vectors per classify request
    max_explain_batch: int = 16  # inputs per explain request: each costs up to max_explain_steps backward passes
    max_explain_steps: int = 64  # gradient evaluations (integrated-gradients, gradient-shap) per input
    max_n: int = 256  # images per generate request; steps per interpolation
    max_history: int = 100_000  # history values per forecast request, all its series together
    max_horizons: int = 20  # a forecast's horizon: at most this many trained horizons (one model call each)
    max_concurrency: int = 32  # requests in flight at once (counted once the body is in); beyond that 503 at once
    timeout_s: float = 10.0  # inference time before 504
    body_timeout_s: float = 10.0  # from the headers to the body's last byte (1 MiB: >= 100 KiB/s) before 408


class RequestError(GenforgeError):
    """A client's mistake: answered with `status` and a message that says what to fix."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


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
    import json

    body = json.dumps({"error": {"status": status, "message": message}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def array_inputs(values: list, shape: tuple[int, ...], value_range: str) -> np.ndarray:
    """JSON inputs -> (N, *shape) uint8 images or float32 vectors, validated.

    An image may come as (H, W) or (C, H, W) nested lists, or flat (C*H*W); values 0-255, or 0-1 with
    value_range "0-1" ("auto": 0-1 when every value is <= 1)."""
    size = math.prod(shape)
    try:
        # no dtype first: np.array(..., dtype=float64) reads the strings "1", "١", "１" and "1_0" as numbers
        raw = np.array(values)
    except (ValueError, TypeError):
        raw = None
    if raw is None or raw.dtype.kind not in "iuf":  # strings, booleans, nulls, ragged lists, integers past 64 bits
        raise RequestError("inputs must be a list of equally shaped arrays of JSON numbers (no strings, booleans or "
                           f"nulls; each {'x'.join(map(str, shape))} or flat {size})") from None
    array = raw.astype(np.float64)  # a copy of its own, changed in place below
    if array.ndim < 2 or array[0].size != size:
        got = "x".join(map(str, array.shape[1:])) or "a number"
        raise RequestError(f"each input must have {size} values ({'x'.join(map(str, shape))}), got {got}")
    low, high = float(array.min()), float(array.max())  # NaN and infinity reach the extremes: one pass each
    if not (math.isfinite(low) and math.isfinite(high)):
        raise RequestError("inputs must be finite numbers (no NaN or infinity)")
    array = array.reshape(len(array), *shape)
    if len(shape) != 3:
        with np.errstate(over="ignore"):
            vectors = array.astype(np.float32)  # what the model sees: 1e300 is finite here and inf there
        if not np.isfinite(vectors).all():
            raise RequestError(f"inputs must fit in float32 (magnitude at most {np.finfo(np.float32).max:.3g})")
        return vectors
    top = 1.0 if value_range == "0-1" or (value_range == "auto" and 0 <= low and high <= 1.0) else 255.0
    if low < 0 or high > top:
        allowed = "0-255 (or 0-1)" if value_range == "auto" else value_range
        raise RequestError(f"pixel values must lie in {allowed}, got {low:g} to {high:g}")
    if top == 1.0:
        array *= 255.0  # in place: the array is this function's own float copy
    return np.rint(array, out=array).astype(np.uint8)


def history_inputs(values, minimum: int, max_series: int, max_values: int) -> np.ndarray:
    """A forecast request's history -> float32 (L,) for one series or (N, L) for N of equal length, validated: numbers
    only, finite in float32, at most max_series series and max_values values, at least `minimum` values each."""
    shape = "a list of numbers, oldest first (one series), or a list of equally long such lists (several)"
    if not isinstance(values, list) or not values:
        raise RequestError(f"history must be {shape}, with at least {minimum} values each")
    if all(isinstance(row, list) for row in values) and len(lengths := {len(row) for row in values}) > 1:
        raise RequestError(f"the {len(values)} histories have different lengths ({min(lengths)} to {max(lengths)}); "
                           f"send equally long ones (e.g. the last {max(min(lengths), minimum)} values of each), or "
                           f"one request per length")
    try:
        array = np.array(values)
    except (ValueError, TypeError):  # numbers mixed with lists
        raise RequestError(f"history must be {shape}") from None
    if array.dtype == object:  # nulls, or integers beyond 64 bits: as floats (a null is NaN, refused below)
        try:
            array = array.astype(np.float64)
        except (TypeError, ValueError, OverflowError):
            pass
    flat = values if array.ndim == 1 else chain.from_iterable(values) if array.ndim == 2 else ()
    if array.dtype.kind not in "iuf" or array.ndim > 2 or any(v is True or v is False for v in flat):
        raise RequestError(f"history must be {shape}: numbers only (no strings, booleans or nulls; fill a missing "
                           f"value first)")
    if array.size == 0:
        raise RequestError(f"history is empty; send at least {minimum} values per series")
    if array.ndim == 2 and len(array) > max_series:
        raise RequestError(f"at most {max_series} histories per request, got {len(array)}")
    if array.size > max_values:
        raise RequestError(f"at most {max_values:,} history values per request, got {array.size:,}; send the most "
                           f"recent values only")
    if not np.isfinite(array).all():
        raise RequestError("history values must be finite numbers (no null, NaN or infinity); fill a missing value "
                           "first")
    with np.errstate(over="ignore"):
        history = array.astype(np.float32)  # what the model sees: 1e300 is finite here and inf there
    if not np.isfinite(history).all():
        raise RequestError(f"history values must fit in float32 (magnitude at most {np.finfo(np.float32).max:.3g})")
    if history.shape[-1] < minimum:
        raise RequestError(f"the history has {history.shape[-1]} values per series; this model needs at least "
                           f"{minimum}: send a longer one")
    return history
