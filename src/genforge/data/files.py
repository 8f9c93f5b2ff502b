"""User data: `imagefolder:PATH` (one subfolder per class) and `csv:PATH` (features + a `label` column)."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np

from genforge.data.builtin import split_train_test
from genforge.data.dataset import Dataset, make_dataset
from genforge.data.images import MAX_SIDE, displayed_size, is_color, open_image, to_pixels
from genforge.errors import GenforgeError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
FLOAT32_MAX = float(np.finfo(np.float32).max)  # 3.4e38: features are float32, a larger value would become inf


def _class_files(root: Path, name: str) -> dict[str, list[Path]]:
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not dirs:
        raise GenforgeError(f"{name}: {root} has no class subfolders; "
                            f"put each class's images in {root}/<class>/")
    files = {}
    for d in dirs:  # hidden files skipped like hidden folders: macOS' ._x.png companions are not images
        files[d.name] = sorted(p for p in d.iterdir()
                               if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        if not files[d.name]:
            raise GenforgeError(f"{name}: class folder {d} has no PNG or JPEG files; add images or remove it")
    return files


def _size_text(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"  # height x width, the order of data.image_size and input_shape


def load_imagefolder(spec: str, image_size: tuple[int, int] | None = None) -> Dataset:
    """PATH/<class>/*.png, or PATH/train/<class>/ and PATH/test/<class>/ for a given split. Every image is resized
    to image_size (H, W), by default the most common size in the folder (images/RESAMPLE: the filter)."""
    root = Path(spec.split(":", 1)[1]).expanduser()
    if not root.is_dir():
        raise GenforgeError(f"{spec}: {root} is not a folder; "
                            f"give imagefolder:PATH with one subfolder per class")
    split_given = (root / "train").is_dir() and (root / "test").is_dir()
    parts = {"train": _class_files(root / "train", spec), "test": _class_files(root / "test", spec)} \
        if split_given else {"all": _class_files(root, spec)}
    classes = sorted(set().union(*parts.values()))
    items = {part: [(p, classes.index(c)) for c, paths in files.items() for p in paths]
             for part, files in parts.items()}
    # two passes, so that only one decoded image is in memory at a time (a folder of 12 MP photos would not fit):
    # the headers decide the size and the channels, then each image is decoded straight into the batch
    headers = {}
    for path, _ in (item for part in items.values() for item in part):
        with open_image(path, spec) as im:
            headers[path] = (displayed_size(im), im.mode, is_color(im))  # a portrait photo: portrait
    sizes = Counter(size for size, _, _ in headers.values())
    target = tuple(image_size) if image_size else max(sizes, key=lambda s: (sizes[s], s))  # ties: the larger
    if max(target) > MAX_SIDE:  # the default; a given image_size was bounded by the config. The run's config.yaml
        # records the size it chose, and the config would refuse it on loading
        h, w = (max(1, round(side * 256 / max(target))) for side in target)  # the shape, 256 on its longer side
        raise GenforgeError(f"{spec}: most images are {_size_text(target)}, past the {MAX_SIDE} pixels per side a "
                            f"model takes; set data.image_size=[H,W] to resize them, e.g. [{h}, {w}]")
    mode = "RGB" if any(color for _, _, color in headers.values()) else "L"

    def stack(part):
        x = np.empty((len(part), *target, *((3,) if mode == "RGB" else ())), dtype=np.uint8)
        for j, (path, _) in enumerate(part):
            with open_image(path, spec) as im:
                try:
                    x[j] = to_pixels(im, mode, target, name=f"{spec}: {path}")
                except (OSError, ValueError) as e:  # a file cut short or corrupt past its header
                    raise GenforgeError(f"{spec}: cannot read image {path} ({e}); fix or remove the file") from None
        x = x[:, None] if mode == "L" else x.transpose(0, 3, 1, 2)  # (N, C, H, W)
        return x, np.array([label for _, label in part], dtype=np.int64)

    if split_given:
        (train_x, train_y), (test_x, test_y) = stack(items["train"]), stack(items["test"])
        ds = make_dataset(spec, train_x, train_y, test_x, test_y, classes, str(root))
    else:
        ds = split_train_test(spec, *stack(items["all"]), classes, str(root))
    ds.found = {"image_sizes": {_size_text(s): n for s, n in sizes.most_common()}, "image_size": list(target),
                "resized": sum(n for s, n in sizes.items() if s != target),
                "image_modes": dict(Counter(m for _, m, _ in headers.values()).most_common())}
    return ds


def _read_rows(spec: str, path: Path) -> list[list[str]]:
    """The CSV's rows. utf-8-sig: a spreadsheet's "CSV UTF-8" starts with a byte-order mark, which plain utf-8 would
    read into the first column's name."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            try:
                return list(reader)
            except csv.Error as e:  # a field past csv.field_size_limit() (an unclosed quote), a NUL byte
                limit = csv.field_size_limit()
                what = (f"a field longer than {limit:,} characters (an unclosed quote?)" if "field limit" in str(e)
                        else str(e))
                raise GenforgeError(f"{spec}: line {reader.line_num} of {path}: {what}; fix that line") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GenforgeError(f"{spec}: cannot read {path} ({e}); give csv:PATH to a readable CSV file") from None


def _cell(value: str, limit: int = 40) -> str:
    """A cell as an error message quotes it: at most `limit` characters (a runaway quote makes a 100,000-char one)."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value):,} characters)"

def _label_column(spec: str, header: list[str]) -> int:
    """The column named `label` (any case). No fallback to another column: a label column picked by position
    turns a feature into hundreds of classes without a word."""
    named = [j for j, h in enumerate(header) if h.lower() == "label"]
    if not named:
        raise GenforgeError(f"{spec}: no `label` column (the columns are {', '.join(header)}); name the column that "
                            f"holds each row's class `label`")
    exact = [j for j in named if header[j] == "label"]
    if len(named) > 1 and len(exact) != 1:
        raise GenforgeError(f"{spec}: {len(named)} columns are named like `label` "
                            f"({', '.join(header[j] for j in named)}); keep one")
    return exact[0] if len(named) > 1 else named[0]


def load_csv(spec: str) -> Dataset:
    """A header row; numeric features, finite and within float32's range; the class of each row in `label`."""
    path = Path(spec.split(":", 1)[1]).expanduser()
    rows = [r for r in _read_rows(spec, path) if any(cell.strip() for cell in r)]
    if len(rows) < 2 or len(rows[0]) < 2:
        raise GenforgeError(f"{spec}: {path} needs a header row, data rows and at least 2 columns "
                            f"(features and a `label` column)")
    header = [h.strip() for h in rows[0]]
    label_col = _label_column(spec, header)
    names = header[:label_col] + header[label_col + 1:]
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
            numbers = [float(v) for v in values]
        except ValueError:
            col = next(j for j, v in enumerate(values) if not _is_float(v))
            raise GenforgeError(f"{spec}: line {i} of {path}, column {names[col]!r} is {_cell(values[col])}, "
                                f"not a number; features must be numeric (name the label column `label`)") \
                from None
        bad = [j for j, v in enumerate(numbers) if not abs(v) <= FLOAT32_MAX]  # inf, nan and 1e39 alike
        if bad:
            col = bad[0]
            raise GenforgeError(f"{spec}: line {i} of {path}, column {names[col]!r} is {_cell(values[col].strip())}: "
                                f"features must be finite numbers within float32's ±{FLOAT32_MAX:.3g} (no inf, "
                                f"no nan: fill or drop missing values)")
        features[i - 2] = numbers
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
    ds = split_train_test(spec, features, y, [str(k) for k in keys], str(path))
    ds.found = {"label_column": header[label_col]}
    return ds


def _is_float(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False
