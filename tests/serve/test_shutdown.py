"""SIGTERM while requests are in flight: they all complete, readiness turns off, and the process exits 0. Past the
concurrency limit a request is refused at once."""

import http.client
import json
import signal
import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
from helpers import error_of, gauge, start_server, until


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
    # Eight requests held in progress for sure: headers and half the body sent, the rest only after the signal
    # (a generate answers in tens of ms, too fast to catch in flight by timing alone). The server is reading their
    # bodies (within body_timeout_s, 10 s): a request counts as in flight only once its body is in
    clients = [socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=60) for _ in range(8)]
    for c in clients:
        c.sendall(head + body[: len(body) // 2])
    until(lambda: gauge(url, "genforge_receiving") == 8, "eight bodies being read")
    proc.send_signal(signal.SIGTERM)
    until(lambda: not_ready(url), "not ready after SIGTERM")
    assert proc.poll() is None, "the server exited with requests in progress"
    answers = []
    for c in clients:
        c.sendall(body[len(body) // 2:])
        response = http.client.HTTPResponse(c)
        response.begin()
        answers.append((response.status, json.loads(response.read())))
        c.close()
    return answers


def not_ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=10).status_code == 503
    except httpx.TransportError:  # the listening socket is already closed: as good as not ready
        return True


def test_past_the_concurrency_limit_the_excess_gets_503_at_once(scripted_server, gan_run):
    """Two generate requests hold both slots (the server holds them until the test releases them); a third is
    refused while they are still held: at once, not after a wait in a queue."""
    proc, url, hold = scripted_server([gan_run], max_concurrency=2, timeout_s=60)
    name, held = httpx.get(f"{url}/v1/models").json()["models"][0]["name"], scripted_server.held
    generate = f"{url}/v1/models/{name}/generate"
    with ThreadPoolExecutor(2) as pool:
        holding = [pool.submit(httpx.post, generate, json={"n": 4, "seed": held + i, "format": "array"}, timeout=60)
                   for i in range(2)]
        until(lambda: gauge(url, "genforge_in_flight") == 2, "both slots taken")
        r = httpx.post(generate, json={"n": 4, "format": "array"}, timeout=60)
        assert not any(h.done() for h in holding)  # still held: the 503 did not wait for a slot
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "concurrency limit" in error_of(r)
        for i in range(2):
            (hold / str(held + i)).touch()
        assert [h.result().status_code for h in holding] == [200, 200]
    metrics = httpx.get(f"{url}/metrics").text
    assert 'genforge_requests_total{route="generate",status="503"} 1.0' in metrics
    assert httpx.post(generate, json={"n": 4, "format": "array"}, timeout=60).status_code == 200  # slots freed
