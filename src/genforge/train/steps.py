"""Step functions: one optimization step of one model kind. The loop knows nothing about the model.

A step owns its optimizers and schedulers. It returns the batch's metrics, or None for a bad step (a loss or a
gradient that was not finite, an unhealthy GAN): then nothing the step owns was changed, neither a parameter nor a
buffer (BatchNorm statistics, spectral-norm vectors), an optimizer's state, a schedule or the step's counters.
"""

from __future__ import annotations

import contextlib
import copy
import math

import torch
from torch import nn

from genforge.config import RunConfig
from genforge.errors import GenforgeError
from genforge.models.catalogue import KINDS
from genforge.rundir import load_model
from genforge.train import distributed
from genforge.train.augment import augment_batch, is_identity
from genforge.train.optim import build_ema, build_optimizer, build_scheduler


def _autocast(enabled: bool, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def apply_update(loss: torch.Tensor, params, optimizer, scheduler, grad_clip: float | None,
                 explode: float = float("inf")) -> bool:
    """backward, clip, step: the one update every step function makes. Refused (False, nothing changed) when
    the loss or the pre-clipping gradient norm is not finite, or the norm exceeds `explode`. Under torch.distributed
    the gradients are averaged over the ranks before clipping, so every rank clips, refuses and steps alike."""
    optimizer.zero_grad(set_to_none=True)
    params = [p for p in params if p.requires_grad]
    finite = bool(torch.isfinite(loss))
    if finite:
        loss.backward()
    if distributed.average_gradients(params, refused=not finite) or not finite:  # every rank refuses together
        optimizer.zero_grad(set_to_none=True)
        return False
    norm = nn.utils.clip_grad_norm_(params, grad_clip or float("inf"))
    if not torch.isfinite(norm) or norm > explode:
        optimizer.zero_grad(set_to_none=True)
        return False
    optimizer.step()
    scheduler.step()
    return True


def _copy_buffers(module: nn.Module) -> list[torch.Tensor]:
    """The buffers a train-mode forward changes (BatchNorm running statistics, spectral-norm vectors), copied before
    it: a non-finite batch would otherwise leave NaN running statistics behind a step that changed nothing. Buffers
    are small (per channel), so this costs little on every step."""
    return [b.clone() for b in module.buffers()]


@torch.no_grad()
def _restore_buffers(module: nn.Module, saved: list[torch.Tensor]) -> None:
    for buffer, old in zip(module.buffers(), saved):
        buffer.copy_(old)


class _Undo:
    """A copy of what one applied update changes (the module's parameters, its optimizer's state and learning rates,
    its schedule), taken before it, so a step that turns out bad after the update can put everything back."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, scheduler):
        self.module, self.optimizer, self.scheduler = module, optimizer, scheduler
        self.params = [p.detach().clone() for p in module.parameters()]
        self.state = {p: {k: v.clone() if torch.is_tensor(v) else copy.copy(v) for k, v in s.items()}
                      for p, s in optimizer.state.items()}
        self.groups = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
        self.schedule = copy.deepcopy(scheduler.state_dict())

    @torch.no_grad()
    def restore(self) -> None:
        for p, old in zip(self.module.parameters(), self.params):
            p.copy_(old)
        self.optimizer.state.clear()  # a state created by this update (the first one) goes too
        self.optimizer.state.update(self.state)
        for group, old in zip(self.optimizer.param_groups, self.groups):
            group.update(old)
        self.scheduler.load_state_dict(self.schedule)


class SingleOptimizerStep:
    """One optimizer and schedule over the whole model, plus an optional weight EMA; subclasses compute the loss."""

    frozen_norms: tuple[nn.Module, ...] = ()  # normalization layers kept in eval mode (train.freeze, train/transfer.py)

    def __init__(self, model: nn.Module, cfg: RunConfig, steps_per_epoch: int, autocast: bool, channels_last: bool):
        self.model, self.cfg, self.steps_per_epoch = model, cfg, steps_per_epoch
        self.optimizer = build_optimizer(model.parameters(), cfg.train)
        self.scheduler = build_scheduler(self.optimizer, cfg.train, steps_per_epoch)
        self.ema = build_ema(model, cfg.train.ema) if cfg.train.ema else None
        self.autocast, self.channels_last = autocast, channels_last

    def set_param_groups(self, groups: list[dict]) -> None:
        """Optimize these parameter groups, each at its own peak "lr" on the same schedule, instead of the whole model
        at train.lr (discriminative learning rates); before the first step."""
        self.optimizer = build_optimizer(groups, self.cfg.train)
        self.scheduler = build_scheduler(self.optimizer, self.cfg.train, self.steps_per_epoch)

    def _train_mode(self) -> None:
        self.model.train()
        for module in self.frozen_norms:
            module.eval()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float] | None:
        buffers = _copy_buffers(self.model)
        metrics = self._step(x, y)
        if metrics is None:  # the update was refused; the forward may still have moved the buffers
            _restore_buffers(self.model, buffers)
        return metrics

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float] | None:
        raise NotImplementedError

    def _update(self, loss: torch.Tensor) -> bool:
        if not apply_update(loss, self.model.parameters(), self.optimizer, self.scheduler, self.cfg.train.grad_clip):
            return False
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return True

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


def load_teacher(cfg: RunConfig, student: nn.Module) -> nn.Module:
    """The frozen teacher of train.distill, on the student's device; refused unless it classifies the same way."""
    teacher_cfg, _, teacher = load_model(cfg.train.distill.teacher)
    if not KINDS[teacher_cfg.model.kind].classifier or teacher.num_classes != student.num_classes:
        raise GenforgeError(f"train.distill.teacher {cfg.train.distill.teacher} is not a classifier of "
                            f"{student.num_classes} classes: distill from a classifier of the same data")
    model = teacher.float().to(next(student.parameters()).device).eval()
    return model.requires_grad_(False)


class ModelLossStep(SingleOptimizerStep):
    """A model that owns its whole objective: loss = model.loss(x, y) (a forecaster's pinball loss)."""

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float] | None:
        self.model.train()
        with _autocast(self.autocast, x.device):
            loss = self.model.loss(x, y)
        if not self._update(loss):
            return None
        return {"loss": loss.item(), "lr": self.scheduler.get_last_lr()[0]}


class FixedStep:
    """The step of a model with nothing to train (a forecasting baseline): it scores the batch and changes nothing,
    so the run still has its loop, checkpoint and run directory. Every epoch would score the same, so one is run."""

    epochs = 1  # the loop runs at most this many epochs of a step that sets it

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        with torch.inference_mode():
            return {"loss": self.model.loss(x, y).item()}

    def eval_model(self) -> nn.Module:
        return self.model

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])


class ClassifierStep(SingleOptimizerStep):
    """Cross-entropy (with label smoothing), plus a teacher's softened outputs when train.distill is set."""

    def __init__(self, model: nn.Module, cfg: RunConfig, steps_per_epoch: int, autocast: bool, channels_last: bool):
        super().__init__(model, cfg, steps_per_epoch, autocast, channels_last)
        self.teacher = load_teacher(cfg, model) if cfg.train.distill else None
        if self.teacher is not None and channels_last:
            self.teacher = self.teacher.to(memory_format=torch.channels_last)  # else every conv converts its input

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float] | None:
        x = x.float()
        if x.ndim == 4:
            if not is_identity(self.cfg.data.augment):
                x = augment_batch(x, self.cfg.data.augment)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        self._train_mode()
        with _autocast(self.autocast, x.device):
            logits = self.model(x)
        loss = self.model.loss(logits, y, self.cfg.train.label_smoothing)
        if self.teacher is not None:
            distill = self.cfg.train.distill
            with torch.no_grad(), _autocast(self.autocast, x.device):
                teacher_logits = self.teacher(x)
            soft = self.model.distillation_loss(logits, teacher_logits, distill.temperature)
            loss = (1 - distill.weight) * loss + distill.weight * soft
        if not self._update(loss):
            return None
        with torch.no_grad():
            pred = self.model.probabilities(logits.detach()).argmax(1)
            acc = (pred == y).float().mean()
        return {"loss": loss.item(), "acc": acc.item(), "lr": self.scheduler.get_last_lr()[0]}


class GANStep:
    """The alternating GAN update (Goodfellow et al. 2014 alg. 1): every call updates D on one real batch and
    one fake batch; every `train.critic_steps`-th call also updates G, through the updated D. Two optimizers,
    two schedules (TTUR: train.d_lr, Heusel et al. 2017), and an optional EMA of G for sampling and evaluation.

    Health: a step returns None (a bad step) when a loss or gradient norm is not finite or a gradient norm
    explodes past EXPLODE, or when D has collapsed, i.e. its smoothed loss sits near 0 while G's climbs (bce,
    hinge); the loop rolls back after train.max_nonfinite bad steps in a row. A bad step changes nothing: collapse
    is judged before any update (on this batch's D loss and G's last loss), and when G's update is refused after
    D's was applied, D's update is undone (its parameters, optimizer state and schedule were copied before it, on
    the calls that update G only)."""

    EXPLODE = 1e4  # gradient norm that counts as exploding (before clipping)
    COLLAPSE = {"bce": (0.01, 5.0), "hinge": (0.01, 2.0)}  # (D loss below, G loss above), both smoothed

    def __init__(self, model: nn.Module, cfg: RunConfig, steps_per_epoch: int, autocast: bool, channels_last: bool):
        t = cfg.train
        self.model, self.cfg, self.autocast, self.channels_last = model, cfg, autocast, channels_last
        self.opt_d = build_optimizer(model.discriminator.parameters(), t, lr=t.d_lr or t.lr)
        self.opt_g = build_optimizer(model.generator.parameters(), t)
        self.sched_d = build_scheduler(self.opt_d, t, steps_per_epoch)
        self.sched_g = build_scheduler(self.opt_g, t, -(-steps_per_epoch // t.critic_steps))
        self.ema = build_ema(model.generator, t.ema) if t.ema else None
        self._eval = copy.deepcopy(model) if self.ema is not None else None  # G replaced by the EMA for eval
        self.counters = {"calls": 0, "d_smooth": None, "g_smooth": None, "g_loss": float("nan")}

    def _update(self, loss: torch.Tensor, params, optimizer, scheduler) -> bool:
        return apply_update(loss, params, optimizer, scheduler, self.cfg.train.grad_clip, explode=self.EXPLODE)

    def _collapsed(self, d_loss: float, g_loss: float) -> bool:
        c = self.counters
        # a loss not yet known (G before its first update) or not finite (then the update is refused) is skipped
        smooth = lambda old, new: old if not math.isfinite(new) else new if old is None else 0.9 * old + 0.1 * new  # noqa: E731
        c["d_smooth"], c["g_smooth"] = smooth(c["d_smooth"], d_loss), smooth(c["g_smooth"], g_loss)
        limits = self.COLLAPSE.get(self.model.cfg.loss)
        return (limits is not None and c["d_smooth"] is not None and c["g_smooth"] is not None
                and c["d_smooth"] < limits[0] and c["g_smooth"] > limits[1])

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float] | None:
        buffers, counters = _copy_buffers(self.model), dict(self.counters)
        metrics = self._step(x, y)
        if metrics is None:
            _restore_buffers(self.model, buffers)
            self.counters = counters
        return metrics

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float] | None:
        model, c = self.model, self.counters
        labels = y if model.cfg.conditional else None
        real = model.to_model_space(x)
        if self.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        model.train()
        z = model.noise(len(x))
        with _autocast(self.autocast, x.device):
            fake = model.generate(z, labels)  # (B, C, H, W), still carries G's graph
            d_loss, stats = model.d_loss(real, fake.detach(), labels)
        if distributed.any_rank(self._collapsed(stats["d_loss"], c["g_loss"]))[0]:  # all ranks skip, or none
            return None
        g_turn = (c["calls"] + 1) % self.cfg.train.critic_steps == 0
        undo_d = _Undo(model.discriminator, self.opt_d, self.sched_d) if g_turn else None
        if not self._update(d_loss.float(), model.discriminator.parameters(), self.opt_d, self.sched_d):
            return None
        c["calls"] += 1
        if g_turn:
            with _autocast(self.autocast, x.device):
                g_loss = model.g_loss(fake, labels)
                if model.cfg.mode_seeking:
                    g_loss = g_loss + model.cfg.mode_seeking * model.mode_seeking_loss(z, labels)
            if not self._update(g_loss.float(), model.generator.parameters(), self.opt_g, self.sched_g):
                undo_d.restore()
                model.discriminator.zero_grad(set_to_none=True)
                return None
            model.discriminator.zero_grad(set_to_none=True)  # G's backward reached D too
            c["g_loss"] = g_loss.item()
            if self.ema is not None:
                self.ema.update_parameters(model.generator)
        return {**stats, "g_loss": c["g_loss"], "lr": self.sched_g.get_last_lr()[0]}

    def eval_model(self) -> nn.Module:
        """The GAN to evaluate and save: with the EMA generator when there is one."""
        if self.ema is None:
            return self.model
        self._eval.load_state_dict(self.model.state_dict())
        self._eval.generator.load_state_dict(self.ema.module.state_dict())
        return self._eval

    def state_dict(self) -> dict:
        state = {"model": self.model.state_dict(), "opt_d": self.opt_d.state_dict(), "opt_g": self.opt_g.state_dict(),
                 "sched_d": self.sched_d.state_dict(), "sched_g": self.sched_g.state_dict(),
                 "counters": dict(self.counters)}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        for name in ("opt_d", "opt_g", "sched_d", "sched_g"):
            getattr(self, name).load_state_dict(state[name])
        self.counters = dict(state["counters"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])


class VAEStep(SingleOptimizerStep):
    """The negative beta-ELBO (Kingma & Welling 2014); the data is re-binarized (Bernoulli) or re-dequantized
    (Gaussian) at every step from the global, checkpointed RNG."""

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float] | None:
        model = self.model
        labels = y if model.cfg.conditional else None
        x = model.prepare(x)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        model.train()
        with _autocast(self.autocast, x.device):
            loss, stats = model.loss(x, labels)
        if not self._update(loss.float()):
            return None
        return {"loss": loss.item(), **stats, "lr": self.scheduler.get_last_lr()[0]}
