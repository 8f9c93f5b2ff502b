"""The OpenAPI description of the /v1 routes, read from the verbs' definitions: each verb's JSON body (its request
model), its multipart body (an image and its form model's fields), its query and path parameters, and its answers."""

from __future__ import annotations

from pydantic import BaseModel

from genforge.tasks.verb import Verb


class ErrorDetail(BaseModel):
    status: int
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


ERRORS = {code: {"model": ErrorBody, "description": text} for code, text in [
    (401, "Missing or wrong bearer token"), (404, "No such model"), (413, "Body too large"),
    (415, "Unsupported content type"), (422, "Invalid input; the message says what to fix"),
    (503, "Overloaded or not ready; retry later"), (504, "Inference timed out")]}


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


def parameters(verb: Verb) -> list[dict]:
    """The model's name in the path (its schema lists no enum of names: the fuzzer would then run real generate and
    reconstruct calls for minutes, measured 196 s), then the query's options."""
    needed = verb.requires or verb
    params = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string", "title": "Name"},
               "description": f"A served model's name, one that offers {needed}"}]
    if verb.query is not None:
        for name, schema in verb.query.model_json_schema()["properties"].items():
            description = schema.pop("description", None)
            params.append({"name": name, "in": "query", "required": False, "schema": schema,
                           **({"description": description} if description else {})})
    return params


def openapi(verb: Verb) -> dict:
    """A verb route's openapi_extra: its parameters and, for a verb with inputs, its request bodies."""
    extra = {"parameters": parameters(verb)}
    if verb.request is not None:
        content = {"application/json": {"schema": verb.request.model_json_schema()}}
        if verb.form is not None:
            content["multipart/form-data"] = {"schema": form_schema(verb.form)}
        extra["requestBody"] = {"required": True, "content": content}
    return extra


def responses(verb: Verb) -> dict:
    """A verb route's answers beyond JSON and the common errors: a PNG, a 409."""
    answers = {}
    if verb.png is not None:
        answers[200] = {"content": {"image/png": {}, "application/json": {}}, "description": verb.png}
    if verb.conflict is not None:
        answers[409] = {"model": ErrorBody, "description": verb.conflict}
    return answers
