"""The run directory: create it, save and load weights and training state (safetensors only), list runs."""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as st_save
from torch import nn

from genforge.config import RunConfig, dump_config, validate
from genforge.data.dataset import MAX_CLASSES, MAX_FEATURES
from genforge.data.images import MAX_CHANNELS, MAX_SIDE
from genforge.errors import GenforgeError
from genforge.registry import build_model, task_of

WEIGHTS = "model.safetensors"
CHECKPOINT = "checkpoints/last.safetensors"
BEST = "checkpoints/best.safetensors"  # with train.early_stopping: the weights of the best validation epoch so far


def write_bytes(path: str | Path, data: bytes) -> Path:
    """The one way a run-dir file is written: a temp file in the same folder, fsync, rename over the old file, fsync
    of the folder (else the rename itself may be lost in a power cut). A crash at any point leaves the old file or
    the new one, never a torn one, and no temp file behind a failed write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # a platform without directory handles (Windows): the rename is what it offers
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; the file itself was synced
        pass
    finally:
        os.close(fd)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: str | Path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=1))


def write_with(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Atomically write what `write(file)` writes (a figure's savefig, PIL's save, np.save), through write_bytes."""
    buffer = io.BytesIO()
    write(buffer)
    return write_bytes(path, buffer.getvalue())



def _flatten(tree, tensors: dict[str, torch.Tensor], prefix: str = ""):
    """Replace every tensor in a nested dict/list by a reference into `tensors`; the rest stays JSON."""
    if isinstance(tree, torch.Tensor):
        key = prefix or "t"
        tensors[key] = tree.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if isinstance(tree, dict):
        return {"__dict__": [[k, _flatten(v, tensors, f"{prefix}.{k}")] for k, v in tree.items()]}
    if isinstance(tree, (list, tuple)):
        return [_flatten(v, tensors, f"{prefix}.{i}") for i, v in enumerate(tree)]
    return tree


def _unflatten(tree, tensors: dict[str, torch.Tensor]):
    if isinstance(tree, dict) and "__tensor__" in tree:
        return tensors[tree["__tensor__"]]
    if isinstance(tree, dict) and "__dict__" in tree:
        return {k: _unflatten(v, tensors) for k, v in tree["__dict__"]}
    if isinstance(tree, list):
        return [_unflatten(v, tensors) for v in tree]
    return tree


def save_state(path: Path, state: dict) -> None:
    """Save a nested dict of tensors and plain values (optimizer, RNG, counters) as one safetensors file."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _flatten(state, tensors)
    write_bytes(path, st_save(tensors, metadata={"genforge_tree": json.dumps(tree)}))


def load_state(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        tree = json.loads(f.metadata()["genforge_tree"])
    return _unflatten(tree, tensors)


def save_weights(model: nn.Module, path: Path) -> None:
    state = model.state_dict()
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise RuntimeError(f"refusing to save non-finite weights ({bad[0]})")
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    write_bytes(path, st_save(tensors, metadata={"format": "pt"}))  # plain keys: readable anywhere


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    try:
        state = load_file(str(path))
    except SafetensorError as e:
        raise GenforgeError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # missing, unexpected or misshapen tensors
        raise GenforgeError(f"{path}: the weights do not fit the model its config.yaml describes "
                            f"({str(e).splitlines()[0]} ...)") from None
    return model


def checkpoint_weights(step_state: dict) -> dict[str, torch.Tensor]:
    """The plain weights in a checkpoint's step state: what its step evaluates and saves (eval_model), the EMA of
    the weights where there is one (of the whole model, or of a GAN's generator)."""
    weights = dict(step_state["model"])
    if (ema := step_state.get("ema")) is not None:
        averaged = {k[len("module."):]: v for k, v in ema.items() if k.startswith("module.")}
        if averaged.keys() <= weights.keys():
            weights.update(averaged)
        else:
            weights.update({f"generator.{k}": v for k, v in averaged.items()})
    return weights


def create_run(runs_dir: str | Path, name: str, cfg: RunConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run = Path(runs_dir) / f"{name}-{stamp}"
    suffix = 1
    while run.exists():
        suffix += 1
        run = Path(runs_dir) / f"{name}-{stamp}-{suffix}"
    (run / "checkpoints").mkdir(parents=True)
    write_config(run, cfg)
    return run


def write_config(run: Path, cfg: RunConfig) -> None:
    """config.yaml: the resolved config, with what the data decided filled in once training starts."""
    write_text(run / "config.yaml", dump_config(cfg))


def environment(device: torch.device) -> dict:
    try:
        git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        git = ""
    import numpy

    import genforge

    return {
        "genforge": genforge.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
        "python": platform.python_version(), "platform": platform.platform(), "git": git or None,
        "device": str(device), "threads": torch.get_num_threads(),
    }


def resolve_run(path: str | Path) -> Path:
    run = Path(path)
    if not (run / "config.yaml").is_file():
        raise GenforgeError(f"{path} is not a run directory (no config.yaml); list runs with `genforge runs`")
    return run


def weights_digest(run: Path) -> str | None:
    """sha256 of a run's final weights (None before training ends): what an export records it was made from."""
    path = run / WEIGHTS
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def read_json(path: Path) -> dict:
    """A run's JSON file as a dict ({} when it is absent); a damaged one is a one-line error naming it."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GenforgeError(f"{path}: not valid JSON ({e}); the run directory is damaged: restore the file, or "
                            f"train the run again") from None
    if not isinstance(data, dict):
        raise GenforgeError(f"{path}: holds a JSON {type(data).__name__}, not an object; the run directory is "
                            f"damaged: restore the file, or train the run again")
    return data


def _is_shape(value) -> bool:
    return isinstance(value, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in value)


def _is_strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _shape_bounds(shape: list[int]) -> str | None:
    """What a well-typed input_shape (or norm_shape: the statistics per channel or per feature) has that training
    never writes, or None. Both size the model load_run builds: a crafted [10**9] would allocate gigabytes."""
    if len(shape) == 1:
        return f"a vector of at most {MAX_FEATURES:,} values" if shape[0] > MAX_FEATURES else None
    if len(shape) != 3:
        return "[D] (a vector) or [C, H, W] (an image)"
    if shape[0] > MAX_CHANNELS:
        return f"at most {MAX_CHANNELS} channels"
    if max(shape[1:]) > MAX_SIDE:
        return f"an image side of at most {MAX_SIDE} pixels (data.image_size's bound)"
    return None


META_KEYS = {  # what load_run and the run's users read from meta.json: key -> (required, check, what it must be)
    "dataset": (True, lambda v: isinstance(v, str), "a string"),
    "classes": (True, _is_strings, "a list of strings"),
    "input_shape": (True, lambda v: _is_shape(v) and len(v) >= 1, "a list of positive integers"),
    "norm_shape": (True, _is_shape, "a list of positive integers"),
    "freq": (False, lambda v: v is None or isinstance(v, str), "a pandas frequency string"),
    "season": (False, lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "a positive integer"),
    "series": (False, _is_strings, "a list of strings"),
    "light_background": (False, lambda v: isinstance(v, bool), "true or false"),  # grayscale images: whether the
    # training split's border was light (predict and serve invert uploads to match); absent: light on black
}


def check_meta(meta: dict, path: Path) -> dict:
    """meta.json's keys that rebuild the model, checked before any is used: a missing key, a wrong type or a size past
    what training writes is one line naming it (a hand-edited or crafted file, not a traceback from deep in build_model
    or an allocation of the size it claims)."""
    damaged = "the run directory is damaged: restore the file, or train the run again"
    for key, (required, check, what) in META_KEYS.items():
        if key not in meta:
            if required:
                raise GenforgeError(f"{path}: no key {key!r} ({what}); {damaged}")
        elif not check(meta[key]):
            raise GenforgeError(f"{path}: {key!r} must be {what}, not {json.dumps(meta[key])[:60]}; {damaged}")
    for key in ("input_shape", "norm_shape"):
        if (bound := _shape_bounds(meta[key])) is not None:
            raise GenforgeError(f"{path}: {key!r} is {json.dumps(meta[key])[:60]}, but training writes {bound}; "
                                f"{damaged}")
    if len(meta["classes"]) > MAX_CLASSES:  # the classifier's last layer has one output per class
        raise GenforgeError(f"{path}: 'classes' holds {len(meta['classes']):,} classes, but training writes at most "
                            f"{MAX_CLASSES:,}; {damaged}")
    return meta


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
        """What the run's kind does (genforge.tasks): its evaluation, report, export parts, serving verbs."""
        return task_of(self.config.model.kind)

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

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of q(z|x) for raw uint8 images (a VAE)."""
        self.require("encode")
        with torch.inference_mode():
            return self.model.encode(x.float() / 255, labels)

    def forecast(self, history, horizon: int | None = None, *, end=None, covariates: dict | None = None):
        """Quantile forecasts of `horizon` steps (default: the trained one) after a history (a sequence of numbers,
        or N equal-length ones): a tasks.forecast.Forecast with .median, .interval(80|95) and .columns(). A model
        that reads covariates (config.yaml's model.covariates) needs them: `end`, the time of the history's last
        value, for calendar features; `covariates`, {column: its values over the history and the horizon}."""
        self.require("forecast")
        from genforge.tasks.forecast import as_history, covariates_for, forecast

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
            from genforge.explain import Explainer

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
        """A class given by index or label -> its index (None stays None)."""
        classes = self.meta["classes"]
        if isinstance(target, str) and not target.lstrip("-").isdigit():
            if target not in classes:
                raise GenforgeError(f"unknown class {target!r}; the classes are: {', '.join(classes)}")
            return classes.index(target)
        if target is not None and not 0 <= int(target) < len(classes):
            raise GenforgeError(f"class {target} is out of range 0-{len(classes) - 1}")
        return None if target is None else int(target)

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
    `threads` threads, or with None as many as its task serves with; see compress/export.py), or None for the
    run's own: ONNX Runtime for a run that holds only ONNX files (an int8 run), else torch."""
    import yaml

    run = resolve_run(path)
    try:
        cfg = validate(yaml.safe_load((run / "config.yaml").read_text()) or {})
    except (yaml.YAMLError, GenforgeError) as e:
        raise GenforgeError(f"{run / 'config.yaml'} does not load: {str(e).splitlines()[0]}") from None
    meta = read_json(run / "meta.json")
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
    check_meta(meta, run / "meta.json")
    zeros = torch.zeros(meta["norm_shape"])
    model = build_model(cfg.model, tuple(meta["input_shape"]), len(meta["classes"]), zeros, zeros + 1)
    if checkpoint and weights.is_file():
        try:
            model.load_state_dict(checkpoint_weights(load_state(weights)["step_fn"]))
        except (SafetensorError, KeyError, RuntimeError) as e:
            raise GenforgeError(f"{weights}: not a checkpoint of the model config.yaml describes "
                                f"({str(e).splitlines()[0]})") from None
    elif weights.is_file():
        load_weights(model, weights)
    model.eval()
    loaded = LoadedRun(run, cfg, model, meta, read_json(run / "summary.json"), backend,
                       read_json(run / "compression.json") or None)
    if backend == "onnxruntime":
        from genforge.compress.export import load_parts

        load_parts(loaded, run / "export", threads if threads is not None else loaded.task.onnx_threads())
    return loaded


def list_runs(runs_dir: str | Path) -> list[dict]:
    rows = []
    for cfg_path in sorted(Path(runs_dir).glob("*/config.yaml")):
        run = cfg_path.parent
        summary = read_json(run / "summary.json")
        rows.append({"run": run.name, "path": str(run), "status": summary.get("status", "incomplete"), **summary})
    return rows
