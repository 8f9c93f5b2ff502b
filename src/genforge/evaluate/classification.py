"""Classifier evaluation: pure functions of (model, data). Training and `genforge evaluate` share them."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from genforge.models.layers import device_of

HIGHEST_LOSSES = 12  # items listed by evaluate, highest loss first: the report shows them (fastai's "top losses")


@torch.inference_mode()
def predict_proba(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """(N, classes) probabilities for raw inputs, in batches, on the model's device."""
    model.eval()
    device = device_of(model)
    out = [model.probabilities(model(x[i : i + batch_size].to(device))).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out)


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: list[str]) -> dict:
    """Accuracy, loss, per-class precision/recall/F1, the confusion matrix (rows: true class) and the items with the
    highest loss (indices into x)."""
    probs = predict_proba(model, x)
    y = y.cpu()
    k = len(classes)
    pred = probs.argmax(1)
    confusion = torch.bincount(y * k + pred, minlength=k * k).reshape(k, k)
    tp = confusion.diag().float()
    precision = tp / confusion.sum(0).clamp_min(1)
    recall = tp / confusion.sum(1).clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    nll = -probs.gather(1, y[:, None]).clamp_min(1e-12).log()[:, 0]  # (N,) cross-entropy of each item
    worst = nll.topk(min(HIGHEST_LOSSES, len(y)))
    return {
        "accuracy": (pred == y).float().mean().item(),
        "loss": nll.mean().item(),
        "macro_f1": f1.mean().item(),
        "per_class": {c: {"precision": p, "recall": r, "f1": f}
                      for c, p, r, f in zip(classes, precision.tolist(), recall.tolist(), f1.tolist())},
        "confusion_matrix": confusion.tolist(),
        "highest_loss": {"index": worst.indices.tolist(), "loss": worst.values.tolist()},  # the report's mistakes
        "n": len(y),
    }


@torch.inference_mode()
def measure_speed(model: nn.Module, example: torch.Tensor, repeats: int = 30) -> dict:
    """Batch-1 latency (median ms) and batch-256 throughput (items/s) on the model's device."""
    model.eval()
    device = device_of(model)
    one = example[:1].to(device)
    big = example[:1].expand(256, *example.shape[1:]).contiguous().to(device)

    def timed(batch: torch.Tensor, n: int) -> list[float]:
        model(batch)  # warm-up
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            model(batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return times

    latency = statistics.median(timed(one, repeats))
    per_batch = statistics.median(timed(big, max(3, repeats // 5)))
    return {"latency_ms_b1": latency * 1000, "throughput_b256": 256 / per_batch}
