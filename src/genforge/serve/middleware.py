"""The ASGI layers in front of the routes, outermost first: ProtocolErrors (a /v2 error in the protocol's shape),
ErrorGuard (an unanswered exception as a JSON 500), BodySizeLimit (serve/limits.py), Gate (token, body deadline,
concurrency, metrics), then FastPath (a batched verb's plain JSON request answered without FastAPI)."""

from __future__ import annotations

import hmac
import logging
import time

import orjson
from fastapi import FastAPI
from fastapi.responses import Response

from genforge.errors import GenforgeError
from genforge.serve.limits import read_body, replay
from genforge.serve.metrics import model_route, route_label
from genforge.serve.runtime import Runtime
from genforge.serve.v1 import content_type, error_response, internal, json_response, parse_json
from genforge.tasks.verb import RequestError

log = logging.getLogger("genforge.serve")
LIVE = b'{"status":"ok"}'


class FrontedAPI(FastAPI):
    """FastAPI with genforge's ASGI layers in front of all of FastAPI's own per-request machinery (its telemetry
    check, error and body-limit middleware, routing): the body limit, the gate, then the fast path, whose requests
    so pay for none of it. `front` is set once the layers exist."""

    front = None

    async def __call__(self, scope, receive, send):
        await self.front(scope, receive, send)

    async def behind(self, scope, receive, send):
        await super().__call__(scope, receive, send)


class Gate:
    """ASGI middleware in front of the routes: bearer token, then the body read in full within body_timeout_s (408
    past it), then the concurrency limit (503 at once when full), and the Prometheus request metrics. A request
    counts against the limit only once its body is in: clients that send headers and stall hold no slot."""

    OPEN = ("/", "/livez", "/readyz", "/favicon.ico", "/v2/health/live", "/v2/health/ready")

    def __init__(self, app, state: dict, verbs):
        self.app, self.state, self.verbs = app, state, verbs

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, state = scope["path"], self.state
        token = state["token"]
        if token and path not in self.OPEN and not path.startswith("/static/"):
            auth = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            given = auth[7:] if auth.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(given.encode(), token.encode()):
                return await _send(send, error_response(401, "send the token as the header 'Authorization: Bearer "
                                                             "TOKEN'", {"www-authenticate": "Bearer"}), scope, receive)
        route, limits = route_label(path, self.verbs), state["limits"]
        if scope["method"] not in ("GET", "HEAD"):
            t0, state["receiving"] = time.perf_counter(), state["receiving"] + 1
            try:
                body = await read_body(receive, limits.max_body_bytes, limits.body_timeout_s)
            except RequestError as e:  # 408, or 413 for a streamed body
                state["metrics"].observe(route, e.status, time.perf_counter() - t0)
                return await _send(send, error_response(e.status, str(e), {"connection": "close"}), scope, receive)
            finally:
                state["receiving"] -= 1
            if body is None:  # the client left
                return
            receive = replay(body, receive)
        limited = scope["method"] == "POST"
        if limited and state["in_flight"] >= limits.max_concurrency:
            state["metrics"].observe(route, 503, 0.0)
            return await _send(send, error_response(503, "the server is at its concurrency limit; retry shortly",
                                                    {"retry-after": "1"}), scope, receive)
        status = {"code": 500}

        async def send_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        state["in_flight"] += limited
        t0 = time.perf_counter()
        if limited and scope.get("client") != state["last_client"]:  # another connection than the last POST's
            state["last_client"], state["mixed_at"] = scope.get("client"), t0
        try:
            await self.app(scope, receive, send_status)
        finally:
            state["in_flight"] -= limited
            state["metrics"].observe(route, status["code"], time.perf_counter() - t0)


class FastPath:
    """ASGI, behind the gate and in front of FastAPI: POST /v1/models/{name}/{verb} of a batched verb (classify) with
    a JSON body and no query string, answered without FastAPI's middleware, routing, parameter solving and response
    machinery, per-request work that the hello-world route pays. It decodes and answers with the route's own
    functions; a request it cannot answer plainly (another route, multipart, query parameters, any invalid input)
    goes to the app with its body replayed, so the app gives its usual answer and message. GET /livez, the
    hello-world route, is answered here too, so that a benchmark compares classify with hello-world on the same
    layers."""

    def __init__(self, app, runtime: Runtime):
        self.app, self.runtime = app, runtime
        self.verbs = {name: verb for name, verb in runtime.verbs.items() if verb.thread == "batched"}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"] == "/livez" and scope["method"] == "GET" and not scope["query_string"]:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(LIVE)).encode())]})
            return await send({"type": "http.response.body", "body": LIVE})
        if scope["method"] != "POST" or scope["query_string"]:
            return await self.app(scope, receive, send)
        name, verb = model_route(scope["path"])
        verb = self.verbs.get(verb)
        model = self.runtime.models.get(name) if verb is not None else None
        if model is None or verb not in model.verbs() or content_type(scope) != "application/json":
            return await self.app(scope, receive, send)
        body, disconnected = await _read_body(receive)
        if disconnected:
            return
        try:
            array, fields = parse_json(verb, body)
            inputs = verb.decode(model, array, fields, self.runtime.limits)
        except RequestError:
            return await self.app(scope, replay(body, receive), send)
        try:
            result, latency = await self.runtime.call(verb, model, inputs)
            response = json_response(verb.answer(model, inputs, result, latency))
        except RequestError as e:  # 504: the inference timed out
            response = error_response(e.status, str(e))
        except GenforgeError as e:  # as the app's handler answers it
            response = error_response(422, str(e))
        await response(scope, receive, send)


async def _read_body(receive) -> tuple[bytes, bool]:
    """The whole request body (its size is bounded by BodySizeLimit outside), and whether the client left."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"", True
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), False


class ErrorGuard:
    """The outermost ASGI layer but one: an exception that nothing answered (a bug, a model that fails) is logged with
    its traceback and answered as a JSON 500 when no response has started; after a complete answer (FastAPI's
    own 500 handler) it is only logged; mid-answer it goes on to the server, which closes the connection."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        progress = {"started": False, "done": False}

        async def tracked(message):
            if message["type"] == "http.response.start":
                progress["started"] = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                progress["done"] = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as e:  # noqa: BLE001 - the last place that can still answer
            log.exception("unhandled error answering %s %s", scope["method"], scope["path"])
            if progress["done"]:
                return
            if progress["started"]:
                raise
            await error_response(500, internal(e))(scope, receive, send)


class ProtocolErrors:
    """ASGI, outermost: a /v2 route's error answer, from whichever layer gave it (the token, the body size, the
    concurrency limit, the route), in the protocol's shape {"error": "message"} instead of genforge's
    {"error": {"status", "message"}}."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v2"):
            return await self.app(scope, receive, send)
        held = {}

        async def reshaped(message):
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held["start"], held["body"] = message, []
                return
            if "start" not in held:
                return await send(message)
            held["body"].append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(held["body"])
            try:
                error = orjson.loads(body)["error"]
                body = orjson.dumps({"error": error["message"] if isinstance(error, dict) else str(error)})
            except (orjson.JSONDecodeError, KeyError, TypeError):
                pass
            start = held.pop("start")
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, reshaped)


async def _send(send, response: Response, scope, receive) -> None:
    await response(scope, receive, send)
