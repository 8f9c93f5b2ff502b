"""The Open Inference Protocol (KServe's and Triton's "v2" REST API) over the served models, beside /v1: the same
models, limits, token and metrics. Clients written for KServe, Triton or MLServer (tritonclient, ...) work here.

A request's tensors are JSON ({"name", "shape", "datatype", "data"}) or, with the binary tensor extension, raw
little-endian bytes after the JSON header (its length in the Inference-Header-Content-Length header, each binary
input's size in its parameters.binary_data_size). Each model's tensors are its card's `tensors`: those of the one
verb it answers here (ServedModel.tensor_verb), whose inputs are then decoded and checked as /v1 decodes them.
Errors are the protocol's {"error": "message"}, with a 4xx for a client's mistake. This module is the codec (the
protocol's bodies, their tensors checked against the model's, the answer); serve/routes.py holds the routes."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from genforge.serve.adapters import ServedModel
from genforge.tasks.verb import RequestError, ascii_int

VERSION = "1"  # every served model has one version
HEADER = "inference-header-content-length"
EXTENSIONS = ["binary_tensor_data"]
DTYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
          "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
          "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_}  # BYTES: strings (a forecaster's end)
MAX_INPUTS = 16
# Elements a shape may describe, a 0 among its dimensions counted as 1: [0, 2**62] holds nothing, yet numpy cannot
# make it (its other dimensions' bytes overflow 64 bits) and no model reads a row of 2**62 values. A tensor with
# elements is far smaller anyway: its data fits in the body (1 MiB by default).
MAX_ELEMENTS = 2**31 - 1


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")  # the protocol lets clients add fields (Triton's client adds some)


class InferInput(_Open):
    name: str = Field(max_length=200)
    shape: list[StrictInt] = Field(max_length=8, description="Dimensions; their product is the element count")
    # strict: JSON integers only; pydantic would read "1_0" as 10, " 1" and true as 1
    datatype: str = Field(max_length=16, description="BOOL, UINT8, INT32, INT64, FP32, FP64, ...")
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size: the byte count of this input's "
                                                                 "raw data after the JSON header (binary extension)")
    data: Any = Field(None, description="The elements in row-major order, flat or nested; left out when binary")


class RequestedOutput(_Open):
    name: str = Field(max_length=200)
    parameters: dict[str, Any] | None = Field(None, description="binary_data: answer this output as raw bytes")


class InferRequest(_Open):
    id: str | None = Field(None, max_length=200)
    parameters: dict[str, Any] | None = Field(None, description="top_k (classifiers); binary_data_output: every "
                                                                 "output as raw bytes")
    inputs: list[InferInput] = Field(min_length=1, max_length=MAX_INPUTS)
    outputs: list[RequestedOutput] | None = Field(None, max_length=MAX_INPUTS)


class Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[Tensor]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ProtocolError(BaseModel):
    error: str


def protocol_errors(*codes: int) -> dict:
    text = {400: "Invalid request; the message says what to fix", 401: "Missing or wrong bearer token",
            404: "No such model or version", 413: "Body too large", 415: "Unsupported content encoding",
            422: "Invalid value for the model", 503: "Overloaded or not ready; retry later",
            504: "Inference timed out"}
    return {code: {"model": ProtocolError, "description": text[code]} for code in codes}


def _inline(model: type[BaseModel]) -> dict:
    """A model's JSON schema with its $defs written in place: openapi_extra puts it inside the OpenAPI document,
    where pydantic's #/$defs/... references would point at nothing."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: resolve(v) for k, v in node.items()}
        return [resolve(v) for v in node] if isinstance(node, list) else node

    return resolve(schema)


READY = {200: {"description": "Ready"}, **protocol_errors(401, 404, 503)}
INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": _inline(InferRequest)},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary", "description":
                                            "The JSON request (its length in the Inference-Header-Content-Length "
                                            "header), then the binary inputs' bytes in input order"}}}}}
INFERRED = {200: {"content": {"application/json": {"schema": _inline(InferResponse)},
                              "application/octet-stream": {}},
                  "description": "The outputs; with binary outputs, their bytes follow the JSON header"},
            **protocol_errors(400, 401, 404, 413, 415, 422, 503, 504)}


def model_for(models: dict[str, ServedModel], name: str, version: str | None) -> ServedModel:
    model = models.get(name)
    if model is None:
        raise RequestError(f"no model named {name!r}; served: {', '.join(models)}", 404)
    if version is not None and version != VERSION:
        raise RequestError(f"{name} has version {VERSION} only, not {version!r}", 404)
    return model


def metadata(model: ServedModel) -> dict:
    def strip(tensors):
        return [{k: t[k] for k in ("name", "datatype", "shape")} for t in tensors]

    return {"name": model.name, "versions": [VERSION], "platform": f"genforge_{model.backend}",
            "inputs": strip(model.tensors["inputs"]), "outputs": strip(model.tensors["outputs"])}


def parse(body: bytes, header_length: str | None) -> tuple[InferRequest, dict[str, np.ndarray]]:
    """An infer request's body -> the request and its input tensors by name, each its declared shape and
    datatype. The body's size is bounded before it is read (BodySizeLimit)."""
    rest = b""
    if header_length is not None:
        length = ascii_int(header_length)
        if length is None or not 0 < length <= len(body):
            raise RequestError(f"Inference-Header-Content-Length must be the JSON header's byte count in the digits "
                               f"0-9 (1 to the body's {len(body)}), got {header_length!r}", 400)
        body, rest = body[:length], body[length:]
    try:
        req = InferRequest.model_validate_json(body or b"{}")
    except ValidationError as e:
        errors = e.errors()
        where = ".".join(str(p) for p in errors[0].get("loc", ())) or "body"
        raise RequestError(f"{where}: {errors[0].get('msg', 'invalid')} (an infer request is JSON: {{\"inputs\": "
                           f"[{{\"name\", \"shape\", \"datatype\", \"data\"}}]}})", 400) from None
    tensors, offset = {}, 0
    for tensor in req.inputs:
        if tensor.name in tensors:
            raise RequestError(f"input {tensor.name!r} is given twice", 400)
        if tensor.datatype not in DTYPES:
            raise RequestError(f"input {tensor.name!r}: datatype {tensor.datatype!r} is not one this server takes "
                               f"({', '.join(DTYPES)})", 400)
        if any(d < 0 for d in tensor.shape):
            raise RequestError(f"input {tensor.name!r}: shape {tensor.shape} has a negative dimension", 400)
        if math.prod(max(d, 1) for d in tensor.shape) > MAX_ELEMENTS:  # Python integers: no overflow
            raise RequestError(f"input {tensor.name!r}: shape {tensor.shape} is too large: at most {MAX_ELEMENTS:,} "
                               f"elements (a 0 counted as 1)", 400)
        count, dtype = math.prod(tensor.shape), np.dtype(DTYPES[tensor.datatype]).newbyteorder("<")
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0 or offset + size > len(rest):
                raise RequestError(f"input {tensor.name!r}: binary_data_size {size!r} runs past the body's "
                                   f"{len(rest)} bytes after the JSON header", 400)
            if tensor.data is not None:
                raise RequestError(f"input {tensor.name!r}: give data or binary_data_size, not both", 400)
            if dtype.kind == "O":
                array = _strings(tensor, rest[offset:offset + size], count)
            elif size != count * dtype.itemsize:
                raise RequestError(f"input {tensor.name!r}: shape {tensor.shape} of {tensor.datatype} is "
                                   f"{count * dtype.itemsize} bytes, but binary_data_size says {size}", 400)
            else:
                array = np.frombuffer(rest, dtype, count, offset).reshape(tensor.shape)
            offset += size
        else:
            array = _from_json(tensor, count, dtype)
        tensors[tensor.name] = array
    if offset != len(rest):
        raise RequestError(f"the body has {len(rest)} bytes after the JSON header, but the binary inputs' "
                           f"binary_data_size add up to {offset}", 400)
    return req, tensors


def _strings(tensor: InferInput, raw: bytes, count: int) -> np.ndarray:
    """A binary BYTES tensor: each element a 4-byte little-endian length, then that many bytes (UTF-8 text here)."""
    where, items, at = f"input {tensor.name!r}", [], 0
    while at < len(raw) and len(items) < count:
        n = int.from_bytes(raw[at:at + 4], "little")
        if at + 4 + n > len(raw):
            break
        items.append(raw[at + 4:at + 4 + n])
        at += 4 + n
    if len(items) != count or at != len(raw):
        raise RequestError(f"{where}: binary BYTES data must be {count} element(s), each a 4-byte little-endian "
                           f"length and that many bytes, filling binary_data_size ({len(raw)})", 400)
    try:
        texts = [item.decode() for item in items]
    except UnicodeDecodeError:
        raise RequestError(f"{where}: BYTES elements must be UTF-8 text", 400) from None
    return np.array(texts, dtype=object).reshape(tensor.shape)


def _from_json(tensor: InferInput, count: int, dtype: np.dtype) -> np.ndarray:
    """A JSON tensor's data, flat or nested, in row-major order -> an array of its shape and datatype."""
    where = f"input {tensor.name!r}"
    if not isinstance(tensor.data, list):
        raise RequestError(f"{where}: give its elements as data (a list), or binary_data_size", 400)
    try:
        values = np.array(tensor.data, dtype=object if dtype.kind == "O" else None)
    except (ValueError, TypeError, OverflowError):
        raise RequestError(f"{where}: data must be a flat or evenly nested list of "
                           f"{'strings' if dtype.kind == 'O' else 'numbers'}", 400) from None
    if values.size != count:
        raise RequestError(f"{where}: shape {tensor.shape} has {count} elements, data has {values.size}", 400)
    if dtype.kind == "O":
        if not all(type(v) is str for v in values.flat):
            raise RequestError(f"{where}: BYTES data must be strings", 400)
        return values.reshape(tensor.shape)
    kind = values.dtype.kind if values.size else dtype.kind
    if dtype.kind == "b":
        if kind != "b":
            raise RequestError(f"{where}: BOOL data must be true or false", 400)
    elif kind not in ("iu" if dtype.kind in "iu" else "iuf"):
        raise RequestError(f"{where}: {tensor.datatype} data must be {'integers' if dtype.kind in 'iu' else 'numbers'}"
                           f", got {values.dtype.name if kind != 'U' else 'strings'}", 400)
    elif dtype.kind in "iu" and values.size:
        info = np.iinfo(dtype)
        if values.min() < info.min or values.max() > info.max:
            raise RequestError(f"{where}: {tensor.datatype} values lie in {info.min} to {info.max}, got "
                               f"{values.min()} to {values.max()}", 400)
    with np.errstate(over="ignore"):
        return values.astype(dtype).reshape(tensor.shape)


def check_inputs(model: ServedModel, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The request's inputs against the model's: known names, each its datatype and shape, none missing."""
    specs = {t["name"]: t for t in model.tensors["inputs"]}
    for name, array in tensors.items():
        spec = specs.get(name)
        if spec is None:
            raise RequestError(f"{model.name} has no input named {name!r}; its inputs: {', '.join(specs)}", 400)
        datatype = next(k for k, v in DTYPES.items() if np.dtype(v) == array.dtype.newbyteorder("="))
        if datatype != spec["datatype"]:
            raise RequestError(f"input {name!r} of {model.name} is {spec['datatype']}, got {datatype}", 400)
        shape = spec["shape"]
        if len(array.shape) != len(shape) or any(d != -1 and d != s for d, s in zip(shape, array.shape)):
            raise RequestError(f"input {name!r} of {model.name} has shape {shape} (-1: any size), got "
                               f"{list(array.shape)}", 400)
    missing = [n for n, t in specs.items() if not t.get("optional") and n not in tensors]
    if missing:
        raise RequestError(f"{model.name} needs the input(s) {', '.join(missing)}; GET /v2/models/{model.name} "
                           f"lists them", 400)
    return {name: array.astype(array.dtype.newbyteorder("=")) for name, array in tensors.items()}


def scalars(model: ServedModel, tensors: dict[str, np.ndarray]) -> dict:
    """The tensors, each of shape [1] as its Python value (an integer, a string), as a JSON body would give it."""
    shapes = {t["name"]: t["shape"] for t in model.tensors["inputs"]}
    return {name: array.tolist()[0] if shapes[name] == [1] else array for name, array in tensors.items()}


def encode(name: str, req: InferRequest, outputs: dict[str, np.ndarray]) -> Response:
    """The infer answer: each output asked for (all by default) as JSON data, or as raw little-endian bytes after
    the JSON header when asked for binary."""
    binary_default = (req.parameters or {}).get("binary_data_output", False) is True
    wanted = {o.name: (o.parameters or {}).get("binary_data", binary_default) is True for o in req.outputs or []}
    for output in wanted:
        if output not in outputs:
            raise RequestError(f"{name} has no output named {output!r}; its outputs: {', '.join(outputs)}", 400)
    tensors, chunks = [], []
    for output, array in outputs.items():
        if wanted and output not in wanted:
            continue
        datatype = next(k for k, v in DTYPES.items() if np.dtype(v) == array.dtype)
        tensor = {"name": output, "datatype": datatype, "shape": list(array.shape)}
        if wanted.get(output, binary_default):
            chunks.append(np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes())
            tensor["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            tensor["data"] = array.reshape(-1).tolist()
        tensors.append(tensor)
    answer = {"model_name": name, "model_version": VERSION, **({"id": req.id} if req.id is not None else {}),
              "outputs": tensors}
    header = orjson.dumps(answer)
    if not chunks:
        return Response(header, media_type="application/json")
    return Response(b"".join([header, *chunks]), media_type="application/octet-stream",
                    headers={HEADER: str(len(header))})
