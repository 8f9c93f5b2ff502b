"""ONNX export of a run's inference parts, verified against eager PyTorch, and ONNX Runtime running them in place.

A part is one callable of the model with natural inputs, so an exported file is usable on its own:

    classify  model.onnx      x (N, *input_shape) raw inputs (uint8 images)    -> logits (N, K)
    gan       generator.onnx  z (N, latent) [, classes (N, K) one-hot weights] -> images (N, C, H, W) in [-1, 1]
    vae       encoder.onnx    x (N, *input_shape) in [0, 1] [, classes]        -> mu, logvar (N, latent)
              decoder.onnx    z (N, latent) [, classes]                        -> params (N, *input_shape)
              context.onnx    x (N, *input_shape) binary or means in [0, 1]    -> logits (N, *input_shape)
                              (autoregressive VAEs only: what the pixels above/left add to each logit)
    language  model.onnx      tokens (N, T) ids                                -> logits (N, T, V), or (N, K)
              step.onnx       tokens (N, T) new ids, past (layers, 2, N, heads, P, head width) keys and values of
                              P earlier positions (P >= 0)                     -> logits (N, T, V), present (P + T)
                              (language models only: generation's step, so ONNX Runtime runs all of it)

Conditional parts take class weights rather than indices: a one-hot row picks a class, a mixed row walks
between classes (interpolate), and the graph needs no Gather on user-given indices.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn
from torch.export import Dim

from genforge.errors import GenforgeError
from genforge.models.layers import check_labels
from genforge.onnx.parts import Part
from genforge.rundir import weights_digest, write_json

EXPORT_DIR = "export"
TOLERANCE = 1e-4  # max |onnxruntime - eager| / max(1, |eager|) accepted on a held-out batch: absolute for logits,
# pixels and latents, relative for outputs in the data's own units (a forecast of river flows near 1,000)
DEFAULT_OPSET = 18  # the first opset of the dynamo exporter


class MissingPart(GenforgeError):
    """An export without a part the run's model has now (a language model's step, exported since)."""


def parts_of(run) -> tuple[Part, ...]:
    """The parts a run's model exports (its task's), the main one (classifier, generator, decoder) last."""
    return run.task.export_parts(run.model)


def is_conditional(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "cfg", None), "conditional", False))


class _Exported(nn.Module):
    """The traced wrapper: the model's seam called with positional tensors."""
    def __init__(self, model: nn.Module, seam: str):
        super().__init__()
        self.model = model
        self.seam = seam

    def forward(self, first: torch.Tensor, classes: torch.Tensor | None = None):
        seam = getattr(self.model, self.seam)
        return seam(first) if classes is None else seam(first, classes)


def part_inputs(run, part: Part, n: int, seed: int, split: str = "test") -> tuple[torch.Tensor, ...]:
    """A batch of n inputs for `part`: real images of the run's dataset (`split`) for parts that read images,
    fixed-seed noise for parts that read latents; one-hot class weights when the model is conditional."""
    if (own := run.task.part_example(run, part, n, seed, split)) is not None:
        return own
    g = torch.Generator().manual_seed(seed)
    model, classes = run.model, len(run.meta["classes"])
    if part.inputs[0] == "z":
        first = torch.randn(n, model.latent_dim, generator=g)
        labels = torch.randint(0, classes, (n,), generator=g)
    else:
        x, y = run.task.heldout(run, n, seed, split)
        first = x.float() / 255 if part.unit_range else x
        labels = y
    if not (is_conditional(model) and part.labels):
        return (first,)
    return first, F.one_hot(labels, classes).float()


def session(path: Path, threads: int = 1):
    """An ONNX Runtime CPU session: no telemetry, no spinning threads (they slow torch in the same process)."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: the quantizer's graphs make ORT chatty
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for unreadable or invalid graphs
        raise GenforgeError(f"{path}: ONNX Runtime cannot load it ({str(e).splitlines()[0]})") from None


INTEGER_INPUTS = {"tensor(uint8)": torch.uint8, "tensor(uint16)": torch.uint16, "tensor(int32)": torch.int32,
                  "tensor(int64)": torch.int64}


def run_session(sess, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """Integer inputs are given in the type the graph was exported with (token ids: uint8 from a byte corpus, int64
    from generation)."""
    feeds = {i.name: (t if t.is_floating_point() or i.type not in INTEGER_INPUTS else t.to(INTEGER_INPUTS[i.type]))
             .detach().cpu().contiguous().numpy() for i, t in zip(sess.get_inputs(), inputs)}
    return [torch.from_numpy(o) for o in sess.run(None, feeds)]


class OnnxPart(nn.Module):
    """An exported part run by ONNX Runtime behind the model's own seam: same arguments, same outputs.

    Labels come as the model takes them (indices, or class weights); they are checked like the eager model
    checks them and become one-hot weights for the graph."""
    def __init__(self, sess, part: Part, num_classes: int, conditional: bool, path: Path):
        super().__init__()
        self.session, self.part, self.num_classes, self.conditional = sess, part, num_classes, conditional
        self.path = path

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        inputs = (x.float() if x.is_floating_point() else x,)
        if self.conditional:
            check_labels(labels, x.shape[0], True)
            weights = labels.float() if labels.is_floating_point() else F.one_hot(labels, self.num_classes).float()
            inputs += (weights,)
        elif len(self.part.inputs) > 1:  # a second input of the part's own (a language model's keys and values)
            inputs += (labels,)
        outputs = [o.to(x.device) for o in run_session(self.session, inputs)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def attach(model: nn.Module, part: Part, runtime: OnnxPart) -> None:
    """Put the runtime in the place of the part: a submodule is replaced, a method is shadowed on the instance
    (nn.Module looks submodules up only after the instance dict, so the dict entry wins in both cases)."""
    model.__dict__[part.seam] = runtime


def dynamic_axes(part: Part, inputs: int, dynamic_batch: bool) -> tuple[dict, ...] | None:
    """torch.export's dynamic shapes of a part's inputs: the batch (axis 0, unless the part names its "batch" axis
    elsewhere) where dynamic_batch, and the part's own axes of any size always."""
    dims: dict[str, Dim] = {"batch": Dim("batch", min=1)}
    shapes = []
    for i in range(inputs):
        own = part.axes[i] if i < len(part.axes) else ()
        shape = {axis: dims.setdefault(name, Dim(name, min=least)) for axis, name, least in own
                 if dynamic_batch or name != "batch"}
        if dynamic_batch and all(name != "batch" for _, name, _ in own):
            shape[0] = dims["batch"]
        shapes.append(shape)
    return tuple(shapes) if any(shapes) else None


def export_part(model: nn.Module, part: Part, example: tuple[torch.Tensor, ...], path: Path, opset: int,
                dynamic_batch: bool) -> Path:
    """Write `part` of `model` to path (one self-contained file, weights inside)."""

    wrapper = _Exported(model, part.seam).eval()
    names = part.inputs + (("classes",) if len(example) > len(part.inputs) else ())
    dynamic = dynamic_axes(part, len(example), dynamic_batch)
    path.parent.mkdir(parents=True, exist_ok=True)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter warns about its own internals (torchvision ops, ...)
        quiet.setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(wrapper, example, dynamo=True, opset_version=opset, dynamic_shapes=dynamic,
                                        input_names=list(names), output_names=list(part.outputs), verbose=False)
        except Exception as e:  # the exporter raises many types; the user needs the part and the first line
            raise GenforgeError(f"ONNX export of the {part.name} failed: {str(e).splitlines()[0]}") from None
        finally:
            quiet.setLevel(level)
    program.save(str(path), external_data=False)
    strip_metadata(path)
    return path


def strip_metadata(path: Path) -> None:
    """Drop the exporter's per-node metadata (stack traces, module paths) and doc strings: on a small CNN they were
    a quarter of the file. The graph and the weights are untouched."""
    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    model.graph.doc_string = ""
    onnx.save(model, str(path))


def max_difference(model: nn.Module, part: Part, path: Path, inputs: tuple[torch.Tensor, ...]) -> float:
    """max |onnxruntime - eager| / max(1, |eager|) over every output of the part for one batch of inputs."""
    with torch.inference_mode():
        eager = getattr(model, part.seam)(*inputs)
    eager = eager if isinstance(eager, tuple) else (eager,)
    ort_out = run_session(session(path), inputs)
    return max(((a.float() - b.float()).abs() / a.float().abs().clamp_min(1)).max().item()
               for a, b in zip(eager, ort_out))


def export_run(run, out_dir: Path | None = None, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True,
               batch_size: int = 1, parity_batch: int = 64, tolerance: float = TOLERANCE,
               progress: Callable[[str], None] = lambda _: None) -> dict:
    """Export every part of a loaded run into out_dir (default RUN/export) and verify each with ONNX Runtime on a
    held-out batch (test images, or fresh noise). A part over the tolerance raises and leaves no file behind.
    Returns the export record, also written to out_dir/export.json."""
    if opset < DEFAULT_OPSET:
        raise GenforgeError(f"opset {opset} is too old for the dynamo exporter; use {DEFAULT_OPSET} or newer")

    if opset > (newest := onnx.defs.onnx_opset_version()):
        raise GenforgeError(f"opset {opset} is newer than this onnx package knows ({newest})")
    model = run.model.float().eval()
    out_dir = Path(out_dir) if out_dir else run.path / EXPORT_DIR
    check = parity_batch if dynamic_batch else batch_size
    example_n = max(batch_size, 2) if dynamic_batch else batch_size  # a batch of 1 would be specialized away
    record = {"format": "onnx", "opset": opset, "dynamic_batch": dynamic_batch,
              "batch_size": None if dynamic_batch else batch_size, "tolerance": tolerance,
              "weights_sha256": weights_digest(run.path), "parts": {}}
    for part in parts_of(run):
        progress(f"exporting the {part.name}")
        t0 = time.perf_counter()
        path = out_dir / f"{part.name}.onnx"
        tmp = path.with_suffix(".onnx.tmp")
        export_part(model, part, part_inputs(run, part, example_n, seed=1, split="train"), tmp, opset, dynamic_batch)
        diff = max_difference(model, part, tmp, part_inputs(run, part, check, seed=2))
        if not diff <= tolerance:
            tmp.unlink()
            raise GenforgeError(f"the exported {part.name} differs from PyTorch by {diff:.2e} (> {tolerance:g}) on a "
                                f"held-out batch; nothing was saved")
        tmp.replace(path)
        record["parts"][part.name] = {"file": path.name, "bytes": path.stat().st_size, "max_diff": diff,
                                      "parity_batch": check, "seconds": round(time.perf_counter() - t0, 2)}
    write_json(out_dir / "export.json", record)
    return record


def is_stale(run_dir: Path, record: dict) -> bool:
    """Whether the run's weights changed since the export was made (a resumed run). An export that does not say
    what it was made from, or a run without weights of its own (an int8 child), counts as current."""
    made_from, now = record.get("weights_sha256"), weights_digest(run_dir)
    return bool(made_from and now and made_from != now)


def current_export(run) -> Path | None:
    """The run's own export (RUN/export), if it is what export_run(run) would write now: the default opset and
    tolerance, any batch, every part present, made from these weights. None otherwise."""
    out_dir = run.path / EXPORT_DIR
    try:
        record = json.loads((out_dir / "export.json").read_text())
    except (OSError, ValueError):
        return None
    made, made_from = record.get("parts", {}), record.get("weights_sha256")
    if (record.get("opset") != DEFAULT_OPSET or not record.get("dynamic_batch") or record.get("tolerance") != TOLERANCE
            or made_from is None or made_from != weights_digest(run.path)):
        return None
    if not all(part.name in made and (out_dir / made[part.name]["file"]).is_file() for part in parts_of(run)):
        return None
    return out_dir


def load_parts(run, onnx_dir: Path, threads: int = 1) -> None:
    """Run the parts exported in onnx_dir with ONNX Runtime in place of the eager ones."""
    record_path = onnx_dir / "export.json"
    if not record_path.is_file():
        raise GenforgeError(f"{onnx_dir} holds no export; run: genforge export {run.path} --dynamic-batch")
    record = json.loads(record_path.read_text())
    if is_stale(run.path, record):
        raise GenforgeError(f"{onnx_dir} was exported from earlier weights of {run.path.name} (trained on since); "
                            f"export it again: genforge export {run.path} --dynamic-batch")
    if not record.get("dynamic_batch"):
        raise GenforgeError(f"{onnx_dir} was exported for batch {record.get('batch_size')} only; serving needs any "
                            f"batch: genforge export {run.path} --dynamic-batch")
    for part in parts_of(run):
        if part.name not in record["parts"]:
            raise MissingPart(f"{onnx_dir} holds no {part.name} (an export by an earlier genforge); export it "
                              f"again: genforge export {run.path} --dynamic-batch")
        path = onnx_dir / record["parts"][part.name]["file"]
        runtime = OnnxPart(session(path, threads), part, len(run.meta["classes"]),
                           is_conditional(run.model) and part.labels, path)
        attach(run.model, part, runtime)
    run.backend, run.onnx_dir = "onnxruntime", onnx_dir
