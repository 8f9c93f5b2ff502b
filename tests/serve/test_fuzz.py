"""Schemathesis against the app's own OpenAPI schema, in-process (ASGI), a bounded number of examples per
operation and request encoding (JSON and multipart, where a route takes both): no 5xx answer and no response
that breaks the schema (status codes, content types, bodies)."""

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from genforge.serve.app import create_app
from genforge.serve.limits import Limits

EXAMPLES = 25  # per operation and encoding: about a minute for the whole API on 2 cores


def test_api_never_answers_5xx_and_keeps_its_schema(served):
    app = create_app(served, limits=Limits(timeout_s=30))
    sent = set()  # (method and path, media type) of every case sent
    with TestClient(app):  # runs the lifespan: batchers started, models warmed up, ready
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 9
        for operation in operations:
            for media_type in operation.get_request_payload_content_types() or [None]:

                @given(case=operation.as_strategy(media_type=media_type))
                @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                          suppress_health_check=list(HealthCheck))
                def fuzz(case):
                    sent.add((case.operation.label, case.media_type))
                    case.call_and_validate()

                fuzz()
    for verb in ("classify", "reconstruct"):
        for media_type in ("application/json", "multipart/form-data"):
            assert (f"POST /v1/models/{{name}}/{verb}", media_type) in sent
