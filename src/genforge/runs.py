"""Open a run: rebuild its model from the run directory alone (config.yaml + meta.json + safetensors weights, or its
ONNX parts), with the notebook verbs of each kind."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from genforge.config import RunConfig
from genforge.data.tokens import tokenizer_of
from genforge.errors import GenforgeError
from genforge.explain import Explainer
from genforge.forecasting.inference import as_history, covariates_for, forecast
from genforge.language.generation import Completion, complete
from genforge.onnx.export import load_parts
from genforge.registry import task_of
from genforge.rundir import CHECKPOINT, WEIGHTS, read_config, read_json, rebuild_model, resolve_run
from genforge.tasks.classify import NoSuchClass, class_index
from genforge.training import scored


@dataclass
class LoadedRun:
    """A run's model, rebuilt, with the notebook verbs of generators (sample, encode, decode)."""
    path: Path
    config: RunConfig
    model: nn.Module
    meta: dict  # input_shape, classes, dataset, checksum: what the run learned from its data
    summary: dict
    backend: str = "torch"  # or "onnxruntime": the model's inference parts run from RUN/export/*.onnx
    lineage: dict | None = None  # compression.json of a compressed run: its parent and the method
    onnx_dir: Path | None = None  # where the ONNX parts come from, with backend onnxruntime
    _explainers: dict = field(default_factory=dict, init=False, repr=False)  # precision -> Explainer

    @property
    def task(self):
        """What the run's kind does (genforge.tasks): its evaluation, report, export parts, serving verbs; a
        generator's evaluation trains its dataset's evaluator network first when the cache has none."""
        return scored(task_of(self.config.model.kind))

    def require(self, verb: str) -> None:
        """A one-line error unless the model can do `verb` (its task's verbs; sample, encode, decode, reconstruct)."""
        if verb not in self.task.verbs and not hasattr(self.model, verb):
            raise GenforgeError(f"{self.path.name} is a {self.config.model.kind} model: it cannot {verb}")

    def sample(self, n: int, label: int | None = None, seed: int | None = None,
               truncation: float | None = None) -> torch.Tensor:
        """uint8 (n, C, H, W) samples; a conditional model draws class `label` (default: every class in turn)."""
        self.require("sample")
        labels = None
        if label is not None:
            if not getattr(self.model.cfg, "conditional", False):
                raise GenforgeError(f"{self.path.name} is not class-conditional: sample it without a label")
            if not 0 <= label < len(self.meta["classes"]):
                raise GenforgeError(f"label {label} is out of range 0-{len(self.meta['classes']) - 1}")
            labels = torch.full((n,), label, dtype=torch.long)
        return self.model.sample(n, labels=labels, seed=seed, truncation=truncation)

    def generate(self, prompt: str = "", max_tokens: int = 256, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None, stop: list[str] = ()) -> Completion:
        """A language model's continuation of `prompt`: an iterator of text pieces as they are sampled (its
        finish_reason once spent); the same seed gives the same text. The end of an entry always stops it."""
        if not self.meta.get("tokenizer") or self.meta.get("classes"):
            raise GenforgeError(f"{self.path.name} is a {self.config.model.kind} model, not a language model: it "
                                f"cannot generate text")
        return complete(self.model, tokenizer_of(self.meta), prompt, max_tokens, temperature, top_k, top_p, seed,
                        stop)

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of q(z|x) for raw uint8 images (a VAE)."""
        self.require("encode")
        with torch.inference_mode():
            return self.model.encode(x.float() / 255, labels)

    def forecast(self, history, horizon: int | None = None, *, end=None, covariates: dict | None = None):
        """Quantile forecasts of `horizon` steps (default: the trained one) after a history (a sequence of numbers,
        or N equal-length ones): a forecasting.inference.Forecast with .median, .interval(80|95) and .columns(). A model
        that reads covariates (config.yaml's model.covariates) needs them: `end`, the time of the history's last
        value, for calendar features; `covariates`, {column: its values over the history and the horizon}."""
        self.require("forecast")

        x = as_history(self.model, history)
        c = covariates_for(self.model, self.config, self.meta.get("freq"), *x.shape, horizon, end, covariates)
        return forecast(self.model, x, horizon, c)

    def explainer(self, precision: str = "auto"):
        """The run's genforge.explain.Explainer, built once per precision (it keeps its own copy of the model)."""
        self.require("classify")
        if self.backend == "onnxruntime" and not (self.path / WEIGHTS).is_file():
            raise GenforgeError(f"{self.path.name} holds only ONNX models: explanations need the gradients of its "
                                f"torch weights (explain its parent run)")
        if precision not in self._explainers:

            # with onnxruntime the model's forward runs in ONNX Runtime, which gives no gradients: the torch weights
            model = self.model if self.backend == "torch" else load_run(self.path, backend="torch").model
            self._explainers[precision] = Explainer(model, tuple(self.meta["input_shape"]), precision)
        return self._explainers[precision]

    def explain(self, x: torch.Tensor, method: str | None = None, target: int | str | None = None,
                steps: int | None = None, precision: str = "auto", smooth: bool = True) -> torch.Tensor:
        """Attributions (float32, x's shape) of raw inputs x (uint8 images or features) for class `target` (an index
        or a label; default: each input's predicted class), by `method` (genforge.explain.METHODS; default: the most
        faithful one that passes the sanity check). Positive values push towards the class. `steps`: gradient
        evaluations per input (integrated-gradients, gradient-shap). `precision`: auto (bf16 autocast where the device
        runs it fast), fp32 or bf16. `smooth=False`: integrated gradients of an image alone, without noisy copies."""
        return self.explainer(precision)(x, method, self.class_index(target), steps, smooth).attributions

    def class_index(self, target: int | str | None) -> int | None:
        """A class given by label or index -> its index (None stays None), by the rule the server reads a target by
        (tasks.classify.class_index: a label first, else an index in the digits 0-9)."""
        classes = self.meta["classes"]
        try:
            return class_index(classes, target)
        except NoSuchClass as e:
            if e.label:
                raise GenforgeError(f"unknown class {target!r}; the classes are: {', '.join(classes)}") from None
            raise GenforgeError(f"class {target} is out of range 0-{len(classes) - 1}") from None

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 images, the mean of p(x|z) (a VAE)."""
        self.require("decode")
        with torch.inference_mode():
            return self.model.to_uint8(self.model.mean_image(self.model.decode(z, labels)))


BACKENDS = ("torch", "onnxruntime")


def load_run(path: str | Path, checkpoint: bool = False, backend: str | None = None,
             threads: int | None = 1) -> LoadedRun:
    """Rebuild a run's model from its directory alone: config.yaml + meta.json + safetensors weights.

    checkpoint: the weights of the last checkpoint (checkpoints/last.safetensors, the EMA where the run keeps one)
    instead of the final ones, e.g. to look at an interrupted run.

    backend: "torch" (eager), "onnxruntime" (the parts exported under RUN/export run in ONNX Runtime with
    `threads` threads, or with None as many as its task serves with; see onnx/export.py), or None for the
    run's own: ONNX Runtime for a run that holds only ONNX files (an int8 run), else torch."""
    run = resolve_run(path)
    cfg, meta = read_config(run), read_json(run / "meta.json")
    weights = run / (CHECKPOINT if checkpoint else WEIGHTS)
    exported = (run / "export" / "export.json").is_file()
    if backend is None:
        backend = "onnxruntime" if exported and not weights.is_file() else "torch"
    if backend not in BACKENDS:
        raise GenforgeError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if not meta or not (weights.is_file() or backend == "onnxruntime" and exported):
        if backend == "torch" and exported:
            raise GenforgeError(f"{run} holds only ONNX models (export/): load it with backend onnxruntime")
        raise GenforgeError(f"{run} has no trained model yet ({weights.name} missing); finish or resume training")
    model = rebuild_model(run, cfg, meta, weights if weights.is_file() else None, checkpoint)
    loaded = LoadedRun(run, cfg, model, meta, read_json(run / "summary.json"), backend,
                       read_json(run / "compression.json") or None)
    if backend == "onnxruntime":

        load_parts(loaded, run / "export", threads if threads is not None else loaded.task.onnx_threads())
    return loaded


