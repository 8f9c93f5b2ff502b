"""Run the API with uvicorn: loopback by default, a token required off it, and a draining SIGTERM."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

from genforge.errors import GenforgeError
from genforge.serve.limits import Limits


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


def listen(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound here so that uvicorn serves it and a failure says what to change."""
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
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(2048)  # uvicorn's default backlog
        return sock
    except OSError as e:
        sock.close()
        raise GenforgeError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or --host") \
            from None


def serve(runs: list[Path], host: str = "127.0.0.1", port: int = 8000, token_file: Path | None = None,
          limits: Limits = Limits(), log_level: str = "warning", backend: str = "auto") -> None:
    """Load the runs, then serve until SIGINT/SIGTERM: the server turns not-ready at once, stops accepting,
    lets in-flight requests finish (up to 30 s) and exits 0."""
    import torch
    import uvicorn

    from genforge.serve.adapters import load_models
    from genforge.serve.app import create_app

    token = read_token(token_file, host)
    sock = listen(host, port)  # before loading: a taken port is a one-line error, not one after the models load
    torch.set_num_threads(1)  # one inference thread beside the event loop; two threads contend on small machines
    app = create_app(load_models(runs, backend), token=token, limits=limits)
    state = app.state.genforge

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame):
            state["ready"] = False  # /readyz answers 503 from the first signal on
            super().handle_exit(sig, frame)
            self._captured_signals.clear()  # a drained shutdown is a clean exit (0), not death by signal

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=30,
                            limit_concurrency=None, access_log=False)
    print(f"serving {len(runs)} run(s) on http://{host}:{port}  (docs: /docs, playground: /)",
          flush=True)
    DrainingServer(config).run(sockets=[sock])
