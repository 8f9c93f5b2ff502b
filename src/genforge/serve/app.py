"""The HTTP API: models from the run directories given at start, nothing else. Every error is JSON with a message
that says what to fix; a bad request gets a 4xx and the worker keeps serving."""

from __future__ import annotations

import asyncio
import functools
import hmac
import io
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Literal

import numpy as np
import orjson
import torch
from fastapi import FastAPI, Query, Request
from fastapi import Path as FastAPIPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from genforge.errors import GenforgeError
from genforge.explain import DEFAULT_METHOD, DEFAULT_STEPS, MAX_STEPS, METHODS
from genforge.models.latent import reconstruction_errors
from genforge.serve.adapters import NotExplainable, ServedModel, as_array, ascii_int
from genforge.serve.batching import InferenceThread, MicroBatcher
from genforge.serve.limits import BodySizeLimit, Limits, RequestError, array_inputs, history_inputs, read_body, replay
from genforge.serve.v2 import ProtocolErrors
from genforge.serve.v2 import mount as mount_v2

log = logging.getLogger("genforge.serve")

Number = float | int


def _digits(value):
    """An integer field written as text (a form field, a query parameter, a JSON string) -> its value, by the rule
    every integer written as text in a request follows (adapters.ascii_int: the digits 0-9, and a minus); pydantic
    alone would also take '٣', '+', spaces, underscores and "3.0". Any other value goes on to pydantic as it is."""
    if isinstance(value, str):
        number = ascii_int(value)
        if number is None:  # pydantic's own error kind and words, and the rule
            raise PydanticCustomError("int_parsing", "Input should be a valid integer, written in the digits 0-9")
        return number
    return value


Integer = Annotated[int, BeforeValidator(_digits)]
IntegerOrNone = Annotated[int | None, BeforeValidator(_digits)]  # not Integer | None: its bounds left the schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClassifyOptions(_Strict):
    """The fields beside the inputs: the JSON body's, and a multipart upload's form fields."""
    top_k: Integer = Field(3, ge=1, le=1000, description="Classes listed per input, most probable first")
    range: Literal["auto", "0-255", "0-1"] = Field("auto", description="Pixel scale; auto: 0-1 if every value <= 1")


class ClassifyRequest(ClassifyOptions):
    inputs: list[list[Number] | list[list[Number]] | list[list[list[Number]]]] = Field(
        min_length=1, max_length=256, description="Images (H x W, C x H x W or flat) or feature vectors")


class GenerateRequest(_Strict):
    n: Integer = Field(16, ge=1, le=256, description="Number of images")
    label: IntegerOrNone = Field(None, ge=0, le=100_000, description="Class to draw (class-conditional models)")
    seed: Integer = Field(0, ge=0, le=2**31 - 1, description="The same seed gives the same images")
    truncation: float | None = Field(None, gt=0, le=10, description="Redraw latent entries beyond ±T")
    format: Literal["png", "array"] = "png"


class InterpolateRequest(_Strict):
    steps: Integer = Field(10, ge=2, le=256)
    seed: Integer = Field(0, ge=0, le=2**31 - 1)
    from_label: IntegerOrNone = Field(None, ge=0, le=100_000)
    to_label: IntegerOrNone = Field(None, ge=0, le=100_000)
    format: Literal["png", "array"] = "array"


class ReconstructOptions(_Strict):
    label: IntegerOrNone = Field(None, ge=0, le=100_000, description="The inputs' class (class-conditional VAEs)")
    range: Literal["auto", "0-255", "0-1"] = "auto"
    format: Literal["png", "array"] = "array"


class ReconstructRequest(ReconstructOptions):
    inputs: list[list[Number] | list[list[Number]] | list[list[list[Number]]]] = Field(min_length=1, max_length=256)


class ForecastRequest(_Strict):
    history: list[Number] | list[list[Number]] = Field(
        description=f"One series' most recent values, oldest first, or N equally long series; at least the model's "
                    f"forecast.minimum_history values each (its card says), at most {Limits.max_history:,} in all")
    horizon: IntegerOrNone = Field(None, ge=1, le=1_000_000, description=f"Steps to forecast (default: the trained "
                                f"horizon); at most {Limits.max_horizons} trained horizons, those beyond the first "
                                f"forecast from the model's own medians")
    end: str | None = Field(None, max_length=40, description="The time of the history's last value (e.g. "
                            "2010-12-01), for a model that reads calendar features (its card's forecast.features)")
    covariates: dict[str, list[Number] | list[list[Number]]] | None = Field(
        None, max_length=64, description="Each covariate column the model reads (its card's forecast.covariates): "
                                         "its values over the history and the horizon (history length + horizon), "
                                         "or one such list per history")


class ExplainOptions(_Strict):
    method: Literal[METHODS] = Field(DEFAULT_METHOD, description="The attribution method (docs/decisions.md)")
    target: str | int | None = Field(None, description="The class to explain, by index or label; default: each "
                                     "input's predicted one", json_schema_extra={"anyOf": [
                                         {"type": "string", "minLength": 1, "maxLength": 200},
                                         {"type": "integer", "minimum": 0}, {"type": "null"}]})
    steps: IntegerOrNone = Field(None, ge=1, le=MAX_STEPS, description=f"Gradient evaluations per input (integrated-"
                              f"gradients: noisy copies of an image x path points; gradient-shap: samples); at most "
                              f"the server's max_explain_steps ({Limits.max_explain_steps} by default); default "
                              f"{DEFAULT_STEPS['integrated-gradients']}")
    range: Literal["auto", "0-255", "0-1"] = Field("auto", description="Pixel scale; auto: 0-1 if every value <= 1")
    format: Literal["array", "png"] = Field("array", description="array: JSON with the attributions; png: the "
                                            "overlays (one input: its overlay; several: a grid, 8 per row)")

    @field_validator("target", mode="before")
    @classmethod
    def _class(cls, value):  # one message for both kinds, rather than pydantic's two (one per member of the union)
        if value is None or isinstance(value, str) and 0 < len(value) <= 200 or type(value) is int and value >= 0:
            return value
        raise ValueError("give a class index (an integer from 0) or a class label")


class ExplainRequest(ExplainOptions):
    inputs: list[list[Number] | list[list[Number]] | list[list[list[Number]]]] = Field(
        min_length=1, max_length=256, description=f"Images (H x W, C x H x W or flat) or feature vectors; at most the "
                                                  f"server's max_explain_batch ({Limits.max_explain_batch} by default)")


OPTIONS = {ClassifyRequest: ClassifyOptions, ReconstructRequest: ReconstructOptions, ExplainRequest: ExplainOptions}


def form_schema(options: type[BaseModel]) -> dict:
    """The multipart body: the image as `file`, and the JSON body's other fields as form fields (text, so a
    field that may be null in JSON is simply left out)."""
    properties = {"file": {"type": "string", "format": "binary", "description": "A PNG or JPEG image"}}
    for name, field in options.model_json_schema()["properties"].items():
        kinds = [k for k in field.pop("anyOf", []) if k.get("type") != "null"]
        if "default" in field and field["default"] is None:
            del field["default"]
        properties[name] = {**field, **(kinds[0] if kinds else {})}
    return {"type": "object", "required": ["file"], "properties": properties, "additionalProperties": False}


class ErrorDetail(BaseModel):
    status: int
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


ERRORS = {code: {"model": ErrorBody, "description": text} for code, text in [
    (401, "Missing or wrong bearer token"), (404, "No such model"), (413, "Body too large"),
    (415, "Unsupported content type"), (422, "Invalid input; the message says what to fix"),
    (503, "Overloaded or not ready; retry later"), (504, "Inference timed out")]}
PNG = {200: {"content": {"image/png": {}, "application/json": {}}, "description": "A PNG grid or JSON arrays"}}
EXPLAINED = {200: {"content": {"image/png": {}, "application/json": {}}, "description": "Attributions as JSON "
                   "arrays, or the overlays as a PNG"},
             409: {"model": ErrorBody, "description": "The model is served without PyTorch weights to explain"}}


def _error(status: int, message: str, headers: dict | None = None) -> Response:
    return _json({"error": {"status": status, "message": message}}, status, headers)


def _validation_message(errors: list) -> str:
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body",)) or "body"
    return f"{where}: {first.get('msg', 'invalid')}"


def _parse(cls: type[BaseModel], body: bytes) -> BaseModel:
    try:
        return cls.model_validate_json(body or b"{}")
    except ValidationError as e:
        raise RequestError(_validation_message(e.errors())) from None


def parse_inputs(cls: type[BaseModel], body: bytes) -> tuple[list, dict]:
    """The hot path of classify/reconstruct: the body decoded once and the small fields checked by the model;
    the inputs themselves are checked by array_inputs (numbers, shape, range, finite), which is far cheaper than
    validating 784 values one by one. Anything unusual goes through the full model for its message."""
    try:
        data = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("inputs"), list) and 1 <= len(data["inputs"]) <= 256:
        if len(data) == 1:  # inputs only: every other field keeps its default
            return data["inputs"], dict(_defaults(cls))
        rest = _parse_python(cls, {**data, "inputs": [[0]]})
        return data["inputs"], rest.model_dump(exclude={"inputs"})
    req = _parse(cls, body)
    return req.inputs, req.model_dump(exclude={"inputs"})


def parse_forecast(body: bytes) -> tuple[object, ForecastRequest]:
    """The history as sent, for history_inputs to check (numbers, lengths, finite: far cheaper than validating up
    to 100,000 values one by one, and its messages name the fix), and the other fields, validated (the horizon,
    the end and the covariates, checked against the model by it). A body that is not a JSON object with a history
    goes through the full model for its message."""
    try:
        data = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict) and "history" in data:
        return data["history"], _parse_python(ForecastRequest, {**data, "history": [0]})
    req = _parse(ForecastRequest, body)
    return req.history, req


def forecast_answer(name: str, model: ServedModel, forecast, one: bool, latency_ms: float) -> dict:
    """The forecast answer: the median, the 80% and 95% bounds (null where the model predicts no such quantiles)
    and every quantile; lists (horizon,) and (horizon, Q) for one 1-D history, else one per history."""
    def rows(array):
        return None if array is None else (array[0] if one else array).tolist()

    bounds = {}
    for coverage in (80, 95):
        lo, hi = forecast.interval(coverage) or (None, None)
        bounds |= {f"lo_{coverage}": rows(lo), f"hi_{coverage}": rows(hi)}
    return {"model": name, "backend": model.backend, "latency_ms": latency_ms,
            "horizon": forecast.quantiles.shape[1], "trained_horizon": model.model.horizon,
            "recursive": forecast.recursive, "levels": list(forecast.levels), "forecast": rows(forecast.median),
            **bounds, "quantiles": rows(forecast.quantiles)}


@functools.cache
def _defaults(cls: type[BaseModel]) -> dict:
    """The request model's fields other than inputs, at their defaults (computed once per model class)."""
    return {k: f.default for k, f in cls.model_fields.items() if k != "inputs"}


def _parse_python(cls: type[BaseModel], data: dict) -> BaseModel:
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise RequestError(_validation_message(e.errors())) from None


def _json(content, status: int = 200, headers: dict | None = None) -> Response:
    """A JSON answer encoded by orjson: several times faster than json.dumps, and no jsonable_encoder walk."""
    return Response(orjson.dumps(content), status_code=status, headers=headers, media_type="application/json")


def classify_answer(name: str, model: ServedModel, x: np.ndarray, probs: torch.Tensor, k: int, echo_input: bool,
                    latency_ms: float) -> dict:
    """The classify answer: every probability, the top k classes, and (echo_input) the preprocessed input."""
    classes, predictions = model.classes, []
    for i, p in enumerate(probs.tolist()):
        top = sorted(range(len(p)), key=p.__getitem__, reverse=True)[:k]  # a few classes: cheaper than Tensor.topk
        pred = {"index": top[0], "label": classes[top[0]], "probabilities": p,
                "top_k": [{"index": c, "label": classes[c], "probability": p[c]} for c in top]}
        if echo_input:
            pred["input"] = x[i].reshape(-1, *x.shape[-2:])[0].tolist() if x.ndim == 4 else x[i].tolist()
        predictions.append(pred)
    return {"model": name, "backend": model.backend, "latency_ms": latency_ms, "predictions": predictions}


def explain_answer(name: str, model: ServedModel, explanation, latency_ms: float) -> dict:
    """The explain answer: per input, the predicted class and every probability (as classify gives them), the
    explained class with its probability, and the attributions in the model's input shape (its card's)."""
    classes, explanations = model.classes, []
    for p, t, a in zip(explanation.probabilities.tolist(), explanation.target.tolist(), explanation.attributions):
        k = max(range(len(p)), key=p.__getitem__)
        explanations.append({"index": k, "label": classes[k], "probabilities": p,
                             "target": {"index": t, "label": classes[t], "probability": p[t]},
                             "attributions": a.tolist()})
    return {"model": name, "backend": "torch", "latency_ms": latency_ms, "method": explanation.method,
            "steps": explanation.steps, "copies": explanation.copies, "precision": explanation.precision,
            "explanations": explanations}


def overlay_png(images: np.ndarray, attributions: torch.Tensor) -> bytes:
    """One image: its overlay (about 224 pixels a side); several: their overlays in a grid of 8 per row."""
    from genforge.explain import overlay
    from genforge.grids import png_bytes

    scale = max(1, 224 // max(images.shape[-2:]))  # 8 for 28x28, as `genforge explain` writes them
    if len(images) == 1:
        buffer = io.BytesIO()
        overlay(images[0], attributions[0], scale).save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()
    tiles = np.stack([np.asarray(overlay(x, a, 1)) for x, a in zip(images, attributions)])  # (N, H, W, 3)
    return png_bytes(torch.from_numpy(tiles).permute(0, 3, 1, 2), min(8, len(tiles)), scale, 1)


class FrontedAPI(FastAPI):
    """FastAPI with genforge's ASGI layers in front of all of FastAPI's own per-request machinery (its telemetry
    check, error and body-limit middleware, routing): the body limit, the gate, then the classify fast path,
    whose requests so pay for none of it. `front` is set once the layers exist."""

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

    def __init__(self, app, state: dict):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, state = scope["path"], self.state
        token = state["token"]
        if token and path not in self.OPEN and not path.startswith("/static/"):
            auth = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            given = auth[7:] if auth.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(given.encode(), token.encode()):
                return await _send(send, _error(401, "send the token as the header 'Authorization: Bearer TOKEN'",
                                                {"www-authenticate": "Bearer"}), scope, receive)
        route, limits = _route_label(path), state["limits"]
        if scope["method"] not in ("GET", "HEAD"):
            t0, state["receiving"] = time.perf_counter(), state["receiving"] + 1
            try:
                body = await read_body(receive, limits.max_body_bytes, limits.body_timeout_s)
            except RequestError as e:  # 408, or 413 for a streamed body
                state["metrics"].observe(route, e.status, time.perf_counter() - t0)
                return await _send(send, _error(e.status, str(e), {"connection": "close"}), scope, receive)
            finally:
                state["receiving"] -= 1
            if body is None:  # the client left
                return
            receive = replay(body, receive)
        limited = scope["method"] == "POST"
        if limited and state["in_flight"] >= limits.max_concurrency:
            state["metrics"].observe(route, 503, 0.0)
            return await _send(send, _error(503, "the server is at its concurrency limit; retry shortly",
                                            {"retry-after": "1"}), scope, receive)
        status = {"code": 500}

        async def send_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        state["in_flight"] += limited
        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, send_status)
        finally:
            state["in_flight"] -= limited
            state["metrics"].observe(route, status["code"], time.perf_counter() - t0)


LIVE = b'{"status":"ok"}'


class ClassifyFastPath:
    """ASGI, behind the gate and in front of FastAPI: POST /v1/models/{name}/classify with a JSON body and no
    query string, answered without FastAPI's middleware, routing, parameter solving and response machinery,
    per-request work that the hello-world route pays. It parses and checks with the route's own functions; a
    request it cannot answer plainly (another route, multipart, query parameters, any invalid input) goes to the
    app with its body replayed, so the app gives its usual answer and message. GET /livez, the hello-world
    route, is answered here too, so that a benchmark compares classify with hello-world on the same layers."""

    def __init__(self, app, models: dict[str, ServedModel], classify):
        self.app, self.models, self.classify = app, models, classify

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"] == "/livez" and scope["method"] == "GET" and not scope["query_string"]:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(LIVE)).encode())]})
            return await send({"type": "http.response.body", "body": LIVE})
        if scope["method"] != "POST" or scope["query_string"]:
            return await self.app(scope, receive, send)
        name, verb = _model_route(scope["path"])
        model = self.models.get(name) if verb == "classify" else None
        if model is None or "classify" not in model.verbs() or _content_type(scope) != "application/json":
            return await self.app(scope, receive, send)
        body, disconnected = await _read_body(receive)
        if disconnected:
            return
        try:
            inputs, fields = parse_inputs(ClassifyRequest, body)
            x = array_inputs(inputs, model.input_shape, fields["range"])
        except RequestError:
            return await self.app(scope, replay(body, receive), send)
        try:
            response = _json(await self.classify(name, model, x, fields["top_k"], False))
        except RequestError as e:  # 504: the inference timed out
            response = _error(e.status, str(e))
        except GenforgeError as e:  # as the app's handler answers it
            response = _error(422, str(e))
        await response(scope, receive, send)


def _content_type(scope) -> str:
    """The request's media type, lower case, without parameters; application/json when not given."""
    for key, value in scope["headers"]:
        if key == b"content-type":
            return value.decode("latin-1").split(";")[0].strip().lower()
    return "application/json"


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
    """The outermost ASGI layer: an exception that nothing answered (a bug, a model that fails) is logged with
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
            await _error(500, _internal(e))(scope, receive, send)


def _internal(e: Exception) -> str:
    return f"internal error ({type(e).__name__}); the server's log has the details"


VERBS = {"classify", "explain", "generate", "interpolate", "reconstruct", "forecast", "series"}  # routes after a name
PLAIN_ROUTES = {"/", "/livez", "/readyz", "/metrics", "/v1/models", "/docs", "/openapi.json", "/v2", "/v2/health/live",
                "/v2/health/ready"}


def _model_route(path: str) -> tuple[str | None, str | None]:
    """/v1/models/{name}[/{verb}] -> (name, verb or None); any other path -> (None, None)."""
    parts = path.strip("/").split("/")
    if parts[:2] == ["v1", "models"] and len(parts) in (3, 4):
        return parts[2], parts[3] if len(parts) == 4 else None
    return None, None


def _route_label(path: str) -> str:
    """A metrics label from a fixed set: arbitrary paths must not grow the label space (memory)."""
    if path in PLAIN_ROUTES:
        return path
    name, verb = _model_route(path)
    if name is not None:
        return verb if verb in VERBS else "card" if verb is None else "other"
    if path.startswith("/v2/models/"):  # the Open Inference Protocol (v2.py)
        last = path.rstrip("/").rsplit("/", 1)[-1]
        return f"v2_{last}" if last in ("infer", "ready") else "v2_metadata"
    return "static" if path.startswith("/static/") else "other"


async def _send(send, response: Response, scope, receive) -> None:
    await response(scope, receive, send)


class Metrics:
    """Prometheus metrics in a registry of this app's own (no process-global state). In a worker of `genforge serve
    --workers N` (PROMETHEUS_MULTIPROC_DIR set) every worker's values are in shared files and any worker's /metrics
    adds them up: counts and histograms summed, in_flight summed and ready the minimum over the live workers, both
    as each worker last wrote them (at each request's end and each scrape)."""

    def __init__(self):
        import os

        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.state = None
        self.registry = CollectorRegistry()
        self.requests = Counter("genforge_requests", "HTTP requests", ["route", "status"], registry=self.registry)
        self.errors = Counter("genforge_errors", "HTTP requests answered 4xx or 5xx", ["route", "status"],
                              registry=self.registry)
        self.latency = Histogram("genforge_request_seconds", "Request latency", ["route"], registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
        self.batch = Histogram("genforge_batch_size", "Rows per inference batch", ["model"], registry=self.registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.ready = Gauge("genforge_ready", "1 when the models are loaded and warmed up", registry=self.registry,
                           multiprocess_mode="livemin")
        self.in_flight = Gauge("genforge_in_flight", "POST requests being answered", registry=self.registry,
                               multiprocess_mode="livesum")
        self.receiving = Gauge("genforge_receiving", "Requests whose body is still arriving (not yet in flight)",
                               registry=self.registry, multiprocess_mode="livesum")

    def follow(self, state: dict) -> None:
        """The gauges follow the app's state: readiness (SIGTERM included) and requests in flight."""
        if self.multiprocess:  # a gauge's function is not seen by the other workers: its value is written instead
            self.state = state
            return
        self.ready.set_function(lambda: float(state["ready"]))
        self.in_flight.set_function(lambda: float(state["in_flight"]))
        self.receiving.set_function(lambda: float(state["receiving"]))

    def _write_gauges(self) -> None:
        if self.state is not None:
            self.ready.set(float(self.state["ready"]))
            self.in_flight.set(float(self.state["in_flight"]))
            self.receiving.set(float(self.state["receiving"]))

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        if status >= 400:
            self.errors.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        self._write_gauges()

    def render(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest

        if not self.multiprocess:
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        self._write_gauges()
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry)


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


def create_app(models: dict[str, ServedModel], token: str | None = None, limits: Limits = Limits()) -> FastAPI:
    """The API over already-loaded models. `token`: every route but the page and the probes needs it."""
    metrics = Metrics()
    state = {"token": token, "limits": limits, "in_flight": 0, "receiving": 0, "metrics": metrics, "ready": False,
             "draining": False, "lost": None, "decodes": asyncio.Semaphore(limits.max_decodes)}
    metrics.follow(state)  # readiness (SIGTERM included) and requests in flight
    executor = InferenceThread("inference")  # one thread: no contention
    # explanations (backward passes, up to seconds) on a thread of their own: classify's queue never waits on them
    explain_executor = InferenceThread("explain")
    state["threads"] = (executor, explain_executor)  # watched for overruns (watch_threads, and the server's exit)
    batchers = {name: MicroBatcher(m.probabilities, executor, limits.max_batch,
                                   on_batch=metrics.batch.labels(name).observe)
                for name, m in models.items() if "classify" in m.verbs()}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for batcher in batchers.values():
            batcher.reset()
        state["decodes"] = asyncio.Semaphore(limits.max_decodes)  # of this event loop (a test client starts anew)
        loop = asyncio.get_running_loop()
        for model in models.values():
            await loop.run_in_executor(executor, model.warm_up)
        state["ready"], state["lost"] = True, None
        watchdog = asyncio.create_task(watch_threads(state))
        yield
        watchdog.cancel()
        state["ready"] = False  # the executor lives as long as the app: a test client may start it again

    app = FrontedAPI(title="genforge", version="1", lifespan=lifespan, responses=ERRORS,
                  description="Trained genforge runs behind an HTTP API. Errors are JSON: {error: {status, message}}.")
    app.state.genforge = state

    @app.exception_handler(RequestError)
    async def request_error(request, e: RequestError):
        return _error(e.status, str(e))

    @app.exception_handler(GenforgeError)
    async def user_error(request, e: GenforgeError):
        return _error(422, str(e))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, e: RequestValidationError):
        return _error(422, _validation_message(e.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e: StarletteHTTPException):
        return _error(e.status_code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(Exception)  # starlette answers with it, then re-raises to ErrorGuard, which logs
    async def internal_error(request, e: Exception):
        return _error(500, _internal(e))

    async def classify_inputs(name: str, model: ServedModel, x: np.ndarray, top_k: int, echo_input: bool) -> dict:
        """Validated inputs (N, *shape) -> the classify answer, through the model's micro-batcher."""
        if len(x) > limits.max_batch:
            raise RequestError(f"at most {limits.max_batch} inputs per request, got {len(x)}")
        t0 = time.perf_counter()
        future = batchers[name].submit(torch.from_numpy(x))
        expired = []

        def expire():
            expired.append(True)
            future.cancel()  # the batcher skips a cancelled request

        timer = asyncio.get_running_loop().call_later(limits.timeout_s, expire)
        try:  # a timer on the future itself: asyncio.wait_for would add a task and a waiter per request
            probs = await future
        except asyncio.CancelledError:
            if not expired:
                raise  # the request itself was cancelled (client gone, shutdown), not timed out
            raise RequestError(f"inference took longer than {limits.timeout_s:g} s", 504) from None
        finally:
            timer.cancel()
        if not torch.isfinite(probs).all():  # finite float32 inputs can still overflow inside the model
            raise RequestError("the model's output for these inputs is not finite (values too large for its "
                               "float32 arithmetic); send inputs on the scale of its training data")
        latency = (time.perf_counter() - t0) * 1000
        return classify_answer(name, model, x, probs, min(top_k, len(model.classes)), echo_input, latency)

    def served(verb: str | None):
        """The `name` path parameter; an unknown name gets the route's 404 with the list. Its schema lists no
        enum of names: the fuzzer would then run real generate/reconstruct calls for minutes (measured 196 s)."""
        return FastAPIPath(description="A served model's name" + (f", one that offers {verb}" if verb else ""))

    def model_for(name: str, verb: str) -> ServedModel:
        model = models.get(name)
        if model is None:
            raise RequestError(f"no model named {name!r}; GET /v1/models lists them: {', '.join(models)}", 404)
        if verb not in model.verbs():
            raise RequestError(f"{name} is a {model.task.name} model: it offers {', '.join(model.verbs())}, "
                               f"not {verb}")
        return model

    async def infer(fn, *args, fewer: str = "images", pool: ThreadPoolExecutor = executor):
        """Run fn on the inference thread (or `pool`'s); 504 when it takes longer than the limit."""
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(pool, fn, *args), limits.timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(f"inference took longer than {limits.timeout_s:g} s; ask for fewer {fewer}", 504) \
                from None

    async def image_inputs(request: Request, model: ServedModel, cls: type[BaseModel]) -> tuple[np.ndarray, dict]:
        """(N, *shape) inputs from a multipart `file` upload or a JSON body of arrays, plus the JSON fields."""
        content_type = _content_type(request.scope)
        if content_type == "multipart/form-data":
            if len(model.input_shape) != 3:
                raise RequestError(f"{model.name} takes feature vectors: send JSON {{\"inputs\": [[...]]}}", 415)
            try:
                form = await request.form(max_files=1, max_fields=8)
            except Exception as e:  # noqa: BLE001 - starlette raises several kinds for malformed multipart
                raise RequestError(f"malformed multipart body ({e}); send one image in a field named 'file'", 400) \
                    from None
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise RequestError("send the image as a multipart file field named 'file'")
            fields = form_fields(form, OPTIONS[cls])
            data = await upload.read()
            async with state["decodes"]:  # a decoded image is held whole: bound how many are at once
                x = await run_in_threadpool(_decode, data, model.input_shape, upload.filename or "file", limits,
                                           model.light_background)
            return x[None], fields
        if content_type != "application/json":
            raise RequestError(f"content type {content_type} is not accepted; send application/json or "
                               f"multipart/form-data with a 'file' field", 415)
        inputs, fields = parse_inputs(cls, await request.body())
        return array_inputs(inputs, model.input_shape, fields["range"]), fields

    @app.get("/livez", tags=["operations"], summary="The process is up (also the stack's hello-world route)")
    async def livez():
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], summary="Ready once every model is loaded and warmed up",
             responses={503: {"model": ErrorBody}})
    async def readyz():
        if not state["ready"]:
            return _error(503, state["lost"] or "not ready: models are loading or the server is shutting down")
        return {"status": "ready", "models": list(models)}

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics",
             response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", tags=["models"], summary="The served models")
    async def list_models():
        return {"models": [m.card() for m in models.values()]}

    @app.get("/v1/models/{name}", tags=["models"], summary="One model's card: kind, data, classes, metrics")
    async def model_card(name: str = served(None)):
        model = models.get(name)
        if model is None:
            raise RequestError(f"no model named {name!r}; GET /v1/models lists them", 404)
        return model.card()

    classify_body = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": ClassifyRequest.model_json_schema()},
        "multipart/form-data": {"schema": form_schema(ClassifyOptions)}}}}

    @app.post("/v1/models/{name}/classify", tags=["models"], openapi_extra=classify_body,
              summary="Class probabilities of images (PNG/JPEG upload or JSON arrays) or feature vectors")
    async def classify(request: Request, name: str = served("classify"),
                       top_k: Annotated[int | None, Query(ge=1, le=1000, description="Overrides the body's top_k"),
                                        BeforeValidator(_digits)] = None,  # IntegerOrNone = Query(...) lost it
                       echo_input: bool = Query(False, description="Return the preprocessed input the model saw")):
        model = model_for(name, "classify")
        x, fields = await image_inputs(request, model, ClassifyRequest)
        return _json(await classify_inputs(name, model, x, top_k or fields["top_k"], echo_input))

    explain_body = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": ExplainRequest.model_json_schema()},
        "multipart/form-data": {"schema": form_schema(ExplainOptions)}}}}

    @app.post("/v1/models/{name}/explain", tags=["models"], openapi_extra=explain_body, responses=EXPLAINED,
              summary="What a classifier looks at: attributions of its inputs (Captum) for the predicted or a chosen "
                      "class, as arrays or overlays")
    async def explain(request: Request, name: str = served("explain")):
        """The inputs as classify takes them (a PNG/JPEG upload or JSON arrays, the same checks), at most
        max_explain_batch of them; `method`, `target` (index or label), `steps` (at most max_explain_steps, for the
        methods that take them) and `format` (array: JSON; png: one input's overlay, or a grid of several, with the
        classes in the x-predicted and x-target headers).

        Gradients need PyTorch, so the answer's backend is always torch: a model served with onnxruntime is explained
        with its run's torch weights, loaded once on the first explanation (its probabilities here are torch's,
        equal to ONNX Runtime's to float32 rounding). A run without them (an int8 run: ONNX files only) gets a 409,
        and so does one whose weights changed on disk since the server loaded its export. One explanation at a time
        per model, on a thread of its own: classify never queues behind one."""
        model = models.get(name)
        if model is not None and model.explain_refusal:
            raise RequestError(model.explain_refusal, 409)
        model = model_for(name, "explain")
        x, fields = await image_inputs(request, model, ExplainRequest)
        if len(x) > limits.max_explain_batch:
            raise RequestError(f"at most {limits.max_explain_batch} inputs per explain request, got {len(x)}; send "
                               f"the others in further requests")
        method, steps, fmt = fields["method"], fields["steps"], fields["format"]
        if steps is not None and method not in DEFAULT_STEPS:
            raise RequestError(f"steps: {method} takes no steps (only {' and '.join(DEFAULT_STEPS)} do); leave it out")
        if steps is not None and steps > limits.max_explain_steps:
            raise RequestError(f"steps must be at most {limits.max_explain_steps} on this server, got {steps}")
        if fmt == "png" and len(model.input_shape) != 3:
            raise RequestError(f"format png overlays images; {name} takes feature vectors: ask for format array")
        target = model.class_index(fields["target"])
        t0 = time.perf_counter()
        try:
            result = await infer(model.explain, torch.from_numpy(x), method, target, steps, pool=explain_executor,
                                 fewer="inputs or steps")
        except NotExplainable as e:
            raise RequestError(str(e), 409) from None
        if not (torch.isfinite(result.attributions).all() and torch.isfinite(result.probabilities).all()):
            raise RequestError("the model's output for these inputs is not finite (values too large for its float32 "
                               "arithmetic); send inputs on the scale of its training data")
        latency = (time.perf_counter() - t0) * 1000
        if fmt == "array":
            return _json(explain_answer(name, model, result, latency))
        png = await run_in_threadpool(overlay_png, x, result.attributions)
        predicted = result.probabilities.argmax(1).tolist()
        return Response(png, media_type="image/png", headers={
            "x-latency-ms": f"{latency:.2f}", "x-backend": "torch", "x-method": result.method,
            "x-predicted": ",".join(map(str, predicted)), "x-target": ",".join(map(str, result.target.tolist()))})

    async def images_response(model: ServedModel, images: torch.Tensor, fmt: str, extra: dict, latency: float,
                              nrow: int | None = None):
        """A PNG grid, encoded at zlib level 1 in a worker thread (Pillow releases the GIL: the event loop keeps
        serving and the inference thread starts the next request meanwhile), or the uint8 arrays as JSON."""
        from genforge.grids import png_bytes

        headers = {"x-latency-ms": f"{latency:.2f}", "x-backend": model.backend}
        if fmt == "png":
            scale = 2 if images.shape[-1] < 64 else 1
            png = await run_in_threadpool(png_bytes, images, nrow, scale, 1)
            return Response(png, media_type="image/png", headers=headers)
        return _json({**extra, "latency_ms": latency, "backend": model.backend, "images": as_array(images)},
                     headers=headers)

    @app.post("/v1/models/{name}/generate", tags=["models"], responses=PNG,
              summary="Samples from a generator: a PNG grid or uint8 arrays; the same seed gives the same images")
    async def generate(req: GenerateRequest, name: str = served("generate")):
        model = model_for(name, "generate")
        if req.n > limits.max_n:
            raise RequestError(f"n must be at most {limits.max_n}")
        t0 = time.perf_counter()
        images = await infer(model.generate, req.n, req.label, req.seed, req.truncation)
        extra = {"model": name, "n": req.n, "seed": req.seed, "label": req.label}
        return await images_response(model, images, req.format, extra, (time.perf_counter() - t0) * 1000)

    @app.post("/v1/models/{name}/interpolate", tags=["models"], responses=PNG,
              summary="A walk through latent space (spherical), from one class to another for conditional models")
    async def interpolate(req: InterpolateRequest, name: str = served("interpolate")):
        model = model_for(name, "interpolate")
        if req.steps > limits.max_n:
            raise RequestError(f"steps must be at most {limits.max_n}")
        t0 = time.perf_counter()
        images = await infer(model.interpolate, req.steps, req.seed, req.from_label, req.to_label)
        extra = {"model": name, "steps": req.steps, "seed": req.seed}
        return await images_response(model, images, req.format, extra, (time.perf_counter() - t0) * 1000,
                                     nrow=req.steps)

    reconstruct_body = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": ReconstructRequest.model_json_schema()},
        "multipart/form-data": {"schema": form_schema(ReconstructOptions)}}}}

    @app.post("/v1/models/{name}/reconstruct", tags=["models"], openapi_extra=reconstruct_body, responses=PNG,
              summary="A VAE's reconstructions of images, with the mean absolute error per image (0-255)")
    async def reconstruct(request: Request, name: str = served("reconstruct")):
        model = model_for(name, "reconstruct")
        x, fields = await image_inputs(request, model, ReconstructRequest)
        t0 = time.perf_counter()
        recon = await infer(model.reconstruct, torch.from_numpy(x), fields["label"])
        errors = reconstruction_errors(torch.from_numpy(x), recon)
        latency = (time.perf_counter() - t0) * 1000
        if fields["format"] == "png":
            pairs = torch.stack([torch.from_numpy(x), recon], 1).flatten(0, 1)
            return await images_response(model, pairs, "png", {}, latency, nrow=min(8, len(pairs)))
        return {"model": name, "latency_ms": latency, "backend": model.backend, "errors": errors,
                "images": as_array(recon)}

    forecast_body = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": ForecastRequest.model_json_schema()}}}}

    @app.post("/v1/models/{name}/forecast", tags=["models"], openapi_extra=forecast_body,
              summary="Quantile forecasts after one or more histories: the median, its 80% and 95% intervals, and "
                      "every quantile the model predicts")
    async def forecast(request: Request, name: str = served("forecast")):
        model = model_for(name, "forecast")
        if (content_type := _content_type(request.scope)) != "application/json":
            raise RequestError(f"content type {content_type} is not accepted; send application/json "
                               f"{{\"history\": [...]}}", 415)
        values, req = parse_forecast(await request.body())
        horizon = req.horizon
        history = history_inputs(values, model.minimum_history, limits.max_batch, limits.max_history)
        trained = model.model.horizon
        if horizon is not None and horizon > limits.max_horizons * trained:
            raise RequestError(f"horizon must be at most {limits.max_horizons * trained} ({limits.max_horizons} x "
                               f"the trained horizon {trained}; steps beyond {trained} are forecast from the model's "
                               f"own medians), got {horizon}")
        t0 = time.perf_counter()
        result = await infer(model.forecast, history, horizon, req.end, req.covariates,
                             fewer="or shorter histories, or a shorter horizon")
        if not np.isfinite(result.quantiles).all():  # finite float32 inputs can still overflow inside the model
            raise RequestError("the model's forecast of this history is not finite (values too large for its "
                               "float32 arithmetic); send a history on the scale of its training data")
        latency = (time.perf_counter() - t0) * 1000
        return _json(forecast_answer(name, model, result, history.ndim == 1, latency))

    @app.get("/v1/models/{name}/series", tags=["models"],
             summary="The end of a forecaster's own training series (a few at most): histories to forecast from")
    async def series(name: str = served("forecast")):
        model = model_for(name, "forecast")
        if model.recent is None:
            raise RequestError(model.recent_error or f"{name}'s series are not loaded yet; retry shortly",
                               404 if model.recent_error else 503)
        return _json({"model": name, **model.recent})

    mount_v2(app, models, state, limits, classify_inputs, infer)  # the Open Inference Protocol, over the same models

    static = resources.files("genforge.serve") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", include_in_schema=False)
    async def playground():
        return FileResponse(str(static / "index.html"))

    app.front = ProtocolErrors(ErrorGuard(BodySizeLimit(
        Gate(ClassifyFastPath(app.behind, models, classify_inputs), state), limits.max_body_bytes)))
    return app


def _decode(data: bytes, shape: tuple[int, ...], name: str, limits: Limits, light_background: bool) -> np.ndarray:
    from genforge.data.inputs import decode_image

    max_pixels = max(limits.max_pixels, 64 * shape[-2] * shape[-1])  # by what the model needs: 8x its side
    try:
        return decode_image(data, shape, name=name, max_pixels=max_pixels,
                            light_background=light_background).copy()  # writable for torch
    except GenforgeError as e:
        raise RequestError(str(e)) from None


def form_fields(form, options: type[BaseModel]) -> dict:
    """A multipart upload's text fields, validated by the JSON body's model: the same types, bounds and
    messages, and an unknown or repeated field refused as in JSON."""
    fields = {}
    for key, value in form.multi_items():
        if key == "file":
            continue
        if not isinstance(value, str):
            raise RequestError(f"{key}: only the field 'file' may be a file")
        if key in fields:
            raise RequestError(f"{key}: given more than once")
        fields[key] = value
    return _parse_python(options, fields).model_dump()
