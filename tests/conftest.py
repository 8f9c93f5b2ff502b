import os

import pytest
import torch

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
torch.set_num_threads(1)  # two threads on two cores are fragile when pytest shares the machine

FASHION = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="session")
def fashion_available() -> bool:
    if not os.path.isdir(FASHION):
        pytest.skip("dataset-fashion-mnist is not installed (apt-get install -y dataset-fashion-mnist)")
    return True


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """An empty cache so no test reads or pollutes ~/.cache/genforge."""
    path = tmp_path / "cache"
    monkeypatch.setenv("GENFORGE_CACHE", str(path))
    monkeypatch.delenv("GENFORGE_DATA", raising=False)
    return path


@pytest.fixture(scope="session")
def evaluator_cache(tmp_path_factory, fashion_available):
    """A private cache holding a cheap Fashion-MNIST evaluator (1 epoch on 8k images), for every test and CLI call
    that scores a generator (pass it as GENFORGE_CACHE): the same lookup-by-checksum path as the full one."""
    from genforge.data import load_dataset
    from genforge.evaluate.features import train_evaluator

    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENFORGE_CACHE", str(cache))
        train_evaluator(load_dataset("fashion-mnist", progress=False),
                        overrides=["data.train_subset=8192", "train.epochs=1", "train.threads=1"])
    return cache
