"""What a classifier gets most wrong, and where it looks: the report's Mistakes section.

The "top losses" view of fastai's ClassificationInterpretation (Howard and Gugger 2020): the test items evaluate
found with the highest loss, with attributions (genforge.explain) of the predicted class; and per-class average
attributions. Test items only: a private run's report shows no training example.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from genforge.models.layers import device_of
from genforge.onnx.export import OnnxPart

# The class averages: images count, path points do not. On fashion-cnn-fast (1 epoch), against means over 100 images x
# 64 points, 20 images x 8 points correlate 0.83 per class, x 64 points 0.84, 10 images x 16 points 0.71
CLASS_IMAGES = 20  # test images averaged per class, at most
CLASS_STEPS = 8  # integrated-gradients points per image
# the class averages take integrated gradients (which passes the sanity check too) whatever the default method: 200
# images x 8 points cost about what 30 images of occlusion do (169 forward passes each on 28x28)
CLASS_METHOD = "integrated-gradients"
PIXEL_BUDGET = 200 * 28 * 28  # images x pixels explained for the class averages: ~1.3 s on one core, fashion-cnn-fast
BATCH_ROWS = 256  # Explainer's internal batch (inputs x points); Captum warns when one call has more inputs


def runs_in_onnx(model: nn.Module) -> bool:
    """True for a model whose forward ONNX Runtime runs (an int8 child, onnx/export.attach): no gradients."""
    return any(isinstance(v, OnnxPart) for v in vars(model).values())


def on_cpu(model: nn.Module) -> nn.Module:
    """The model, or a CPU copy of it: Explainer's baselines are CPU tensors, and a cuDNN RNN has no backward in eval
    mode. A report explains a few hundred images, which the CPU does in seconds."""
    return model if device_of(model).type == "cpu" else copy.deepcopy(model).cpu()


def images_per_class(num_classes: int, input_shape: tuple[int, ...]) -> int:
    """CLASS_IMAGES, fewer for many classes or large images so the class averages stay within PIXEL_BUDGET."""
    pixels = input_shape[-1] * input_shape[-2]
    return max(1, min(CLASS_IMAGES, PIXEL_BUDGET // (num_classes * pixels)))


def class_sample(y: torch.Tensor, num_classes: int, per_class: int) -> torch.Tensor:
    """Indices of the first per_class items of each class (a fixed sample: reports of two runs compare), by class."""
    return torch.cat([(y == k).nonzero()[:per_class, 0] for k in range(num_classes)])


def class_attributions(explainer, x: torch.Tensor, y: torch.Tensor, num_classes: int, per_class: int,
                       steps: int = CLASS_STEPS) -> tuple[torch.Tensor, torch.Tensor]:
    """(classes, *input shape) mean attribution of each class's sample for its true class (zero for a class with no
    items), and (classes,) how many items each mean is over."""
    y = y.cpu()
    index = class_sample(y, num_classes, per_class)
    counts = torch.bincount(y[index], minlength=num_classes)
    sums = torch.zeros((num_classes, *x.shape[1:]))
    for part in index.split(max(1, BATCH_ROWS // steps)):
        sums.index_add_(0, y[part], explainer(x[part].cpu(), CLASS_METHOD, target=y[part], steps=steps).attributions)
    return sums / counts.clamp_min(1).view(-1, *[1] * (x.ndim - 1)), counts
