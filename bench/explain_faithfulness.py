"""Explanations (issue 17): how faithful each attribution method is on `fashion-cnn` (acceptance 1 and 2), and how fast
one integrated-gradients explanation is (acceptance 3), in the library's warm path and through `genforge serve`.

Usage: python bench/explain_faithfulness.py [--run RUN [--speed-only]] [--examples 1000] [--keep DIR]
  --run: score an existing fashion-cnn run instead of training one (seed 0, about 5 minutes)
  --keep: train into DIR and keep the run (to score it again, or serve it)
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from _common import OUT, record
from serve_load import wrk_phase

from genforge import rundir, runs
from genforge.config import load_config
from genforge.data import load_dataset
from genforge.evaluate.faithfulness import faithfulness
from genforge.training import train


def _percentiles(seconds: list[float]) -> dict:
    ms = sorted(s * 1000 for s in seconds)
    return {"p50_ms": statistics.median(ms), "p99_ms": ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))],
            "calls": len(ms)}


def library_speed(run: Path, x: torch.Tensor, calls: int = 50) -> dict:
    """load_run(p).explain on one image, integrated gradients with its default 32 steps, after one warm-up call."""
    loaded = runs.load_run(run)
    torch.set_num_threads(2)
    loaded.explain(x[:1], "integrated-gradients", steps=32)
    times = []
    for i in range(calls):
        t0 = time.perf_counter()
        loaded.explain(x[i : i + 1], "integrated-gradients", steps=32)
        times.append(time.perf_counter() - t0)
    return _percentiles(times)


def server_speed(run: Path, x: torch.Tensor, requests: int = 200, concurrency: int = 4) -> dict:
    """POST /v1/models/NAME/explain (integrated gradients, 32 steps, one image, JSON answer) at `concurrency`
    against `genforge serve` in its own process, from this file's client threads and from wrk: latency percentiles
    and requests per second."""
    import httpx

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers import start_server

    process, url = start_server([run])
    try:
        name = httpx.get(f"{url}/v1/models").json()["models"][0]["name"]
        body = {"inputs": [x[0, 0].tolist()], "method": "integrated-gradients", "steps": 32}
        with httpx.Client(timeout=60) as client:
            for _ in range(4):  # warm-up
                client.post(f"{url}/v1/models/{name}/explain", json=body).raise_for_status()
        times, lock, failures = [], threading.Lock(), []

        def worker(k: int) -> None:
            with httpx.Client(timeout=60) as client:
                for i in range(k, requests, concurrency):
                    body = {"inputs": [x[i % len(x), 0].tolist()], "method": "integrated-gradients", "steps": 32}
                    t0 = time.perf_counter()
                    r = client.post(f"{url}/v1/models/{name}/explain", json=body)
                    with lock:
                        (times if r.status_code == 200 else failures).append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        own = {**_percentiles(times), "requests_per_second": len(times) / wall, "failed": len(failures),
               "concurrency": concurrency}
        body = json.dumps({"inputs": [x[0, 0].tolist()], "method": "integrated-gradients", "steps": 32}).encode()
        return {"own client (threads)": own,  # and wrk, a standard client (the same image for every request)
                "wrk": wrk_phase(f"{url}/v1/models/{name}/explain", "POST", body, concurrency, 15, threads=2)}
    finally:
        process.terminate()
        process.wait(30)


def methods_figure(run: Path, x: torch.Tensor, path: Path) -> None:
    """docs/img/explain_methods.png: a few test images, each beside every method's overlay of its predicted class."""
    from genforge.explain import METHODS, overlay
    from genforge.plots import figure

    loaded = runs.load_run(run)
    maps = {m: loaded.explainer()(x, m) for m in METHODS}
    classes = loaded.meta["classes"]
    plt = figure()
    fig, axes = plt.subplots(len(x), len(METHODS) + 1, figsize=(1.6 * (len(METHODS) + 1), 1.7 * len(x)))
    for i, image in enumerate(x):
        p = maps[METHODS[0]].probabilities[i]
        axes[i, 0].imshow(image.float().mean(0), cmap="gray", vmin=0, vmax=255)
        axes[i, 0].set_title(f"{classes[int(p.argmax())]} {p.max():.2f}", fontsize=7)
        for j, m in enumerate(METHODS, start=1):
            axes[i, j].imshow(overlay(image, maps[m].attributions[i], scale=1))
            if i == 0:
                axes[i, j].set_title(m, fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(run: str | None, examples: int, keep: str | None, speed_only: bool = False) -> None:
    if speed_only:  # the timings again, on a run already scored (e.g. when the machine is idle)
        result = json.loads((OUT / "explain_faithfulness.json").read_text()) if (OUT / "explain_faithfulness.json"
                                                                                  ).is_file() else {}
        x = load_dataset("fashion-mnist", progress=False).test_x
        result["integrated-gradients, 32 steps, one image: load_run(p).explain"] = library_speed(Path(run), x)
        record("explain_faithfulness", result)
        result["integrated-gradients, 32 steps, one image: genforge serve"] = server_speed(Path(run), x)
        record("explain_faithfulness", result)
        return
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        if run is None:
            cfg = load_config("fashion-cnn", ["seed=0"])
            run_dir = rundir.create_run(keep or tmp, cfg.name, cfg)
            summary = train(cfg, run_dir, quiet=True)
            result["fashion-cnn"] = {"test_accuracy": summary["test_accuracy"],
                                     "train_seconds": summary["train_seconds"], "run": str(run_dir)}
            record("explain_faithfulness", result)
        else:
            run_dir = rundir.resolve_run(run)
            result["fashion-cnn"] = {"test_accuracy": rundir.read_json(run_dir / "summary.json").get("test_accuracy"),
                                     "run": str(run_dir)}
        ds = load_dataset("fashion-mnist", progress=False)
        methods_figure(run_dir, ds.test_x[[0, 1, 7, 12]], Path(__file__).resolve().parents[1] / "docs" / "img" /
                       "explain_methods.png")
        idx = torch.randperm(len(ds.test_y), generator=torch.Generator().manual_seed(0))[:examples]
        t0 = time.perf_counter()
        scores = faithfulness(runs.load_run(run_dir).model, ds.test_x[idx], seed=0)
        scores["seconds"] = time.perf_counter() - t0
        result["faithfulness"] = scores
        record("explain_faithfulness", result)
        result["integrated-gradients, 32 steps, one image: load_run(p).explain"] = library_speed(run_dir, ds.test_x)
        record("explain_faithfulness", result)
        result["integrated-gradients, 32 steps, one image: genforge serve"] = server_speed(run_dir, ds.test_x)
        record("explain_faithfulness", result)


if __name__ == "__main__":
    args = sys.argv[1:]

    def option(flag: str, default=None):
        return args[args.index(flag) + 1] if flag in args else default

    main(option("--run"), int(option("--examples", 1000)), option("--keep"), "--speed-only" in args)
