"""The run directory's format: create it, write files atomically, save and load weights and training state
(safetensors only), read its JSON files, list runs.
Everything that reads or writes a run directory goes through here."""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import numpy
import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as st_save
from torch import nn

import genforge
from genforge.config import RunConfig, dump_config, validate
from genforge.data.dataset import MAX_CLASSES, MAX_FEATURES
from genforge.data.images import MAX_CHANNELS, MAX_SIDE
from genforge.errors import GenforgeError
from genforge.models.catalogue import build_model

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


def read_config(run: Path) -> RunConfig:
    """A run's config.yaml, validated (a hand-edited one that no longer loads is one line naming it)."""
    try:
        return validate(yaml.safe_load((run / "config.yaml").read_text()) or {})
    except (yaml.YAMLError, GenforgeError) as e:
        raise GenforgeError(f"{run / 'config.yaml'} does not load: {str(e).splitlines()[0]}") from None


def rebuild_model(run: Path, cfg: RunConfig, meta: dict, weights: Path | None, checkpoint: bool = False) -> nn.Module:
    """The model config.yaml describes, with the weights of `weights` (a checkpoint's model weights with
    checkpoint=True; None: as built), in eval mode. The normalization statistics are weights of the model."""
    check_meta(meta, run / "meta.json")
    zeros = torch.zeros(meta["norm_shape"])
    model = build_model(cfg.model, tuple(meta["input_shape"]), len(meta["classes"]), zeros, zeros + 1)
    if checkpoint and weights is not None:
        try:
            model.load_state_dict(checkpoint_weights(load_state(weights)["step_fn"]))
        except (SafetensorError, KeyError, RuntimeError) as e:
            raise GenforgeError(f"{weights}: not a checkpoint of the model config.yaml describes "
                                f"({str(e).splitlines()[0]})") from None
    elif weights is not None:
        load_weights(model, weights)
    return model.eval()


def load_model(path: str | Path) -> tuple[RunConfig, dict, nn.Module]:
    """(config, meta, torch model with the final weights) of a trained run: what training reads from another run (a
    teacher, the weights to fine-tune, an evaluator). load_run (runs.py) is the full view, with the task's verbs."""
    run = resolve_run(path)
    cfg, meta = read_config(run), read_json(run / "meta.json")
    if not meta or not (run / WEIGHTS).is_file():
        if (run / "export" / "export.json").is_file():
            raise GenforgeError(f"{run} holds only ONNX models (export/): load it with backend onnxruntime")
        raise GenforgeError(f"{run} has no trained model yet ({WEIGHTS} missing); finish or resume training")
    return cfg, meta, rebuild_model(run, cfg, meta, run / WEIGHTS)


def list_runs(runs_dir: str | Path) -> list[dict]:
    rows = []
    for cfg_path in sorted(Path(runs_dir).glob("*/config.yaml")):
        run = cfg_path.parent
        summary = read_json(run / "summary.json")
        rows.append({"run": run.name, "path": str(run), "status": summary.get("status", "incomplete"), **summary})
    return rows
