"""SIGTERM while requests are in flight: they all complete, readiness turns off, and the process exits 0."""

import http.client
import json
import signal
import socket
import threading
import time

import httpx
from helpers import start_server


def test_sigterm_drains_in_flight_requests_then_exits_0(gan_run):
    proc, url = start_server([gan_run])
    try:
        answers = _drain_eight_held_requests(proc, url)
        exit_code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [status for status, _ in answers] == [200] * 8
    assert all(len(a["images"]) == 256 and a["images"] == answers[0][1]["images"] for _, a in answers)  # one seed
    assert exit_code == 0, proc.stderr.read()


def _drain_eight_held_requests(proc, url: str) -> list:
    name = httpx.get(f"{url}/v1/models").json()["models"][0]["name"]
    body = json.dumps({"n": 256, "format": "array", "seed": 3}).encode()
    head = (f"POST /v1/models/{name}/generate HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode()
    # Eight requests held in flight for sure: headers and half the body sent, the rest only after the signal
    # (a generate answers in tens of ms, too fast to catch in flight by timing alone)
    clients = [socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=60) for _ in range(8)]
    for c in clients:
        c.sendall(head + body[: len(body) // 2])
    deadline = time.monotonic() + 30
    while in_flight(url) < 8 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert in_flight(url) == 8
    proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    assert proc.poll() is None, "the server exited with requests in flight"
    try:
        ready = httpx.get(f"{url}/readyz", timeout=2).status_code
    except httpx.TransportError:  # the listening socket is already closed: as good as not ready
        ready = None
    assert ready in (503, None)
    answers = []
    for c in clients:
        c.sendall(body[len(body) // 2:])
        response = http.client.HTTPResponse(c)
        response.begin()
        answers.append((response.status, json.loads(response.read())))
        c.close()
    return answers


def in_flight(url: str) -> float:
    line = next(x for x in httpx.get(f"{url}/metrics").text.splitlines() if x.startswith("genforge_in_flight "))
    return float(line.split()[1])


def test_past_the_concurrency_limit_the_excess_gets_503_at_once(gan_run):
    proc, url = start_server([gan_run], "--max-concurrency", "2")
    try:
        name = httpx.get(f"{url}/v1/models").json()["models"][0]["name"]
        results, started = [], threading.Barrier(16)

        def call():
            started.wait()
            t0 = time.perf_counter()
            r = httpx.post(f"{url}/v1/models/{name}/generate", json={"n": 256, "format": "array"}, timeout=60)
            results.append((r.status_code, time.perf_counter() - t0, r.json()))

        threads = [threading.Thread(target=call) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        codes = sorted(code for code, _, _ in results)
        assert set(codes) <= {200, 503} and codes.count(200) >= 2 and codes.count(503) >= 1, codes
        refused = [(seconds, body) for code, seconds, body in results if code == 503]
        assert all("concurrency limit" in body["error"]["message"] for _, body in refused)
        assert all(seconds < 1.0 for seconds, _ in refused), refused  # at once, not after a wait in a queue
        metrics = httpx.get(f"{url}/metrics").text
        assert 'genforge_requests_total{route="generate",status="503"}' in metrics
    finally:
        proc.terminate()
        proc.wait(timeout=30)
