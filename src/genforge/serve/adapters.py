"""A served model: a loaded run as the server holds it (its backend, its explainer, a forecaster's own series) and
the verbs its task offers (tasks/: each verb's definition). No HTTP in here."""

from __future__ import annotations

import copy
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from genforge.errors import GenforgeError
from genforge.explain import Explainer
from genforge.forecasting.inference import minimum_history
from genforge.models.latent import interpolate
from genforge.models.layers import sample_labels
from genforge.onnx.export import EXPORT_DIR, MissingPart, is_stale, load_parts
from genforge.rundir import WEIGHTS, read_json, resolve_run
from genforge.runs import BACKENDS, LoadedRun, load_run
from genforge.tasks.classify import NotExplainable
from genforge.tasks.verb import Verb

HEADLINE = ("test_accuracy", "test_macro_f1", "fd", "kid", "precision", "recall", "conditional_accuracy",
            "nll_iwae", "test_elbo", "test_mase", "test_smape", "test_coverage_80", "test_coverage_95",
            "test_mase_seasonal_naive", "latency_ms_b1", "train_seconds")


@dataclass
class ServedModel:
    name: str
    run: LoadedRun
    stats: dict = field(default_factory=dict)
    recent: dict | None = None  # a forecaster's own series, their last values (its series verb, at start)
    recent_error: str | None = None  # why they could not be loaded
    _explainer: object = field(default=None, init=False, repr=False)  # genforge.explain.Explainer, built on first use
    _gradient_model: object = field(default=None, init=False, repr=False)  # with_gradients's copy, built on first use
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
    def _verbs(self) -> tuple[Verb, ...]:
        return self.task.served_verbs(self)

    def verbs(self) -> tuple[Verb, ...]:
        """The verbs its task offers that it answers as served (explain needs torch weights)."""
        return self._verbs

    def own(self, verb: Verb) -> Verb:
        """Its own verb of that name: the route's verb, unless its task answers that route with a verb of its own
        (another request for the same answer, as tasks/language_verbs.py's explain)."""
        return next((v for v in self._verbs if v.name == verb.name), verb)

    @property
    def created(self) -> int:
        """When the run was made (its config.yaml's time, seconds since 1970): OpenAI's model list shows it."""
        return int((self.run.path / "config.yaml").stat().st_mtime)

    def card(self) -> dict:
        """What a client needs to call the model and judge it: kind, data, classes, shape, metrics, config."""
        summary = self.run.summary
        return {
            "name": self.name, "kind": self.run.config.model.kind, "task": self.task.name, "verbs": self.verbs(),
            "dataset": self.run.meta.get("dataset"), "classes": self.classes, "input_shape": list(self.input_shape),
            "conditional": self.conditional, "run_id": self.run.path.name, "backend": self.backend,
            "metrics": {k: summary[k] for k in HEADLINE if isinstance(summary.get(k), (int, float))},
            "config": self.run.config.model_dump(mode="json"),
            **{key: value for verb in self.verbs() for key, value in verb.card(self).items()},
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

    @cached_property
    def tensor_verb(self) -> Verb | None:
        """The verb the Open Inference Protocol (serve/v2.py) answers: the first it offers that has tensors."""
        return next((verb for verb in self.verbs() if verb.tensors(self) is not None), None)

    @cached_property
    def tensors(self) -> dict[str, list[dict]]:
        """The model's tensors in the Open Inference Protocol: inputs and outputs, each with its name, datatype,
        shape (-1: any size) and what it holds; `optional` inputs may be left out."""
        verb = self.tensor_verb
        return verb.tensors(self) if verb is not None else {"inputs": [], "outputs": []}

    def warm_up(self) -> float:
        """One call of every verb on dummy data, so the first request pays no one-time costs (a forecaster also
        reads its own series, for the playground). Returns seconds."""
        t0 = time.perf_counter()
        self.task.warm_up(self)
        for verb in self.verbs():
            for each in (verb, *verb.companions):
                each.warm_up(self)
        return time.perf_counter() - t0

    # what the verbs call, on the inference threads -----------------------------------------------------------
    @torch.inference_mode()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """(N, *input_shape) raw inputs -> (N, K) probabilities."""
        model = self.run.model
        return model.probabilities(model(x)).float()

    @cached_property
    def explain_refusal(self) -> str | None:
        """Why the model cannot be explained as served (ONNX files only, as an int8 run), else None."""
        if self.backend == "torch" or (self.run.path / WEIGHTS).is_file():
            return None
        parent = (self.run.lineage or {}).get("parent_name")
        return (f"{self.name} is served from ONNX files only (no {WEIGHTS}): explanations need the gradients of "
                f"PyTorch weights; serve and explain {f'its parent run {parent}' if parent else 'a run that has them'}")

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

    def with_gradients(self, work):
        """work(model) on a torch copy of the served model, built once, one call at a time (the explain lock): for a
        task's own attributions, of inputs that genforge.explain.Explainer does not take. A copy, so that the hooks an
        attribution method puts on it never touch the model that classify runs."""
        with self._explain_lock:
            if self._gradient_model is None:
                model = self._torch_model()
                self._gradient_model = copy.deepcopy(model) if model is self.model else model
            return work(self._gradient_model)

    def _build_explainer(self):
        return Explainer(self._torch_model(), self.input_shape)  # it keeps its own copy

    def _torch_model(self) -> torch.nn.Module:
        """The served weights as a torch model. With onnxruntime the model's forward runs in ONNX Runtime, which
        gives no gradients: the run's torch weights are loaded again if they are still the ones served."""
        if self.explain_refusal:
            raise NotExplainable(self.explain_refusal)
        model = self.model
        if self.backend == "onnxruntime":
            if is_stale(self.run.path, read_json(self.run.onnx_dir / "export.json")):
                raise NotExplainable(f"{self.run.path.name}'s weights changed since the server loaded its ONNX "
                                     f"export: restart the server to serve (and explain) the new ones")
            model = load_run(self.run.path, backend="torch").model
        return model

    def generate(self, n: int, label: int | None, seed: int, truncation: float | None) -> torch.Tensor:
        return self.run.sample(n, label=label, seed=seed, truncation=truncation)

    def render(self, z: torch.Tensor, label: int | None) -> torch.Tensor:
        """uint8 images (N, C, H, W) for given latents (N, latent_dim): what generate draws for a seed's latents. A
        conditional model draws class `label` (default: every class in turn, as generate)."""
        model = self.run.model
        if label is not None and not 0 <= label < len(self.classes):
            raise GenforgeError(f"label {label} is out of range 0-{len(self.classes) - 1}")
        labels = None if label is None else torch.full((len(z),), label, dtype=torch.long)
        return model.render(z, sample_labels(len(z), labels, len(self.classes), self.conditional, torch.device("cpu")))

    def interpolate(self, steps: int, seed: int, from_label: int | None, to_label: int | None) -> torch.Tensor:
        return interpolate(self.run.model, steps, seed, from_label, to_label)

    def reconstruct(self, x: torch.Tensor, label: int | None) -> torch.Tensor:
        labels = None
        if self.conditional:
            if label is None:
                raise GenforgeError("this VAE is class-conditional: give the inputs' class as `label`")
            labels = torch.full((len(x),), label, dtype=torch.long)
        return self.run.model.reconstruct(x, labels)

    @cached_property
    def minimum_history(self) -> int:
        return minimum_history(self.model)

    def forecast(self, history, horizon: int | None = None, end: str | None = None, covariates: dict | None = None):
        """A history (L,) or (N, L) -> forecasting.inference.Forecast: quantiles (N, horizon, Q) at its levels, the same
        numbers as load_run(run).forecast."""
        return self.run.forecast(history, horizon, end=end, covariates=covariates)


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
    record = read_json(path / EXPORT_DIR / "export.json")
    if is_stale(path, record):
        print(f"{path / EXPORT_DIR} was exported from earlier weights: exporting again", flush=True)
        record = {}
    if record.get("dynamic_batch") or record and backend == "onnxruntime":  # a batch-fixed export raises there
        try:
            run = load_run(path, backend="onnxruntime", threads=None)  # the threads its task serves with
        except MissingPart:
            if not (path / WEIGHTS).is_file():
                raise
            print(f"{path / EXPORT_DIR} lacks a part this model exports now: exporting again", flush=True)
            record = {}
        else:
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

