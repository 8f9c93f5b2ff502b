"""User data: `imagefolder:PATH` (one subfolder per class) and `csv:PATH` (features + a label column)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from genforge.data.builtin import split_train_test
from genforge.data.dataset import Dataset, make_dataset
from genforge.errors import GenforgeError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
COLOR_MODES = {"RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV"}


def _class_files(root: Path, name: str) -> dict[str, list[Path]]:
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not dirs:
        raise GenforgeError(f"{name}: {root} has no class subfolders; "
                            f"put each class's images in {root}/<class>/")
    files = {}
    for d in dirs:
        files[d.name] = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files[d.name]:
            raise GenforgeError(f"{name}: class folder {d} has no PNG or JPEG files; add images or remove it")
    return files


def _open(path: Path, name: str) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
        return img
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise GenforgeError(f"{name}: cannot read image {path} ({e}); fix or remove the file") from None


def load_imagefolder(spec: str) -> Dataset:
    """PATH/<class>/*.png, or PATH/train/<class>/ and PATH/test/<class>/ for a given split."""
    root = Path(spec.split(":", 1)[1]).expanduser()
    if not root.is_dir():
        raise GenforgeError(f"{spec}: {root} is not a folder; "
                            f"give imagefolder:PATH with one subfolder per class")
    split_given = (root / "train").is_dir() and (root / "test").is_dir()
    parts = {"train": _class_files(root / "train", spec), "test": _class_files(root / "test", spec)} \
        if split_given else {"all": _class_files(root, spec)}
    classes = sorted(set().union(*parts.values()))
    images = {part: [(_open(p, spec), p, classes.index(c)) for c, paths in files.items() for p in paths]
              for part, files in parts.items()}
    everything = [item for items in images.values() for item in items]
    mode = "RGB" if any(img.mode in COLOR_MODES for img, _, _ in everything) else "L"
    size, first = everything[0][0].size, everything[0][1]
    for img, path, _ in everything:
        if img.size != size:
            raise GenforgeError(f"{spec}: {path} is {img.size[0]}x{img.size[1]} but {first} is "
                                f"{size[0]}x{size[1]}; resize all images to one size")

    def stack(items):
        x = np.stack([np.asarray(img.convert(mode), dtype=np.uint8) for img, _, _ in items])
        x = x[:, None] if mode == "L" else x.transpose(0, 3, 1, 2)  # (N, C, H, W)
        return x, np.array([label for _, _, label in items], dtype=np.int64)

    if split_given:
        (train_x, train_y), (test_x, test_y) = stack(images["train"]), stack(images["test"])
        return make_dataset(spec, train_x, train_y, test_x, test_y, classes, str(root))
    x, y = stack(images["all"])
    return split_train_test(spec, x, y, classes, str(root))


def load_csv(spec: str) -> Dataset:
    """A header row; numeric features; the label column is `label`, else the last column."""
    path = Path(spec.split(":", 1)[1]).expanduser()
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise GenforgeError(f"{spec}: cannot read {path} ({e}); give csv:PATH to a readable CSV file") \
            from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if len(rows) < 2 or len(rows[0]) < 2:
        raise GenforgeError(f"{spec}: {path} needs a header row, data rows and at least 2 columns "
                            f"(features and a `label` column)")
    header = [h.strip() for h in rows[0]]
    label_col = header.index("label") if "label" in header else len(header) - 1
    features, labels = np.empty((len(rows) - 1, len(header) - 1), dtype=np.float32), []
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise GenforgeError(f"{spec}: line {i} of {path} has {len(row)} fields, "
                                f"the header has {len(header)}; fix that line")
        label = row[label_col].strip()
        if not label:
            raise GenforgeError(f"{spec}: line {i} of {path} has an empty label; give every row a label")
        labels.append(label)
        values = row[:label_col] + row[label_col + 1:]
        try:
            features[i - 2] = [float(v) for v in values]
        except ValueError:
            col = next(j for j, v in enumerate(values) if not _is_float(v))
            name = (header[:label_col] + header[label_col + 1:])[col]
            raise GenforgeError(f"{spec}: line {i} of {path}, column {name!r} is {values[col]!r}, "
                                f"not a number; features must be numeric (name the label column `label`)") \
                from None
    try:
        keys = sorted({int(v) for v in labels})  # integer labels sort numerically
        index = {str(k): j for j, k in enumerate(keys)}
        y = np.array([index[str(int(v))] for v in labels], dtype=np.int64)
    except ValueError:
        keys = sorted(set(labels))
        index = {k: j for j, k in enumerate(keys)}
        y = np.array([index[v] for v in labels], dtype=np.int64)
    if len(keys) < 2:
        raise GenforgeError(f"{spec}: {path} has only one class ({keys[0]!r}) in column "
                            f"{header[label_col]!r}; a classifier needs at least 2")
    return split_train_test(spec, features, y, [str(k) for k in keys], str(path))


def _is_float(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False
