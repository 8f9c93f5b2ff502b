"""Clients that send their headers and a few bytes of the body, then stall: they hold no concurrency slot (a request
counts once its body is in), and each gets a 408 once body_timeout_s has passed. They filled every slot: 32 such
connections made every POST answer 503 until they went away."""

import http.client
import json
import socket
import time

import httpx
import pytest
from helpers import gauge, until

BODY = json.dumps({"inputs": [[0] * 784]}).encode()
DEADLINE = 2.0  # s: the body timeout of the server below
SLOW = 6  # slow clients, three times the server's max_concurrency


@pytest.fixture(scope="module")
def server(scripted_server, classifier_run):
    proc, url, _ = scripted_server([classifier_run], max_concurrency=2, body_timeout_s=DEADLINE)
    name = httpx.get(f"{url}/v1/models").json()["models"][0]["name"]
    return url, name


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_stalled_bodies_hold_no_slot_and_get_408_after_the_deadline(server, framing):
    url, name = server
    host, port = url.removeprefix("http://").split(":")
    path = f"/v1/models/{name}/classify"
    if framing == "content-length":
        head, part = f"content-length: {len(BODY)}", BODY[:20]
    else:
        head, part = "transfer-encoding: chunked", b"14\r\n" + BODY[:20] + b"\r\n"  # one 20-byte chunk, no last one
    request = (f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n{head}\r\n\r\n").encode()
    sent = time.monotonic()
    slow = [socket.create_connection((host, int(port)), timeout=30) for _ in range(SLOW)]
    try:
        for conn in slow:
            conn.sendall(request + part)
        # the six bodies being read; or, as it was, the first two holding both slots (the others refused at once)
        until(lambda: gauge(url, "genforge_receiving") == SLOW or gauge(url, "genforge_in_flight") >= 2,
              "the slow requests taken")
        r = httpx.post(f"{url}{path}", json={"inputs": [[0] * 784]}, timeout=30)
        assert r.status_code == 200, r.text
        for conn in slow:
            response = http.client.HTTPResponse(conn)
            response.begin()
            answer = json.loads(response.read())
            assert response.status == 408, answer
            assert answer["error"]["status"] == 408 and f"within {DEADLINE:g} s" in answer["error"]["message"]
            assert conn.recv(1) == b""  # and the connection is closed: the rest of its body was never read
        assert time.monotonic() - sent >= DEADLINE  # not before the deadline
    finally:
        for conn in slow:
            conn.close()
    assert gauge(url, "genforge_receiving") == 0
    assert httpx.post(f"{url}{path}", json={"inputs": [[0] * 784]}, timeout=30).status_code == 200
