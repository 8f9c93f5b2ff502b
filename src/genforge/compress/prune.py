"""Pruning: global magnitude (unstructured) or whole channels (structured, torch-pruning), then optional
fine-tuning through the normal training loop. The zeros, or the smaller shapes, are what the child run saves."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from genforge.errors import GenforgeError

PRUNABLE = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


def _pruned_module(model: nn.Module, task: str) -> nn.Module:
    return model.generator if task == "gan" else model  # a GAN ships its generator: its critic stays dense


def magnitude_prune(model: nn.Module, amount: float, task: str = "classify") -> dict[str, torch.Tensor]:
    """Zero the `amount` fraction of conv and linear weights with the smallest |w|, ranked over all layers
    together (global magnitude pruning, Han et al. 2015). Returns {parameter name: mask}, 1 where kept."""
    from torch.nn.utils import prune

    target = _pruned_module(model, task)
    layers = [(m, "weight") for m in target.modules() if isinstance(m, PRUNABLE)]
    prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=amount)
    for module, name in layers:
        prune.remove(module, name)  # weight_orig * mask -> a plain weight holding the zeros
    prefix = "generator." if target is not model else ""
    return {f"{prefix}{name}.weight": (m.weight != 0).to(m.weight.dtype)
            for name, m in target.named_modules() if isinstance(m, PRUNABLE)}


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
    import torch_pruning as tp

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
              progress=lambda _: None) -> tuple[Path, dict]:
    """Prune a run into a new child run, fine-tune it for finetune_epochs through the training loop (the pruned
    weights stay exactly zero: their gradients are masked), and compare it with its parent."""
    from genforge.compress.child import create_child, finish_child
    from genforge.compress.export import PARTS, part_inputs
    from genforge.config import apply_override, validate
    from genforge.runs import WEIGHTS, load_run, save_weights

    if not 0 < amount < 1:
        raise GenforgeError(f"--prune takes the fraction to remove, in (0, 1), got {amount}")
    if finetune_epochs < 0:
        raise GenforgeError(f"--finetune-epochs must be >= 0, got {finetune_epochs}")
    parent = load_run(parent_path, backend="torch")
    task = parent.meta.get("task", "classify")
    model = copy.deepcopy(parent.model).float().eval()
    raw = parent.config.model_dump(mode="json")
    if structured:
        if task != "classify":
            raise GenforgeError("structured pruning is for classifiers; prune a generator without --structured")
        (example,) = part_inputs(parent, PARTS[task][0], 2, seed=1, split="train")
        model, raw["model"] = channel_prune(model, parent.config.model, example, amount)
        raw["model"] = raw["model"].model_dump(mode="json")
        masks = {}
    else:
        masks = magnitude_prune(model, amount, task)
    raw["name"] = f"{parent.config.name}-{'channels' if structured else 'pruned'}{round(amount * 100)}"
    if finetune_epochs:
        raw["train"]["epochs"] = finetune_epochs
    for override in overrides:
        apply_override(raw, override)
    cfg = validate(raw)
    state = model.state_dict()
    try:  # the child must rebuild from its config alone
        from genforge.registry import build_model

        zeros = torch.zeros(parent.meta["norm_shape"])
        build_model(cfg.model, tuple(parent.meta["input_shape"]), len(parent.meta["classes"]), zeros,
                    zeros + 1).load_state_dict(state)
    except RuntimeError as e:
        raise GenforgeError(f"the pruned model does not match its config ({str(e).splitlines()[0]})") from None
    method = f"{'channel' if structured else 'magnitude'}-prune-{amount:g}"
    child = create_child(parent, cfg, runs_dir, {"method": method, "amount": amount, "structured": structured,
                                                 "finetune_epochs": finetune_epochs, "backend": "torch"})
    if finetune_epochs:
        from genforge.train.loop import train

        progress(f"fine-tuning for {finetune_epochs} epochs")

        def init(fresh: nn.Module) -> None:
            fresh.load_state_dict(state)
            params = dict(fresh.named_parameters())
            for name, mask in masks.items():
                mask = mask.to(params[name].device)
                params[name].register_hook(lambda grad, mask=mask: grad * mask)  # zero stays zero, any optimizer

        if threads:
            cfg.train.threads = threads
        train(cfg, child, quiet=quiet, init=init)
    else:
        save_weights(model, child / WEIGHTS)
    comparison = finish_child(parent, child, threads=threads, progress=progress)
    return child, comparison
