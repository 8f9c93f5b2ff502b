"""Tiny IDX datasets for tests; importable as a module (conftest.py is not)."""

import gzip
import hashlib
from pathlib import Path

import numpy as np

from genforge.data.idx_datasets import FILES

TINY = "tiny-mnist"  # a dataset registered only by these tests


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return gzip.compress(magic.to_bytes(4, "big") + dims + array.astype(np.uint8).tobytes())


def write_tiny_idx(folder: Path, n_train: int = 20, n_test: int = 10) -> dict[str, str]:
    """The 4 IDX .gz files of a tiny 28x28 dataset. Returns filename -> md5."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (n_train, 28, 28)), np.arange(n_train) % 10,
              rng.integers(0, 256, (n_test, 28, 28)), np.arange(n_test) % 10]
    md5 = {}
    for name, array in zip(FILES, arrays):
        data = idx_bytes(array, 0x803 if array.ndim == 3 else 0x801)
        (folder / name).write_bytes(data)
        md5[name] = hashlib.md5(data).hexdigest()
    return md5
