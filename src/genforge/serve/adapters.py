"""A served model: a loaded run plus the verbs the API offers for its kind. No HTTP in here."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from genforge.errors import GenforgeError
from genforge.rundir import WEIGHTS, read_json, resolve_run
from genforge.runs import BACKENDS, LoadedRun, load_run

HEADLINE = ("test_accuracy", "test_macro_f1", "fd", "kid", "precision", "recall", "conditional_accuracy",
            "nll_iwae", "test_elbo", "test_mase", "test_smape", "test_coverage_80", "test_coverage_95",
            "test_mase_seasonal_naive", "latency_ms_b1", "train_seconds")
SHOWN_SERIES = 8  # series of a forecaster's own data that GET /v1/models/{name}/series offers (the first ones)
SHOWN_CONTEXTS = 10  # the last this many contexts of each: what the playground plots and forecasts from


def ascii_int(text: str) -> int | None:
    """The integer that `text` writes as JSON writes one, with the digits 0-9 and an optional minus (leading zeros
    allowed, as HTTP's Content-Length allows them), else None: every integer a request writes as text (a header, a
    form field, a query parameter, a JSON string, a class index) is read by this one rule. str.isdigit() also passes
    '²', which int() refuses, and '٣' or '１２', which int() reads; int() also takes '+', spaces and underscores. At
    most 100 digits: int() refuses over 4,300 (CPython's guard against quadratic parsing), and no count or index here
    needs more."""
    digits = text[1:] if text[:1] == "-" else text
    return int(text) if 0 < len(digits) <= 100 and digits.isascii() and digits.isdigit() else None


class NotExplainable(GenforgeError):
    """The classifier, as served, cannot be explained (no torch weights to take gradients of): the route's 409."""


@dataclass
class ServedModel:
    name: str
    run: LoadedRun
    stats: dict = field(default_factory=dict)
    recent: dict | None = None  # a forecaster's own series, their last values (load_series, at start)
    recent_error: str | None = None  # why they could not be loaded
    _explainer: object = field(default=None, init=False, repr=False)  # genforge.explain.Explainer, built on first use
    _explain_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @cached_property  # read on every classify request
    def task(self):
        return self.run.task

    @property
    def model(self):
        """The run's model (its ONNX parts in place with backend onnxruntime)."""
        return self.run.model

    @property
    def backend(self) -> str:
        return self.run.backend

    @cached_property  # read on every classify request
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.run.meta["input_shape"])

    @property
    def light_background(self) -> bool:
        """Whether a grayscale model's training images had light borders (decode_image inverts uploads to match)."""
        return self.run.meta.get("light_background", False)

    @cached_property
    def classes(self) -> list[str]:
        return list(self.run.meta["classes"])

    @property
    def conditional(self) -> bool:
        return bool(getattr(self.run.config.model, "conditional", False))  # classifiers' configs have no such key

    @cached_property  # read on every classify request
    def _verbs(self) -> tuple[str, ...]:
        verbs = self.task.verbs
        return (*verbs, "explain") if "classify" in verbs and self.explain_refusal is None else verbs

    def verbs(self) -> tuple[str, ...]:
        return self._verbs

    def card(self) -> dict:
        """What a client needs to call the model and judge it: kind, data, classes, shape, metrics, config."""
        summary = self.run.summary
        return {
            "name": self.name, "kind": self.run.config.model.kind, "task": self.task.name, "verbs": self.verbs(),
            "dataset": self.run.meta.get("dataset"), "classes": self.classes, "input_shape": list(self.input_shape),
            "conditional": self.conditional, "run_id": self.run.path.name, "backend": self.backend,
            "metrics": {k: summary[k] for k in HEADLINE if isinstance(summary.get(k), (int, float))},
            "config": self.run.config.model_dump(mode="json"),
            **({"forecast": self.forecast_card()} if "forecast" in self.verbs() else {}),
            "tensors": self.tensors,  # what POST /v2/models/{name}/infer takes and answers
            **({"privacy": self.privacy_card()} if self.privacy_card() else {}),
        }

    def privacy_card(self) -> dict | None:
        """The (epsilon, delta) guarantee of a model trained with train.privacy, else None."""
        privacy = self.run.summary.get("privacy")
        if not privacy:
            return None
        return {"epsilon": privacy["epsilon"], "delta": privacy["delta"], "accountant": privacy["accountant"],
                "mechanism": "DP-SGD (Opacus): per-sample clipping, Gaussian noise, Poisson sampling"}

    # classify -----------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """(N, *input_shape) raw inputs -> (N, K) probabilities; called from the one inference thread."""
        model = self.run.model
        return model.probabilities(model(x)).float()

    # explain ------------------------------------------------------------------------------------------------
    @cached_property
    def explain_refusal(self) -> str | None:
        """Why this classifier cannot be explained as served (ONNX files only, as an int8 run), else None."""
        if "classify" not in self.task.verbs or self.backend == "torch" or (self.run.path / WEIGHTS).is_file():
            return None
        parent = (self.run.lineage or {}).get("parent_name")
        return (f"{self.name} is served from ONNX files only (no {WEIGHTS}): explanations need the gradients of "
                f"PyTorch weights; serve and explain {f'its parent run {parent}' if parent else 'a run that has them'}")

    def class_index(self, target: int | str | None) -> int | None:
        """A class given by index or by label (a string of the digits 0-9 is an index unless it is a label) -> its
        index; None stays None."""
        classes = self.classes
        if isinstance(target, str):
            if target in classes:
                return classes.index(target)
            index = ascii_int(target)
            if index is None:
                listed = ", ".join(classes) if len(classes) <= 20 else f"GET /v1/models/{self.name} lists them"
                raise GenforgeError(f"target: no class labelled {target!r}; give a class index 0-{len(classes) - 1} "
                                    f"(in the digits 0-9) or a label ({listed})")
            target = index
        if target is not None and not 0 <= target < len(classes):
            raise GenforgeError(f"target: class {target} is out of range; {self.name} has {len(classes)} classes "
                                f"(0-{len(classes) - 1})")
        return target

    def explain(self, x: torch.Tensor, method: str, target: int | None, steps: int | None):
        """Raw inputs (N, *input_shape) -> genforge.explain.Explanation; called from the explain thread. One call at
        a time per model: Captum's layer methods (Grad-CAM) hook the explainer's model while they run."""
        with self._explain_lock:
            if self._explainer is None:
                self._explainer = self._build_explainer()
            if method == "grad-cam" and self._explainer.layer is None:
                raise GenforgeError(f"grad-cam needs a model with feature maps (a CNN) and {self.name} has none: "
                                    f"ask for method integrated-gradients")
            return self._explainer(x, method, target, steps)

    def _build_explainer(self):
        """The Explainer over the served weights. With onnxruntime the model's forward runs in ONNX Runtime, which
        gives no gradients: the run's torch weights are loaded again, once, if they are still the ones served."""
        from genforge.explain import Explainer

        if self.explain_refusal:
            raise NotExplainable(self.explain_refusal)
        model = self.model
        if self.backend == "onnxruntime":
            from genforge.onnx.export import is_stale

            if is_stale(self.run.path, read_json(self.run.onnx_dir / "export.json")):
                raise NotExplainable(f"{self.run.path.name}'s weights changed since the server loaded its ONNX "
                                     f"export: restart the server to serve (and explain) the new ones")
            model = load_run(self.run.path, backend="torch").model
        return Explainer(model, self.input_shape)

    # generate -----------------------------------------------------------------------------------------------
    def generate(self, n: int, label: int | None, seed: int, truncation: float | None) -> torch.Tensor:
        return self.run.sample(n, label=label, seed=seed, truncation=truncation)

    def render(self, z: torch.Tensor, label: int | None) -> torch.Tensor:
        """uint8 images (N, C, H, W) for given latents (N, latent_dim): what generate draws for a seed's latents. A
        conditional model draws class `label` (default: every class in turn, as generate)."""
        from genforge.models.layers import sample_labels

        model = self.run.model
        if label is not None and not 0 <= label < len(self.classes):
            raise GenforgeError(f"label {label} is out of range 0-{len(self.classes) - 1}")
        labels = None if label is None else torch.full((len(z),), label, dtype=torch.long)
        return model.render(z, sample_labels(len(z), labels, len(self.classes), self.conditional, torch.device("cpu")))

    @cached_property
    def tensors(self) -> dict[str, list[dict]]:
        """The model's tensors in the Open Inference Protocol (serve/v2.py): inputs and outputs, each with its
        name, datatype, shape (-1: any size) and what it holds; `optional` inputs may be left out."""
        shape, verbs = list(self.input_shape), self.verbs()
        if "classify" in verbs:
            k = len(self.classes)
            x = ({"name": "input", "datatype": "UINT8", "shape": [-1, *shape], "description": "images, 0-255"}
                 if len(shape) == 3 else
                 {"name": "input", "datatype": "FP32", "shape": [-1, *shape], "description": "feature vectors"})
            return {"inputs": [x], "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, k],
                 "description": f"class probabilities, in the order of the card's classes ({k})"},
                {"name": "top_k", "datatype": "INT64", "shape": [-1, -1],
                 "description": "class indices, most probable first; the request parameter top_k (default 3) "
                                "says how many"}]}
        if "generate" in verbs:
            latent = self.run.model.latent_dim
            one = "a tensor of shape [1]"
            return {"inputs": [
                {"name": "n", "datatype": "INT64", "shape": [1], "description": f"images to draw ({one}); "
                 "with seed and label, the same images as /v1 generate", "optional": True},
                {"name": "seed", "datatype": "INT64", "shape": [1], "description": f"{one}; default 0",
                 "optional": True},
                {"name": "label", "datatype": "INT64", "shape": [1], "description": f"the class to draw ({one}), "
                 "class-conditional models; default: every class in turn", "optional": True},
                {"name": "latent", "datatype": "FP32", "shape": [-1, latent], "description": "latents z to render, "
                 "instead of n and seed", "optional": True}],
                "outputs": [{"name": "images", "datatype": "UINT8", "shape": [-1, *shape], "description": "0-255"}]}
        if "forecast" in verbs:
            levels, card = len(self.model.cfg.quantiles), self.forecast_card()
            reads = [  # what the verb needs beyond the history: the same checks as /v1 forecast's end and covariates
                *([{"name": "end", "datatype": "BYTES", "shape": [1], "description": "the time of the histories' "
                    f"last value (e.g. 2010-12-01), on the model's {card['freq']} grid: it places them on the "
                    "calendar the model reads"}] if card["calendar"] else []),
                *([{"name": "covariates", "datatype": "FP32", "shape": [-1, -1, len(card["covariates"])],
                    "description": f"the covariate columns {', '.join(card['covariates'])} (in this order) over the "
                    "history's steps and the horizon's: 1 row shared by every history, or one per history"}]
                  if card["covariates"] else [])]
            return {"inputs": [
                {"name": "history", "datatype": "FP32", "shape": [-1, -1], "description": "N equally long "
                 f"histories, oldest first, at least {self.minimum_history} values each"},
                {"name": "horizon", "datatype": "INT64", "shape": [1], "description": "steps to forecast; default "
                 "the trained horizon", "optional": True}, *reads],
                "outputs": [{"name": "quantiles", "datatype": "FP32", "shape": [-1, -1, levels],
                             "description": "per history and step, the quantiles at the card's forecast.levels"}]}
        return {"inputs": [], "outputs": []}

    def interpolate(self, steps: int, seed: int, from_label: int | None, to_label: int | None) -> torch.Tensor:
        from genforge.models.latent import interpolate

        return interpolate(self.run.model, steps, seed, from_label, to_label)

    def reconstruct(self, x: torch.Tensor, label: int | None) -> torch.Tensor:
        labels = None
        if self.conditional:
            if label is None:
                raise GenforgeError("this VAE is class-conditional: give the inputs' class as `label`")
            labels = torch.full((len(x),), label, dtype=torch.long)
        return self.run.model.reconstruct(x, labels)

    # forecast -----------------------------------------------------------------------------------------------
    @cached_property
    def minimum_history(self) -> int:
        from genforge.forecasting.inference import minimum_history

        return minimum_history(self.model)

    def forecast_card(self) -> dict:
        """What a forecaster reads and answers: its context, trained horizon and quantile levels."""
        model, meta = self.model, self.run.meta
        series_opts = self.run.config.data.series
        return {"context": model.context, "horizon": model.horizon, "levels": [float(q) for q in model.cfg.quantiles],
                "minimum_history": self.minimum_history, "season": meta.get("season"), "freq": meta.get("freq"),
                "series": meta.get("series", []), "features": list(getattr(model.cfg, "covariates", [])),
                "calendar": bool(model.features and series_opts.calendar),
                "covariates": list(series_opts.covariates) if model.features else []}

    def forecast(self, history, horizon: int | None = None, end: str | None = None, covariates: dict | None = None):
        """A history (L,) or (N, L) -> forecasting.inference.Forecast: quantiles (N, horizon, Q) at its levels, the same
        numbers as load_run(run).forecast; called from the one inference thread."""
        return self.run.forecast(history, horizon, end=end, covariates=covariates)

    def load_series(self) -> None:
        """The last SHOWN_CONTEXTS contexts of the first SHOWN_SERIES series the model trained on, read once at
        start (the playground forecasts from them). Data that no longer loads (a CSV moved away) leaves the reason
        in recent_error: the forecast route does not need it."""
        if self.recent is not None or self.recent_error is not None:
            return  # read at an earlier start of the app
        try:
            ds = self.task.dataset(self.run.config)
        except Exception as e:  # noqa: BLE001 - any failure: the server still serves the model
            why = (str(e).splitlines() or [type(e).__name__])[0]
            self.recent_error = f"the series {self.name} trained on do not load here ({why})"
            return
        keep = max(SHOWN_CONTEXTS * self.model.context, self.minimum_history)

        def covariates(s):  # the shown steps' covariate columns and their known future (the playground sends them)
            if s.exog is None or not self.model.features:
                return {}
            start = max(0, len(s.values) - keep)
            return {"covariates": {name: s.exog[start:, i].astype(float).tolist() for i, name in
                                   enumerate(ds.covariates)}}

        shown = [{"id": str(s.id), "length": len(s.values), "values": s.values[-keep:].astype(float).tolist(),
                  "times": np.datetime_as_string(s.times[-keep:], unit="s").tolist(), **covariates(s)}
                 for s in ds.series[:SHOWN_SERIES]]
        self.recent = {"freq": ds.freq, "season": ds.season, "total_series": len(ds.series), "series": shown}

    def warm_up(self) -> float:
        """One call of every verb on dummy data, so the first request pays no one-time costs (a forecaster also
        reads its own series, for the playground). Returns seconds."""
        t0 = time.perf_counter()
        self.task.warm_up(self)
        if "forecast" in self.verbs():
            self.load_series()
        return time.perf_counter() - t0


SERVE_BACKENDS = ("auto", *BACKENDS)


def _load(path: str | Path, backend: str) -> LoadedRun:
    """A run on the backend asked for. onnxruntime exports a trained run first, once, into RUN/export (verified
    against PyTorch). auto: onnxruntime wherever the run can run there, else torch. Serving runs on the CPU, where
    ONNX Runtime answers classify at 1.3-1.5x eager PyTorch's rate and generates faster (docs/benchmarks.md)."""
    if backend not in SERVE_BACKENDS:
        raise GenforgeError(f"backend must be one of {', '.join(SERVE_BACKENDS)}, got {backend!r}")
    path = resolve_run(path)
    if backend == "torch":
        return load_run(path, backend="torch")
    from genforge.onnx.export import EXPORT_DIR, is_stale, load_parts

    record = read_json(path / EXPORT_DIR / "export.json")
    if is_stale(path, record):
        print(f"{path / EXPORT_DIR} was exported from earlier weights: exporting again", flush=True)
        record = {}
    if record.get("dynamic_batch") or record and backend == "onnxruntime":  # a batch-fixed export raises there
        run = load_run(path, backend="onnxruntime", threads=None)  # the threads its task serves with
        return load_run(path, backend="torch") if _any_length(run, backend) else run
    if record:  # auto, and the export serves one batch size only
        print(f"serving {path} with torch: its ONNX export is for batch {record.get('batch_size')} only "
              f"(`genforge export {path} --dynamic-batch` lets onnxruntime serve it)", flush=True)
        return load_run(path, backend="torch")
    trained = load_run(path, backend="torch")  # a run that cannot load says why before any export
    if _any_length(trained, backend):
        return trained
    print(f"exporting {path} to ONNX for onnxruntime (once, into {path / EXPORT_DIR})", flush=True)
    try:
        _export(path)
    except GenforgeError as e:
        if backend == "onnxruntime":
            raise
        print(f"serving {path} with torch: {e}", flush=True)  # auto: the fastest backend that works
        return trained
    load_parts(trained, path / EXPORT_DIR, trained.task.onnx_threads())  # the loaded run, its parts now in ORT
    return trained


def _any_length(run: LoadedRun, backend: str) -> bool:
    """Whether the run's model reads histories of any length (a forecasting baseline, `full_history`), which its ONNX
    graph cannot: the graph keeps the length it was exported with. Such a model has no weights for ONNX Runtime to
    speed up, so auto serves it with torch; asked for onnxruntime, it is refused."""
    if not getattr(run.model, "full_history", False):
        return False
    if backend == "onnxruntime":
        raise GenforgeError(f"{run.path} ({run.config.model.kind}) reads histories of any length, which its ONNX "
                            f"export cannot (it takes {run.model.context} values only); serve it with --backend "
                            f"auto or torch")
    return True


def _export(path: Path) -> None:
    """`genforge export RUN --dynamic-batch` in a child process: the exporter's imports and graphs (~290 MiB
    measured) stay out of the long-lived server, and an exporter crash cannot take it down."""
    child = subprocess.run([sys.executable, "-m", "genforge", "export", str(path), "--dynamic-batch"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if child.returncode != 0:
        why = [line for line in child.stderr.splitlines() if line.strip()] or [f"exit code {child.returncode}"]
        raise GenforgeError(f"exporting it to ONNX failed ({why[-1].removeprefix('error: ')})")


def load_models(paths: list[str | Path], backend: str = "auto") -> dict[str, ServedModel]:
    """Served models by name: the run's config name when it is unique among the runs given, else the run
    directory's name. Exactly the runs given at start: the API never loads a model from a path or a URL.
    backend: auto (onnxruntime wherever a run can run there, else torch), torch or onnxruntime."""
    runs = [_load(p, backend) for p in paths]
    if not runs:
        raise GenforgeError("give at least one run directory to serve")
    names = [r.config.name for r in runs]
    models = {}
    for run, short in zip(runs, names):
        name = short if names.count(short) == 1 else run.path.name
        if name in models:
            raise GenforgeError(f"{run.path} is given twice")
        run.model.eval()
        models[name] = ServedModel(name, run)
    return models


def as_array(images: torch.Tensor) -> list:
    """uint8 (N, C, H, W) -> nested lists (N, H, W) for one channel, else (N, C, H, W)."""
    array = images.numpy()
    return (array[:, 0] if array.shape[1] == 1 else array).astype(np.uint8).tolist()
