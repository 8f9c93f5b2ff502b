"""Would micro-batching concurrent generations pay (issue 32: "micro-batching of concurrent generations if it pays;
measure it")? The cost of one generation step of a language model (Transformer.step: one new token after `past`
cached positions) at batch sizes 1-16, PyTorch on one thread (as the server's inference thread runs it), median of 50
calls each: if a batch of B steps costs about what one does, B concurrent streams stepped together make about B times
the tokens a second. Writes bench/out/text_step_batch.json.

Argument 1: a text-gpt run directory (default: the newest under bench/out/runs, which bench/text_gpt.py makes)."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
from _common import record

from genforge.runs import load_run


def step_ms(model, batch: int, past: int, calls: int = 50) -> float:
    with torch.inference_mode():
        _, cache = model.step(torch.randint(0, model.cfg.vocab_size, (batch, past)), model.empty_past(batch))
        new = torch.randint(0, model.cfg.vocab_size, (batch, 1))
        model.step(new, cache)  # warm
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            model.step(new, cache)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main(run: str | None = None, past: int = 128) -> None:
    if run is None:
        newest = max(Path("bench/out/runs").glob("text-gpt-*/model.safetensors"), key=lambda p: p.stat().st_mtime)
        run = str(newest.parent)
    torch.set_num_threads(1)
    model = load_run(run, backend="torch").model.eval()
    rows = {}
    for batch in (1, 2, 4, 8, 16):
        ms = step_ms(model, batch, past)
        rows[batch] = {"ms_a_step": ms, "tokens_per_s": batch / ms * 1000}
        print(f"batch {batch:2d}: {ms:6.2f} ms a step, {batch / ms * 1000:7,.0f} tokens/s together", flush=True)
    record("text_step_batch", {"run": run, "past": past, "threads": 1, "batches": rows,
                               "gain_at_8": rows[8]["tokens_per_s"] / rows[1]["tokens_per_s"]})


if __name__ == "__main__":
    main(*sys.argv[1:2])
