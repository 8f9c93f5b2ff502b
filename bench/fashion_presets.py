"""Acceptance figures of the two Fashion-MNIST presets: fast (3 seeds, median) and full."""

from __future__ import annotations

import statistics
import sys

from _common import record, train_preset


def main(seeds: int = 3, full: bool = True) -> None:
    fast = [train_preset("fashion-cnn-fast", [f"seed={s}"]) for s in range(seeds)]
    result = {"fashion-cnn-fast": {
        "test_accuracy": [f["test_accuracy"] for f in fast], "train_seconds": [f["train_seconds"] for f in fast],
        "median_test_accuracy": statistics.median(f["test_accuracy"] for f in fast),
        "median_train_seconds": statistics.median(f["train_seconds"] for f in fast)}}
    if full:
        r = train_preset("fashion-cnn")
        result["fashion-cnn"] = {"test_accuracy": r["test_accuracy"], "train_seconds": r["train_seconds"]}
    record("fashion_presets", result)


if __name__ == "__main__":
    main(full="--fast-only" not in sys.argv)
