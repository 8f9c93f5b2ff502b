"""Schemathesis against the app's own OpenAPI schema, in-process (ASGI), a bounded number of examples per
operation and request encoding (JSON and multipart, where a route takes both): no 5xx answer and no response
that breaks the schema (status codes, content types, bodies).

The Open Inference Protocol's routes (/v2, serve/v2.py) are in the schema too, with their JSON and binary bodies.
Each model route is fuzzed twice: with the names schemathesis makes up (mostly 404s), and with the name pinned to
a served model that offers the verb, so that the bodies, form fields and query parameters reach the model's own
validation and inference. The pinned pass leaves out schemathesis's positive-data check: the schema cannot say
each model's input size, so a schema-valid image of the wrong size is rightly refused with a 422."""

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from genforge.serve.app import create_app
from genforge.serve.limits import Limits

EXAMPLES = 25  # per operation and encoding: about a minute for the whole API on 2 cores


def _model_for(path: str, names: tuple[str, str, str], forecaster: str) -> str | None:
    """The served model that offers the route's verb (the card route and explain: the classifier), None for other
    routes."""
    if "{name}" not in path:
        return None
    classifier, gan, vae = names
    verb = path.rsplit("/", 1)[-1]
    return {"generate": gan, "interpolate": gan, "reconstruct": vae, "forecast": forecaster,
            "series": forecaster}.get(verb, classifier)


def _fuzzer(operation, media_type: str | None, model: str | None, sent: set, answered: dict):
    """A hypothesis test of one operation in one encoding, its {name} pinned to `model` (None: made up)."""

    @given(case=operation.as_strategy(media_type=media_type))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case):
        excluded = []
        if model is not None:
            case.path_parameters = {**(case.path_parameters or {}), "name": model}
            if "version" in case.path_parameters:  # the v2 routes' /versions/{version} forms: the one version
                case.path_parameters["version"] = "1"
            excluded = [positive_data_acceptance]
        key = (case.operation.label, case.media_type, model)
        sent.add(key)
        answered.setdefault(key, set()).add(case.call_and_validate(excluded_checks=excluded).status_code)

    return fuzz


def test_api_never_answers_5xx_and_keeps_its_schema(served, names, forecast_served):
    forecaster = next(iter(forecast_served))  # the LSTM
    app = create_app({**served, **forecast_served}, limits=Limits(timeout_s=30))
    sent = set()  # (method and path, media type, pinned model or None) of every case sent
    answered = {}  # the same key -> the status codes answered
    with TestClient(app):  # runs the lifespan: batchers started, models warmed up, ready
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 20
        for operation in operations:
            pinned = _model_for(operation.path, names, forecaster)
            for model in [None, pinned] if pinned else [None]:
                for media_type in operation.get_request_payload_content_types() or [None]:
                    _fuzzer(operation, media_type, model, sent, answered)()
    for verb, model in (("classify", names[0]), ("explain", names[0]), ("reconstruct", names[2])):
        for media_type in ("application/json", "multipart/form-data"):
            assert (f"POST /v1/models/{{name}}/{verb}", media_type, None) in sent
            statuses = answered[(f"POST /v1/models/{{name}}/{verb}", media_type, model)]
            assert 404 not in statuses and statuses & {200, 422}, statuses  # the model itself answered
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):  # Open Inference Protocol
        for media_type in ("application/json", "application/octet-stream"):
            assert (f"POST {path}", media_type, None) in sent
            statuses = answered[(f"POST {path}", media_type, names[0])]
            assert 404 not in statuses and 400 in statuses, statuses  # the request reached the model's checks
    assert ("GET /v2/models/{name}/versions/{version}/ready", None, names[0]) in sent
    assert ("POST /v1/models/{name}/forecast", "application/json", None) in sent
    statuses = answered[("POST /v1/models/{name}/forecast", "application/json", forecaster)]
    assert 404 not in statuses and statuses & {200, 422}, statuses
