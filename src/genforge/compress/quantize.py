"""Post-training int8 quantization of a run's exported parts with ONNX Runtime's quantizer.

static: weights int8 per output channel, activations uint8 with ranges calibrated on training inputs (QDQ format:
ONNX Runtime fuses each DequantizeLinear -> op -> QuantizeLinear into an integer kernel). dynamic: weights int8,
activation ranges computed per batch at run time (no calibration; fast for MatMul-heavy models, slow for convs).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from genforge.compress.child import create_child, finish_child
from genforge.errors import GenforgeError
from genforge.onnx.export import (
    EXPORT_DIR,
    current_export,
    export_run,
    part_inputs,
    parts_of,
    run_session,
    session,
    strip_metadata,
)
from genforge.rundir import write_json
from genforge.runs import load_run

METHODS = ("static", "dynamic")


def _calibration_reader(names: list[str], batches: list[tuple[torch.Tensor, ...]]):

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{n: t.numpy() for n, t in zip(names, batch)} for batch in batches])

        def get_next(self):
            return next(self.feeds, None)

    return Reader()


def quantize_file(src: Path, dst: Path, method: str, calibration: list[tuple[torch.Tensor, ...]] = ()) -> Path:
    """fp32 ONNX file -> int8 ONNX file. `calibration`: batches of inputs (static only)."""
    if method not in METHODS:
        raise GenforgeError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # shape inference + graph optimization (Conv+BatchNorm folding) first: the quantizer needs both
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        if method == "dynamic":
            quantize_dynamic(str(prepared), str(dst), weight_type=QuantType.QInt8, per_channel=True)
        else:
            names = [i.name for i in session(src).get_inputs()]
            # reduce_range: 7-bit weights. The x86 u8 x s8 kernels sum pairs of products in int16 and saturate;
            # on the fashion-cnn the full range lost 2.3 points of accuracy, 7 bits lost none (docs/decisions.md)
            quantize_static(str(prepared), str(dst), _calibration_reader(names, list(calibration)),
                            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                            calibrate_method=CalibrationMethod.MinMax)
    strip_metadata(dst)
    return dst


def quantize_parts(run, src_dir: Path, dst_dir: Path, method: str, calibration: int, batch: int = 64) -> dict:
    """Quantize every exported part of `run` (fp32 files in src_dir, see export_run) into dst_dir, with the same
    export.json layout, so load_run(..., backend="onnxruntime") runs the int8 parts. Static quantization
    calibrates on `calibration` training inputs (images of the training split, or noise for latents); a model trained
    privately calibrates on test images, so the ranges it stores read no training example."""

    if calibration < 1:
        raise GenforgeError(f"--calibration must be >= 1 inputs, got {calibration}")
    record = json.loads((src_dir / "export.json").read_text())
    dst_dir.mkdir(parents=True, exist_ok=True)
    for part in parts_of(run):
        batches = []
        if method == "static":
            split = "test" if run.summary.get("privacy") else "train"
            inputs = part_inputs(run, part, calibration, seed=3, split=split)
            batches = [tuple(t[i : i + batch] for t in inputs) for i in range(0, calibration, batch)]
        entry = record["parts"][part.name]
        dst = quantize_file(src_dir / entry["file"], dst_dir / entry["file"], method, batches)
        check = part_inputs(run, part, 8, seed=2)
        if not all(torch.isfinite(o.float()).all() for o in run_session(session(dst), check)):
            raise GenforgeError(f"the int8 {part.name} gives non-finite outputs; try --method dynamic")
        entry.update({"bytes": dst.stat().st_size, "max_diff": None, "quantized": f"int8-{method}"})
    record["quantization"] = {"dtype": "int8", "method": method, "calibration": calibration if method == "static"
                              else 0, "tool": "onnxruntime.quantization"}
    write_json(dst_dir / "export.json", record)
    return record


def quantize_run(parent_path: Path, method: str | None = None, calibration: int = 512, runs_dir: Path = Path("runs"),
                 threads: int = 1, progress=lambda _: None) -> tuple[Path, dict]:
    """Export the parent's parts (fp32, verified; the parent's own export is read where it is current), quantize
    them to int8 into a new child run, and compare the two. Returns (child run dir, comparison)."""
    parent = load_run(parent_path, backend="torch")
    method = method or parent.task.int8_method
    if method not in METHODS:
        raise GenforgeError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    with tempfile.TemporaryDirectory(prefix="genforge-fp32-") as tmp:
        fp32 = current_export(parent)  # what `genforge serve` or `export` made of these weights: read, not remade
        if fp32 is None:
            fp32 = Path(tmp)
            export_run(parent, fp32, progress=progress)
        cfg = parent.config.model_copy(deep=True)
        cfg.name = f"{parent.config.name}-int8"
        child = create_child(parent, cfg, runs_dir, {"method": f"int8-{method}", "calibration": calibration,
                                                     "backend": "onnxruntime"})
        progress(f"quantizing to int8 ({method})")
        quantize_parts(parent, fp32, child / EXPORT_DIR, method, calibration)
        comparison = finish_child(parent, child, {"parent (onnxruntime fp32)": fp32}, threads, progress=progress)
    return child, comparison
