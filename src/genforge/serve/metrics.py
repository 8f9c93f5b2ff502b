"""Prometheus metrics of one app, and the route label each request is counted under."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

PLAIN_ROUTES = {"/", "/livez", "/readyz", "/metrics", "/v1/models", "/v1/completions", "/docs", "/openapi.json", "/v2",
                "/v2/health/live", "/v2/health/ready"}


class Metrics:
    """Prometheus metrics in a registry of this app's own (no process-global state). In a worker of `genforge serve
    --workers N` (PROMETHEUS_MULTIPROC_DIR set) every worker's values are in shared files and any worker's /metrics
    adds them up: counts and histograms summed, in_flight summed and ready the minimum over the live workers, both
    as each worker last wrote them (at each request's end and each scrape)."""

    def __init__(self):
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.state = None
        self.registry = CollectorRegistry()
        self.requests = Counter("genforge_requests", "HTTP requests", ["route", "status"], registry=self.registry)
        self.errors = Counter("genforge_errors", "HTTP requests answered 4xx or 5xx", ["route", "status"],
                              registry=self.registry)
        self.latency = Histogram("genforge_request_seconds", "Request latency", ["route"], registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
        self.batch = Histogram("genforge_batch_size", "Rows per inference batch", ["model"], registry=self.registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.tokens = Counter("genforge_generated_tokens", "Tokens sampled by language models (a stream a client "
                              "left stops adding to it)", ["model"], registry=self.registry)
        self.ready = Gauge("genforge_ready", "1 when the models are loaded and warmed up", registry=self.registry,
                           multiprocess_mode="livemin")
        self.in_flight = Gauge("genforge_in_flight", "POST requests being answered", registry=self.registry,
                               multiprocess_mode="livesum")
        self.receiving = Gauge("genforge_receiving", "Requests whose body is still arriving (not yet in flight)",
                               registry=self.registry, multiprocess_mode="livesum")

    def follow(self, state: dict) -> None:
        """The gauges follow the app's state: readiness (SIGTERM included) and requests in flight."""
        if self.multiprocess:  # a gauge's function is not seen by the other workers: its value is written instead
            self.state = state
            return
        self.ready.set_function(lambda: float(state["ready"]))
        self.in_flight.set_function(lambda: float(state["in_flight"]))
        self.receiving.set_function(lambda: float(state["receiving"]))

    def _write_gauges(self) -> None:
        if self.state is not None:
            self.ready.set(float(self.state["ready"]))
            self.in_flight.set(float(self.state["in_flight"]))
            self.receiving.set(float(self.state["receiving"]))

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        if status >= 400:
            self.errors.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        self._write_gauges()

    def render(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        self._write_gauges()
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry)


def model_route(path: str) -> tuple[str | None, str | None]:
    """/v1/models/{name}[/{verb}] -> (name, verb or None); any other path -> (None, None)."""
    parts = path.strip("/").split("/")
    if parts[:2] == ["v1", "models"] and len(parts) in (3, 4):
        return parts[2], parts[3] if len(parts) == 4 else None
    return None, None


def route_label(path: str, verbs) -> str:
    """A metrics label from a fixed set (the plain routes, the verbs' names, a few more): arbitrary paths must not
    grow the label space (memory)."""
    if path in PLAIN_ROUTES:
        return path
    name, verb = model_route(path)
    if name is not None:
        return verb if verb in verbs else "card" if verb is None else "other"
    if path.startswith("/v2/models/"):  # the Open Inference Protocol (v2.py)
        last = path.rstrip("/").rsplit("/", 1)[-1]
        return f"v2_{last}" if last in ("infer", "ready") else "v2_metadata"
    return "static" if path.startswith("/static/") else "other"
