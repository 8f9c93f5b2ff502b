"""Pruning: global magnitude (unstructured) or whole channels (structured, torch-pruning), then optional
fine-tuning through the normal training loop. The zeros, or the smaller shapes, are what the child run saves."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn

from genforge.compress.child import COMPARISON, LINEAGE, create_child, finish_child
from genforge.config import RunConfig, apply_override, load_config, validate
from genforge.errors import GenforgeError
from genforge.models.catalogue import build_model
from genforge.onnx.export import part_inputs
from genforge.rundir import WEIGHTS, read_json, save_weights
from genforge.runs import load_run
from genforge.training import train

PRUNABLE = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


def _layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, PRUNABLE)]


def lamp_scores(weight: torch.Tensor) -> torch.Tensor:
    """LAMP scores of one layer's weights (Lee et al. 2021): w^2 over the sum of the squares of the layer's weights
    that are at least as large. Invariant to the layer's scale, which BatchNorm makes arbitrary, so one global
    threshold gives each layer a sparsity that fits it; the largest weight of every layer scores 1 and stays."""
    w2 = weight.detach().flatten().float() ** 2
    order = torch.argsort(w2)
    ranked = w2[order]
    scores = torch.empty_like(w2)
    scores[order] = ranked / ranked.flip(0).cumsum(0).flip(0).clamp_min(1e-30)
    return scores


def magnitude_masks(layers: list[nn.Module], amount: float, score: str = "lamp") -> list[torch.Tensor]:
    """Masks (1 = kept) that zero the `amount` fraction of the layers' weights with the lowest scores, ranked over
    all layers together: score "lamp" (layer-adaptive magnitude, the default) or "magnitude" (|w|, Han et al.
    2015)."""
    if score == "lamp":
        scores = torch.cat([lamp_scores(m.weight) for m in layers])
    else:
        scores = torch.cat([m.weight.detach().abs().flatten() for m in layers])
    drop = round(amount * len(scores))
    keep = torch.ones_like(scores, dtype=torch.bool)
    if drop:
        keep[torch.topk(scores, drop, largest=False).indices] = False
    masks, start = [], 0
    for m in layers:
        n = m.weight.numel()
        masks.append(keep[start: start + n].view_as(m.weight).to(m.weight.dtype))
        start += n
    return masks


@torch.no_grad()
def magnitude_prune(module: nn.Module, amount: float) -> None:
    """One-shot global (LAMP) magnitude pruning of the conv and linear weights, in place (of what the model ships:
    its task's inference_module, e.g. a GAN's generator; its critic stays dense)."""
    layers = _layers(module)
    for m, mask in zip(layers, magnitude_masks(layers, amount)):
        m.weight.mul_(mask)


class GradualPruning:
    """Gradual magnitude pruning during fine-tuning (Zhu & Gupta 2017): the sparsity ramps as
    s(t) = s_f * (1 - (1 - t / T)^3) over the first `ramp` of the steps, recomputing the global masks `events`
    times, then holds while the network recovers. After every update the masks are applied again, so a pruned
    weight stays exactly zero whatever the optimizer's momentum, and an EMA of the weights stays as sparse.
    Called by the training loop after each update (train(..., on_step=)). The masks are its state: the loop
    checkpoints them (state_dict), because masks recomputed from the weights after a resume would rank weights
    that the optimizer has moved since the last event, and prune others than an uninterrupted run."""

    def __init__(self, amount: float, pruned: Callable[[nn.Module], nn.Module] = lambda model: model,
                 ramp: float = 0.6, events: int = 20):
        self.amount, self.pruned, self.ramp, self.events = amount, pruned, ramp, events  # pruned(model): its layers
        self.masks: list[torch.Tensor] | None = None
        self.groups: list[list[nn.Module]] = []  # the pruned layers of the model, then of its EMA

    def _ramp_steps(self, total: int) -> int:
        return max(1, round(self.ramp * total))

    def sparsity(self, t: int, total: int) -> float:
        ramp_steps = self._ramp_steps(total)
        return self.amount * (1 - (1 - min(t, ramp_steps) / ramp_steps) ** 3)

    def state_dict(self) -> dict:
        return {"masks": None if self.masks is None else [m.bool() for m in self.masks]}

    def load_state_dict(self, state: dict) -> None:
        self.masks = state["masks"]  # bool; cast to the weights' dtype and device at the next call

    @torch.no_grad()
    def __call__(self, step, t: int, total: int) -> None:
        """After update t of total (1-based)."""
        if not self.groups:  # the first call, also after a resume; the modules stay the same objects after
            ema = getattr(step, "ema", None)
            self.groups = [_layers(self.pruned(step.model))]
            if ema is not None:
                self.groups.append(_layers(ema.module))
        if self.masks is not None:
            self.masks = [m.to(layer.weight.device, layer.weight.dtype) for m, layer in zip(self.masks, self.groups[0])]
        ramp_steps = self._ramp_steps(total)
        due = t <= ramp_steps and (t % max(1, ramp_steps // self.events) == 0 or t == ramp_steps)
        if self.masks is None or due:
            self.masks = magnitude_masks(self.groups[0], self.sparsity(t, total))
        for group in self.groups:
            for m, mask in zip(group, self.masks):
                m.weight.mul_(mask)


def _fastcnn_widths(cfg, net: nn.Sequential):
    convs = [m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)]
    starts = [sum(cfg.depth[:i]) for i in range(len(cfg.depth))]  # the first conv of each block
    return cfg.model_copy(update={"channels": [convs[s] for s in starts]})


def _mlp_widths(cfg, net: nn.Sequential):
    linears = [m.out_features for m in net.modules() if isinstance(m, nn.Linear)]
    return cfg.model_copy(update={"hidden": linears[:-1]})


# model kinds whose widths are config fields: a channel-pruned model must be rebuildable from its config
WIDTHS: dict[str, Callable] = {"fastcnn": _fastcnn_widths, "mlp": _mlp_widths}


def channel_prune(model: nn.Module, model_cfg, example: torch.Tensor, amount: float):
    """Remove `amount` of the channels (units) of every hidden layer, those with the smallest L2 norm (torch-pruning
    traces the layers that depend on each other, here conv -> norm -> next conv). The classifier head keeps its
    outputs. Returns (pruned model, its model config)."""
    if model_cfg.kind not in WIDTHS:
        raise GenforgeError(f"structured pruning needs a model whose widths are config fields ({', '.join(WIDTHS)}); "
                            f"{model_cfg.kind} is not one: use unstructured pruning (drop --structured)")
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.BasePruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=amount, ignored_layers=[head], global_pruning=False)
    pruner.step()
    return model, WIDTHS[model_cfg.kind](model_cfg, model.net)


def prune_run(parent_path: Path, amount: float, structured: bool = False, finetune_epochs: int = 0,
              overrides: list[str] = (), runs_dir: Path = Path("runs"), threads: int = 1, quiet: bool = False,
              distill: bool = True, progress=lambda _: None) -> tuple[Path, dict]:
    """Prune a run into a new child run and compare it with its parent. Structured: remove the channels, then
    fine-tune for finetune_epochs through the training loop. Unstructured: zero the weights at once without
    fine-tuning, or ramp the sparsity up during the fine-tuning (GradualPruning). A classifier fine-tunes on its
    parent's softened outputs too (train.distill), without label smoothing and dropout, unless distill is False;
    `overrides` (key=value) change the fine-tuning config last."""
    if not 0 < amount < 1:
        raise GenforgeError(f"--prune takes the fraction to remove, in (0, 1), got {amount}")
    if finetune_epochs < 0:
        raise GenforgeError(f"--finetune-epochs must be >= 0, got {finetune_epochs}")
    parent = load_run(parent_path, backend="torch")
    task = parent.task
    model, cfg = _pruned(parent, parent_path, amount, structured, finetune_epochs, distill, overrides)
    if threads:  # in config.yaml, so that a resumed fine-tuning runs with the same threads (the same arithmetic)
        cfg.train.threads = threads
    state = model.state_dict()
    try:  # the child must rebuild from its config alone
        zeros = torch.zeros(parent.meta["norm_shape"])
        build_model(cfg.model, tuple(parent.meta["input_shape"]), len(parent.meta["classes"]), zeros,
                    zeros + 1).load_state_dict(state)
    except RuntimeError as e:
        raise GenforgeError(f"the pruned model does not match its config ({str(e).splitlines()[0]})") from None
    method = f"{'channel' if structured else 'magnitude'}-prune-{amount:g}"
    child = create_child(parent, cfg, runs_dir, {"method": method, "amount": amount, "structured": structured,
                                                 "finetune_epochs": finetune_epochs,
                                                 "distilled": bool(cfg.train.distill), "backend": "torch",
                                                 "threads": threads})
    if finetune_epochs:
        progress(f"fine-tuning for {finetune_epochs} epochs")
        schedule = None if structured else GradualPruning(amount, task.inference_module)
        train(cfg, child, quiet=quiet, init=lambda fresh: fresh.load_state_dict(state), on_step=schedule)
    else:
        save_weights(model, child / WEIGHTS)
    comparison = finish_child(parent, child, threads=threads, progress=progress)
    return child, comparison


def _pruned(parent, parent_path: Path, amount: float, structured: bool, finetune_epochs: int, distill: bool,
            overrides: list[str]) -> tuple[nn.Module, RunConfig]:
    """A copy of the parent's model, its channels removed (structured) or its weights zeroed (unstructured, unless the
    fine-tuning ramps the sparsity up), and the child's config: the model's, the fine-tuning's, then `overrides`."""
    task = parent.task
    model = copy.deepcopy(parent.model).float().eval()
    raw = parent.config.model_dump(mode="json")
    # the child starts from its parent's weights: where its parent started from (train.init_from) is history
    raw["train"].update(init_from=None, freeze=[], unfreeze_epoch=None, pretrained_lr_scale=1.0)
    if structured:
        if not task.structured_pruning:
            raise GenforgeError(f"structured pruning is for classifiers; prune a {task.name} model without "
                                f"--structured")
        (example,) = part_inputs(parent, task.parts[0], 2, seed=1, split="train")
        model, raw["model"] = channel_prune(model, parent.config.model, example, amount)
        raw["model"] = raw["model"].model_dump(mode="json")
    elif not finetune_epochs:
        magnitude_prune(task.inference_module(model), amount)  # with fine-tuning, the sparsity ramps up during it
    raw["name"] = f"{parent.config.name}-{'channels' if structured else 'pruned'}{round(amount * 100)}"
    if finetune_epochs:  # the fine-tuning runs its whole length: gradual pruning reaches its sparsity near the end
        raw["train"].update(epochs=finetune_epochs, early_stopping=None, max_seconds=None)
        # the teacher's soft targets replace the parent's regularizers (label smoothing, dropout), which were sized
        # for a network four or five times larger than what is left; a private parent fine-tunes privately from the
        # labels alone (train.privacy refuses a teacher)
        if distill and "classify" in task.verbs and not parent.summary.get("privacy"):
            raw["train"].update(distill={"teacher": str(Path(parent_path).resolve())}, label_smoothing=0.0)
            if "dropout" in raw["model"]:
                raw["model"]["dropout"] = 0.0
    for override in overrides:
        apply_override(raw, override)
    return model, validate(raw)


def resume_prune(child: Path, quiet: bool = False, progress=lambda _: None) -> tuple[Path, dict]:
    """Finish an interrupted `compress --prune --finetune-epochs` exactly as the uninterrupted command would have:
    the fine-tuning resumes from the child's checkpoint with its pruning schedule (the masks are in the checkpoint),
    then the child is compared with its parent. What `genforge train --resume CHILD` runs for a pruned child."""
    lineage = read_json(child / LINEAGE)
    if not lineage.get("finetune_epochs"):
        raise GenforgeError(f"{child} is a compressed run ({lineage.get('method', 'unknown')}) without fine-tuning: "
                            f"there is nothing to resume; compress its parent again")
    if (child / COMPARISON).is_file():
        raise GenforgeError(f"{child} finished compressing already; there is nothing to resume")
    parent = load_run(lineage["parent"], backend="torch")
    cfg = load_config(str(child / "config.yaml"))
    if read_json(child / "summary.json").get("status") != "complete":  # else only the comparison was left to do
        schedule = None if lineage["structured"] else GradualPruning(lineage["amount"], parent.task.inference_module)
        progress(f"resuming the fine-tuning of {child.name}")
        train(cfg, child, resume=True, quiet=quiet, on_step=schedule)
    return child, finish_child(parent, child, threads=lineage.get("threads") or cfg.train.threads or 1,
                               progress=progress)
