"""IDX files (LeCun's MNIST format), gzipped: parse and validate, never trust a file's own header."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from genforge.errors import GenforgeError

IMAGES_MAGIC = 0x00000803  # 2051: unsigned bytes, 3 dims (N, rows, cols)
LABELS_MAGIC = 0x00000801  # 2049: unsigned bytes, 1 dim (N,)


class BadFile(GenforgeError):
    """A file that failed validation; the caller adds the fix (and may delete the file)."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"{path} {problem}")
        self.path = Path(path)


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Decompress and check one IDX .gz file. Returns uint8 (N, rows, cols) or (N,)."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        raise BadFile(path, f"is not a complete gzip file ({type(e).__name__}: {e})") from None
    if len(raw) < 4:
        raise BadFile(path, f"is too short to be an IDX file ({len(raw)} bytes)")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        kind = "images" if magic == IMAGES_MAGIC else "labels"
        raise BadFile(path, f"has magic number {found:#010x}, expected {magic:#010x} ({kind})")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise BadFile(path, "ends inside its header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(dims)
    if len(raw) != expected:
        raise BadFile(path, f"holds {len(raw)} bytes but its header {dims} needs {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_pair(images: Path, labels: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 1, rows, cols) uint8 and labels (N,) int64, checked against each other."""
    x = read_idx(images, IMAGES_MAGIC)
    y = read_idx(labels, LABELS_MAGIC)
    if len(x) != len(y):
        raise BadFile(labels, f"has {len(y)} labels but {images.name} has {len(x)} images")
    if len(y) and int(y.max()) >= num_classes:
        bad = int(np.argmax(y >= num_classes))
        raise BadFile(labels, f"has label {int(y[bad])} at index {bad}, but there are only "
                              f"{num_classes} classes (0-{num_classes - 1})")
    return x[:, None], y.astype(np.int64)
