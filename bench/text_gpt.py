"""Issue 32's first acceptance figure: `genforge train text-gpt` (byte-level, fortunes) scored in bits per character
on the test entries beside xz -9 and zstd --ultra -22 on the same text, measured in the same run; the goal is at least
20% below xz within 15 minutes of training. Also six unedited samples (temperature 0.8, seeds 1-6) and the batch-1
generation speed. Writes bench/out/text_gpt.json; RUNS_DIR (argument 1) keeps the run for the README's examples."""

from __future__ import annotations

import sys
from pathlib import Path

from _common import record

from genforge import rundir
from genforge.config import load_config
from genforge.runs import load_run
from genforge.training import train


def main(runs_dir: str = "bench/out/runs") -> None:
    cfg = load_config("text-gpt")
    run_dir = rundir.create_run(Path(runs_dir), cfg.name, cfg)
    summary = train(cfg, run_dir, quiet=True)
    loaded = load_run(run_dir)
    samples = {seed: loaded.generate("", max_tokens=300, temperature=0.8, seed=seed).text() for seed in range(1, 7)}
    below = 1 - summary["test_bpc"] / summary["xz_bpc"]
    record("text_gpt", {"run": str(run_dir), "train_seconds": summary["train_seconds"], "test_bpc": summary["test_bpc"],
                        "xz_bpc": summary["xz_bpc"], "zstd_bpc": summary["zstd_bpc"],
                        "below_xz": below, "goal_met": below >= 0.20 and summary["train_seconds"] <= 900,
                        "tokens_per_s": summary["tokens_per_s"], "first_token_ms": summary["first_token_ms"],
                        "samples": samples})


if __name__ == "__main__":
    main(*sys.argv[1:2])
