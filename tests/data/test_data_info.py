import json
import time

import torch

from genforge.data import data_info, load_dataset
from genforge.data.dataset import make_dataset


def test_report_finds_duplicates_and_constant_images():
    g = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8, generator=g)
    test = torch.randint(0, 256, (4, 1, 4, 4), dtype=torch.uint8, generator=g)
    train[3] = train[7]  # a duplicate within train
    train[5] = 9  # a constant image
    test[0] = train[1]  # a test image leaked from train
    train_y, test_y = torch.arange(10) % 2, torch.tensor([0, 1, 1, 1])
    ds = make_dataset("toy", train, train_y, test, test_y, ["a", "b"], "synthetic")
    info = data_info(ds)
    json.dumps(info)
    assert info["duplicates"] == {"within_train": 1, "test_in_train": 1}
    assert info["constant_images"] == {"train": 1, "test": 0}
    assert info["class_counts"] == {"train": {"a": 5, "b": 5}, "test": {"a": 1, "b": 3}}
    assert info["n_train"] == 10 and info["n_test"] == 4 and info["input_shape"] == [1, 4, 4]
    px = info["pixels"]
    assert px["mean"] == train.float().mean().item() and abs(px["mean_01"] - px["mean"] / 255) < 1e-9
    assert px["min"] == float(train.min()) and px["max"] == float(train.max())


def test_report_on_fashion_is_fast(fashion_available, cache_dir):
    ds = load_dataset("fashion-mnist", progress=False)
    start = time.perf_counter()
    info = data_info(ds)
    assert time.perf_counter() - start < 3
    assert sum(info["class_counts"]["train"].values()) == 60000
    assert 0.2 < info["pixels"]["mean_01"] < 0.4


def test_report_on_tabular():
    info = data_info(load_dataset("blobs"))
    json.dumps(info)
    assert "features" in info and info["constant_images"]["train"] == 0
