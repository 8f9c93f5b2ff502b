"""Gradual magnitude pruning on its own: the sparsity schedule, and zeros that survive momentum and the EMA."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from genforge.compress.prune import GradualPruning, magnitude_masks, magnitude_prune
from genforge.train.optim import build_ema


def zero_fraction(module: nn.Module) -> float:
    weights = [m.weight for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 26 * 26, 10))


def test_magnitude_masks_rank_all_layers_together():
    model = net()
    with torch.no_grad():
        model[0].weight.mul_(100)  # the conv's weights are all larger than the linear's: global ranking keeps them
    masks = magnitude_masks([model[0], model[3]], 0.5, score="magnitude")
    assert masks[0].all() and masks[1].mean().item() == pytest.approx(
        1 - 0.5 * (72 + 54080) / 54080, abs=1e-4)


def test_lamp_masks_ignore_each_layers_scale_and_keep_every_layer_alive():
    model = net()
    layers = [model[0], model[3]]
    before = magnitude_masks(layers, 0.9)
    with torch.no_grad():
        model[0].weight.mul_(100)  # what BatchNorm after a conv allows without changing the function
    after = magnitude_masks(layers, 0.9)
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    for layer, mask in zip(layers, after):
        assert mask.flatten()[layer.weight.abs().argmax()] == 1  # a layer's largest weight scores 1
    assert sum(int(m.sum()) for m in after) == round(0.1 * (72 + 54080))
    magnitude_prune(model, 0.5)
    assert zero_fraction(model) == pytest.approx(0.5, abs=1e-4)


def test_the_schedule_ramps_cubically_then_holds():
    schedule = GradualPruning(0.8, ramp=0.5)
    values = [schedule.sparsity(t, 100) for t in range(0, 101)]
    assert values[0] == 0 and values[50] == pytest.approx(0.8) and values[100] == pytest.approx(0.8)
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert values[10] > 0.8 * 10 / 50  # cubic: fast at first, while the network has redundancy to spare


def test_pruned_weights_stay_zero_through_adam_momentum_and_the_ema():
    model = net()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    step = SimpleNamespace(model=model, ema=build_ema(model, 0.9))
    schedule, total = GradualPruning(0.8, ramp=0.5, events=5), 40
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    seen = []
    for t in range(1, total + 1):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step.ema.update_parameters(model)
        schedule(step, t, total)
        seen.append(zero_fraction(model))
        if t == 10:
            pruned_early = model[3].weight == 0
    assert seen[0] < 0.2 and seen[-1] == pytest.approx(0.8, abs=1e-4)
    assert all(a <= b + 1e-9 for a, b in zip(seen, seen[1:]))  # momentum never revives a pruned weight
    assert (model[3].weight[pruned_early] == 0).all()
    assert zero_fraction(step.ema.module) == pytest.approx(0.8, abs=1e-4)  # the weights that get saved
