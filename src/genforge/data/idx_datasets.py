"""MNIST-style datasets (4 IDX .gz files): find them locally, else download from mirrors, then validate."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from genforge.data.dataset import Dataset, make_dataset
from genforge.data.download import download
from genforge.data.idx import BadFile, read_idx_pair
from genforge.errors import GenforgeError

TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"
FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)


@dataclass(frozen=True)
class IdxSpec:
    classes: tuple[str, ...]
    mirrors: tuple[str, ...]  # base URLs, tried in order; a file's URL is mirror + "/" + filename
    md5: dict[str, str]  # filename -> md5 of the published .gz (torchvision's values)
    system_dir: str | None = None  # a read-only copy some machines ship


# The registry of IDX datasets. Tests override mirrors and md5s with
# monkeypatch.setitem(IDX_DATASETS, name, IdxSpec(...)); nothing else changes it.
IDX_DATASETS: dict[str, IdxSpec] = {
    "mnist": IdxSpec(
        classes=tuple(str(i) for i in range(10)),
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        md5=dict(zip(FILES, ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                             "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"))),
    ),
    "fashion-mnist": IdxSpec(
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        # the published files; the system copy is re-gzipped (no name in the gzip header) so its md5s differ
        md5=dict(zip(FILES, ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                             "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"))),
        system_dir="/usr/share/datasets/fashion-mnist",
    ),
    "kmnist": IdxSpec(
        classes=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
        mirrors=("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
        md5=dict(zip(FILES, ("bdb82020997e1d708af4cf47b453dcf7", "e144d726b3acfaa3e44228e80efcd344",
                             "5c965bf0a639b31b8f53240b1b52f4d7", "7320c461ea6c1c855c0b718fb2a4b134"))),
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("GENFORGE_CACHE") or Path.home() / ".cache" / "genforge").expanduser()


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def load_idx_dataset(name: str, data_dir: str | Path | None, progress: bool) -> Dataset:
    """Look in data_dir (else GENFORGE_DATA, else the cache), then the system copy, then download."""
    spec = IDX_DATASETS[name]
    user_dir = data_dir or os.environ.get("GENFORGE_DATA")
    if user_dir:
        base = Path(user_dir).expanduser()
        target, candidates = base / name, [base / name, base]  # the files may sit in data_dir itself
    else:
        target = cache_dir() / name
        candidates = [target]
    if spec.system_dir:
        candidates.append(Path(spec.system_dir))
    for folder in candidates:
        if all((folder / f).is_file() for f in FILES):
            in_cache = not user_dir and folder == target
            return _read(name, spec, folder, str(folder), owned=set(FILES) if in_cache else set())

    owned, source = set(), str(target)  # files this call wrote: a bad one is deleted, never left behind
    for f in FILES:
        if (target / f).is_file():
            if not user_dir:
                owned.add(f)
            continue
        path, mirror, failures = download(f, list(spec.mirrors), spec.md5.get(f), target, progress)
        if path is None:
            if target.is_dir() and not any(target.iterdir()):
                target.rmdir()  # leave no empty folder behind either
            looked = ", ".join(str(c) for c in candidates)
            raise GenforgeError(_one_line(
                f"{name}: {f} is not in {looked} and every mirror failed ({'; '.join(failures)}); "
                f"download the 4 files by hand into a folder and pass --data-dir (or set GENFORGE_DATA), "
                f"or use the offline dataset mnist-5k"))
        owned.add(f)
        source = mirror
    return _read(name, spec, target, source, owned)


# The datasets this process read last, by the identity of their files (path, inode, size, times): a process that
# asks again (an export's parity batches, a compressed child's comparison, an evaluation after training) gets the
# same tensors without the 0.4 s of parsing and hashing Fashion-MNIST again. Two at most (55 MB each); the tensors are
# shared, and nothing in genforge writes into a dataset's tensors.
_READ: dict[tuple, Dataset] = {}
_KEPT = 2


def _identity(path: Path) -> tuple:
    st = path.stat()
    return str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _read(name: str, spec: IdxSpec, folder: Path, source: str, owned: set[str]) -> Dataset:
    """The 4 files parsed and validated (or, unchanged since this process read them, the same tensors again); a bad
    file that genforge put there itself is deleted."""
    key = (name, source, *(_identity(folder / f) for f in FILES))
    if key in _READ:
        return dataclasses.replace(_READ[key], found={})
    ds = _parse(name, spec, folder, source, owned)
    while len(_READ) >= _KEPT:
        del _READ[next(iter(_READ))]
    _READ[key] = ds
    return dataclasses.replace(ds, found={})


def _parse(name: str, spec: IdxSpec, folder: Path, source: str, owned: set[str]) -> Dataset:
    try:
        train_x, train_y = read_idx_pair(folder / TRAIN_IMAGES, folder / TRAIN_LABELS, len(spec.classes))
        test_x, test_y = read_idx_pair(folder / TEST_IMAGES, folder / TEST_LABELS, len(spec.classes))
    except BadFile as e:
        if e.path.name in owned:
            e.path.unlink(missing_ok=True)
            fix = "it was removed from the cache; re-run to download it again, or use --data-dir"
        else:
            fix = "replace it with a good copy (or delete it to download again), or use --data-dir"
        raise GenforgeError(_one_line(f"{name}: {e}; {fix}")) from None
    if train_x.shape[1:] != test_x.shape[1:]:
        train_hw, test_hw = train_x.shape[2:], test_x.shape[2:]
        raise GenforgeError(f"{name}: train images are {train_hw} but test images {test_hw} in {folder}; "
                            f"the files come from different datasets, replace them")
    return make_dataset(name, train_x, train_y, test_x, test_y, spec.classes, source)
