"""Attributions for classifiers (Captum): which input pixels or features raise the score of a class.

Every method explains the class's log-probability (so a one-unit binary model explains like a softmax one), with
respect to the input as the data holds it: images as pixel intensities in 0-1, features as raw values. An
attribution has the input's shape; positive values push towards the class, negative ones away from it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from genforge import rundir
from genforge.errors import GenforgeError
from genforge.models.layers import device_of
from genforge.plots import figure
from genforge.train.device import fast_bf16

METHODS = ("integrated-gradients", "saliency", "gradient-shap", "occlusion", "grad-cam")
DEFAULT_METHOD = "occlusion"  # the most faithful method that passes the sanity check: docs/benchmarks.md
DEFAULT_STEPS = {"integrated-gradients": 32, "gradient-shap": 32}  # gradient evaluations per input: the costly knob
# integrated gradients of an image spends its steps on the paths to IG_COPIES noisy copies of it (SmoothGrad, Smilkov et
# al. 2017), IG_NOISE the noise's standard deviation in 0-1 pixel units: at the same 32 evaluations, 8 copies x 4 path
# points were more faithful than 32 points on the image alone (docs/decisions.md)
IG_COPIES, IG_MIN_POINTS, IG_NOISE = 8, 4, 0.3
BATCH = 256  # inputs x path points (or samples) per forward pass: what bounds an attribution's memory
PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 autocast where the device runs it fast (docs/decisions.md)
MAX_STEPS = 256  # at most this many path points or samples per input (the server caps lower, serve/limits.py)
POOLING = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d, nn.Dropout, nn.Flatten)


@dataclass
class Explanation:
    attributions: torch.Tensor  # float32 (N, *input shape) on the CPU
    target: torch.Tensor  # (N,) the explained class of each input
    probabilities: torch.Tensor  # (N, classes) the model's prediction
    method: str
    steps: int | None  # gradient evaluations per input, for the methods that take them
    precision: str = "fp32"  # what the attributions were computed in: fp32, or bf16 autocast
    copies: int | None = None  # integrated-gradients: noisy copies of each input (1: the input alone)

    def describe(self) -> str:
        """The method and its cost in words, e.g. 'integrated-gradients (32 steps: 8 noisy copies x 4 path points)'."""
        if not self.steps:
            return self.method
        if self.copies and self.copies > 1:
            points = self.steps // self.copies
            return f"{self.method} ({self.steps} steps: {self.copies} noisy copies x {points} path points)"
        return f"{self.method} ({self.steps} steps)"


def ig_split(steps: int, smooth: bool = True) -> tuple[int, int]:
    """(noisy copies, path points per copy) for integrated gradients with `steps` gradient evaluations per input:
    up to IG_COPIES copies of at least IG_MIN_POINTS points each; one copy (the input alone) when not smoothing."""
    copies = max(1, min(IG_COPIES, steps // IG_MIN_POINTS)) if smooth else 1
    return copies, steps // copies


class _LogProbability(nn.Module):
    """The classifier as a function of the input in the units attributions are given in (0-1 pixels, raw features),
    returning (N, classes) log-probabilities."""
    def __init__(self, model: nn.Module, scale: float, channels_last: bool = False):
        super().__init__()
        self.model, self.scale, self.channels_last = model, scale, channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model.log_probabilities(self.model(x * self.scale))


def _feature_map_layer(model: nn.Module, input_shape: tuple[int, ...]) -> nn.Module | None:
    """The last layer of the network whose output is a feature map with more than one position (pooling and
    dropout aside): where Grad-CAM looks (Selvaraju et al. 2017 take the last convolutional layer)."""
    if len(input_shape) != 3:
        return None
    shapes: dict[nn.Module, tuple] = {}
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.__setitem__(m, tuple(getattr(o, "shape", ()))))
             for m in model.net.modules() if not list(m.children()) and not isinstance(m, POOLING)]
    with torch.no_grad():
        model(torch.zeros((1, *input_shape), device=device_of(model)))
    for h in hooks:
        h.remove()
    maps = [m for m, s in shapes.items() if len(s) == 4 and s[2] * s[3] > 1]  # insertion order = forward order
    return maps[-1] if maps else None


def _fold_batch_norms(model: nn.Module) -> None:
    """Fold each eval-mode BatchNorm into the convolution before it (the same function, one op fewer each way of an
    attribution's forward and backward passes: about a third of the time of integrated gradients on fashion-cnn)."""
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, norm = seq._modules[a], seq._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats:
                seq._modules[a], seq._modules[b] = fuse_conv_bn_eval(conv, norm), nn.Identity()


class Explainer:
    """Attributions of one classifier. It holds its own copy of the model (in-place activations turned off, which
    layer hooks need), so it can be kept and called again: the warm path of the CLI, the report and the server."""
    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], precision: str = "auto"):
        if not hasattr(model, "log_probabilities"):
            raise GenforgeError("explanations are for classifiers; this model does not classify")
        if precision not in PRECISIONS:
            raise GenforgeError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.model = copy.deepcopy(model).eval()
        _fold_batch_norms(self.model)
        for m in self.model.modules():
            if getattr(m, "inplace", False):
                m.inplace = False
            for p in m.parameters(recurse=False):
                p.requires_grad_(False)  # gradients flow to the input only
        self.input_shape = tuple(input_shape)
        self.device = device_of(self.model)
        # bf16 autocast halves IG's time on CPUs with AMX (fashion-cnn: 15.6 -> 6.7 ms per image, one thread) and moves
        # deletion/insertion by < 0.02x random; the probabilities reported stay fp32
        self.precision = ("bf16" if fast_bf16(self.device) else "fp32") if precision == "auto" else precision
        self.is_image = len(self.input_shape) == 3
        # convolutions run faster channels-last on the CPU (oneDNN): IG on fashion-cnn 166 -> 102 ms per image
        convolutional = self.is_image and any(isinstance(m, nn.Conv2d) for m in self.model.modules())
        if convolutional:
            self.model.to(memory_format=torch.channels_last)
        self.forward = _LogProbability(self.model, 255.0 if self.is_image else 1.0, convolutional)
        self.layer = _feature_map_layer(self.model, self.input_shape)
        self._methods: dict[str, object] = {}

    def baseline(self, n: int) -> torch.Tensor:
        """The reference input: a black image (the background of the image datasets), or the training mean."""
        if self.is_image:
            return torch.zeros((n, *self.input_shape), device=self.device)
        return self.model.normalize.mean.expand(n, *self.input_shape).clone()

    def _method(self, name: str):
        # deferred: captum takes about 1 s to import, paid only when attributions are computed
        from captum import attr

        if name not in self._methods:
            build = {"integrated-gradients": attr.IntegratedGradients, "saliency": attr.Saliency,
                     "gradient-shap": attr.GradientShap, "occlusion": attr.Occlusion}
            if name == "path-gradients":  # integrated gradients before the product with (input - baseline)
                self._methods[name] = attr.IntegratedGradients(self.forward, multiply_by_inputs=False)
            elif name == "grad-cam":
                if self.layer is None:
                    raise GenforgeError("grad-cam needs a model with feature maps (a CNN) and this one has none: "
                                        "use --method integrated-gradients")
                self._methods[name] = attr.LayerGradCam(self.forward, self.layer)
            else:
                self._methods[name] = build[name](self.forward)
        return self._methods[name]

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Raw model inputs (uint8 images or features) -> the float tensor attributions are taken against."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise GenforgeError(f"inputs of shape {tuple(x.shape[1:])} do not fit the model ({self.input_shape})")
        x = x.to(self.device)
        return x.float() / 255 if self.is_image else x.float()

    def __call__(self, x: torch.Tensor, method: str | None = None, target: int | torch.Tensor | None = None,
                 steps: int | None = None, smooth: bool = True) -> Explanation:
        """Attributions of raw inputs x for class `target` (default: the predicted one). `steps`: gradient evaluations
        per input for integrated-gradients and gradient-shap. `smooth=False`: integrated gradients of the image alone,
        every step a path point (complete: the attributions add up to f(x) - f(baseline))."""
        method = method or DEFAULT_METHOD
        if method not in METHODS:
            raise GenforgeError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        if steps is not None and not 1 <= steps <= MAX_STEPS:
            raise GenforgeError(f"steps must be between 1 and {MAX_STEPS}, got {steps}")
        if steps is not None and method not in DEFAULT_STEPS:
            raise GenforgeError(f"{method} takes no steps (they are the path points of integrated-gradients and the "
                                f"samples of gradient-shap)")
        inputs = self.inputs(x)
        with torch.no_grad():
            probabilities = self.forward(inputs).exp()
        n, k = probabilities.shape
        if target is None:
            target = probabilities.argmax(1)
        target = torch.as_tensor(target, dtype=torch.long, device=self.device).expand(n).clone()
        if target.min() < 0 or target.max() >= k:
            raise GenforgeError(f"target class must be in 0-{k - 1}, got {target.tolist()}")
        steps = (steps or DEFAULT_STEPS[method]) if method in DEFAULT_STEPS else None
        copies = None
        if method == "integrated-gradients":
            copies, points = ig_split(steps, smooth and self.is_image)
            steps = copies * points
        per_call = max(1, BATCH // (steps or 1)) if method != "occlusion" else 4  # bounded memory: inputs x points
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            a = torch.cat([self._attribute(method, inputs[i : i + per_call], target[i : i + per_call], steps, copies)
                           .detach().float().cpu() for i in range(0, n, per_call)])
        return Explanation(a, target.cpu(), probabilities.cpu(), method, steps, self.precision, copies)

    def _attribute(self, method: str, x: torch.Tensor, target: torch.Tensor, steps: int | None,
                   copies: int | None = None) -> torch.Tensor:
        explainer = self._method(method)
        if method == "integrated-gradients":  # Sundararajan et al. 2017, Gauss-Legendre points along the path
            if copies == 1:
                return explainer.attribute(x, self.baseline(len(x)), target=target, n_steps=steps)
            # SmoothGrad over the path: the gradients along the straight paths from black to `copies` noisy copies
            # of x, averaged, times x itself (so a black pixel, equal to the baseline, gets exactly 0). Every input
            # gets the same seeded noise: its map does not depend on the batch it came in
            noise = torch.randn((copies, *x.shape[1:]), generator=torch.Generator().manual_seed(0)).to(x.device)
            noisy = (x[:, None] + IG_NOISE * noise).flatten(0, 1)  # (N copies, C, H, W)
            grads = self._method("path-gradients").attribute(noisy, self.baseline(len(noisy)), n_steps=steps // copies,
                                                             target=target.repeat_interleave(copies))
            return (x - self.baseline(len(x))) * grads.unflatten(0, (len(x), copies)).mean(1)
        if method == "saliency":  # the signed gradient (Simonyan et al. 2014 take its absolute value)
            return explainer.attribute(x.clone().requires_grad_(True), target=target, abs=False)
        if method == "gradient-shap":  # expected gradients over black and noise references (Lundberg and Lee 2017)
            g = torch.Generator().manual_seed(0)
            if self.is_image:
                refs = torch.cat([self.baseline(1), torch.rand((7, *self.input_shape), generator=g).to(self.device)])
            else:
                noise = torch.randn((8, *self.input_shape), generator=g).to(self.device)
                refs = self.baseline(8) + noise * self.model.normalize.std
            cuda = [self.device.index or 0] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):  # Captum draws from the global generators: seed, then restore
                torch.manual_seed(0)
                return explainer.attribute(x, refs, target=target, n_samples=steps,
                                           stdevs=0.1 if self.is_image else 0.0)
        if method == "occlusion":  # Zeiler and Fergus 2014: the drop in score when a patch is set to the baseline
            if self.is_image:
                c, h, w = self.input_shape
                side = max(2, min(h, w) // 7)
                window, stride = (c, side, side), (c, max(1, side // 2), max(1, side // 2))
            else:
                window, stride = (1,) * len(self.input_shape), (1,) * len(self.input_shape)
            return explainer.attribute(x, window, stride, baselines=self.baseline(len(x)), target=target,
                                       perturbations_per_eval=64)
        # deferred: captum takes about 1 s to import, paid only when attributions are computed
        from captum.attr import LayerAttribution

        cam = explainer.attribute(x, target=target, relu_attributions=True)  # (N, 1, h, w) on the feature map
        cam = LayerAttribution.interpolate(cam, tuple(self.input_shape[1:]), interpolate_mode="bilinear")
        return cam.expand(-1, self.input_shape[0], -1, -1) / self.input_shape[0]  # shared by the channels


def pixel_map(attributions: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W): one value per pixel, the sum over channels."""
    return attributions.sum(1)


def overlay(image: np.ndarray | torch.Tensor, attribution: torch.Tensor, scale: int = 8):
    """A PIL RGB image: the input in gray, attributions on top (red: towards the class, blue: away from it), their
    opacity proportional to the magnitude relative to the map's 99th percentile."""
    image = torch.as_tensor(np.asarray(image))
    gray = image.float().mean(0).numpy() / 255 * 0.6  # (H, W), dimmed so the colours read
    a = pixel_map(attribution[None].float())[0].numpy()
    peak = float(np.quantile(np.abs(a), 0.99)) or 1.0
    alpha = np.clip(np.abs(a) / peak, 0, 1)
    colour = np.where(a[..., None] >= 0, np.array([1.0, 0.15, 0.1]), np.array([0.1, 0.35, 1.0]))
    rgb = gray[..., None] * (1 - alpha[..., None]) + colour * alpha[..., None]
    out = Image.fromarray((rgb * 255).round().astype(np.uint8), "RGB")
    return out.resize((out.width * scale, out.height * scale), Image.Resampling.NEAREST)


def write_explanations(x: torch.Tensor, result: Explanation, classes: list[str], names: list[str], out) -> list[dict]:
    """What `genforge explain` writes: a .png grid (each input beside its overlay, titled with the predicted and the
    explained class), or a folder with one overlay PNG per input. Returns one row per input."""
    out = Path(out) if out is not None else None
    rows = []
    for name, p, t in zip(names, result.probabilities, result.target.tolist()):
        k = int(p.argmax())
        rows.append({"input": name, "predicted": classes[k], "predicted_probability": p[k].item(),
                     "target": classes[t], "target_index": t, "target_probability": p[t].item()})
    if out is None:
        return rows
    if out.suffix.lower() != ".png":  # a folder
        if len(x[0].shape) != 3:
            raise GenforgeError(f"--out {out}: overlays are for images; give a .png for a chart of the features")
        out.mkdir(parents=True, exist_ok=True)
        for i, (row, image, a) in enumerate(zip(rows, x, result.attributions)):
            path = out / f"{i:03d}-{Path(row['input']).stem}.png"
            rundir.write_with(path, lambda f, im=image, a=a: overlay(im, a).save(f, format="PNG"))
            row["overlay"] = str(path)
        return rows

    plt = figure()
    image = len(x[0].shape) == 3
    n = len(rows)
    fig, axes = plt.subplots(n, 2 if image else 1, figsize=(5 if image else 6, 2.6 * n if image else 0.3 * x.shape[1]
                                                                 * n + 1), squeeze=False)
    for (row, xi, a), ax in zip(zip(rows, x, result.attributions), axes):
        title = f"{row['predicted']} {row['predicted_probability']:.2f}"
        if row["target"] != row["predicted"]:
            title += f"; explains {row['target']} {row['target_probability']:.2f}"
        if image:
            ax[0].imshow(xi.float().mean(0), cmap="gray", vmin=0, vmax=255)
            ax[0].set_title(row["input"], fontsize=8)
            ax[1].imshow(overlay(xi, a, scale=1))
            ax[1].set_title(title, fontsize=8)
            for a_ in ax:
                a_.axis("off")
        else:
            ax[0].barh(range(len(a)), a.numpy(), color=["#d62728" if v >= 0 else "#1f77b4" for v in a.tolist()])
            ax[0].set_yticks(range(len(a)), [f"x{j}" for j in range(len(a))], fontsize=7)
            ax[0].axvline(0, color="k", lw=0.5)
            ax[0].set_title(f"{row['input']}: {title}", fontsize=8)
    fig.suptitle(f"{result.method} (red: towards the class, blue: away from it)", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    rundir.write_with(out, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return rows
