"""What an ONNX export is made of: the parts a task declares (tasks/), exported and run by onnx/export.py."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Part:
    name: str  # file stem
    seam: str  # the model attribute the part implements; ONNX Runtime takes its place there
    inputs: tuple[str, ...]  # the first input is the batch; "classes" is added for conditional models
    outputs: tuple[str, ...]
    labels: bool = True  # takes the one-hot classes too when the model is conditional
    unit_range: bool = False  # reads images scaled to [0, 1] (model space), not the raw uint8 pixels
    # per input, its axes of any size other than the batch (axis 0): (axis, name, smallest size). A name shared by
    # two inputs is one size. The batch is an input's axis 0, or the axis named "batch" here
    axes: tuple[tuple[tuple[int, str, int], ...], ...] = ()
