"""Serving: run directories behind an HTTP API (FastAPI) with a static web playground.

The verbs (classify, generate, forecast, ...) are defined in their tasks (tasks/verb.py says how); this package holds
no verb. adapters.py: a run as served, no HTTP. runtime.py: what every protocol shares (models, limits, inference
threads and their timeout, the micro-batchers, readiness). v1.py and v2.py: the codecs (JSON and multipart; the Open
Inference Protocol's tensors). schemas.py: the OpenAPI from the verbs. routes.py: the routes, plain functions.
middleware.py: the ASGI layers (token, body limits, errors, the classify fast path); metrics.py: Prometheus.
batching.py collects concurrent classify requests into one batch; limits.py bounds each body; app.py assembles the
app; server.py runs uvicorn with a draining shutdown, one worker or several."""
