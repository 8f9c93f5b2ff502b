"""Whether attributions explain the model: deletion and insertion curves (Petsiuk et al. 2018) against a random and
an edge-detector ordering, and the model-randomization sanity check (Adebayo et al. 2018).

`faithfulness(model, x)` is what `genforge evaluate RUN --explain` and bench/explain_faithfulness.py report."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from genforge.explain import METHODS, Explainer, pixel_map
from genforge.models.layers import device_of

SANITY_MAX = 0.2  # a method passes when |rank correlation| of its absolute maps after full randomization is below
OBJECT_LEVEL = 0.05  # pixels brighter than this (0-1) are the object's, where rank correlations are taken
PROGRESS_CHUNK = 128  # inputs per attribution call in faithfulness(), so its progress moves (a multiple of the
# explainer's own chunks: gradient-shap's noise, drawn afresh per chunk, stays what one call would draw)


def orderings(x: torch.Tensor, attributions: torch.Tensor) -> torch.Tensor:
    """(N, H*W) pixel indices from the most to the least positive attribution (summed over channels)."""
    return pixel_map(attributions).flatten(1).argsort(dim=1, descending=True, stable=True)


def random_orderings(x: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n, p = len(x), x.shape[-2] * x.shape[-1]
    return torch.stack([torch.randperm(p, generator=g) for _ in range(n)])


def edge_orderings(x: torch.Tensor) -> torch.Tensor:
    """Pixels by the magnitude of the image's Sobel gradient: where an edge detector, knowing nothing of the model,
    would look."""
    gray = x.float().mean(1, keepdim=True)  # (N, 1, H, W)
    kx = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]])
    k = torch.stack([kx, kx.T])[:, None]  # (2, 1, 3, 3)
    g = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), k)
    return orderings(x, g.pow(2).sum(1, keepdim=True).sqrt())


@torch.no_grad()
def curves(model: nn.Module, x: torch.Tensor, target: torch.Tensor, order: torch.Tensor, steps: int = 28,
           chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The probability of `target` as pixels are removed (deletion: set to black, in `order`) and added (insertion:
    from a black image, in `order`), at steps + 1 evenly spaced fractions: two (N, steps + 1) tensors."""
    model.eval()
    device = device_of(model)
    n, c, h, w = x.shape
    rank = order.argsort(dim=1)  # (N, H*W): the position of each pixel in the order
    cut = torch.linspace(0, h * w, steps + 1).round()  # pixels removed (or added) at each step
    deletion, insertion = [], []
    for i in range(0, n, chunk):
        xs, r, t = x[i : i + chunk].float(), rank[i : i + chunk], target[i : i + chunk]
        shown = (r[None] < cut[:, None, None]).reshape(steps + 1, len(xs), 1, h, w)  # (S+1, n, 1, H, W)
        for inserted, out in ((False, deletion), (True, insertion)):
            keep = shown if inserted else ~shown
            batch = (xs[None] * keep).flatten(0, 1)  # (S+1 n, C, H, W)
            p = model.probabilities(model(batch.to(device))).cpu().reshape(steps + 1, len(xs), -1)
            out.append(p.gather(2, t[None, :, None].expand(steps + 1, -1, 1))[..., 0].T)  # (n, S+1)
    return torch.cat(deletion), torch.cat(insertion)


def area(curve: torch.Tensor) -> float:
    """Area under the mean curve over the fraction of pixels, 0 to 1 (trapezoid rule)."""
    return torch.trapezoid(curve.mean(0), dx=1 / (curve.shape[1] - 1)).item()


def _ranks(v: torch.Tensor) -> torch.Tensor:
    return v.argsort().argsort().float()


def rank_correlation(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """Mean over images of Spearman's rho between two (N, H, W) maps over the masked pixels: (signed, absolute)."""
    signed, absolute = [], []
    for ai, bi, mi in zip(a, b, mask):
        if mi.sum() < 3:
            continue
        for u, v, out in ((ai[mi], bi[mi], signed), (ai[mi].abs(), bi[mi].abs(), absolute)):
            ru, rv = _ranks(u), _ranks(v)
            ru, rv = ru - ru.mean(), rv - rv.mean()
            out.append((ru @ rv / (ru.norm() * rv.norm()).clamp_min(1e-12)).item())
    return sum(signed) / max(len(signed), 1), sum(absolute) / max(len(absolute), 1)


NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)


def layers_top_down(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """The layers with learned parameters, from the output back to the input (the cascade's order); a norm layer
    goes with the layer it normalizes."""
    groups: list[tuple[str, list[nn.Module]]] = []
    for name, m in model.net.named_modules():
        if not list(m.parameters(recurse=False)):
            continue
        if isinstance(m, NORMS) and groups:
            groups[-1][1].append(m)
        else:
            groups.append((name, [m]))
    return groups[::-1]


def randomized(model: nn.Module, upto: int, seed: int) -> nn.Module:
    """A copy of the model with its `upto` top layers re-initialized (fresh random weights, norms reset)."""
    clone = copy.deepcopy(model)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for _, group in layers_top_down(clone)[:upto]:
            for m in group:
                m.reset_parameters()
                if hasattr(m, "reset_running_stats"):
                    m.reset_running_stats()
    return clone.eval()


def sanity_check(model: nn.Module, x: torch.Tensor, method: str, target: torch.Tensor, seed: int = 0,
                 original: torch.Tensor | None = None, done: Callable[[], None] | None = None) -> list[dict]:
    """Cascading randomization: after re-initializing each further layer from the top, Spearman's rho between the
    original and the new attributions (of the same classes), over the object's pixels. The last row is the fully
    randomized model. done() is called after each layer."""
    shape = tuple(x.shape[1:])
    if original is None:
        original = Explainer(model, shape)(x, method, target).attributions
    mask = x.float().amax(1) / 255 > OBJECT_LEVEL
    rows = []
    for k, (name, _) in enumerate(layers_top_down(model), start=1):
        a = Explainer(randomized(model, k, seed), shape)(x, method, target).attributions
        signed, absolute = rank_correlation(pixel_map(original), pixel_map(a), mask)
        rows.append({"randomized_down_to": name, "spearman": signed, "spearman_abs": absolute})
        if done:
            done()
    return rows


def faithfulness(model: nn.Module, x: torch.Tensor, methods=METHODS, seed: int = 0, sanity_examples: int = 100,
                 steps: int = 28, progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Every method's deletion and insertion areas (and their ratio to the random ordering's), beside the random and
    edge-detector orderings, and its sanity check on the first `sanity_examples` inputs. Explains the predicted
    class. x: raw uint8 images (N, C, H, W). progress(what, done, total) follows the work in units of about equal
    cost: a chunk of attributions, a method's curves, a layer of its cascade."""
    explainer = Explainer(model, tuple(x.shape[1:]))
    scored = [m for m in methods if m != "grad-cam" or explainer.layer is not None]
    chunks = range(0, len(x), PROGRESS_CHUNK)
    total, count = 1 + len(scored) * (len(chunks) + 1 + len(layers_top_down(model))), 0

    def tick(what: str) -> None:
        nonlocal count
        count += 1
        if progress:
            progress(what, count, total)

    with torch.no_grad():
        target = model.probabilities(model(x.float().to(device_of(model)))).argmax(1).cpu()
    results: dict[str, dict] = {}
    reference = {"random": random_orderings(x, seed), "edge detector": edge_orderings(x)}
    for name, order in reference.items():
        deletion, insertion = curves(model, x, target, order, steps)
        results[name] = {"deletion_auc": area(deletion), "insertion_auc": area(insertion)}
    tick("random and edge orderings")
    for method in scored:
        parts = []
        for i in chunks:
            parts.append(explainer(x[i : i + PROGRESS_CHUNK], method, target[i : i + PROGRESS_CHUNK]).attributions)
            tick(f"{method}: attributions")
        a = torch.cat(parts)
        deletion, insertion = curves(model, x, target, orderings(x, a), steps)
        tick(f"{method}: deletion and insertion")
        row = {"deletion_auc": area(deletion), "insertion_auc": area(insertion)}
        k = min(sanity_examples, len(x))
        cascade = sanity_check(model, x[:k], method, target[:k], seed, a[:k],
                               done=lambda method=method: tick(f"{method}: randomization"))
        row.update(sanity=cascade, spearman_full=cascade[-1]["spearman"],
                   spearman_abs_full=cascade[-1]["spearman_abs"],
                   passes_sanity=abs(cascade[-1]["spearman_abs"]) <= SANITY_MAX)
        results[method] = row
    for row in results.values():
        row["deletion_vs_random"] = row["deletion_auc"] / results["random"]["deletion_auc"]
        row["insertion_vs_random"] = row["insertion_auc"] / results["random"]["insertion_auc"]
    passing = [m for m in methods if m in results and results[m]["passes_sanity"]]
    best = max(passing, key=lambda m: results[m]["insertion_auc"] - results[m]["deletion_auc"], default=None)
    return {"methods": results, "most_faithful_passing": best, "examples": len(x), "precision": explainer.precision,
            "sanity_examples": min(sanity_examples, len(x)), "seed": seed, "steps": steps,
            "sanity_max": SANITY_MAX, "object_level": OBJECT_LEVEL}
