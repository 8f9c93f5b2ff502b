"""Datasets by name: sources (download, verify, cache), IDX parsing, splits and the cleaning report.

Names: mnist, fashion-mnist, kmnist (IDX files: local, else downloaded), mnist-5k, digits, blobs, moons
(no download), imagefolder:PATH and csv:PATH (your own data)."""

from __future__ import annotations

from pathlib import Path

from genforge.data.builtin import BUILTIN
from genforge.data.dataset import Dataset, select_classes
from genforge.data.files import load_csv, load_imagefolder
from genforge.data.idx_datasets import IDX_DATASETS, load_idx_dataset
from genforge.data.info import data_info
from genforge.data.splits import labelled_subset, split_validation, stratified_kfold
from genforge.errors import GenforgeError

__all__ = ["Dataset", "load_dataset", "dataset_names", "data_info", "split_validation", "stratified_kfold",
           "select_classes", "labelled_subset"]


def dataset_names() -> list[str]:
    """The named datasets; imagefolder:PATH and csv:PATH load your own files."""
    return sorted([*IDX_DATASETS, *BUILTIN])


def load_dataset(name: str, data_dir: str | Path | None = None, seed: int = 0,
                 progress: bool = True, image_size: tuple[int, int] | None = None) -> Dataset:
    """Load a dataset into memory. seed only changes generated data (blobs, moons); test splits are fixed.
    image_size (H, W): what an imagefolder's images are resized to (default: the most common size among them)."""
    prefix = name.split(":", 1)[0] if ":" in name else None  # of "prefix:PATH", a user's own files
    if image_size is not None and prefix != "imagefolder":
        raise GenforgeError(f"data.image_size resizes imagefolder:PATH images; {name} has its own fixed shape: "
                            f"remove data.image_size")
    if prefix == "imagefolder":
        return load_imagefolder(name, image_size)
    if prefix == "csv":
        return load_csv(name)
    if name in IDX_DATASETS:
        return load_idx_dataset(name, data_dir, progress)
    if name in BUILTIN:
        return BUILTIN[name](seed)
    if prefix in ("series", "csv-series"):
        raise GenforgeError(f"{name} is a time series: forecast it with model.kind=rnn or a baseline kind (naive, "
                            f"seasonal-naive, drift, season-mean), e.g. genforge train series-lstm data.name={name}")
    raise GenforgeError(f"unknown dataset {name!r}; choose one of {', '.join(dataset_names())}, "
                        f"or imagefolder:PATH / csv:PATH for your own files")
