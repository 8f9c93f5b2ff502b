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
