"""Serving: run directories behind an HTTP API (FastAPI) with a static web playground.

adapters.py turns a run into a served model and never sees HTTP; batching.py collects concurrent classify
requests into one batch; limits.py guards every input at the edge; app.py wires routes, auth, limits and
metrics; server.py runs uvicorn with a draining shutdown."""
