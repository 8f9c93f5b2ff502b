"""Optimizers and learning-rate schedules by name."""

from __future__ import annotations

import torch
from torch import nn

from genforge.config import TrainConfig


def build_optimizer(params, cfg: TrainConfig, lr: float | None = None) -> torch.optim.Optimizer:
    lr = cfg.lr if lr is None else lr
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        nesterov = cfg.momentum > 0  # torch refuses Nesterov without momentum
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, nesterov=nesterov, weight_decay=cfg.weight_decay)
    return torch.optim.Adadelta(params, lr=lr, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """Every schedule is stepped once per optimizer step (steps_per_epoch counts that optimizer's steps)."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        # OneCycle divides by its warm-up length: very short runs get a schedule of at least 8 steps
        max_lr = [group["lr"] for group in optimizer.param_groups]
        # OneCycle also cycles beta1 (0.85-0.95, Smith 2018); betas set by hand (GANs) are kept as given
        cycle = cfg.betas == TrainConfig.model_fields["betas"].default
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=max(total, 8), pct_start=0.25,
                                                   cycle_momentum=cycle)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size * steps_per_epoch, gamma=cfg.gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def build_ema(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of the weights and buffers (BatchNorm statistics included).

    The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so the average forgets the random
    initial weights within a few hundred steps instead of carrying e^(-n (1 - decay)) of them (37% after
    1,000 steps at 0.999)."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged) -> None:
        if not averaged[0].is_floating_point():  # counters such as BatchNorm's num_batches_tracked
            torch._foreach_copy_(averaged, current)
            return
        n = float(n_averaged)
        torch._foreach_lerp_(averaged, current, 1 - min(decay, (1 + n) / (10 + n)))

    return torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=update, use_buffers=True)
