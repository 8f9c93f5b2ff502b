"""`genforge serve --workers 2`: two server processes on one port, connections spread over both, ready together,
/metrics added up over both, and SIGTERM to the supervisor drains both (an answer in flight completes) with exit
code 0."""

import http.client
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
from helpers import gauge, start_server, until


def _children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]


def _accepted(pid: int, peers: set[int]) -> int:
    """How many of the connections from the local ports `peers` process `pid` holds (matched by socket inode in
    /proc/net/tcp, so a keep-alive connection that closes meanwhile does not shift the count)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].split(":")[1], 16) in peers:
            inodes.add(fields[9])
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = str(fd.readlink())
        except FileNotFoundError:  # closed since the listing
            continue
        if target.startswith("socket:["):
            held.add(target[len("socket:["):-1])
    return len(held & inodes)


def test_two_workers_share_a_port_add_up_metrics_and_drain(classifier_run):
    proc, url = start_server([classifier_run], "--workers", "2")
    try:
        workers = [c for c in _children(proc.pid) if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
        assert len(workers) == 2
        image = np.zeros((1, 28, 28), np.uint8).tolist()
        host, port = url.removeprefix("http://").split(":")
        burst = [socket.create_connection((host, int(port)), timeout=30) for _ in range(16)]  # at once, as wrk does
        try:
            for conn in burst:
                conn.sendall(f"GET /v1/models HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            for conn in burst:
                assert conn.recv(12).startswith(b"HTTP/1.1 200")
            peers = {conn.getsockname()[1] for conn in burst}
            gained = [_accepted(w, peers) for w in workers]
        finally:
            for conn in burst:
                conn.close()
        # the kernel spreads connections over the workers' SO_REUSEPORT sockets (all on one: p = 2^-15); a shared
        # accept queue gave them, as often as not, all to whichever worker woke first
        assert sum(gained) == 16 and min(gained) > 0, gained
        taken = subprocess.run([sys.executable, "-m", "genforge", "serve", str(classifier_run), "--port",
                                port, "--workers", "2"], capture_output=True, text=True, timeout=60)
        assert taken.returncode != 0 and "Address already in use" in taken.stderr  # refused, not shared
        for _ in range(20):  # a new connection each: either worker may accept it
            r = httpx.post(f"{url}/v1/models/fashion-cnn-fast/classify", json={"inputs": [image]}, timeout=30)
            assert r.status_code == 200
        totals = set()
        for _ in range(6):  # each scrape answered by either worker: the same sums
            text = httpx.get(f"{url}/metrics", timeout=30).text
            line = next(s for s in text.splitlines() if s.startswith('genforge_requests_total{route="classify"'))
            totals.add(float(line.split()[-1]))
            assert "genforge_ready 1.0" in text
        assert totals == {20.0}
        # an explanation in progress when SIGTERM comes, for sure: its headers and half its body sent before the
        # signal, the rest after it (an explanation's time is no hold to count on)
        body = json.dumps({"inputs": [image] * 4, "method": "integrated-gradients", "steps": 8}).encode()
        explain = socket.create_connection((host, int(port)), timeout=60)
        explain.sendall(f"POST /v1/models/fashion-cnn-fast/explain HTTP/1.1\r\nhost: {host}\r\ncontent-type: "
                        f"application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body[:len(body) // 2])
        # the worker that reads it writes its gauge at each scrape it answers; either worker answers a scrape
        until(lambda: gauge(url, "genforge_receiving") >= 1, "the explanation's body being read")
        proc.send_signal(signal.SIGTERM)
        explain.sendall(body[len(body) // 2:])
        response = http.client.HTTPResponse(explain)
        response.begin()
        assert response.status == 200 and len(json.loads(response.read())["explanations"]) == 4
        explain.close()
        assert proc.wait(timeout=60) == 0
        assert not any(Path(f"/proc/{w}").exists() and "Z" not in Path(f"/proc/{w}/stat").read_text().split()[2]
                       for w in workers)
    finally:
        if proc.poll() is None:
            proc.kill()
