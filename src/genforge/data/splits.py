"""Seeded index splits: a validation hold-out and stratified k-fold. Indices are int64 tensors."""

from __future__ import annotations

import numpy as np
import torch

from genforge.errors import GenforgeError


def split_validation(n: int, val_fraction: float, seed: int,
                     labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_idx, val_idx), both shuffled. Stratified when labels are given: each class keeps its share."""
    if not 0 <= val_fraction < 1:
        raise GenforgeError(f"val_fraction={val_fraction} must be in [0, 1); e.g. data.val_fraction=0.1")
    g = torch.Generator().manual_seed(seed)
    if labels is None:
        perm = torch.randperm(n, generator=g)
        n_val = round(n * val_fraction)
        return perm[n_val:], perm[:n_val]
    labels = torch.as_tensor(labels)
    if len(labels) != n:
        raise ValueError(f"split_validation: n={n} but {len(labels)} labels")
    train_parts, val_parts = [], []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = round(len(idx) * val_fraction)
        val_parts.append(idx[:n_val])
        train_parts.append(idx[n_val:])
    train, val = torch.cat(train_parts), torch.cat(val_parts)
    # shuffle across classes too, so that train_idx[:k] is a fair sample
    return train[torch.randperm(len(train), generator=g)], val[torch.randperm(len(val), generator=g)]


def stratified_kfold(labels: torch.Tensor, folds: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(train_idx, val_idx)] for each of `folds` folds; every index is in exactly one val fold."""
    y = torch.as_tensor(labels).cpu().numpy()
    counts = np.bincount(y)
    smallest = int(counts[counts > 0].min()) if len(y) else 0
    if not 2 <= folds <= smallest:  # every fold holds at least one sample of every class
        raise GenforgeError(f"folds={folds} must be between 2 and the size of the smallest class ({smallest})")
    from sklearn.model_selection import StratifiedKFold  # deferred: 1.5 s of import that only cv pays

    kfold = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(torch.from_numpy(tr.astype(np.int64)), torch.from_numpy(va.astype(np.int64)))
            for tr, va in kfold.split(np.zeros(len(y)), y)]


def labelled_subset(labels: torch.Tensor, per_class: int, seed: int, classes: list[str]) -> torch.Tensor:
    """`per_class` random indices of each class (seeded), shuffled across classes: a few-label training set. A larger
    budget with the same seed holds a smaller one (the first `per_class` of one fixed order per class)."""
    g = torch.Generator().manual_seed(seed)
    parts = []
    for c, name in enumerate(classes):
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) < per_class:
            raise GenforgeError(f"data.labels_per_class={per_class}: class {name!r} has only {len(idx)} training "
                                f"images; lower it")
        parts.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    chosen = torch.cat(parts)
    return chosen[torch.randperm(len(chosen), generator=g)]
