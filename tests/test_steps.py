"""The step contract: a step that returns None (a bad step) has changed nothing it owns: no parameter, no buffer
(BatchNorm statistics, spectral-norm vectors), no optimizer state, schedule or counter."""

import copy

import pytest
import torch

from genforge.config import validate
from genforge.models.catalogue import build_model
from genforge.train.steps import ClassifierStep, GANStep, VAEStep

SHAPE = (1, 28, 28)


def build(model: dict, train: dict, step_class):
    cfg = validate({"model": model, "train": {"threads": 1, "schedule": "onecycle", "epochs": 1, **train}})
    torch.manual_seed(0)
    net = build_model(cfg.model, SHAPE, 10, torch.full((1, 1, 1), 0.3), torch.full((1, 1, 1), 0.3))
    return step_class(net, cfg, steps_per_epoch=8, autocast=False, channels_last=False)


def batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randint(0, 256, (n, *SHAPE), dtype=torch.uint8), torch.arange(n) % 10


def everything(step) -> dict:
    """A deep copy of all the state a step owns (what its checkpoint holds)."""
    return copy.deepcopy(step.state_dict())


def assert_same(a, b, where="") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                     and torch.equal(a.nan_to_num(), b.nan_to_num())), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}.{i}")
    elif isinstance(a, float) and a != a:
        assert b != b, where
    else:
        assert a == b, where


def warm_up(step, calls: int = 3) -> None:
    """A few good steps first, so the optimizers have moments and the schedule has moved."""
    for _ in range(calls):
        assert step(*batch()) is not None


def test_a_classifier_step_on_a_non_finite_batch_changes_nothing():
    step = build({"kind": "fastcnn", "channels": [4, 8]}, {"ema": 0.9}, ClassifierStep)  # BatchNorm, and an EMA
    warm_up(step)
    before = everything(step)
    x, y = batch()
    assert step(x.float() * float("nan"), y) is None
    assert_same(before, everything(step))  # BatchNorm's running statistics are not NaN
    assert step(*batch()) is not None


def test_a_vae_step_with_a_non_finite_loss_changes_nothing():
    step = build({"kind": "vae", "arch": "conv", "width": 8, "latent_dim": 4, "likelihood": "gaussian"}, {},
                 VAEStep)
    warm_up(step)
    before = everything(step)
    x, y = batch()
    assert step(x.float() * float("nan"), y) is None
    assert_same(before, everything(step))


GAN = {"kind": "gan", "arch": "dcgan", "width": 8, "latent_dim": 8, "conditional": True, "spectral_norm": True}


@pytest.mark.parametrize("critic_steps", [1, 2])
def test_a_gan_step_whose_generator_update_is_refused_undoes_the_discriminator_update(critic_steps):
    step = build(GAN, {"ema": 0.9, "critic_steps": critic_steps, "betas": [0.5, 0.999]}, GANStep)
    warm_up(step, 2 * critic_steps)
    while (step.counters["calls"] + 1) % critic_steps:  # the next call updates D, then G
        assert step(*batch()) is not None
    before = everything(step)
    step.model.g_loss = lambda fake, labels=None: fake.sum() * float("inf")  # G's loss alone is not finite
    assert step(*batch()) is None
    assert_same(before, everything(step))
    del step.model.g_loss
    assert step(*batch()) is not None


def test_a_collapsed_gan_step_changes_nothing():
    step = build(GAN, {"ema": 0.9, "betas": [0.5, 0.999]}, GANStep)
    warm_up(step)
    step.counters.update(d_smooth=1e-4, g_smooth=50.0)  # G's loss has climbed
    d_loss = step.model.d_loss

    def near_zero(real, fake, labels=None):  # and D's loss on this batch sits near 0 too: collapsed
        loss, stats = d_loss(real, fake, labels)
        return loss * 1e-6, {**stats, "d_loss": stats["d_loss"] * 1e-6}

    step.model.d_loss = near_zero
    before = everything(step)
    assert step(*batch()) is None
    assert_same(before, everything(step))
