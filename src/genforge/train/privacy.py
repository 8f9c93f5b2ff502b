"""Differentially private training (DP-SGD, Abadi et al. 2016) of classifiers with Opacus: per-sample gradients
clipped to train.privacy.max_grad_norm, Gaussian noise of noise_multiplier times that bound, batches drawn by Poisson
sampling (each training example in each step with probability batch_size / N: the sampling the accountants' bound
assumes), and an accountant that turns (noise, sample rate, steps) into the (epsilon, delta) spent.

Given epsilon, the noise is the least that keeps the planned steps (epochs x N / batch_size) within it; given a noise
multiplier (and optionally an epsilon as a cap), training stops before the step that would pass the cap. The
accountant's history is part of the checkpoint, and a restore never shortens it: a rollback keeps the privacy the
rolled-back steps spent, so the reported epsilon is that of everything the data went through.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from genforge.config import PrivacyConfig
from genforge.errors import GenforgeError


def default_delta(n: int) -> float:
    """The largest power of ten below 1/n: a delta that does not allow leaking one example of n outright."""
    return 10.0 ** math.floor(math.log10(1 / n) - 1e-12)


def _accountant(kind: str):
    # deferred: Opacus takes about 4 s to import, paid only by private training
    from opacus.accountants import create_accountant

    return create_accountant(mechanism=kind)


def epsilon_of(kind: str, history: list, delta: float) -> float:
    """Epsilon of the steps in history, [(noise, sample rate, steps), ...]: one training, or several in sequence."""
    if not history:
        return 0.0
    accountant = _accountant(kind)
    accountant.history = [tuple(h) for h in history]
    with warnings.catch_warnings():  # PRV warns that its error bound is loose for tiny budgets; the value stands
        warnings.simplefilter("ignore")
        return float(accountant.get_epsilon(delta))


def noise_for(cfg: PrivacyConfig, sample_rate: float, steps: int, delta: float) -> float:
    """The least noise multiplier that keeps `steps` steps at `sample_rate` within cfg.epsilon, or a one-line error
    when no noise can (a budget too small for a single step)."""
    # deferred: Opacus takes about 4 s to import, paid only by private training
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(get_noise_multiplier(target_epsilon=cfg.epsilon, target_delta=delta, sample_rate=sample_rate,
                                              steps=steps, accountant=cfg.accountant, epsilon_tolerance=0.01))
    except ValueError:
        raise GenforgeError(f"train.privacy.epsilon={cfg.epsilon:g} is too small for {steps} steps at delta "
                            f"{delta:g}: no noise keeps them within it; raise epsilon, or train fewer epochs or with a "
                            f"smaller batch") from None


def steps_within(kind: str, noise: float, sample_rate: float, delta: float, epsilon: float, most: int) -> int:
    """The most steps (at most `most`) whose epsilon at this noise stays within `epsilon` (bisection)."""
    if epsilon_of(kind, [(noise, sample_rate, most)], delta) <= epsilon:
        return most
    lo, hi = 0, most  # epsilon(lo) <= budget < epsilon(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if epsilon_of(kind, [(noise, sample_rate, mid)], delta) <= epsilon:
            lo = mid
        else:
            hi = mid
    return lo


def public_normalization(mean: torch.Tensor, is_image: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Input statistics that read no training example: pixels in [0, 1] to [-1, 1], features as they are."""
    value = 0.5 if is_image else 0.0
    return torch.full_like(mean, value), torch.full_like(mean, 0.5 if is_image else 1.0)


def check_private(model: nn.Module, kind: str) -> None:
    """Refuse a model whose layers mix the samples of a batch (BatchNorm), which per-sample clipping cannot bound,
    or that Opacus cannot compute per-sample gradients for; with the fix."""
    # deferred: Opacus takes about 4 s to import, paid only by private training
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        fix = ("set model.norm=group (GroupNorm normalizes each sample on its own)" if batchnorm
               else "choose a classifier kind without it (fastcnn with model.norm=group, cnn, mlp, logreg)")
        raise GenforgeError(f"model.kind={kind} cannot train privately: {str(errors[0]).splitlines()[0]}; {fix}")


class Privacy:
    """DP-SGD around a step function with one optimizer (a classifier's): its optimizer is swapped for Opacus's
    DPOptimizer (clip each sample's gradient, sum, add noise, average), its model records per-sample gradients, and
    this object draws the batches, counts the steps for the accountant and says when the budget is spent. The step
    keeps its loss, schedule and checkpoint; the loop asks this object for batches and for the privacy spent."""
    def __init__(self, step, cfg: PrivacyConfig, n: int, batch_size: int, planned_steps: int, kind: str):
        # deferred: Opacus takes about 4 s to import, paid only by private training
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        model = step.model
        check_private(model, kind)
        self.cfg, self.n, self.batch_size = cfg, n, batch_size
        self.sample_rate = batch_size / n
        self.delta = cfg.delta or default_delta(n)
        self.noise = cfg.noise_multiplier or noise_for(cfg, self.sample_rate, planned_steps, self.delta)
        self.planned = self.max_steps = planned_steps
        if cfg.epsilon is not None and cfg.noise_multiplier is not None:  # a fixed noise under a cap: stop at it
            self.max_steps = steps_within(cfg.accountant, self.noise, self.sample_rate, self.delta, cfg.epsilon,
                                          planned_steps)
            if self.max_steps == 0:
                raise GenforgeError(f"train.privacy.epsilon={cfg.epsilon:g} is spent before the first step at "
                                    f"noise_multiplier={self.noise:g}; raise epsilon or the noise multiplier")
        for m in model.modules():  # Opacus's backward hooks forbid in-place activations on their outputs
            if getattr(m, "inplace", False):
                m.inplace = False
        # the first layer's input needs no gradient, which torch notes at every backward; the gradients are exact
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")
        with warnings.catch_warnings():  # notices about hooks Opacus registers
            warnings.simplefilter("ignore")
            self.module = GradSampleModule(model)  # hooks on the model's own layers: model(x) records per-sample grads
        # the noise comes from torch's global generator: seeded by the run and checkpointed with it (exact resume)
        step.optimizer = DPOptimizer(step.optimizer, noise_multiplier=self.noise, max_grad_norm=cfg.max_grad_norm,
                                     expected_batch_size=batch_size)
        self.history: list[tuple[float, float, int]] = []  # (noise, sample rate, steps), the accountant's form

    def draw(self, seed: int, epoch: int, batch: int, device) -> torch.Tensor:
        """Poisson sampling: each example independently with probability batch_size / N, from (seed, epoch, batch)
        alone, so a resumed run draws the same batches."""
        g = torch.Generator().manual_seed((seed * 100_003 + epoch) * 1_000_003 + batch)
        return torch.nonzero(torch.rand(self.n, generator=g) < self.sample_rate).flatten().to(device)

    def spent_step(self) -> None:
        """Count one step: the data was read, whatever became of the update."""
        if self.history:
            noise, rate, steps = self.history[-1]
            self.history[-1] = (noise, rate, steps + 1)
        else:
            self.history.append((self.noise, self.sample_rate, 1))

    @property
    def steps(self) -> int:
        return sum(h[2] for h in self.history)

    def epsilon(self) -> float:
        return epsilon_of(self.cfg.accountant, self.history, self.delta)

    def exhausted(self) -> str | None:
        """Why training must stop now (the cap is reached before the planned steps end), or None."""
        if self.max_steps < self.planned and self.steps >= self.max_steps:
            return (f"privacy budget: epsilon {self.epsilon():.3f} of {self.cfg.epsilon:g} spent after {self.steps} "
                    f"steps; one more would pass it")
        return None

    def summary(self) -> dict:
        return {"privacy": {"epsilon": round(self.epsilon(), 4), "delta": self.delta,
                            "target_epsilon": self.cfg.epsilon, "noise_multiplier": round(self.noise, 6),
                            "sample_rate": self.sample_rate, "max_grad_norm": self.cfg.max_grad_norm,
                            "steps": self.steps, "accountant": self.cfg.accountant}}

    def close(self) -> None:
        """Take Opacus's hooks off the model when training ends. They record per-sample gradients, and in eval mode a
        backward pass through them fails (Opacus pops activations its forward hook never recorded): the report's
        attributions take gradients of the trained model."""
        self.module.remove_hooks()

    def state_dict(self) -> dict:
        return {"history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict) -> None:
        history = [tuple(h) for h in state["history"]]
        if sum(h[2] for h in history) >= self.steps:  # a resume takes the record; a rollback never shortens it
            self.history = history
