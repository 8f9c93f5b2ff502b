import pytest
import torch

from genforge.data import split_validation, stratified_kfold
from genforge.errors import GenforgeError

LABELS = torch.arange(1000) % 4  # 250 per class


def test_split_is_disjoint_covering_seeded():
    train, val = split_validation(1000, 0.1, seed=0)
    assert train.dtype == val.dtype == torch.int64 and len(val) == 100
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(1000))
    again = split_validation(1000, 0.1, seed=0)
    assert torch.equal(again[1], val) and not torch.equal(split_validation(1000, 0.1, seed=1)[1], val)


def test_split_stratified():
    train, val = split_validation(1000, 0.2, 0, LABELS)
    assert torch.bincount(LABELS[val]).tolist() == [50] * 4
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(1000))
    assert torch.bincount(LABELS[train[:100]]).min() > 10  # shuffled across classes, not class-sorted


def test_split_zero_and_bad_fraction():
    train, val = split_validation(10, 0.0, 0)
    assert len(train) == 10 and len(val) == 0
    with pytest.raises(GenforgeError, match="val_fraction"):
        split_validation(10, 1.0, 0)


def test_kfold_disjoint_covering_stratified():
    folds = stratified_kfold(LABELS, 5, seed=0)
    assert len(folds) == 5
    vals = torch.cat([va for _, va in folds])
    assert vals.dtype == torch.int64 and torch.equal(vals.sort().values, torch.arange(1000))
    for tr, va in folds:
        assert len(set(tr.tolist()) & set(va.tolist())) == 0 and len(tr) + len(va) == 1000
        assert torch.bincount(LABELS[va]).tolist() == [50] * 4
    with pytest.raises(GenforgeError, match="folds"):
        stratified_kfold(LABELS, 1, 0)


def test_test_subset_scores_the_first_test_examples_of_the_same_dataset():
    from genforge.config import load_config
    from genforge.registry import MODELS

    cfg = load_config("blobs-logreg", ["data.test_subset=100"])
    task = MODELS[cfg.model.kind].task
    whole, few = task.dataset(load_config("blobs-logreg")), task.dataset(cfg)
    assert torch.equal(few.test_x, whole.test_x[:100]) and torch.equal(few.test_y, whole.test_y[:100])
    assert torch.equal(few.train_x, whole.train_x) and few.checksum == whole.checksum  # the dataset, fewer scored
