"""GANs: the alternating critic/generator step with two optimizers; the generator is what ships."""

from __future__ import annotations

from torch import nn

from genforge.onnx.parts import Part
from genforge.tasks.generative import GENERATE, INTERPOLATE, GenerativeTask
from genforge.train.steps import GANStep


class GANTask(GenerativeTask):
    name = "gan"
    verbs = (GENERATE, INTERPOLATE)
    tune_metric = ("val_fd", "min")  # no held-out loss: the FD against validation images (eval.val_samples)
    parts = (Part("generator", "generator", ("z",), ("images",)),)
    divergence_hint = ("lower train.d_lr (or train.lr), set train.grad_clip=1.0, or use model.loss=hinge with "
                       "model.spectral_norm=true")

    def step(self, model, cfg, steps_per_epoch: int, autocast: bool, channels_last: bool):

        return GANStep(model, cfg, steps_per_epoch, autocast=autocast, channels_last=channels_last)

    def inference_module(self, model: nn.Module) -> nn.Module:
        return model.generator  # the critic only trains: it is neither shipped, pruned nor timed


TASK = GANTask()
