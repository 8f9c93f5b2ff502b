"""Step functions: one optimization step of one model kind. The loop knows nothing about the model.

A step owns its optimizers and schedulers. It returns the batch's metrics, or None when the loss or a
gradient was not finite: then no parameter was changed.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from genforge.config import RunConfig
from genforge.data.augment import augment_batch, is_identity
from genforge.train.optim import build_ema, build_optimizer, build_scheduler


class ClassifierStep:
    def __init__(self, model: nn.Module, cfg: RunConfig, steps_per_epoch: int, autocast: bool, channels_last: bool):
        self.model, self.cfg = model, cfg
        self.optimizer = build_optimizer(model.parameters(), cfg.train)
        self.scheduler = build_scheduler(self.optimizer, cfg.train, steps_per_epoch)
        self.ema = build_ema(model, cfg.train.ema) if cfg.train.ema else None
        self.autocast, self.channels_last = autocast, channels_last

    def _autocast(self, device: torch.device):
        if self.autocast:
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float] | None:
        x = x.float()
        if x.ndim == 4:
            if not is_identity(self.cfg.data.augment):
                x = augment_batch(x, self.cfg.data.augment)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        self.model.train()
        with self._autocast(x.device):
            logits = self.model(x)
        loss = self.model.loss(logits, y, self.cfg.train.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            return None
        loss.backward()
        max_norm = self.cfg.train.grad_clip or float("inf")
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if not torch.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        with torch.no_grad():
            pred = self.model.probabilities(logits.detach()).argmax(1)
            acc = (pred == y).float().mean()
        return {"loss": loss.item(), "acc": acc.item(), "lr": self.scheduler.get_last_lr()[0]}

    def eval_model(self) -> nn.Module:
        """The model to evaluate and save: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def state_dict(self) -> dict:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict()}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])


STEPS = {"classify": ClassifierStep}
