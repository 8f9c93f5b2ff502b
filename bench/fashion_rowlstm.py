"""Acceptance figure of the row-by-row LSTM preset on Fashion-MNIST (the sequential benchmark): 3 seeds, median."""

from __future__ import annotations

import statistics
import sys

from _common import record, train_preset


def main(seeds: int = 3) -> None:
    trained = [train_preset("fashion-rowlstm", [f"seed={s}"]) for s in range(seeds)]
    record("fashion_rowlstm", {"fashion-rowlstm": {
        "test_accuracy": [r["test_accuracy"] for r in trained], "train_seconds": [r["train_seconds"] for r in trained],
        "median_test_accuracy": statistics.median(r["test_accuracy"] for r in trained),
        "median_train_seconds": statistics.median(r["train_seconds"] for r in trained)}})


if __name__ == "__main__":
    main(seeds=int(sys.argv[1]) if len(sys.argv) > 1 else 3)
