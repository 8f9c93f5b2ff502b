"""Compression benchmark (issue 5): int8 and pruned children of fashion-cnn, an int8 child of fashion-cdcgan, each
measured against its parent in the same process (genforge.compress.child.finish_child).

The int8 children run in ONNX Runtime, so their latency is compared with two fp32 baselines, both timed in the same
process by the same method (child.profile: median wall time of the main part, 50 calls at batch 1 and 5 at batch
256 after two warm-up calls, --threads intra-op threads): the parent in eager PyTorch, and the parent exported to
fp32 ONNX and run by ONNX Runtime with the same session options as the child (export.session: --threads threads,
one inter-op thread, no spinning). The second ratio is the int8 gain itself; the first adds the gain of leaving
eager PyTorch. Both are in comparison.json ("parent", "parent (onnxruntime fp32)", "compressed" rows) and here.

    python bench/compress.py [--cnn RUN] [--gan RUN] [--finetune-epochs 5] [--structured-epochs 12] [--only 1,2,3,4]
    python bench/compress.py --only 1,4 --cnn-overrides "train.epochs=1 data.train_subset=4096" \
        --gan-overrides "train.epochs=1 data.train_subset=4096 eval.samples=1000"      # smoke test, small parents

Without --cnn/--gan the parents are trained first (fashion-cnn about 4 minutes, fashion-cdcgan about 10 on 2
cores; --cnn-overrides/--gan-overrides make them small). Writes bench/out/compress.json; the figures go into
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parent


ORT_FP32 = "parent (onnxruntime fp32)"  # the row quantize_run adds to comparison.json


def train(preset: str, runs_dir: Path, overrides: str = "") -> Path:
    before = set(runs_dir.glob("*")) if runs_dir.exists() else set()
    subprocess.run([sys.executable, "-m", "genforge", "train", preset, *overrides.split(), "--runs-dir",
                    str(runs_dir), "--quiet"], check=True)
    (run,) = set(runs_dir.glob("*")) - before
    return run


def check(name: str, value: float, op: str, target: float) -> dict:
    ok = value <= target if op == "<=" else value >= target
    print(f"  {'MET ' if ok else 'MISS'} {name}: {value:.4g} (target {op} {target:g})", flush=True)
    return {"value": value, "target": f"{op} {target:g}", "met": ok}


def int8_latency(c: dict, target_b1: float | None = None) -> dict:
    """The int8 child's batch-1 and batch-256 latency over the eager parent's and over fp32 ONNX Runtime's."""
    rows, out = c["rows"], {}
    for batch in ("b1", "b256"):
        key = f"latency_ms_{batch}"
        for label, base in (("fp32 eager", "parent"), ("fp32 onnxruntime", ORT_FP32)):
            ratio = rows["compressed"][key] / rows[base][key]
            name = f"latency_{batch}_ratio_vs_{'eager' if base == 'parent' else 'ort_fp32'}"
            text = f"batch-{batch[1:]} latency / {label} ({rows['compressed'][key]:.3g} / {rows[base][key]:.3g} ms)"
            if batch == "b1" and target_b1 is not None:
                out[name] = check(text, ratio, "<=", target_b1)
            else:
                print(f"  info {text}: {ratio:.4g}", flush=True)
                out[name] = {"value": ratio}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cnn", type=Path, help="a trained fashion-cnn run (default: train one)")
    parser.add_argument("--gan", type=Path, help="a trained fashion-cdcgan run (default: train one)")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "out" / "compress-runs")
    parser.add_argument("--finetune-epochs", type=int, default=5, help="unstructured pruning's fine-tuning")
    parser.add_argument("--structured-epochs", type=int, default=12,
                        help="structured pruning's fine-tuning: a quarter of the weights is left to retrain")
    parser.add_argument("--only", default="1,2,3,4", help="which of the four checks to run, e.g. 2,3")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for timing (both models alike)")
    parser.add_argument("--cnn-overrides", default="", help="config overrides of a fashion-cnn parent trained here")
    parser.add_argument("--gan-overrides", default="", help="config overrides of a fashion-cdcgan parent trained here")
    args = parser.parse_args()

    parts = {int(p) for p in args.only.split(",")}
    parents = args.runs_dir / "parents"
    cnn = (args.cnn or train("fashion-cnn", parents, args.cnn_overrides)) if parts & {1, 2, 3} else None
    gan = (args.gan or train("fashion-cdcgan", parents, args.gan_overrides)) if 4 in parts else None
    children = args.runs_dir / "children"
    results = {"threads": args.threads, "parents": [str(cnn), str(gan)], "only": sorted(parts),
               "cnn_overrides": args.cnn_overrides if args.cnn is None else None,
               "gan_overrides": args.gan_overrides if args.gan is None else None,
               "finetune_epochs": args.finetune_epochs, "structured_epochs": args.structured_epochs}
    checks = {1: ("int8_classifier", int8_classifier, cnn), 2: ("prune_unstructured", prune_unstructured, cnn),
              3: ("prune_structured", prune_structured, cnn), 4: ("int8_generator", int8_generator, gan)}
    for part in sorted(parts):
        name, run_check, parent = checks[part]
        t0 = time.perf_counter()
        child, comparison, met = run_check(parent, children, args)
        results[name] = {"child": str(child), "comparison": comparison, "checks": met,
                         "seconds": round(time.perf_counter() - t0, 1)}
        (ROOT / "out").mkdir(exist_ok=True)
        (ROOT / "out" / "compress.json").write_text(json.dumps(results, indent=1))  # so far: a later check may fail
    from _common import record  # imports torch: after OMP_WAIT_POLICY is set

    record("compress", results)
    print(json.dumps({k: v["checks"] for k, v in results.items() if isinstance(v, dict) and "checks" in v}, indent=1))


def int8_classifier(cnn, children, args):
    from genforge.compress.quantize import quantize_run

    print("1. int8 classifier (static, 512 calibration images)", flush=True)
    child, c = quantize_run(cnn, "static", 512, children, args.threads)
    return child, c, {
        "file_size_ratio": check("file size / fp32", c["ratio"]["file_bytes"], "<=", 0.30),
        "accuracy_drop_points": check("accuracy drop (points)", -100 * c["change"]["test_accuracy"], "<=", 0.5),
        **int8_latency(c, target_b1=0.7)}


def prune_unstructured(cnn, children, args):
    from genforge.compress.prune import prune_run

    print(f"2. unstructured magnitude pruning 80%, {args.finetune_epochs} fine-tuning epochs (gradual, distilled)",
          flush=True)
    child, c = prune_run(cnn, 0.8, False, args.finetune_epochs, [f"train.threads={args.threads}"], children,
                         args.threads, quiet=True)
    return child, c, {
        "nonzero_ratio": check("non-zero parameters / parent", c["ratio"]["nonzero_parameters"], "<=", 0.25),
        "accuracy_drop_points": check("accuracy drop (points)", -100 * c["change"]["test_accuracy"], "<=", 0.5)}


def prune_structured(cnn, children, args):
    from genforge.compress.prune import prune_run

    print(f"3. structured channel pruning 50%, {args.structured_epochs} fine-tuning epochs (distilled)", flush=True)
    child, c = prune_run(cnn, 0.5, True, args.structured_epochs, [f"train.threads={args.threads}"], children,
                         args.threads, quiet=True)
    return child, c, {
        "latency_b256_ratio": check("batch-256 latency / parent", c["ratio"]["latency_ms_b256"], "<=", 0.7),
        "latency_b1_ratio": check("batch-1 latency / parent", c["ratio"]["latency_ms_b1"], "<=", 0.7),
        "accuracy_drop_points": check("accuracy drop (points)", -100 * c["change"]["test_accuracy"], "<=", 1.0)}


def int8_generator(gan, children, args):
    from genforge.compress.quantize import quantize_run

    print("4. int8 generator (fashion-cdcgan, static, 512 calibration latents)", flush=True)
    child, c = quantize_run(gan, "static", 512, children, args.threads)
    return child, c, {
        "fd_rise_fraction": check("FD rise (fraction)", c["change"]["fd"] / c["rows"]["parent"]["fd"], "<=", 0.10),
        "conditional_accuracy_drop_points": check("conditional accuracy drop (points)",
                                                  -100 * c["change"]["conditional_accuracy"], "<=", 2.0),
        **int8_latency(c)}


if __name__ == "__main__":
    main()
