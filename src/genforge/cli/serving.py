"""The serve command: runs behind an HTTP API and a web playground (genforge.serve)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# deferred: genforge.serve's server and limits import numpy and asyncio, 0.12 s of every start (`genforge --help`
# takes 0.28 s); FastAPI and torch come when it serves


def serve(
    runs: Annotated[list[Path], typer.Argument(help="Run directories to serve (classifiers, GANs, VAEs).")],
    host: Annotated[str, typer.Option(help="Interface to bind; anything but loopback needs --token-file.")] = (
        "127.0.0.1"),
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    token_file: Annotated[Path | None, typer.Option(help="A file holding the bearer token clients must send.")] = None,
    max_body: Annotated[int, typer.Option(min=1024, help="Largest request body, bytes.")] = 1 << 20,
    max_concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight before 503.")] = 32,
    timeout: Annotated[float, typer.Option(min=0.1, help="Inference timeout, seconds (then 504).")] = 10.0,
    body_timeout: Annotated[float, typer.Option(min=0.1, help="Seconds a request's body may take to arrive (then "
                                                              "408); it holds no concurrency slot meanwhile.")] = 10.0,
    backend: Annotated[str, typer.Option(
        help="auto, torch or onnxruntime for every run. auto: onnxruntime wherever a run can run there (a trained "
             "run is exported once, into RUN/export), else torch")] = "auto",
    workers: Annotated[int, typer.Option(min=1, max=64, help="Server processes on the one port, each with its own "
                                                             "copy of the models and its share of the cores")] = 1,
):
    """Serve runs over HTTP: a JSON API (docs at /docs) and a web playground at /."""
    from genforge.serve.limits import Limits
    from genforge.serve.server import serve as run_server

    run_server(runs, host, port, token_file,
               Limits(max_body_bytes=max_body, max_concurrency=max_concurrency, timeout_s=timeout,
                      body_timeout_s=body_timeout), backend=backend,
               workers=workers)
