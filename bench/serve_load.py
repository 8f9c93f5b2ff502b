"""Load on `genforge serve`, in one run: the server in its own process, the load generator in another, both on
127.0.0.1, every phase bounded in time.

Phases (each --seconds long, closed loop: every client sends its next request when the last one answered):
  hello     GET /livez, the stack's hello-world route, concurrency 16: the ceiling;
  classify  POST one 28x28 image as JSON, concurrency 16: req/s, p50, p99;
            hello and classify alternate for --rounds rounds; the share is the median over rounds of
            classify/hello, each pair measured back to back (this VM's speed drifts by 2x over a day);
  generate  POST n=64 -> PNG grid, concurrency 1 and 4: p50, p99;
  overload  classify at twice the server's --max-concurrency: the excess must get 503, nothing else 5xx,
            and the server's resident memory (sampled from /proc) must stay flat.
Goals: classify >= 60% of hello req/s with p99 <= 50 ms; generate p99 <= 150 ms.

The client is a minimal keep-alive HTTP/1.1 client on asyncio streams, so that the generator's own overhead
is small next to the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import record


def _request_bytes(method: str, path: str, body: bytes, host: str) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
    if body:
        head += "Content-Type: application/json\r\n"
    return head.encode() + b"\r\n" + body


async def _exchange(reader, writer, request: bytes) -> int:
    """One request on a keep-alive connection -> the response's status. The request bytes are built once per
    phase and the response head is read in one call, to keep the generator's CPU off the server's cores."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    start = head.lower().find(b"content-length:")
    length = int(head[start + 15: head.index(b"\r\n", start)]) if start >= 0 else 0
    await reader.readexactly(length)
    return int(head[9:12])


async def _client(host, port, method, path, body, until, out: list):
    reader, writer = await asyncio.open_connection(host, port)
    request = _request_bytes(method, path, body, host)
    try:
        while time.perf_counter() < until:
            t0 = time.perf_counter()
            status = await _exchange(reader, writer, request)
            out.append((status, time.perf_counter() - t0))
    finally:
        writer.close()


async def _phase(host, port, method, path, body, concurrency, seconds) -> list:
    results: list = []
    until = time.perf_counter() + seconds
    await asyncio.gather(*[_client(host, port, method, path, body, until, results) for _ in range(concurrency)])
    return results


def _load_process(args: tuple, queue) -> None:
    """Runs in its own process: one phase, results back through the queue."""
    queue.put(asyncio.run(_phase(*args)))


def run_phase(host, port, method, path, body, concurrency, seconds, server_pid=None) -> dict:
    queue = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=_load_process,
                                           args=((host, port, method, path, body, concurrency, seconds), queue))
    proc.start()
    rss = []
    while proc.is_alive() and server_pid:
        rss.append(_rss_mib(server_pid))
        time.sleep(0.25)
        if not queue.empty():
            break
    results = queue.get(timeout=seconds + 60)
    proc.join()
    latencies = sorted(t for s, t in results if s == 200)
    statuses: dict = {}
    for s, _ in results:
        statuses[str(s)] = statuses.get(str(s), 0) + 1
    q = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else None  # noqa: E731
    out = {"concurrency": concurrency, "seconds": seconds, "requests": len(results), "statuses": statuses,
           "ok_per_s": len(latencies) / seconds, "p50_ms": q(0.5), "p99_ms": q(0.99)}
    if rss:
        out["server_rss_mib"] = {"first": rss[0], "max": max(rss), "last": rss[-1]}
    return out


def _median_round(phases: list[dict]) -> dict:
    """The round with the median req/s, and every round's req/s beside it."""
    middle = sorted(phases, key=lambda p: p["ok_per_s"])[len(phases) // 2]
    return {**middle, "rounds_ok_per_s": [p["ok_per_s"] for p in phases]}


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _train_runs(folder: Path) -> list[str]:
    """A classifier and a conditional GAN, quickly: the load is about serving, not about model quality."""
    runs = []
    for preset, overrides in (("fashion-cnn-fast", ["train.epochs=1"]),
                              ("fashion-cdcgan", ["train.max_seconds=30", "eval.samples=500"])):
        subprocess.run([sys.executable, "-m", "genforge", "train", preset, *overrides, "--runs-dir",
                        str(folder / preset), "--quiet"], check=True)
        runs.append(str(next((folder / preset).iterdir())))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="*", help="a classifier run and a generator run (default: train both)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each phase")
    parser.add_argument("--rounds", type=int, default=5, help="hello/classify pairs")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--max-concurrency", type=int, default=16)
    parser.add_argument("--backend", choices=["auto", "torch", "onnxruntime"], default="auto",
                        help="genforge serve --backend")
    args = parser.parse_args()
    host = "127.0.0.1"
    with tempfile.TemporaryDirectory() as tmp:
        runs = args.runs or _train_runs(Path(tmp))
        server = subprocess.Popen([sys.executable, "-m", "genforge", "serve", *runs, "--port", str(args.port),
                                   "--max-concurrency", str(args.max_concurrency), "--backend", args.backend],
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            import httpx

            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"http://{host}:{args.port}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.3)
            models = httpx.get(f"http://{host}:{args.port}/v1/models").json()["models"]
            clf = next(m["name"] for m in models if m["task"] == "classify")
            gan = next(m["name"] for m in models if m["task"] != "classify")
            image = json.dumps({"inputs": [[[(x * y) % 256 for x in range(28)] for y in range(28)]]}).encode()
            gen = json.dumps({"n": 64, "seed": 1}).encode()
            s = args.seconds
            rounds = [(run_phase(host, args.port, "GET", "/livez", b"", 16, s),
                       run_phase(host, args.port, "POST", f"/v1/models/{clf}/classify", image, 16, s))
                      for _ in range(args.rounds)]
            result = {"hello": _median_round([h for h, _ in rounds]),
                      "classify": _median_round([c for _, c in rounds]),
                      "shares": [c["ok_per_s"] / h["ok_per_s"] for h, c in rounds],
                      "generate_c1": run_phase(host, args.port, "POST", f"/v1/models/{gan}/generate", gen, 1, s),
                      "generate_c4": run_phase(host, args.port, "POST", f"/v1/models/{gan}/generate", gen, 4, s),
                      "overload": run_phase(host, args.port, "POST", f"/v1/models/{clf}/classify", image,
                                            2 * args.max_concurrency, s, server_pid=server.pid)}
        finally:
            server.terminate()
            server.wait(timeout=60)
    overload = result["overload"]
    other_5xx = sum(n for code, n in overload["statuses"].items() if code.startswith("5") and code != "503")
    result["summary"] = {
        "classify_share_of_hello": statistics.median(result["shares"]),
        "classify_p99_ms_worst_round": max(c["p99_ms"] for _, c in rounds),
        "generate_p99_ms": result["generate_c1"]["p99_ms"],
        "overload_503": overload["statuses"].get("503", 0), "overload_other_5xx": other_5xx,
        "server_exit_code": server.returncode, "backends": {m["name"]: m["backend"] for m in models},
    }
    record("serve_load", result)


if __name__ == "__main__":
    main()
