"""Differentially private Fashion-MNIST (issue 16, acceptance 1 and 3): the `fashion-dp` preset at (epsilon 3,
delta 1e-5) over seeds (median test accuracy and training time); genforge's non-private CNN preset
(`fashion-cnn-fast`) in the same run; and the membership audit of the private model beside the same audit of the
same model trained without privacy.

Usage: python bench/fashion_dp.py [SEEDS] [--preset fashion-dp]   (default 3 seeds; about 15 minutes per seed)
"""

from __future__ import annotations

import statistics
import sys
import tempfile

from _common import record

from genforge import rundir, runs
from genforge.config import load_config
from genforge.evaluate.privacy import audit_run
from genforge.training import train


def _train(preset: str, overrides: list[str], parent: str):
    cfg = load_config(preset, overrides)
    run_dir = rundir.create_run(parent, cfg.name, cfg)
    return run_dir, train(cfg, run_dir, quiet=True)


def main(seeds: int = 3, preset: str = "fashion-dp") -> None:
    name, result = preset.replace("-", "_"), {}
    with tempfile.TemporaryDirectory() as tmp:
        private = []
        for s in range(seeds):  # recorded after each run: a later failure keeps what was measured
            private.append(_train(preset, [f"seed={s}"], tmp))
            result[preset] = {"test_accuracy": [r["test_accuracy"] for _, r in private],
                              "train_seconds": [r["train_seconds"] for _, r in private],
                              "epsilon": [r["privacy"]["epsilon"] for _, r in private],
                              "privacy": private[0][1]["privacy"],
                              "median_test_accuracy": statistics.median(r["test_accuracy"] for _, r in private),
                              "median_train_seconds": statistics.median(r["train_seconds"] for _, r in private)}
            record(name, result)
        _, cnn = _train("fashion-cnn-fast", [], tmp)
        result["fashion-cnn-fast (not private)"] = {"test_accuracy": cnn["test_accuracy"],
                                                    "train_seconds": cnn["train_seconds"]}
        # the same model without privacy, trained the way a non-private linear model is (lr 4 is for clipped
        # gradients of norm 0.1 and diverges without them), to audit beside the private one
        open_dir, open_ = _train("fashion-scatter", [], tmp)
        result["fashion-scatter (not private)"] = {"test_accuracy": open_["test_accuracy"],
                                                   "train_seconds": open_["train_seconds"]}
        record(name, result)
        result["audit"] = {"private (seed 0)": audit_run(runs.load_run(private[0][0])),
                           "not private": audit_run(runs.load_run(open_dir))}
        record(name, result)


if __name__ == "__main__":
    args = sys.argv[1:]
    preset = args[args.index("--preset") + 1] if "--preset" in args else "fashion-dp"
    numbers = [a for a in args if a.isdigit()]
    main(seeds=int(numbers[0]) if numbers else 3, preset=preset)
