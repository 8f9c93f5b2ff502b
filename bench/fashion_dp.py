"""Differentially private Fashion-MNIST (issue 16, acceptance 1 and 3): the `fashion-dp` preset at (epsilon 3,
delta 1e-5) over seeds (median test accuracy and training time); the same recipe without privacy, and genforge's
non-private CNN preset (`fashion-cnn-fast`), in the same run; and the membership audit of the private model beside
the same audit of the non-private one of the same recipe.

Usage: python bench/fashion_dp.py [SEEDS] [--preset fashion-dp]   (default 3 seeds; about 15 minutes per seed)
"""

from __future__ import annotations

import statistics
import sys
import tempfile

from _common import record

from genforge import runs
from genforge.config import load_config
from genforge.evaluate.privacy import audit_run
from genforge.train.loop import train


def _train(preset: str, overrides: list[str], parent: str):
    cfg = load_config(preset, overrides)
    run_dir = runs.create_run(parent, cfg.name, cfg)
    return run_dir, train(cfg, run_dir, quiet=True)


def main(seeds: int = 3, preset: str = "fashion-dp") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        private = [_train(preset, [f"seed={s}"], tmp) for s in range(seeds)]
        seconds = statistics.median(summary["train_seconds"] for _, summary in private)
        open_dir, open_summary = _train(preset, ["train.privacy=null", "name=same-recipe-not-private"], tmp)
        _, cnn_summary = _train("fashion-cnn-fast", [], tmp)
        audits = [audit_run(runs.load_run(private[0][0])), audit_run(runs.load_run(open_dir))]
    record(f"{preset.replace('-', '_')}", {
        preset: {"test_accuracy": [s["test_accuracy"] for _, s in private],
                 "train_seconds": [s["train_seconds"] for _, s in private],
                 "epsilon": [s["privacy"]["epsilon"] for _, s in private],
                 "privacy": private[0][1]["privacy"],
                 "median_test_accuracy": statistics.median(s["test_accuracy"] for _, s in private),
                 "median_train_seconds": seconds},
        "same recipe, not private": {"test_accuracy": open_summary["test_accuracy"],
                                     "train_seconds": open_summary["train_seconds"]},
        "fashion-cnn-fast (not private)": {"test_accuracy": cnn_summary["test_accuracy"],
                                           "train_seconds": cnn_summary["train_seconds"]},
        "audit": {"private (seed 0)": audits[0], "non-private": audits[1]}})


if __name__ == "__main__":
    args = sys.argv[1:]
    preset = args[args.index("--preset") + 1] if "--preset" in args else "fashion-dp"
    numbers = [a for a in args if a.isdigit()]
    main(seeds=int(numbers[0]) if numbers else 3, preset=preset)
