"""Issue 32's serving figures: `genforge serve RUN` of a text-gpt run, streamed through OpenAI's completions API.

  single   concurrency 1, the official `openai` client: time to the first streamed piece and tokens a second after it
           (bytes: one token each), median of --requests streams of up to 256 tokens (temperature 0.8, seeds 0, 1,
           ...; a stream the model ends, at the end of an entry, before 64 tokens is not counted); the same with
           httpx reading the raw server-sent events (a standard client beside the official one);
  sixteen  16 concurrent streams of 256 tokens: every one finishes, no 5xx, and the total tokens a second.
Goals: the first token within 50 ms and at least 500 tokens/s at concurrency 1. Writes bench/out/text_serve.json.

    python bench/text_serve.py [RUN] [--requests 5] [--backend auto --backend torch --rounds 3]
    (RUN: default the newest text-gpt run under bench/out/runs; backends in turns, medians over the rounds)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
from _common import record, wait_ready


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(run: str, backend: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "genforge", "serve", run, "--port", str(port), "--backend", backend],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/readyz", proc)
    return proc, url


def timed_openai(client, model: str, seed: int) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    first, text = None, ""
    for chunk in client.completions.create(model=model, prompt="The ", max_tokens=256, temperature=0.8, seed=seed,
                                           stream=True):
        if chunk.choices[0].text and first is None:
            first = time.perf_counter()
        text += chunk.choices[0].text
    end = time.perf_counter()
    tokens = len(text.encode())
    return (first - t0) * 1000, (tokens - 1) / max(end - first, 1e-9), tokens


def timed_httpx(url: str, model: str, seed: int) -> tuple[float, float, int]:
    body = {"model": model, "prompt": "The ", "max_tokens": 256, "temperature": 0.8, "seed": seed, "stream": True}
    t0 = time.perf_counter()
    first, text = None, ""
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            piece = json.loads(line[6:])["choices"][0]["text"]
            if piece and first is None:
                first = time.perf_counter()
            text += piece
    end = time.perf_counter()
    tokens = len(text.encode())
    return (first - t0) * 1000, (tokens - 1) / max(end - first, 1e-9), tokens


def medians(fn, n: int) -> dict:
    rows, seed = [], 0
    while len(rows) < n:
        first_ms, rate, tokens = fn(seed)
        seed += 1
        if tokens >= 64:  # a stream the model ended at once says little about its rate
            rows.append((first_ms, rate))
    return {"first_token_ms": statistics.median(r[0] for r in rows),
            "tokens_per_s": statistics.median(r[1] for r in rows), "streams": n, "all": rows}


def measure(run: str, backend: str, requests: int) -> dict:
    proc, url = serve(run, backend)
    try:
        model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        timed_openai(client, model, 999)  # warm-up
        single = medians(lambda seed: timed_openai(client, model, seed), requests)
        raw = medians(lambda seed: timed_httpx(url, model, seed), requests)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda seed: timed_openai(client, model, 100 + seed), range(16)))
        wall = time.perf_counter() - t0
        errors = httpx.get(f"{url}/metrics").text.count('status="5')
        sixteen = {"streams": 16, "finished": len(results), "tokens": sum(r[2] for r in results),
                   "tokens_per_s": sum(r[2] for r in results) / wall, "median_first_token_ms":
                   statistics.median(r[0] for r in results), "server_5xx_series": errors}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    print(f"{backend}: openai client {single['first_token_ms']:.1f} ms, {single['tokens_per_s']:.0f} tokens/s; httpx "
          f"{raw['first_token_ms']:.1f} ms, {raw['tokens_per_s']:.0f} tokens/s; 16 streams "
          f"{sixteen['tokens_per_s']:.0f} tokens/s", flush=True)
    return {"openai_client": single, "httpx_sse": raw, "sixteen": sixteen}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", nargs="?")
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--backend", action="append", choices=["auto", "torch", "onnxruntime"],
                        help="serve with this backend (repeat to compare them in turns; default: auto, what serve "
                             "picks; the goal is judged on the first)")
    parser.add_argument("--rounds", type=int, default=1, help="turns through the backends")
    args = parser.parse_args()
    if args.run is None:
        args.run = str(max(Path("bench/out/runs").glob("text-gpt-*/model.safetensors"),
                           key=lambda p: p.stat().st_mtime).parent)
    backends = args.backend or ["auto"]
    rounds = {b: [] for b in backends}
    for _ in range(args.rounds):
        for backend in backends:
            rounds[backend].append(measure(args.run, backend, args.requests))
    median = lambda rows, client, key: statistics.median(r[client][key] for r in rows)  # noqa: E731
    summary = {b: {f"{client}_{key}": median(rows, client, key) for client in ("openai_client", "httpx_sse")
                   for key in ("first_token_ms", "tokens_per_s")} for b, rows in rounds.items()}
    judged = summary[backends[0]]  # medians over the rounds, as the goal is read
    record("text_serve", {"run": args.run, "backends": summary, "rounds": rounds,
                          "goal_met": judged["openai_client_first_token_ms"] <= 50
                          and judged["openai_client_tokens_per_s"] >= 500})


if __name__ == "__main__":
    main()
