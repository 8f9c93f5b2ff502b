"""IDX datasets: the real system copy, downloads from a local mirror, and corrupt files."""

import gzip

import numpy as np
import pytest
import torch
from idx_helpers import TINY, idx_bytes, write_tiny_idx

from genforge.data import download, load_dataset
from genforge.data.idx_datasets import FILES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS
from genforge.errors import GenforgeError

DEAD = "http://127.0.0.1:1/"  # nothing listens on port 1: connection refused at once


def leftovers(folder):
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".part")


def test_fashion_mnist_from_system_copy(fashion_available, cache_dir):
    ds = load_dataset("fashion-mnist", progress=False)
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    assert set(ds.train_y.tolist()) == set(range(10)) and ds.test_y.max() == 9
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    assert ds.source == "/usr/share/datasets/fashion-mnist" and len(ds.checksum) == 64
    assert ds.is_image and ds.input_shape == (1, 28, 28)
    assert not cache_dir.exists()  # found locally: nothing downloaded


def test_download_verifies_and_caches(http_mirror, tiny_spec, cache_dir):
    url, _, md5 = http_mirror
    tiny_spec([url], md5)
    ds = load_dataset(TINY, progress=True)
    assert ds.train_x.shape == (20, 1, 28, 28) and ds.test_x.shape == (10, 1, 28, 28)
    assert ds.train_y.tolist() == [i % 10 for i in range(20)]
    assert ds.source == url
    assert sorted(p.name for p in (cache_dir / TINY).iterdir()) == sorted(FILES)
    again = load_dataset(TINY, progress=False)  # now from the cache, same data
    assert again.source == str(cache_dir / TINY) and again.checksum == ds.checksum


def test_bad_checksum_leaves_nothing_behind(http_mirror, tiny_spec, cache_dir):
    url, _, md5 = http_mirror
    tiny_spec([url], {**md5, TRAIN_LABELS: "0" * 32})
    with pytest.raises(GenforgeError) as e:
        load_dataset(TINY, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and TINY in msg and TRAIN_LABELS in msg and "md5" in msg and "--data-dir" in msg
    folder = cache_dir / TINY
    assert not (folder / TRAIN_LABELS).exists() and leftovers(folder) == []


def test_dead_mirror_then_good_one(http_mirror, tiny_spec, cache_dir):
    url, _, md5 = http_mirror
    tiny_spec([DEAD, url + "missing/", url], md5)  # refused, then HTTP 404, then good
    ds = load_dataset(TINY, progress=False)
    assert len(ds.train_y) == 20 and ds.source == url


def test_all_mirrors_dead(tiny_spec, cache_dir):
    tiny_spec([DEAD])
    with pytest.raises(GenforgeError, match="mnist-5k") as e:
        load_dataset(TINY, progress=False)
    assert "\n" not in str(e.value) and DEAD in str(e.value)
    assert leftovers(cache_dir) == []


def test_interrupted_download_removes_temp_file(http_mirror, tiny_spec, cache_dir, monkeypatch):
    url, _, md5 = http_mirror
    tiny_spec([url], md5)

    def interrupted(url, out, progress):
        out.write(b"partial")
        raise KeyboardInterrupt
    monkeypatch.setattr(download, "_stream", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_dataset(TINY, progress=False)
    assert list((cache_dir / TINY).iterdir()) == []


def test_data_dir_wins_and_is_never_deleted(tmp_path, tiny_spec, cache_dir):
    tiny_spec([DEAD])
    write_tiny_idx(tmp_path / "mine")  # files directly in data_dir, not in a subfolder
    ds = load_dataset(TINY, data_dir=tmp_path / "mine", progress=False)
    assert len(ds.train_y) == 20 and ds.source == str(tmp_path / "mine")
    (tmp_path / "mine" / TRAIN_IMAGES).write_bytes(b"junk")
    with pytest.raises(GenforgeError, match=TRAIN_IMAGES):
        load_dataset(TINY, data_dir=tmp_path / "mine", progress=False)
    assert (tmp_path / "mine" / TRAIN_IMAGES).exists()  # the user's file: reported, not deleted


def test_a_dataset_read_again_is_not_parsed_again_until_its_files_change(tmp_path, tiny_spec, cache_dir):
    tiny_spec([DEAD])
    write_tiny_idx(tmp_path / "mine", n_train=20)
    first = load_dataset(TINY, data_dir=tmp_path / "mine", progress=False)
    again = load_dataset(TINY, data_dir=tmp_path / "mine", progress=False)
    assert again is not first and again.train_x is first.train_x and again.checksum == first.checksum
    write_tiny_idx(tmp_path / "mine", n_train=30)  # new files at the same paths: read anew
    changed = load_dataset(TINY, data_dir=tmp_path / "mine", progress=False)
    assert len(changed.train_y) == 30 and changed.checksum != first.checksum


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _bad_magic(data: bytes) -> bytes:
    raw = bytearray(gzip.decompress(data))
    raw[3] = 0x04
    return gzip.compress(bytes(raw))


def _label_11(data: bytes) -> bytes:
    return idx_bytes(np.array([11] * 10), 0x801)


def _short_by_one(data: bytes) -> bytes:
    return gzip.compress(gzip.decompress(data)[:-1])


@pytest.mark.parametrize(("name", "corrupt", "words"), [
    (TRAIN_IMAGES, _truncated, "gzip"),
    (TRAIN_IMAGES, _bad_magic, "magic"),
    (TEST_LABELS, _label_11, "label 11"),
    (TRAIN_IMAGES, _short_by_one, "bytes"),
])
def test_corrupt_cached_file_is_reported_and_removed(tiny_spec, cache_dir, name, corrupt, words):
    tiny_spec([DEAD])
    folder = cache_dir / TINY
    write_tiny_idx(folder)
    (folder / name).write_bytes(corrupt((folder / name).read_bytes()))
    with pytest.raises(GenforgeError) as e:
        load_dataset(TINY, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and name in msg and words in msg and "re-run" in msg
    assert not (folder / name).exists()
    assert len(list(folder.iterdir())) == 3  # the good files stay


def test_unknown_dataset():
    with pytest.raises(GenforgeError, match="fashion-mnist"):
        load_dataset("nope")


@pytest.mark.parametrize(("corrupt", "words"), [(_truncated, "gzip"), (_bad_magic, "magic"), (_short_by_one, "bytes")])
def test_cli_corrupt_cache_exits_2_with_one_line_and_cleans_up(cache_dir, corrupt, words, capsys, monkeypatch):
    """Through the real command line: a corrupt file in the cache (checked before the system copy)."""
    from helpers import run_cli

    folder = cache_dir / "fashion-mnist"
    write_tiny_idx(folder)
    (folder / TRAIN_IMAGES).write_bytes(corrupt((folder / TRAIN_IMAGES).read_bytes()))
    code, _, err = run_cli(capsys, monkeypatch, "data", "info", "fashion-mnist")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: fashion-mnist:") and words in lines[0]
    assert "Traceback" not in err
    assert not (folder / TRAIN_IMAGES).exists() and leftovers(folder) == []
