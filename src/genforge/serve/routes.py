"""The routes, plain functions of the request: operations (probes, metrics), /v1 (model cards, and one route per verb
that any task offers, all answered by call_verb), the Open Inference Protocol (v2) and the playground. Each reads the
app's Runtime (request.app.state.runtime); `add` registers them with their OpenAPI descriptions."""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI, Request
from fastapi import Path as FastAPIPath
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST

from genforge import __version__
from genforge.serve import openai, schemas, v1, v2
from genforge.serve.runtime import Runtime
from genforge.tasks.verb import RequestError, Verb

STATIC = resources.files("genforge.serve") / "static"


def runtime(request: Request) -> Runtime:
    return request.app.state.runtime


# operations ---------------------------------------------------------------------------------------------------
async def livez():
    return {"status": "ok"}


async def readyz(request: Request):
    state = runtime(request).state
    if not state["ready"]:
        return v1.error_response(503, state["lost"] or "not ready: models are loading or the server is shutting down")
    return {"status": "ready", "models": list(runtime(request).models)}


async def prometheus(request: Request):
    return Response(runtime(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


# /v1 ----------------------------------------------------------------------------------------------------------
async def list_models(request: Request):
    """genforge's cards under `models`, and OpenAI's list (object, data) beside them, so that OpenAI's clients and
    genforge's read the same answer."""
    served = runtime(request).models.values()
    return {"models": [v1.card(m) for m in served], "object": "list",
            "data": [{"id": m.name, "object": "model", "created": m.created, "owned_by": "genforge"} for m in served]}


async def model_card(request: Request, name: str = FastAPIPath(description="A served model's name")):
    model = runtime(request).models.get(name)
    if model is None:
        raise RequestError(f"no model named {name!r}; GET /v1/models lists them", 404)
    return v1.card(model)


# one function for every verb's route (no docstring: FastAPI would show it as each route's description). The verb is
# the route's name; the query is checked first, as FastAPI checks parameters, then the model, then the body
async def call_verb(request: Request) -> Response:
    serving = runtime(request)
    verb = serving.verbs[request.scope["route"].name]
    query = v1.query_fields(verb, request)
    model = serving.model(request.path_params["name"], verb)
    verb = model.own(verb)
    array, fields = await v1.read(request, verb, model, serving.state)
    inputs = verb.decode(model, array, fields | query, serving.limits)
    result, latency = await serving.call(verb, model, inputs)
    return await v1.respond(verb.answer(model, inputs, result, latency))


# the Open Inference Protocol (v2) ----------------------------------------------------------------------------
async def server_metadata():
    return {"name": "genforge", "version": __version__, "extensions": v2.EXTENSIONS}


async def live():
    return {"live": True}


def ready_answer(request: Request, name: str | None = None) -> dict:
    if not runtime(request).state["ready"]:
        raise RequestError("not ready: models are loading or the server is shutting down", 503)
    return {"name": name, "ready": True} if name else {"ready": True}


async def ready(request: Request):
    return ready_answer(request)


async def model_metadata(request: Request, name: str):
    return v2.metadata(v2.model_for(runtime(request).models, name, None))


async def model_version_metadata(request: Request, name: str, version: str):
    return v2.metadata(v2.model_for(runtime(request).models, name, version))


async def model_ready(request: Request, name: str):
    return ready_answer(request, v2.model_for(runtime(request).models, name, None).name)


async def model_version_ready(request: Request, name: str, version: str):
    return ready_answer(request, v2.model_for(runtime(request).models, name, version).name)


async def infer(request: Request, name: str, version: str | None) -> Response:
    """The model's verb with a tensor form (ServedModel.tensor_verb), its inputs decoded as /v1 decodes them."""
    serving = runtime(request)
    model = v2.model_for(serving.models, name, version)
    if request.headers.get("content-encoding", "identity").lower() != "identity":
        raise RequestError("compressed requests are not accepted; send the body uncompressed", 415)
    req, tensors = v2.parse(await request.body(), request.headers.get(v2.HEADER))
    tensors = v2.check_inputs(model, tensors)
    verb = model.tensor_verb
    if verb is None:
        raise RequestError(f"{model.name} offers {', '.join(model.verbs())}, which the v2 infer route does not "
                           f"serve; use /v1", 400)
    array, values = verb.from_tensors(model, v2.scalars(model, tensors), req.parameters or {})
    inputs = verb.decode(model, array, verb.fields(values), serving.limits)
    result, _ = await serving.call(verb, model, inputs)
    return v2.encode(model.name, req, verb.outputs(model, inputs, result))


async def model_infer(request: Request, name: str):
    """The model's tensors are in its metadata (GET /v2/models/{name}) and card. Binary tensors: the JSON
    header's length in the Inference-Header-Content-Length header, each binary input's size in its
    parameters.binary_data_size; an output asked for with parameters.binary_data (or every output, with the
    request parameter binary_data_output) comes back as bytes after the JSON header, likewise."""
    return await infer(request, name, None)


async def model_version_infer(request: Request, name: str, version: str):
    return await infer(request, name, version)


# the playground -----------------------------------------------------------------------------------------------
async def playground():
    return FileResponse(str(STATIC / "index.html"))


def add(app: FastAPI, verbs: dict[str, Verb]) -> None:
    """Every route, in the order of the API's documentation."""
    ops, models, protocol = ["operations"], ["models"], ["open inference protocol (v2)"]
    app.add_api_route("/livez", livez, tags=ops, summary="The process is up (also the stack's hello-world route)")
    app.add_api_route("/readyz", readyz, tags=ops, summary="Ready once every model is loaded and warmed up",
                      responses={503: {"model": schemas.ErrorBody}})
    app.add_api_route("/metrics", prometheus, tags=ops, summary="Prometheus metrics", response_class=Response,
                      responses={200: {"content": {"text/plain": {}}}})
    app.add_api_route("/v1/models", list_models, tags=models, summary="The served models")
    app.add_api_route("/v1/models/{name}", model_card, tags=models,
                      summary="One model's card: kind, data, classes, metrics")
    for verb in verbs.values():
        app.add_api_route(f"/v1/models/{{name}}/{verb}", call_verb, methods=[verb.method], name=verb.name,
                          tags=models, summary=verb.summary, description=verb.description,
                          openapi_extra=schemas.openapi(verb), responses=schemas.responses(verb))
    if any(verb.openai == openai.ROUTE for verb in verbs.values()):
        app.add_api_route("/v1/completions", openai.completions, methods=["POST"], tags=["openai-compatible"],
                          summary="OpenAI's completions API (whole, or streamed as server-sent events) for language "
                                  "models", openapi_extra=openai.body_schema(openai.verb_of(verbs)))
    add_v2(app, protocol)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    app.add_api_route("/", playground, include_in_schema=False)


def add_v2(app: FastAPI, tags: list[str]) -> None:
    errors, version = v2.protocol_errors, "/v2/models/{name}/versions/{version}"
    app.add_api_route("/v2", server_metadata, tags=tags, summary="Server metadata",
                      response_model=v2.ServerMetadata, responses=errors(401))
    app.add_api_route("/v2/health/live", live, tags=tags, summary="The process is up", responses=errors(503))
    app.add_api_route("/v2/health/ready", ready, tags=tags, responses=v2.READY,
                      summary="Every model is loaded and warmed up (not while draining)")
    for path, fn in (("/v2/models/{name}", model_metadata), (version, model_version_metadata)):
        app.add_api_route(path, fn, tags=tags, summary="A model's inputs and outputs", response_model=v2.ModelMetadata,
                          responses=errors(401, 404))
    for path, fn in (("/v2/models/{name}/ready", model_ready), (f"{version}/ready", model_version_ready)):
        app.add_api_route(path, fn, tags=tags, summary="The model can answer", responses=v2.READY)
    for path, fn in (("/v2/models/{name}/infer", model_infer), (f"{version}/infer", model_version_infer)):
        app.add_api_route(path, fn, methods=["POST"], tags=tags, summary="Inference with JSON or binary tensors",
                          openapi_extra=v2.INFER_BODY, responses=v2.INFERRED)
