"""What a verb is: a request a served model answers (classify, generate, forecast, ...), defined once, in the task that
offers it. Its inputs are a pydantic model (names, types, bounds, defaults, docs); `decode` checks an untrusted
request's values against the model it is asked of and the server's Limits; `run` computes on the model; `answer`
encodes the result. The protocols (serve/v1.py: JSON and multipart; serve/v2.py: the Open Inference Protocol's
tensors; the Python client and the playground through the model cards) are codecs over these definitions and never
name a verb, so every protocol validates a verb's inputs with the same bounds and the same messages (LitServe's
decode_request / predict / encode_response, with the decoding shared).

A Verb is a str, its name: `"classify" in task.verbs`, the card's list of verbs and the routes' names keep working."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError

from genforge.errors import GenforgeError


@dataclass(frozen=True)
class Limits:
    """What one request may ask of a server (and its body and time); the verbs' caps read it, so that every protocol
    applies the same ones."""

    max_body_bytes: int = 1 << 20  # 1 MiB: refused before the body is read into memory
    max_pixels: int = 1024 * 1024  # decoded pixels per uploaded image (more for models above 128x128: 64x theirs)
    max_decodes: int = 2  # image uploads decoded at once (one per core); the others wait their turn
    max_batch: int = 256  # images or vectors per classify request
    max_explain_batch: int = 16  # inputs per explain request: each costs up to max_explain_steps backward passes
    max_explain_steps: int = 64  # gradient evaluations (integrated-gradients, gradient-shap) per input
    max_n: int = 256  # images per generate request; steps per interpolation
    max_history: int = 100_000  # history values per forecast request, all its series together
    max_horizons: int = 20  # a forecast's horizon: at most this many trained horizons (one model call each)
    max_prompt_chars: int = 100_000  # characters of a prompt to continue
    max_tokens: int = 4096  # tokens generated per request
    max_concurrency: int = 32  # requests in flight at once (counted once the body is in); beyond that 503 at once
    timeout_s: float = 10.0  # inference time before 504
    body_timeout_s: float = 10.0  # from the headers to the body's last byte (1 MiB: >= 100 KiB/s) before 408


class RequestError(GenforgeError):
    """A client's mistake: answered with `status` and a message that says what to fix."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def ascii_int(text: str) -> int | None:
    """The integer that `text` writes as JSON writes one, with the digits 0-9 and an optional minus (leading zeros
    allowed, as HTTP's Content-Length allows them), else None: every integer a request writes as text (a header, a
    form field, a query parameter, a JSON string, a class index) is read by this one rule. str.isdigit() also passes
    '²', which int() refuses, and '٣' or '１２', which int() reads; int() also takes '+', spaces and underscores. At
    most 100 digits: int() refuses over 4,300 (CPython's guard against quadratic parsing), and no count or index here
    needs more."""
    digits = text[1:] if text[:1] == "-" else text
    return int(text) if 0 < len(digits) <= 100 and digits.isascii() and digits.isdigit() else None


def _digits(value):
    """An integer field written as text (a form field, a query parameter, a JSON string) -> its value, by ascii_int's
    rule; pydantic alone would also take '٣', '+', spaces, underscores and "3.0". Any other value goes on to pydantic
    as it is."""
    if isinstance(value, str):
        number = ascii_int(value)
        if number is None:  # pydantic's own error kind and words, and the rule
            raise PydanticCustomError("int_parsing", "Input should be a valid integer, written in the digits 0-9")
        return number
    return value


Integer = Annotated[int, BeforeValidator(_digits)]
IntegerOrNone = Annotated[int | None, BeforeValidator(_digits)]  # not Integer | None: its bounds left the schema
Number = float | int
PixelRange = Literal["auto", "0-255", "0-1"]
Arrays = list[list[Number] | list[list[Number]] | list[list[list[Number]]]]  # images (H x W, C x H x W, flat), vectors


class Strict(BaseModel):
    """A verb's inputs: an unknown field is refused with its name."""

    model_config = ConfigDict(extra="forbid")


def error_message(errors: list) -> str:
    """pydantic's first error as `field: what is wrong`."""
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body",)) or "body"
    return f"{where}: {first.get('msg', 'invalid')}"


def validated(model: type[BaseModel], data: dict) -> BaseModel:
    """Python values (a form's text fields, tensors' scalars) -> the model, or a RequestError that says what to fix."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise RequestError(error_message(e.errors())) from None


def validated_json(model: type[BaseModel], body: bytes) -> BaseModel:
    """A JSON body (empty: {}) -> the model, or a RequestError that says what to fix."""
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as e:
        raise RequestError(error_message(e.errors())) from None


@functools.cache
def defaults(model: type[BaseModel], without: str | None) -> dict:
    """The model's fields other than `without`, at their defaults (computed once per model)."""
    return {k: f.default for k, f in model.model_fields.items() if k != without}


@dataclass
class Answer:
    """An answer with facts beside its body (HTTP: x- headers): JSON `body`, or a PNG that `png()` makes (slow: a
    protocol runs it off its event loop)."""

    body: dict | None = None
    png: Callable[[], bytes] | None = None
    facts: dict[str, str] = field(default_factory=dict)


class Verb(str):
    """One verb's definition. Subclasses set the attributes and override the methods they need; each is a singleton
    made with its name, e.g. CLASSIFY = Classify("classify")."""

    summary = ""  # one line: what it answers
    command: str | None = None  # the genforge command that runs it on a run directory (its options: `request`'s)
    description: str | None = None  # more, for the API's documentation
    request: type[BaseModel] | None = None  # the inputs, as a JSON body carries them (None: the verb takes none)
    form: type[BaseModel] | None = None  # the fields beside an uploaded image (None: no upload)
    query: type[BaseModel] | None = None  # the options a request may give beside its body (an URL's query)
    array: str | None = None  # the bulk input (images, histories): checked by `decode`, not value by value
    method = "POST"  # GET: a verb without inputs
    thread: str | None = "inference"  # where `run` runs: inference, gradients (its own thread), batched (rows of
    # several requests in one call, on the inference thread), None (at once, on the event loop)
    fewer = "images"  # what a request that timed out should ask for fewer of
    answer_field: str | None = None  # the answer's field a client returns (None: the whole answer)
    answer_images = False  # that field holds uint8 images
    json_answer: dict = {}  # what a client adds to a request to have its answer as JSON (not a PNG)
    png: str | None = None  # the answer may be a PNG: what it shows
    conflict: str | None = None  # why a model may refuse the verb as served (409)
    requires: Verb | None = None  # the verb a model must offer for this one (default: itself)
    companions: tuple[Verb, ...] = ()  # verbs served beside this one, for the models that offer it
    openai: str | None = None  # the OpenAI-compatible route that serves it too ("completions": serve/openai.py)

    @property
    def name(self) -> str:
        return str(self)

    def __eq__(self, other) -> bool:
        """A verb equals its name; two verbs are equal only if they are of one definition (a text classifier's explain
        is not an image classifier's, and caches keyed by verb must not mix them)."""
        if isinstance(other, Verb):
            return type(self) is type(other) and str.__eq__(self, other)
        return str.__eq__(self, other)

    def __ne__(self, other) -> bool:  # str's own __ne__ would compare the names alone
        return not self == other

    __hash__ = str.__hash__

    def offered(self, served) -> bool:
        """Whether `served` (serve.adapters.ServedModel, whose task lists this verb) answers it as served."""
        return True

    def refusal(self, served) -> str | None:
        """Why `served` cannot answer the verb as served (a 409), else None."""
        return None

    def fields(self, values: dict) -> dict:
        """The request's values other than the bulk input, validated by `request` (the bulk input is checked by
        decode, far cheaper than validating its values one by one)."""
        if self.array is not None:
            values = {**values, self.array: [[0]]}
        return validated(self.request, values).model_dump(exclude={self.array} if self.array else None)

    def decode(self, served, array, fields: dict, limits: Limits) -> dict:
        """The bulk input (as sent: JSON lists, or an array already typed) and the validated fields -> the inputs
        `run` takes, checked against the model and the limits (RequestError)."""
        return fields

    def run(self, served, inputs):
        """The work, on the verb's thread; a batched verb gets the rows of several requests at once."""
        raise NotImplementedError

    def stream(self, served, inputs: dict):
        """A verb with an OpenAI-compatible route: its answer as it is made (language.generation.TextStream)."""
        raise NotImplementedError

    def rows(self, inputs: dict):
        """A batched verb: the request's rows."""
        raise NotImplementedError

    def nothing(self, served):
        """A batched verb: the result of zero rows, without calling the model."""
        raise NotImplementedError

    def check(self, served, inputs: dict, result):
        """The result, or a RequestError when it is unusable (not finite)."""
        return result

    def answer(self, served, inputs: dict, result, latency_ms: float) -> dict | Answer:
        """The answer: a JSON object, or an Answer."""
        raise NotImplementedError

    def tensors(self, served) -> dict | None:
        """Its inputs and outputs as the Open Inference Protocol's tensors (name, datatype, shape with -1 for any size,
        description; `optional` inputs may be left out), None when it has no tensor form."""
        return None

    def from_tensors(self, served, tensors: dict[str, np.ndarray], parameters: dict) -> tuple[Any, dict]:
        """Checked input tensors (scalars, shape [1], as Python values) and the request's parameters -> (the bulk
        input, the other values as a JSON body would give them), for `fields` and `decode`."""
        raise NotImplementedError

    def outputs(self, served, inputs: dict, result) -> dict[str, np.ndarray]:
        """The result as the output tensors `tensors` promises."""
        raise NotImplementedError

    def card(self, served) -> dict:
        """What the model card says for this verb beyond its inputs (a forecaster's context and horizon)."""
        return {}

    def warm_up(self, served) -> None:
        """Once at start, after the task's warm-up: what the first request should not wait for."""


def array_inputs(values, shape: tuple[int, ...], value_range: str) -> np.ndarray:
    """Inputs as sent -> (N, *shape) uint8 images or float32 vectors, validated. An array already typed (an uploaded
    image, or a tensor whose datatype and shape the protocol checked) is only checked for finite values.

    JSON: an image may come as (H, W) or (C, H, W) nested lists, or flat (C*H*W); values 0-255, or 0-1 with
    value_range "0-1" ("auto": 0-1 when every value is <= 1)."""
    if isinstance(values, np.ndarray):
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise RequestError("inputs must be finite numbers (no NaN or infinity)")
        return values
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


def input_tensor(served) -> dict:
    """A classifier's or a VAE's input as a tensor: uint8 images, or float32 feature vectors."""
    shape = list(served.input_shape)
    if len(shape) == 3:
        return {"name": "input", "datatype": "UINT8", "shape": [-1, *shape], "description": "images, 0-255"}
    return {"name": "input", "datatype": "FP32", "shape": [-1, *shape], "description": "feature vectors"}
