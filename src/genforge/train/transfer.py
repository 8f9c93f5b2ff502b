"""Transfer learning around a classifier's step: start from another run's weights (train.init_from), keep layers
fixed (train.freeze, until train.unfreeze_epoch), and train the pretrained part at a smaller learning rate
(train.pretrained_lr_scale: discriminative fine-tuning, Howard and Ruder 2018, sec. 3.2).

What is loaded: every tensor of the run whose name and shape fit, the input normalization included (the pretrained
filters were learned on inputs normalized so). The head (the network's last layer) is left freshly initialized when
the run's classes differ from this run's, by name or number; any other tensor that does not fit is an error that
names it. Frozen parameters keep requires_grad=False, so they get no gradient, no update and no weight decay; frozen
BatchNorm layers run in eval mode (their running statistics stay the run's, Ioffe and Szegedy 2015 sec. 3.1 use them
at inference). What was loaded is recorded in meta.json, so a resumed run needs neither the parent run nor a reload.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from torch import nn

from genforge import rundir
from genforge.config import RunConfig
from genforge.errors import GenforgeError
from genforge.models.catalogue import KINDS

PRETRAINED = "pretrained"  # the train.freeze entry that names every weight train.init_from loaded


@dataclass
class Transfer:
    """What a run took from another and what it keeps fixed; inactive (every method a no-op) without either."""

    parent: str | None = None  # the run directory the weights came from
    pretrained: list[str] = field(default_factory=list)  # parameter names loaded from it
    new: list[str] = field(default_factory=list)  # parameter names left freshly initialized (a head for new classes)
    head: str | None = None  # why the head is new, or None when it was loaded
    frozen: list[str] = field(default_factory=list)  # parameter names train.freeze keeps fixed
    unfreeze_epoch: int | None = None
    lr_scale: float = 1.0
    trainable: set[str] = field(default_factory=set)  # parameters the model itself trains (before freezing)

    @property
    def active(self) -> bool:
        return self.parent is not None or bool(self.frozen)

    def meta(self) -> dict:
        """meta.json's record: what a resume rebuilds the parameter groups from."""
        if not self.active:
            return {}
        return {"transfer": {"init_from": self.parent, "pretrained": self.pretrained, "new": self.new,
                             "head": self.head, "normalization": "the run's" if self.parent else None}}

    def attach(self, step) -> None:
        """Before the first step: the parameter groups (new layers at train.lr, loaded ones at lr x scale) and the
        freezing of epoch 0. The step must be a SingleOptimizerStep (a classifier's)."""
        if not self.active:
            return
        if self.pretrained and self.new and self.lr_scale != 1:
            params = dict(step.model.named_parameters())
            lr = step.cfg.train.lr
            step.set_param_groups([{"params": [params[n] for n in self.new], "lr": lr},  # first: the logged lr
                                   {"params": [params[n] for n in self.pretrained], "lr": lr * self.lr_scale}])
        elif self.pretrained and self.lr_scale != 1:  # the whole model was loaded: all of it at the scaled rate
            step.set_param_groups([{"params": list(step.model.parameters()), "lr": step.cfg.train.lr * self.lr_scale}])
        self.epoch(step, 0)

    def epoch(self, step, epoch: int) -> None:
        """At the start of `epoch` (0-based; also after a resume): which parameters train, which norms stay in eval."""
        if not self.frozen:
            return
        still = self.unfreeze_epoch is None or epoch + 1 < self.unfreeze_epoch
        frozen = set(self.frozen) if still else set()
        for name, p in step.model.named_parameters():
            p.requires_grad_(name in self.trainable and name not in frozen)
        norms = []
        for name, module in step.model.named_modules():
            own = [f"{name}.{n}" for n, _ in module.named_parameters(recurse=False)]
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and own and set(own) <= frozen:
                norms.append(module)
        step.frozen_norms = tuple(norms)

    def summary(self) -> dict:
        """summary.json's account, in words and counts."""
        if not self.active:
            return {}
        out = {}
        if self.parent is not None:
            total = len(self.pretrained) + len(self.new)
            out.update(init_from=self.parent, loaded=f"{len(self.pretrained)} of {total} parameter tensors",
                       head=self.head or "loaded (same classes)", normalization="the run's (kept)")
        if self.frozen:
            out["frozen"] = f"{len(self.frozen)} parameter tensors" + (
                f" until epoch {self.unfreeze_epoch}" if self.unfreeze_epoch else "")
        if self.lr_scale != 1 and self.pretrained:
            out["pretrained_lr_scale"] = self.lr_scale
        return {"transfer": out}


def start_transfer(cfg: RunConfig, model: nn.Module, classes: list[str], run_dir: Path, resume: bool,
                   say: Callable[[str], None] = lambda _: None) -> Transfer:
    """Load train.init_from's weights into `model` (a new run) or read what was loaded (a resume, from meta.json),
    and resolve train.freeze to parameter names. `classes`: this run's class labels."""
    t = cfg.train
    if t.init_from is None and not t.freeze:
        return Transfer()
    names = [n for n, _ in model.named_parameters()]
    transfer = Transfer(unfreeze_epoch=t.unfreeze_epoch, lr_scale=t.pretrained_lr_scale,
                        trainable={n for n, p in model.named_parameters() if p.requires_grad}, new=names)
    recorded = rundir.read_json(run_dir / "meta.json").get("transfer") if resume else None
    if recorded:
        transfer.parent, transfer.head = recorded["init_from"], recorded["head"]
        transfer.pretrained, transfer.new = recorded["pretrained"], recorded["new"]
    elif t.init_from is not None:
        _load(transfer, t.init_from, model, classes)
        say(f"init_from {transfer.parent}: {transfer.summary()['transfer']['loaded']} loaded; head "
            f"{transfer.head or 'loaded'}; input normalization kept from the run")
    transfer.frozen = _frozen(t.freeze, model, transfer.pretrained)
    if transfer.frozen and set(transfer.frozen) >= transfer.trainable and t.unfreeze_epoch is None:
        raise GenforgeError(f"train.freeze={t.freeze} freezes every parameter: nothing would train; freeze fewer "
                            f"layers (all but the head: train.freeze=[{PRETRAINED}]) or set train.unfreeze_epoch")
    return transfer


def _head_prefix(model: nn.Module) -> str:
    """The class head: the model's own `head_prefix` (a Transformer's), else the last layer of a classifier's network
    (what Classifier.features stops before)."""
    return getattr(model, "head_prefix", None) or f"net.{len(model.net) - 1}."


def _load(transfer: Transfer, path: str, model: nn.Module, classes: list[str]) -> None:
    where = f"train.init_from {path}"
    try:
        parent_cfg, parent_meta, parent_model = rundir.load_model(path)
    except GenforgeError as e:
        raise GenforgeError(f"{where}: {e}") from None
    if not KINDS[parent_cfg.model.kind].transfer:
        kinds = ", ".join(kind for kind, spec in KINDS.items() if spec.transfer)
        raise GenforgeError(f"{where} is a {parent_cfg.model.kind} run: fine-tuning starts from a classifier's weights "
                            f"or a language model's (a run of model.kind {kinds})")
    theirs, own = parent_model.state_dict(), model.state_dict()
    head = _head_prefix(model)
    other_classes = list(parent_meta["classes"]) != list(classes)
    renew = {k for k in own if k.startswith(head)} if other_classes else set()
    misfit = [k for k in own if k not in renew and (k not in theirs or theirs[k].shape != own[k].shape)]
    misfit += [k for k in theirs if k not in own and not (other_classes and k.startswith(head))]
    if misfit:
        shown = ", ".join(_describe(k, theirs, own) for k in misfit[:4]) + (", ..." if len(misfit) > 4 else "")
        model_yaml = yaml.safe_dump(parent_cfg.model.model_dump(mode="json"), default_flow_style=True,
                                    sort_keys=False, width=10_000).strip()
        raise GenforgeError(f"{where}: {len(misfit)} tensors do not fit this model ({shown}); build the run's "
                            f"model: model={model_yaml}")
    model.load_state_dict({k: v for k, v in theirs.items() if k in own and k not in renew}, strict=False)
    transfer.parent = str(Path(path).resolve())
    transfer.pretrained = [n for n, _ in model.named_parameters() if n not in renew]
    transfer.new = [n for n, _ in model.named_parameters() if n in renew]
    if renew:
        theirs_said = (f"{len(parent_meta['classes'])} ({', '.join(parent_meta['classes'])})" if parent_meta["classes"]
                       else "none")
        transfer.head = (f"new {head[:-1]} for {len(classes)} classes ({', '.join(classes)}); the run had "
                         f"{theirs_said}")


def _describe(key: str, theirs: dict, own: dict) -> str:
    if key not in theirs:
        return f"{key} (not in the run)"
    if key not in own:
        return f"{key} (only in the run)"
    return f"{key}: {tuple(theirs[key].shape)} in the run, {tuple(own[key].shape)} here"


def _frozen(prefixes: list[str], model: nn.Module, pretrained: list[str]) -> list[str]:
    names = [n for n, _ in model.named_parameters()]
    frozen = set()
    for prefix in prefixes:
        hit = pretrained if prefix == PRETRAINED else [n for n in names if n == prefix or n.startswith(prefix + ".")]
        if not hit:
            raise GenforgeError(f"train.freeze: {prefix!r} matches no layer with weights; the model's layers: "
                                f"{_layers(model)}")
        frozen.update(hit)
    return [n for n in names if n in frozen]  # in the model's order


def _layers(model: nn.Module, most: int = 12) -> str:
    """The modules that hold parameters, with their types: what train.freeze names."""
    layers = [f"{name} ({type(m).__name__})" for name, m in model.named_modules()
              if name and next(m.parameters(recurse=False), None) is not None]
    more = f", ... ({len(layers)} in all)" if len(layers) > most else ""
    return ", ".join(layers[:most]) + more + f"; or {PRETRAINED} (all that train.init_from loaded)"
