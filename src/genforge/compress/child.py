"""A compressed run: a new run directory that points to its parent, measured side by side with it.

Both models are measured in the same process with the same inputs: file size, parameters and non-zero
parameters, median latency at batch 1 and 256 (eager PyTorch, and ONNX Runtime where there are ONNX files),
and the quality metrics of the kind (the task's own test evaluation, the function `genforge evaluate` calls).
"""

from __future__ import annotations

import hashlib
import html
import statistics
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from genforge import rundir, runs
from genforge.config import RunConfig
from genforge.onnx.export import load_parts, part_inputs, parts_of
from genforge.train.privacy import epsilon_of

LINEAGE = "compression.json"
COMPARISON = "comparison.json"


def create_child(parent, cfg: RunConfig, runs_dir: Path, lineage: dict) -> Path:
    """A new run dir under runs_dir named after cfg.name, holding the config, the parent's meta and the lineage."""
    child = rundir.create_run(runs_dir, cfg.name, cfg)
    rundir.write_json(child / "meta.json", parent.meta)
    record = {"parent": str(parent.path.resolve()), "parent_name": parent.path.name, **lineage}
    rundir.write_json(child / LINEAGE, record)
    return child


def count_parameters(run) -> tuple[int, int]:
    """(parameters, non-zero parameters) of what the run runs: its PyTorch weights, or the weights in its ONNX
    files (quantized int8 tensors included; scales, zero points and shape constants are not parameters; a tensor that
    two parts hold counts once)."""
    if run.backend == "torch":
        params = list(run.task.inference_module(run.model).parameters())
        return sum(p.numel() for p in params), sum(int((p != 0).sum()) for p in params)

    total = nonzero = 0
    seen = set()  # a weight two parts both hold (a language model's forward and step) counts once
    for part in parts_of(run):
        graph = onnx.load(str(run.onnx_dir / f"{part.name}.onnx")).graph
        for init in graph.initializer:
            if init.name.endswith(("_scale", "_zero_point")) or init.data_type == onnx.TensorProto.INT64:
                continue
            array = numpy_helper.to_array(init)
            key = (array.shape, array.dtype.str, hashlib.sha256(array.tobytes()).digest())
            if array.ndim and array.size > 1 and np.issubdtype(array.dtype, np.number) and key not in seen:
                seen.add(key)
                total, nonzero = total + array.size, nonzero + int(np.count_nonzero(array))
    return total, nonzero


def file_bytes(run) -> int:
    """Bytes of what a deployment of the run copies: the ONNX files of an ONNX run, else the weights file."""
    if run.backend == "onnxruntime":
        return sum(p.stat().st_size for p in run.onnx_dir.glob("*.onnx"))
    return (run.path / rundir.WEIGHTS).stat().st_size


def latency_ms(run, batch: int, repeats: int) -> float:
    """Median wall time (ms) of the run's main part (classifier, generator, decoder) on one batch."""
    part = parts_of(run)[-1]
    inputs = part_inputs(run, part, batch, seed=4)
    seam = getattr(run.model, part.seam)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):  # two warm-up calls
            t0 = time.perf_counter()
            seam(*inputs)
            if i >= 2:
                times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def profile(run, repeats: int = 50) -> dict:
    parameters, nonzero = count_parameters(run)
    row = {"backend": run.backend, "file_bytes": file_bytes(run), "parameters": parameters,
           "nonzero_parameters": nonzero}
    row["latency_ms_b1"] = latency_ms(run, 1, repeats)
    row["latency_ms_b256"] = latency_ms(run, 256, max(5, repeats // 10))
    return row


def quality(run, ds, task) -> tuple[dict, dict]:
    """(the task's full test result, its headline numbers) for a loaded run."""
    result = task.test(run.model, ds, run.config)
    speed = ("latency_ms_b1", "throughput_b256")  # timed apart, the same way for every row (profile)
    return result, {k: v for k, v in task.headline(result).items() if k not in speed}


def comparison_html(comparison: dict) -> str:
    rows = comparison["rows"]
    fields = list(dict.fromkeys(k for row in rows.values() for k in row))
    fmt = lambda v: f"{v:,.4g}" if isinstance(v, float) else html.escape(f"{v:,}" if isinstance(v, int) else str(v))  # noqa: E731, E501
    head = "".join(f"<th>{html.escape(name)}</th>" for name in rows)
    body = "".join(f"<tr><th>{html.escape(k)}</th>" + "".join(f"<td>{fmt(row.get(k, ''))}</td>"
                                                              for row in rows.values()) + "</tr>" for k in fields)
    return f"<table><tr><th></th>{head}</tr>{body}</table>"


def inherited_privacy(parent: dict | None, child: dict | None) -> dict | None:
    """The guarantee of a compressed child of a private parent. Quantizing and pruning read no training example (a
    private parent's static quantization calibrates on test images): post-processing, the parent's (epsilon, delta)
    stands. A private fine-tuning read them again: the two trainings compose, and the epsilon is the accountant's over
    both (same delta)."""
    if parent is None:
        return None
    if child is None:
        return {**parent, "from": "the parent (compression is post-processing)"}

    history = [(p["noise_multiplier"], p["sample_rate"], p["steps"]) for p in (parent, child)]
    return {**child, "epsilon": round(epsilon_of(parent["accountant"], history, parent["delta"]), 4),
            "target_epsilon": None, "from": "the parent's training and the fine-tuning, composed",
            "fine_tuning_epsilon": child["epsilon"]}


def write_comparison(child: Path, comparison: dict) -> None:
    rundir.write_json(child / COMPARISON, comparison)


def finish_child(parent, child_dir: Path, references: dict[str, Path] | None = None, threads: int = 1,
                 repeats: int = 50, progress=lambda _: None) -> dict:
    """Measure parent and child side by side, then write the child's eval.json, summary.json, comparison.json
    and report.html. references: extra rows, {label: folder of fp32 ONNX files of the parent}."""
    torch.set_num_threads(threads)
    child = runs.load_run(child_dir, threads=threads)
    task = parent.task
    ds = task.dataset(parent.config)
    progress("evaluating the parent")
    _, parent_quality = quality(parent, ds, task)
    progress("evaluating the compressed model")
    child_result, child_quality = quality(child, ds, task)
    progress("timing both")
    rows = {"parent": {**profile(parent, repeats), **parent_quality}}
    for label, onnx_dir in (references or {}).items():
        reference = runs.load_run(parent.path)
        load_parts(reference, onnx_dir, threads)
        rows[label] = profile(reference, repeats)
    rows["compressed"] = {**profile(child, repeats), **child_quality}
    comparison = {"threads": threads, "rows": rows,
                  "change": {k: v - parent_quality[k] for k, v in child_quality.items()
                             if isinstance(v, (int, float)) and isinstance(parent_quality.get(k), (int, float))},
                  "ratio": {k: v / rows["parent"][k] for k, v in rows["compressed"].items()
                            if k in ("file_bytes", "parameters", "nonzero_parameters", "latency_ms_b1",
                                     "latency_ms_b256") and rows["parent"][k]}}
    summary = {**rundir.read_json(child_dir / "summary.json"), "status": "complete",
               "kind": parent.config.model.kind, "dataset": ds.name, "compressed_from": parent.path.name,
               **{k: child.lineage[k] for k in ("method",)}, **child_quality,
               "latency_ms_b1": rows["compressed"]["latency_ms_b1"], "file_bytes": rows["compressed"]["file_bytes"]}
    if privacy := inherited_privacy(parent.summary.get("privacy"), summary.get("privacy")):
        summary["privacy"] = privacy
    rundir.write_json(child_dir / "eval.json", child_result)
    rundir.write_json(child_dir / "summary.json", summary)
    task.report(child_dir, child.model, ds, child_result, summary,
                [("Compared with the parent", comparison_html(comparison))])
    write_comparison(child_dir, comparison)  # last: a child with comparison.json is complete (resume_prune)
    return comparison
