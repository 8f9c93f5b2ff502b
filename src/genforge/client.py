"""A Python client of `genforge serve`'s /v1 API: every verb the served models offer, numpy arrays in and out, typed
errors that carry the server's message, retries of 503 answers with exponential backoff, and timeouts.

    from genforge.client import Client
    client = Client("http://127.0.0.1:8000", token=None)
    client.classify(images)            # images: uint8 (N, H, W) or (N, C, H, W); -> one prediction dict per image
    client.generate(n=8, label=3, seed=0)  # -> uint8 (8, C, H, W)

The verbs are not written here: a method such as `client.classify` is `client.call("classify", ...)`, which reads the
verb's definition from the model cards (their `requests`: its inputs in order, the answer's field), so that a verb
the server adds is served here too, and every input is checked by the server with the same bounds and messages as
any other request. The standard library's HTTP client (urllib) only: the client adds no dependency to the package."""

from __future__ import annotations

import functools
import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import numpy as np


class ClientError(Exception):
    """An answer other than success: `status` (None when no answer came) and the server's `message`."""

    def __init__(self, status: int | None, message: str):
        super().__init__(f"{status}: {message}" if status else message)
        self.status, self.message = status, message


class RequestRejected(ClientError):
    """A 4xx: the request was wrong (the message says what to fix); sending it again gives the same answer."""


class Unavailable(ClientError):
    """503 after every retry (the server is overloaded, loading or draining), or no server answering at all."""


class Timeout(ClientError):
    """No answer within the client's timeout, or the server's inference timed out (504)."""


class ServerError(ClientError):
    """Any other 5xx, or an answer that is not the API's (not JSON, or without the field the verb returns)."""


class RedirectRefused(RequestRejected):
    """The server redirected to another origin (scheme, host and port): the client sends its token to the origin it
    was given only, so it does not follow; give the client the URL the redirect names, if you trust it."""


class Client:
    """`url`: the server's base URL; `token`: its bearer token, if it has one; `timeout`: seconds per attempt;
    `retries`: further attempts after a 503, waiting `backoff` x 2^i seconds before the i-th (at most 10 s);
    `model`: the model a verb uses when none is given (default: the only served model that offers the verb)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0, retries: int = 4,
                 backoff: float = 0.25, model: str | None = None):
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout
        self.retries, self.backoff, self.model = retries, backoff, model
        self.attempts = 0  # attempts the last request took (1 without retries)
        self._cards: list[dict] | None = None
        self._origin = _origin(self.url)
        if self._origin is None:
            raise RequestRejected(None, f"url {url!r}: give the server's http:// or https:// URL, "
                                        f"e.g. http://127.0.0.1:8000")
        # urllib's default handlers follow a redirect anywhere and send the Authorization header along
        self._opener = urllib.request.build_opener(_SameOriginRedirects(self._origin))

    # the verbs ----------------------------------------------------------------------------------------------
    def ready(self) -> bool:
        """Whether the server answers and every model is loaded (False while it loads or drains)."""
        try:
            self._request("GET", "/readyz", retries=0)
            return True
        except ClientError:
            return False

    def models(self) -> list[dict]:
        """The served models' cards: name, task, verbs, classes, input shape, metrics, tensors."""
        self._cards = self._field(self._request("GET", "/v1/models"), "models")
        return self._cards

    def card(self, model: str) -> dict:
        return self._request("GET", f"/v1/models/{_quoted(model)}")

    def call(self, verb: str, *args, model: str | None = None, **inputs) -> Any:
        """Ask a served model (default: the only one that offers it) for `verb`, with its inputs: positional ones in
        the order of the verb's definition (its bulk input first: images, a history), the others by name; an input
        left out or None keeps its default. Numpy arrays may be given for lists. Returns the answer's field the
        definition names (uint8 (N, C, H, W) for images), else the whole answer."""
        name = self._model(verb, model)
        request = self._request_of(verb, model)
        if len(args) > len(request["inputs"]):
            raise TypeError(f"{verb} takes at most {len(request['inputs'])} inputs by position "
                            f"({', '.join(request['inputs'])}), got {len(args)}")
        given = {**dict(zip(request["inputs"], args)), **inputs}
        body = {**request.get("json", {}), **{k: _jsonable(v) for k, v in given.items() if v is not None}}
        path = request["path"].replace("{name}", name)
        answer = self._request(request["method"], path, body if request["method"] != "GET" else None)
        if request.get("answer") is None:
            return answer
        field = self._field(answer, request["answer"])
        return self._images(field) if request.get("images") else field

    def __getattr__(self, verb: str):
        """client.VERB(...): client.call("VERB", ...)."""
        if verb.startswith("_"):
            raise AttributeError(verb)
        return functools.partial(self.call, verb)

    # the mechanics ------------------------------------------------------------------------------------------
    def _model(self, verb: str, model: str | None) -> str:
        """The model's name as a path segment: the one given, else the only served model that offers the verb."""
        if model or self.model:
            return _quoted(model or self.model)
        cards = self._cards if self._cards is not None else self.models()
        try:
            offering = [c["name"] for c in cards if verb in c["verbs"]]
        except (KeyError, TypeError):
            raise ServerError(200, f"the model cards from {self.url} have no name and verbs: is it a genforge "
                                   f"server?") from None
        if len(offering) != 1:
            which = f"{', '.join(offering)} offer it" if offering else "none offers it"
            raise RequestRejected(None, f"give model=NAME for {verb}: {which}")
        return _quoted(offering[0])

    def _request_of(self, verb: str, model: str | None) -> dict:
        """How to call `verb`: from the card of the model asked for, else of any served model that offers it."""
        cards = self._cards if self._cards is not None else self.models()
        try:
            named = [c for c in cards if c["name"] == (model or self.model)]
            offering = [c["requests"][verb] for c in named + cards if verb in c.get("requests", {})]
        except (KeyError, TypeError):
            raise ServerError(200, f"the model cards from {self.url} have no name and requests: is it a genforge "
                                   f"server?") from None
        if not offering:
            raise RequestRejected(None, f"no served model offers {verb}")
        return offering[0]

    def _images(self, value: Any) -> np.ndarray:
        """uint8 images (N, C, H, W) from the answer's lists (the server leaves out a single channel)."""
        try:
            images = np.asarray(value, dtype=np.uint8)
        except (ValueError, TypeError, OverflowError):  # ragged lists, or values that are not 0-255 numbers
            raise ServerError(200, f"the answer from {self.url} holds no uint8 image array") from None
        if images.ndim not in (3, 4):
            raise ServerError(200, f"the answer from {self.url} holds images of shape {images.shape}, not "
                                   f"(N, [C,] H, W)")
        return images[:, None] if images.ndim == 3 else images

    def _field(self, answer: Any, key: str) -> Any:
        """answer[key], or a ServerError saying the answer is not the API's (another server behind the URL?)."""
        if not isinstance(answer, dict) or key not in answer:
            raise ServerError(200, f"the answer from {self.url} has no {key!r}: is it a genforge server?")
        return answer[key]

    def _request(self, method: str, path: str, body: Any = None, retries: int | None = None) -> Any:
        """Every way a request can fail ends as one of the ClientError classes: a transport failure (refused, reset,
        cut off, not HTTP) as Unavailable, no answer in time as Timeout, an answer that is not JSON as ServerError."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"accept": "application/json", **({"content-type": "application/json"} if data else {}),
                   **({"authorization": f"Bearer {self.token}"} if self.token else {})}
        retries = self.retries if retries is None else retries
        for attempt in range(retries + 1):
            self.attempts = attempt + 1
            request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
            try:
                with self._opener.open(request, timeout=self.timeout) as response:
                    status, text = response.status, response.read()
                break
            except urllib.error.HTTPError as e:
                status, message = e.code, _message(e)
                if status != 503 or attempt == retries:
                    raise _error(status, message) from None
            except TimeoutError:  # connecting, or waiting for the answer's head or its body
                raise Timeout(None, f"no answer from {self.url} within {self.timeout:g} s") from None
            except urllib.error.URLError as e:  # could not connect: refused, no such host, TLS refused
                if isinstance(e.reason, TimeoutError):
                    raise Timeout(None, f"no answer from {self.url} within {self.timeout:g} s") from None
                raise Unavailable(None, f"cannot reach {self.url}: {e.reason}") from None
            except http.client.IncompleteRead as e:  # the connection closed before the Content-Length was read
                raise Unavailable(None, f"the answer from {self.url} was cut off after {len(e.partial)} bytes"
                                  + (f" of {len(e.partial) + e.expected}" if e.expected else "")) from None
            except (OSError, http.client.HTTPException) as e:  # reset, closed without answering, not HTTP
                raise Unavailable(None, f"the connection to {self.url} failed: {_reason(e)}") from None
            time.sleep(min(10.0, self.backoff * 2 ** attempt))
        try:
            return json.loads(text)
        except ValueError:  # not JSON (a proxy's HTML page?), or not UTF-8
            shown = " ".join(text[:80].decode("utf-8", "replace").split())
            raise ServerError(status, f"the answer from {self.url} is not JSON: {shown!r}") from None


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect within the client's origin (scheme, host and port), with the token; raises
    RedirectRefused for any other, so that the token never reaches a host it was not given for. The origin rule of
    browsers (RFC 6454): another port, or http after https, is another origin, and so is localhost for 127.0.0.1:
    the names are compared, not what they resolve to."""

    def __init__(self, origin: tuple[str, str, int]):
        super().__init__()
        self.origin = origin

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if _origin(newurl) != self.origin:
            fp.close()
            scheme, host, port = self.origin
            raise RedirectRefused(code, f"{scheme}://{host}:{port} redirected to {newurl}, another origin; the "
                                        f"client sends its token only to the URL it was given: use "
                                        f"Client({_base(newurl)!r}) if you trust it")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL, the port filled in from the scheme; None for anything else."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:  # a port that is not a number, or an unbalanced [ of an IPv6 address
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _base(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _quoted(name: str) -> str:
    """A model name as one path segment: a space, '/' or '?' in it would change the URL."""
    return urllib.parse.quote(name, safe="")


def _jsonable(value: Any) -> Any:
    """An input as JSON carries it: numpy arrays and scalars as lists and numbers, in dicts (covariates) too."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _reason(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _message(e: urllib.error.HTTPError) -> str:
    """The server's message: genforge's {"error": {"status", "message"}}, the v2 {"error": "..."}, or the text
    (the reason phrase where the body could not be read: cut off, reset, or too slow)."""
    try:
        text = e.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return str(e.reason)
    try:
        error = json.loads(text)["error"]
        return error["message"] if isinstance(error, dict) else str(error)
    except (ValueError, KeyError, TypeError):
        return text or str(e.reason)


def _error(status: int, message: str) -> ClientError:
    if status == 504:
        return Timeout(status, message)
    if status == 503:
        return Unavailable(status, message)
    return (RequestRejected if status < 500 else ServerError)(status, message)
