"""SIGTERM while requests are in flight: they all complete, readiness turns off, and the process exits 0."""

import signal
import threading
import time

import httpx
from helpers import start_server


def test_sigterm_drains_in_flight_requests_then_exits_0(gan_run):
    proc, url = start_server([gan_run])
    name = httpx.get(f"{url}/v1/models").json()["models"][0]["name"]
    results, started = [], threading.Barrier(9)

    def call():
        started.wait()
        try:
            r = httpx.post(f"{url}/v1/models/{name}/generate", json={"n": 256, "format": "array"}, timeout=60)
            results.append(r.status_code)
        except httpx.TransportError as e:
            results.append(repr(e))

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    started.wait()
    deadline = time.monotonic() + 30  # until all 8 are in flight (256 images each, one at a time on the
    while in_flight(url) < 8 and time.monotonic() < deadline:  # inference thread), even on a loaded machine
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(timeout=60)
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    assert results == [200] * 8


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
        metrics = httpx.get(f"{url}/metrics").text
        assert 'genforge_requests_total{route="generate",status="503"}' in metrics
    finally:
        proc.terminate()
        proc.wait(timeout=30)
