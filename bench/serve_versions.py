"""Classify throughput of two code versions of genforge, in alternating rounds of one run: a refactor's check that
serving did not slow down (issue 31: within 10% of the old commit's req/s).

Each round runs bench/serve_load.py's genforge phases once (`--peer none --rounds 1`: hello and classify with wrk,
then with its own client, then the overload phase) against `genforge serve RUN` started from each version's source
tree (PYTHONPATH), the order of the two versions swapped every round so that neither always goes first on a VM whose
speed drifts. Reported: each version's wrk classify req/s and p99 per round, their medians, and the median of the
per-round ratios new / old.

    python bench/serve_versions.py RUN OLD_SRC NEW_SRC [--rounds 4] [--seconds 5]

OLD_SRC and NEW_SRC are the `src` folders of two checkouts (e.g. `git worktree add /tmp/old COMMIT`); each round runs
the bench/serve_load.py beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from _common import record


def one_round(run: str, src: str, seconds: float) -> dict:
    """One round against the version in `src`, driven by that version's own bench/serve_load.py (the benchmark's
    helpers import genforge too), which records into that tree's bench/out."""
    bench = Path(src).resolve().parent / "bench"
    env = {**os.environ, "PYTHONPATH": src}
    subprocess.run([sys.executable, str(bench / "serve_load.py"), run, "--peer", "none", "--rounds", "1",
                    "--seconds", str(seconds)], env=env, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((bench / "out" / "serve_load.json").read_text())["summary"]
    return {"req_s": summary["wrk_genforge_classify_req_s"], "p50_ms": summary["wrk_genforge_classify_p50_ms"],
            "p99_ms": summary["wrk_genforge_classify_p99_ms"], "own_p99_ms": summary["own_genforge_classify_p99_ms"],
            "overload_other_5xx": summary["overload_other_5xx"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a classifier run directory")
    parser.add_argument("old", help="the old version's src folder")
    parser.add_argument("new", help="the new version's src folder")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    rows = {"old": [], "new": []}
    for i in range(args.rounds):
        order = ("old", "new") if i % 2 == 0 else ("new", "old")
        for version in order:
            rows[version].append(one_round(args.run, getattr(args, version), args.seconds))
            print(f"round {i + 1} {version}: {rows[version][-1]}", file=sys.stderr)
    result = {"run": args.run, "old": args.old, "new": args.new, "rounds": rows,
              "median_req_s": {v: statistics.median(r["req_s"] for r in rows[v]) for v in rows},
              "median_p99_ms": {v: statistics.median(r["p99_ms"] for r in rows[v]) for v in rows},
              "median_ratio_new_over_old": statistics.median(n["req_s"] / o["req_s"]
                                                             for n, o in zip(rows["new"], rows["old"]))}
    record("serve_versions", result)


if __name__ == "__main__":
    main()
