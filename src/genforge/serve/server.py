"""Run the API with uvicorn: loopback by default, a token required off it, and a draining SIGTERM."""

from __future__ import annotations

import gc
import ipaddress
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
from concurrent.futures import wait
from pathlib import Path

import torch
import uvicorn
from prometheus_client import multiprocess

from genforge.errors import GenforgeError
from genforge.serve.adapters import load_models
from genforge.serve.app import create_app
from genforge.serve.limits import Limits
from genforge.train.device import usable_cores


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback
                       for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP))
        except OSError:
            return False


def read_token(path: Path | None, host: str) -> str | None:
    if path is None:
        if not is_loopback(host):
            raise GenforgeError(f"--host {host} is reachable from other machines: give --token-file FILE "
                                f"(clients send 'Authorization: Bearer <the file's content>')")
        return None
    try:
        token = Path(path).read_text().strip()
    except OSError as e:
        raise GenforgeError(f"--token-file {path}: cannot read it ({e.strerror})") from None
    if len(token) < 16:
        raise GenforgeError(f"--token-file {path}: the token must be at least 16 characters")
    return token


# Linux balances the connections of sockets bound with SO_REUSEPORT to one port over them (a hash of each connection's
# addresses); workers that share one accept queue instead take connections as they happen to wake, often all of them
BALANCED = hasattr(socket, "SO_REUSEPORT") and sys.platform.startswith("linux")


def listen(host: str, port: int, backlog: int | None = 2048, reuse_port: bool = False) -> socket.socket:
    """The server's listening socket, bound here so that uvicorn serves it and a failure says what to change.
    backlog None: bound, not listening (it takes no connections: the supervisor's hold on the port). reuse_port:
    one of several sockets on the port (SO_REUSEPORT), which the kernel balances connections over."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        # IPPROTO_TCP, not create_server's protocol 0: asyncio sets TCP_NODELAY only on accepted sockets whose
        # protocol says TCP, and without it Nagle meets the client's delayed ACK: ~44 ms per keep-alive request
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    except OSError as e:
        raise GenforgeError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or --host") \
            from None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted sockets on Linux
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as create_server: restart over TIME_WAIT
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        if backlog is not None:
            sock.listen(backlog)  # 2048: uvicorn's default
        return sock
    except OSError as e:
        sock.close()
        raise GenforgeError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or --host") \
            from None


def serve(runs: list[Path], host: str = "127.0.0.1", port: int = 8000, token_file: Path | None = None,
          limits: Limits = Limits(), log_level: str = "warning", backend: str = "auto", workers: int = 1) -> None:
    """Load the runs, then serve until SIGINT/SIGTERM: the server turns not-ready at once, stops accepting,
    lets in-flight requests finish (up to 30 s) and exits 0, leaving behind an inference that overran its timeout
    (_run). workers > 1: that many server processes on the one
    socket (see supervise)."""
    token = read_token(token_file, host)
    # before loading: a taken port is a one-line error, not one after the models load. Several workers each listen on
    # their own SO_REUSEPORT socket; the supervisor's is bound, not listening, so that it takes no connections
    balanced = workers > 1 and BALANCED
    if balanced:  # first alone: a port another server holds, even with SO_REUSEPORT, is refused, not shared
        listen(host, port, backlog=None).close()
    sock = listen(host, port, backlog=None if balanced else 2048, reuse_port=balanced)
    if workers > 1:
        return supervise(runs, sock, host, port, token, limits, log_level, backend, workers)
    app, _ = _app(runs, token, limits, backend)
    _run(app, sock, log_level, announce=lambda: print(f"serving {len(runs)} run(s) on http://{host}:{port}  (docs: "
                                                      f"/docs, playground: /)", flush=True))


def _app(runs: list[Path], token: str | None, limits: Limits, backend: str):
    torch.set_num_threads(1)  # one inference thread beside the event loop; two threads contend on small machines
    models = load_models(runs, backend)
    return create_app(models, token=token, limits=limits), models


def _run(app, sock: socket.socket, log_level: str, announce=None) -> None:
    """Serve until SIGINT/SIGTERM, then drain. An inference thread still on a job after the drain is on one past
    its timeout (every request has had its answer, a 504 for that one): the process exits without waiting for it,
    since Python cannot stop a thread and the interpreter's exit would wait for it, forever for a job that never
    ends."""
    state = app.state.genforge

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame):
            state["ready"], state["draining"] = False, True  # /readyz answers 503 from the first signal on
            super().handle_exit(sig, frame)
            self._captured_signals.clear()  # a drained shutdown is a clean exit (0), not death by signal

    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=30, limit_concurrency=None,
                            access_log=False)
    if announce:
        announce()
    settle_heap()
    DrainingServer(config).run(sockets=[sock])
    # a job that ends normally frees its thread in milliseconds; one that does not within 1 s is the overrun
    if wait([thread.submit(int) for thread in state["threads"]], timeout=1.0).not_done:
        busy = max(thread.busy_for() for thread in state["threads"])
        print(f"exiting with an inference still running (for {busy:.0f} s; its request had its answer): a thread "
              f"cannot be stopped", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(0)  # a drained shutdown: every request had its answer


def settle_heap() -> None:
    """Move everything loaded so far (torch, ONNX Runtime, the app, the models) out of the collector's sight. Python's
    oldest generation is otherwise scanned whole every so often under load: about 100 ms with this heap, while every
    request in flight waits (the classify tail, docs/decisions.md). What requests allocate later is still collected."""
    gc.collect()
    gc.freeze()


def supervise(runs: list[Path], sock: socket.socket, host: str, port: int, token: str | None, limits: Limits,
              log_level: str, backend: str, workers: int) -> None:
    """`workers` server processes (spawned: a fresh interpreter and runtime session each) accept connections: on
    Linux each from its own socket on the port (SO_REUSEPORT: the kernel spreads connections evenly), elsewhere from
    the one listening socket they inherit. The runs are loaded here once first, so that an export to ONNX happens
    once and a run that cannot load is a one-line error; then each worker loads them, warms them up, and starts
    serving only once every worker is ready, so that any answer of /readyz speaks for all. SIGTERM (or SIGINT) drains
    every worker; a worker that dies stops the others (exit 1: a supervisor such as Kubernetes restarts the whole).
    /metrics adds up every worker's, through prometheus_client's multiprocess mode (docs/decisions.md)."""
    load_models(runs, backend)  # exports once, here; errors say what to fix before any worker starts
    cores = usable_cores()
    metrics_dir = tempfile.mkdtemp(prefix="genforge-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # inherited by the workers before prometheus_client loads
    os.environ["GENFORGE_SERVE_THREADS"] = str(max(1, cores // workers))  # ONNX Runtime threads of each worker
    context = multiprocessing.get_context("spawn")
    loaded, go = context.Queue(), context.Event()
    children = [context.Process(target=_worker, name=f"genforge-worker-{i}", daemon=False,
                                args=(runs, None if BALANCED else sock, (host, port), token, limits, log_level,
                                      backend, loaded, go, os.getpid()))
                for i in range(workers)]
    draining = []

    def drain(sig, frame):
        draining.append(sig)
        for child in children:
            if child.is_alive():
                os.kill(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, drain)
    signal.signal(signal.SIGINT, drain)
    try:
        for child in children:
            child.start()
        if not BALANCED:
            sock.close()  # the workers hold it now
        _await_loaded(children, loaded, draining, drain)
        if BALANCED:
            sock.close()  # every worker has bound its own socket by now
        if not draining:
            go.set()
            print(f"serving {len(runs)} run(s) on http://{host}:{port} with {workers} workers  (docs: /docs, "
                  f"playground: /)", flush=True)
        failed = _wait(children, drain)
    finally:
        for child in children:
            if child.pid is not None:
                multiprocess.mark_process_dead(child.pid, metrics_dir)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    if failed:
        raise SystemExit(1)


def _await_loaded(children, loaded, draining: list, drain) -> None:
    """Until every worker has reported its models loaded, or a drain began (a signal, or a worker that failed)."""
    ready = 0
    while ready < len(children) and not draining:
        try:
            ready += bool(loaded.get(timeout=0.5))
        except Exception:  # noqa: BLE001 - queue.Empty: check on the workers
            pass
        if any(c.exitcode not in (None, 0) for c in children):
            drain(None, None)


def _wait(children, drain) -> bool:
    """Wait for every worker; the first that dies unasked stops the others. Whether one failed."""
    failed = False
    while any(c.is_alive() for c in children):
        for child in children:
            child.join(timeout=0.2)
            if child.exitcode not in (None, 0) and not failed:
                failed = True
                print(f"a worker exited with code {child.exitcode}: stopping the others", flush=True)
                drain(None, None)
    return failed or any(c.exitcode != 0 for c in children)


def _worker(runs, sock, address, token, limits, log_level, backend, loaded, go, parent: int) -> None:
    """One worker: load and warm up, listen (sock None: on its own SO_REUSEPORT socket), report, wait for the others,
    then serve until SIGTERM. Connections that come before the others are ready wait in its backlog."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor turns ^C into one SIGTERM per worker
    signal.signal(signal.SIGTERM, lambda sig, frame: os._exit(0))  # not serving yet: nothing to drain
    try:
        app, models = _app(runs, token, limits, backend)
        for model in models.values():
            model.warm_up()  # before reporting ready; the app's start-up warms them again, by then in microseconds
        if sock is None:
            sock = listen(*address, reuse_port=True)
    except GenforgeError as e:
        print(f"error: {e}", flush=True)
        raise SystemExit(2) from None
    loaded.put(os.getpid())
    while not go.wait(timeout=1):
        if os.getppid() != parent:  # the supervisor is gone
            raise SystemExit(1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # uvicorn installs its own, draining, handlers
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _run(app, sock, log_level)
