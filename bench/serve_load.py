"""Load on `genforge serve` and on a real peer (LitServe serving the same ONNX model), in one run: each server in
its own process group, the load generators in others, all on 127.0.0.1, every phase bounded in time.

Phases (each --seconds long, closed loop: every connection sends its next request when the last one answered),
with two clients: wrk (Debian's, a standard independent client; `apt-get install -y wrk`) and this file's own
minimal keep-alive client on asyncio streams:
  hello     GET /livez (genforge) and GET /health (LitServe), the stacks' hello-world routes, 16 connections;
  classify  POST one 28x28 image as JSON, 16 connections: req/s, p50, p99;
            per round: genforge hello and classify with wrk, then with the own client, then LitServe's hello and
            classify with wrk; --rounds rounds. The server not being measured is paused (SIGSTOP on its process
            group: LitServe's worker polls its queue every millisecond even when idle). Ratios are the median over
            rounds of pairs measured back to back (this VM's speed drifts by 2x over a day);
  generate  POST n=64 -> PNG grid, concurrency 1 and 4: p50, p99 (only with a generator run);
  overload  classify at twice the server's --max-concurrency: the excess must get 503, nothing else 5xx,
            and the server's resident memory (sampled from /proc) must stay flat.
Goals: genforge classify >= 1.5x LitServe's classify req/s with wrk, and genforge classify p99 <= 20 ms, both at 16
connections; generate p99 <= 150 ms; and (issue 33, item 7) genforge's classify p99 <= LitServe's while serving >= 2x
its req/s, medians of the rounds. Also reported: classify's share of hello for each server (genforge's /livez is
answered by the same raw ASGI front layer as the classify fast path).

The peer (bench/litserve_peer.py) runs the classifier's ONNX export (RUN/export/model.onnx, made by the server's
first start) in ONNX Runtime with genforge's classify session options, one worker, LitAPI(max_batch_size=64,
batch_timeout=5 ms); genforge's batcher takes whatever is queued (up to its per-batch limit) without waiting. Both
answers are checked to agree before the load starts.

    python bench/serve_load.py [CLASSIFIER_RUN [GENERATOR_RUN]] [--seconds 5] [--rounds 3] [--peer litserve|none]
    python bench/serve_load.py CLASSIFIER_RUN --workers 1,2 [--seconds 5] [--rounds 3]

--workers 1,2: instead of the phases above, classify with `genforge serve --workers 1` and `--workers 2` in one
run: wrk (its own process, 1 thread) at --connections, rounds alternating between the two servers (the other one
paused), the median round of each, and the ratio of their req/s. On a 2-core machine the load generator takes a
share of the cores the workers would use, so the ratio there is a floor; on more cores it should grow with N until
the cores run out.

Without runs it trains a classifier and a conditional GAN first (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import importlib.util
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import record, wait_ready


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


WRK_SCRIPT = """wrk.method = "{method}"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK_JSON {{"requests": %d, "duration_us": %d, "non_2xx": %d, "connect": %d, ' ..
    '"read": %d, "write": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def wrk_phase(url: str, method: str, body: bytes, connections: int, seconds: float, threads: int) -> dict:
    """One phase with wrk: req/s that answered 2xx, p50 and p99 from wrk's own latency histogram, read by the
    script's done() as JSON. The body sits in a level-2 long bracket: a JSON image of nested lists holds "]]"."""
    text = body.decode()
    if "]==]" in text:
        raise ValueError("the request body contains ]==], which would end the Lua long bracket")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT.format(method=method, body=text))
    try:
        out = subprocess.run(["wrk", "-t", str(min(threads, connections)), "-c", str(connections),
                              "-d", f"{max(1, round(seconds))}s", "--timeout", "10s", "-s", f.name, url],
                             capture_output=True, text=True, timeout=seconds + 60)
    finally:
        os.unlink(f.name)
    found = re.search(r"^WRK_JSON (.*)$", out.stdout, re.M)
    if out.returncode or not found:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    w = json.loads(found.group(1))
    ok = w["requests"] - w["non_2xx"]
    errors = {k: w[k] for k in ("non_2xx", "connect", "read", "write", "timeout") if w[k]}
    return {"client": "wrk", "connections": connections, "seconds": w["duration_us"] / 1e6, "requests": w["requests"],
            "errors": errors, "ok_per_s": ok / (w["duration_us"] / 1e6), "p50_ms": w["p50_us"] / 1000,
            "p90_ms": w["p90_us"] / 1000, "p99_ms": w["p99_us"] / 1000, "max_ms": w["max_us"] / 1000}


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


def _start(command: list[str]) -> subprocess.Popen:
    """A server in a process group of its own, so that it can be paused and stopped whole (LitServe forks)."""
    return subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1", "ORT_DISABLE_TELEMETRY": "1"},
                            start_new_session=True)


@contextlib.contextmanager
def _paused(proc: subprocess.Popen | None):
    """The other server stopped (SIGSTOP) while one is measured: an idle LitServe worker still polls its queue."""
    if proc is not None:
        os.killpg(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGCONT)


def _stop(proc: subprocess.Popen | None) -> int | None:
    if proc is None:
        return None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGCONT)
        os.killpg(proc.pid, signal.SIGTERM)  # the group: LitServe's forked API server outlives its parent
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        code = None
    with contextlib.suppress(ProcessLookupError):
        time.sleep(1)  # the group's other processes drain after the leader
        os.killpg(proc.pid, signal.SIGKILL)
    return code if code is not None else proc.wait()


def _port_free(host: str, port: int) -> None:
    """Refuse a taken port: a leftover server there would answer the readiness check and be measured instead."""
    import socket

    with socket.socket() as sock:
        if sock.connect_ex((host, port)) == 0:
            sys.exit(f"error: something already listens on {host}:{port}; stop it or choose another --port")


def _task(run: str) -> str:
    return json.loads((Path(run) / "meta.json").read_text()).get("task", "classify")


def _max_diff(a: dict, b: dict) -> float:
    pa, pb = a["predictions"][0]["probabilities"], b["predictions"][0]["probabilities"]
    return max(abs(x - y) for x, y in zip(pa, pb))


def _median_ratio(pairs: list[tuple[dict, dict]]) -> float:
    return statistics.median(a["ok_per_s"] / b["ok_per_s"] for a, b in pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help="a classifier run and optionally a generator run (default: train both)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each phase")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of hello/classify on each server")
    parser.add_argument("--port", type=int, default=8765, help="genforge's port; the peer listens on the next one")
    parser.add_argument("--connections", type=int, default=16, help="hello/classify connections")
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk -t")
    parser.add_argument("--max-concurrency", type=int, default=16)
    parser.add_argument("--backend", choices=["auto", "torch", "onnxruntime"], default="auto",
                        help="genforge serve --backend")
    has_litserve = importlib.util.find_spec("litserve") is not None
    parser.add_argument("--peer", choices=["litserve", "none"], default="litserve" if has_litserve else "none",
                        help="the reference server (default: litserve when it is installed)")
    parser.add_argument("--peer-max-batch", type=int, default=64, help="LitAPI(max_batch_size=...)")
    parser.add_argument("--peer-batch-timeout", type=float, default=0.005, help="LitAPI(batch_timeout=...), s")
    parser.add_argument("--peer-fast-queue", action="store_true", help="LitServer(fast_queue=True) (ZeroMQ)")
    parser.add_argument("--workers", help="compare classify with these worker counts, e.g. 1,2 (see above)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("error: wrk is not installed; install it with: apt-get install -y wrk")
    if args.workers:
        return compare_workers(args)
    if args.peer == "litserve" and not has_litserve:
        sys.exit("error: litserve is not installed; install it with: pip install -e '.[bench]' (or use --peer none)")
    if args.peer == "none":
        print("no peer: " + ("--peer none" if has_litserve else "litserve is not installed (pip install -e '.[bench]')")
              + "; genforge alone", flush=True)
    host, n, s = "127.0.0.1", args.connections, args.seconds
    base, peer_base = f"http://{host}:{args.port}", f"http://{host}:{args.port + 1}"
    image = json.dumps({"inputs": [[[(x * y) % 256 for x in range(28)] for y in range(28)]]}).encode()
    gen_body = json.dumps({"n": 64, "seed": 1}).encode()
    server = peer = None
    with tempfile.TemporaryDirectory() as tmp:
        for port in (args.port, args.port + 1):
            _port_free(host, port)
        runs = args.runs or _train_runs(Path(tmp))
        clf_run = next(r for r in runs if _task(r) == "classify")
        try:
            import httpx

            server = _start([sys.executable, "-m", "genforge", "serve", *runs, "--port", str(args.port),
                             "--max-concurrency", str(args.max_concurrency), "--backend", args.backend])
            wait_ready(f"{base}/readyz", server)
            models = httpx.get(f"{base}/v1/models").json()["models"]
            clf = next(m["name"] for m in models if m["task"] == "classify")
            gan = next((m["name"] for m in models if m["task"] != "classify"), None)
            classify_path = f"/v1/models/{clf}/classify"
            answer = httpx.post(base + classify_path, content=image, headers={"content-type": "application/json"})
            peer_info = None
            if args.peer == "litserve":
                if not (Path(clf_run) / "export" / "model.onnx").is_file():  # --backend torch exports nothing
                    subprocess.run([sys.executable, "-m", "genforge", "export", clf_run, "--dynamic-batch"],
                                   check=True)
                with _paused(server):
                    peer = _start([sys.executable, str(Path(__file__).with_name("litserve_peer.py")), clf_run,
                                   "--port", str(args.port + 1), "--max-batch", str(args.peer_max_batch),
                                   "--batch-timeout", str(args.peer_batch_timeout)]
                                  + (["--fast-queue"] if args.peer_fast_queue else []))
                    wait_ready(f"{peer_base}/health", peer)
                    peer_answer = httpx.post(f"{peer_base}/predict", content=image,
                                             headers={"content-type": "application/json"}).json()
                peer_info = {"server": "litserve", "version": importlib.metadata.version("litserve"),
                             "max_batch_size": args.peer_max_batch, "batch_timeout_s": args.peer_batch_timeout,
                             "fast_queue": args.peer_fast_queue, "workers": 1, "accelerator": "cpu",
                             "max_abs_diff_vs_genforge": _max_diff(answer.json(), peer_answer)}
                if peer_info["max_abs_diff_vs_genforge"] > 1e-4:
                    raise RuntimeError(f"the peer's answer differs from genforge's by "
                                       f"{peer_info['max_abs_diff_vs_genforge']:.3g} ({clf_run}): genforge "
                                       f"{answer.json()['predictions'][0]['probabilities']}, peer "
                                       f"{peer_answer['predictions'][0]['probabilities']}")
            rounds = []
            for _ in range(args.rounds):
                r = {}
                with _paused(peer):
                    r["wrk_hello"] = wrk_phase(f"{base}/livez", "GET", b"", n, s, args.wrk_threads)
                    r["wrk_classify"] = wrk_phase(base + classify_path, "POST", image, n, s, args.wrk_threads)
                    r["own_hello"] = run_phase(host, args.port, "GET", "/livez", b"", n, s)
                    r["own_classify"] = run_phase(host, args.port, "POST", classify_path, image, n, s)
                if peer is not None:
                    with _paused(server):
                        r["peer_hello"] = wrk_phase(f"{peer_base}/health", "GET", b"", n, s, args.wrk_threads)
                        r["peer_classify"] = wrk_phase(f"{peer_base}/predict", "POST", image, n, s, args.wrk_threads)
                rounds.append(r)
            peer_code = _stop(peer)
            peer = None
            result = {"connections": n, "seconds": s, "rounds": args.rounds, "peer": peer_info,
                      "genforge_batch_limit_rows": _genforge_batch_limit()}
            for key in rounds[0]:
                result[key] = _median_round([r[key] for r in rounds])
            if gan is not None:
                gen_path = f"/v1/models/{gan}/generate"
                result["generate_c1"] = run_phase(host, args.port, "POST", gen_path, gen_body, 1, s)
                result["generate_c4"] = run_phase(host, args.port, "POST", gen_path, gen_body, 4, s)
            result["overload"] = run_phase(host, args.port, "POST", classify_path, image,
                                           2 * args.max_concurrency, s, server_pid=server.pid)
        finally:
            _stop(peer)
            server_code = _stop(server)
    overload = result["overload"]
    other_5xx = sum(k for code, k in overload["statuses"].items() if code.startswith("5") and code != "503")
    summary = {
        "wrk_genforge_hello_req_s": result["wrk_hello"]["ok_per_s"],
        "wrk_genforge_classify_req_s": result["wrk_classify"]["ok_per_s"],
        "wrk_genforge_classify_p50_ms": result["wrk_classify"]["p50_ms"],
        "wrk_genforge_classify_p99_ms": result["wrk_classify"]["p99_ms"],
        "wrk_genforge_classify_p99_ms_worst_round": max(r["wrk_classify"]["p99_ms"] for r in rounds),
        "wrk_genforge_classify_share_of_hello": _median_ratio([(r["wrk_classify"], r["wrk_hello"]) for r in rounds]),
        "own_genforge_classify_share_of_hello": _median_ratio([(r["own_classify"], r["own_hello"]) for r in rounds]),
        "own_genforge_classify_p99_ms": result["own_classify"]["p99_ms"],
    }
    if peer_info:
        summary |= {
            "wrk_litserve_hello_req_s": result["peer_hello"]["ok_per_s"],
            "wrk_litserve_classify_req_s": result["peer_classify"]["ok_per_s"],
            "wrk_litserve_classify_p50_ms": result["peer_classify"]["p50_ms"],
            "wrk_litserve_classify_p99_ms": result["peer_classify"]["p99_ms"],
            "wrk_litserve_classify_share_of_hello": _median_ratio([(r["peer_classify"], r["peer_hello"])
                                                                   for r in rounds]),
            "genforge_over_litserve_classify": _median_ratio([(r["wrk_classify"], r["peer_classify"])
                                                              for r in rounds]),
            "peer_exit_code": peer_code,
        }
    summary["goals"] = {
        "genforge_over_litserve_classify_ge_1.5": (summary["genforge_over_litserve_classify"] >= 1.5
                                                   if peer_info else None),
        "genforge_classify_p99_le_20ms": summary["wrk_genforge_classify_p99_ms"] <= 20,
        "generate_p99_le_150ms": result["generate_c1"]["p99_ms"] <= 150 if "generate_c1" in result else None,
        # issue 33, item 7: the tail no longer than the peer's while serving at least twice its rate
        "genforge_classify_p99_le_litserve_at_2x_req_s": (
            summary["wrk_genforge_classify_p99_ms"] <= summary["wrk_litserve_classify_p99_ms"]
            and summary["genforge_over_litserve_classify"] >= 2 if peer_info else None),
    }
    summary |= {"generate_p99_ms": result.get("generate_c1", {}).get("p99_ms"),
                "overload_503": overload["statuses"].get("503", 0), "overload_other_5xx": other_5xx,
                "server_exit_code": server_code, "backends": {m["name"]: m["backend"] for m in models}}
    result["summary"] = summary
    record("serve_load", result)
    _print_table(result)


def compare_workers(args) -> None:
    """classify req/s, p50 and p99 with each worker count, each its own server on its own port, measured in
    alternating rounds (the servers not measured paused), the median round of each; and the ratios to the first."""
    counts = [int(w) for w in args.workers.split(",")]
    host = "127.0.0.1"
    image = json.dumps({"inputs": [[[(x * y) % 256 for x in range(28)] for y in range(28)]]}).encode()
    with tempfile.TemporaryDirectory() as tmp:
        runs = args.runs or _train_runs(Path(tmp))[:1]
        clf_run = next(r for r in runs if _task(r) == "classify")
        servers: dict[int, subprocess.Popen] = {}
        try:
            import httpx

            for i, count in enumerate(counts):  # one at a time: the first start exports the run
                _port_free(host, args.port + i)
                servers[count] = _start([sys.executable, "-m", "genforge", "serve", clf_run, "--port",
                                         str(args.port + i), "--max-concurrency", str(args.max_concurrency),
                                         "--backend", args.backend, "--workers", str(count)])
                wait_ready(f"http://{host}:{args.port + i}/readyz", servers[count])
            name = httpx.get(f"http://{host}:{args.port}/v1/models").json()["models"][0]["name"]
            rounds: dict[int, list] = {c: [] for c in counts}
            for _ in range(args.rounds):
                for i, count in enumerate(counts):
                    others = [p for c, p in servers.items() if c != count]
                    with contextlib.ExitStack() as stack:
                        for other in others:
                            stack.enter_context(_paused(other))
                        rounds[count].append(wrk_phase(f"http://{host}:{args.port + i}/v1/models/{name}/classify",
                                                       "POST", image, args.connections, args.seconds, 1))
        finally:
            codes = {c: _stop(p) for c, p in servers.items()}
    result = {"connections": args.connections, "seconds": args.seconds, "rounds": args.rounds, "run": clf_run,
              "cores": len(os.sched_getaffinity(0)), "load_generator": "wrk -t 1, its own process",
              "exit_codes": codes}
    first = counts[0]
    for count in counts:
        result[f"workers_{count}"] = _median_round(rounds[count])
    result["summary"] = {f"workers_{c}": {"classify_req_s": result[f"workers_{c}"]["ok_per_s"],
                                          "p50_ms": result[f"workers_{c}"]["p50_ms"],
                                          "p99_ms": result[f"workers_{c}"]["p99_ms"],
                                          "errors": result[f"workers_{c}"]["errors"],
                                          "ratio_to_first": _median_ratio(list(zip(rounds[c], rounds[first])))}
                         for c in counts}
    record("serve_workers", result)
    print(f"\nclassify, wrk -t 1 at {args.connections} connections, median of {args.rounds} rounds of "
          f"{args.seconds:g} s, {result['cores']} cores")
    print(f"{'workers':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'x first':>8}")
    for c in counts:
        row = result["summary"][f"workers_{c}"]
        print(f"{c:8} {row['classify_req_s']:8,.0f} {row['p50_ms']:8.1f} {row['p99_ms']:8.1f} "
              f"{row['ratio_to_first']:8.2f}")


def _print_table(result: dict) -> None:
    """The headline figures (medians over rounds, wrk, 16 connections) in a few lines under the JSON."""
    print(f"\nwrk, {result['connections']} connections, median of {result['rounds']} rounds of {result['seconds']:g} s")
    print(f"{'server':10} {'hello req/s':>12} {'classify req/s':>15} {'p50 ms':>8} {'p99 ms':>8} {'share':>6}")
    rows = [("genforge", "wrk_hello", "wrk_classify")] + ([("litserve", "peer_hello", "peer_classify")]
                                                         if result["peer"] else [])
    for name, hello, classify in rows:
        h, c = result[hello], result[classify]
        print(f"{name:10} {h['ok_per_s']:12,.0f} {c['ok_per_s']:15,.0f} {c['p50_ms']:8.1f} {c['p99_ms']:8.1f} "
              f"{c['ok_per_s'] / h['ok_per_s']:6.2f}")
    summary = result["summary"]
    if result["peer"]:
        print(f"genforge/litserve classify: {summary['genforge_over_litserve_classify']:.2f}x (goal >= 1.5)")
    print(f"genforge classify p99: {summary['wrk_genforge_classify_p99_ms']:.1f} ms (goal <= 20)")


def _genforge_batch_limit() -> int:
    """Rows genforge's micro-batcher puts in one forward pass (Limits.max_batch); LitServe's is --peer-max-batch.
    At 16 connections of one image each neither limit binds: a batch holds at most 16 rows."""
    from genforge.serve.limits import Limits

    return Limits().max_batch


if __name__ == "__main__":
    main()
