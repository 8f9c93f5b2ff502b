"""The /v1 codec over the verbs: a verb's inputs from a JSON body (its `request` model), or from an uploaded image with
form fields (its `form` model), and the options in the URL's query (its `query` model); its answer as JSON or a PNG
with x- headers; every error as {"error": {"status", "message"}} with a message that says what to fix."""

from __future__ import annotations

import functools
import logging

import numpy as np
import orjson
from annotated_types import MaxLen, MinLen
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from genforge.data.inputs import decode_image
from genforge.errors import GenforgeError
from genforge.serve.adapters import ServedModel
from genforge.tasks.verb import Answer, Limits, RequestError, Verb, defaults, error_message, validated, validated_json

log = logging.getLogger("genforge.serve")


def json_response(content, status: int = 200, headers: dict | None = None) -> Response:
    """A JSON answer encoded by orjson: several times faster than json.dumps, and no jsonable_encoder walk."""
    return Response(orjson.dumps(content), status_code=status, headers=headers, media_type="application/json")


def error_response(status: int, message: str, headers: dict | None = None) -> Response:
    return json_response({"error": {"status": status, "message": message}}, status, headers)


def internal(e: Exception) -> str:
    return f"internal error ({type(e).__name__}); the server's log has the details"


async def request_error(request, e: RequestError) -> Response:
    return error_response(e.status, str(e))


async def user_error(request, e: GenforgeError) -> Response:
    return error_response(422, str(e))


async def validation_error(request, e: RequestValidationError) -> Response:
    return error_response(422, error_message(e.errors()))


async def http_error(request, e: StarletteHTTPException) -> Response:
    return error_response(e.status_code, str(e.detail), getattr(e, "headers", None))


async def internal_error(request, e: Exception) -> Response:  # starlette answers with it, then re-raises to ErrorGuard
    return error_response(500, internal(e))


HANDLERS = {RequestError: request_error, GenforgeError: user_error, RequestValidationError: validation_error,
            StarletteHTTPException: http_error, Exception: internal_error}


def content_type(scope) -> str:
    """The request's media type, lower case, without parameters; application/json when not given."""
    for key, value in scope["headers"]:
        if key == b"content-type":
            return value.decode("latin-1").split(";")[0].strip().lower()
    return "application/json"


@functools.cache
def _array_bounds(verb: Verb) -> tuple[int, int] | None:
    """The bulk input's length bounds in the verb's request model (inputs: 1 to 256 arrays), None if it has none."""
    metadata = verb.request.model_fields[verb.array].metadata
    low = next((m.min_length for m in metadata if isinstance(m, MinLen)), None)
    high = next((m.max_length for m in metadata if isinstance(m, MaxLen)), None)
    return None if low is None and high is None else (low or 0, high if high is not None else float("inf"))


def _plain(verb: Verb, data: dict) -> bool:
    """Whether a JSON object's bulk input can go straight to the verb's decode: present, and a list of an allowed
    length where the request model bounds it."""
    if verb.array not in data:
        return False
    bounds = _array_bounds(verb)
    value = data[verb.array]
    return bounds is None or isinstance(value, list) and bounds[0] <= len(value) <= bounds[1]


def parse_json(verb: Verb, body: bytes) -> tuple[object, dict]:
    """A JSON body -> (the bulk input as sent, the other fields validated). The hot path of classify: the body is
    decoded once and only the small fields go through the request model; the bulk input is checked by the verb's
    decode (numbers, shape, range, finite), far cheaper than validating 784 values one by one. Anything unusual goes
    through the whole model for its message."""
    if verb.array is None:  # every input has a default, yet the body is required (an object, {} for defaults)
        if not body:
            raise RequestError("body: Field required")
        return None, validated_json(verb.request, body).model_dump()
    try:
        data = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict) and _plain(verb, data):
        if len(data) == 1:  # the bulk input only: every other field keeps its default
            return data[verb.array], dict(defaults(verb.request, verb.array))
        return data[verb.array], verb.fields(data)
    req = validated_json(verb.request, body)
    return getattr(req, verb.array), req.model_dump(exclude={verb.array})


def query_fields(verb: Verb, request: Request) -> dict:
    """The verb's options in the URL's query, validated; those given override the body's."""
    if verb.query is None:
        return {}
    try:
        query = verb.query.model_validate(dict(request.query_params))
    except ValidationError as e:
        raise RequestError(f"query.{error_message(e.errors())}") from None
    return {k: v for k, v in query.model_dump().items() if v is not None}


def accepted(verb: Verb) -> str:
    if verb.form is not None:
        return "application/json or multipart/form-data with a 'file' field"
    return f"application/json {{\"{verb.array}\": [...]}}" if verb.array else "application/json"


async def read(request: Request, verb: Verb, model: ServedModel, state: dict) -> tuple[object, dict]:
    """(the bulk input, the fields) of a request: a multipart `file` upload with form fields (a verb with a `form`),
    or a JSON body; a verb without inputs reads nothing."""
    if verb.request is None:
        return None, {}
    kind = content_type(request.scope)
    if kind == "multipart/form-data" and verb.form is not None:
        return await upload(request, verb, model, state)
    if kind != "application/json":
        raise RequestError(f"content type {kind} is not accepted; send {accepted(verb)}", 415)
    return parse_json(verb, await request.body())


async def upload(request: Request, verb: Verb, model: ServedModel, state: dict) -> tuple[np.ndarray, dict]:
    """One uploaded image, decoded as the model reads it (1, *shape), and the form's fields."""
    if len(model.input_shape) != 3:
        raise RequestError(f"{model.name} takes feature vectors: send JSON {{\"{verb.array}\": [[...]]}}", 415)
    try:
        form = await request.form(max_files=1, max_fields=8)
    except Exception as e:  # noqa: BLE001 - starlette raises several kinds for malformed multipart
        raise RequestError(f"malformed multipart body ({e}); send one image in a field named 'file'", 400) from None
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise RequestError("send the image as a multipart file field named 'file'")
    fields = form_fields(form, verb.form)
    data = await upload.read()
    async with state["decodes"]:  # a decoded image is held whole: bound how many are at once
        x = await run_in_threadpool(_decode, data, model.input_shape, upload.filename or "file", state["limits"],
                                    model.light_background)
    return x[None], fields


def _decode(data: bytes, shape: tuple[int, ...], name: str, limits: Limits, light_background: bool) -> np.ndarray:
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
    return validated(options, fields).model_dump()


async def respond(answer: dict | Answer) -> Response:
    """A verb's answer: JSON, or a PNG encoded in a worker thread (Pillow releases the GIL: the event loop keeps
    serving and the inference thread starts the next request meanwhile), its facts as x- headers."""
    if isinstance(answer, dict):
        return json_response(answer)
    headers = {f"x-{key}": value for key, value in answer.facts.items()}
    if answer.png is not None:
        return Response(await run_in_threadpool(answer.png), media_type="image/png", headers=headers)
    return json_response(answer.body, headers=headers)


@functools.cache
def describe(verb: Verb) -> dict:
    """How a client calls the verb (the model card's `requests`): method and path, its inputs in order (the bulk input
    first), their JSON schema, and the answer's field (None: the whole answer) and what to send for a JSON answer."""
    schema = verb.request.model_json_schema() if verb.request is not None else None
    names = list(schema["properties"]) if schema else []
    if verb.array:
        names.remove(verb.array)
        names.insert(0, verb.array)
    return {"method": verb.method, "path": f"/v1/models/{{name}}/{verb}", "inputs": names,
            "answer": verb.answer_field, "images": verb.answer_images, "json": verb.json_answer, "schema": schema}


def card(model: ServedModel) -> dict:
    """A model's card with how to call each of its verbs over /v1."""
    verbs = [each for verb in model.verbs() for each in (verb, *verb.companions)]
    return {**model.card(), "requests": {verb.name: describe(verb) for verb in verbs}}
