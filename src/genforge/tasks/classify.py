"""Classification: cross-entropy steps, accuracy on validation, the test report, predict, and the classify and explain
verbs (with the one rule that reads a class given by label or index)."""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, Field, field_validator
from rich.table import Table

from genforge.errors import GenforgeError
from genforge.evaluate import evaluate, measure_speed
from genforge.evaluate.report import write_classifier_report
from genforge.explain import DEFAULT_METHOD, DEFAULT_STEPS, MAX_STEPS, METHODS, overlay
from genforge.grids import png_bytes
from genforge.onnx.parts import Part
from genforge.tasks.base import Task
from genforge.tasks.verb import (
    Answer,
    Arrays,
    Integer,
    IntegerOrNone,
    Limits,
    PixelRange,
    RequestError,
    Strict,
    Verb,
    array_inputs,
    ascii_int,
)
from genforge.train import steps


class NoSuchClass(GenforgeError):
    """A class given by a label that no class has (`label` True), or by an index out of range."""

    def __init__(self, target: int | str, label: bool):
        super().__init__(f"no class {target!r}")
        self.target, self.label = target, label


def class_index(classes: list[str], target: int | str | None) -> int | None:
    """A class given by label or by index -> its index (None stays None), for the library and every protocol. A string
    that is one of the labels is that class; any other string is an index written in the digits 0-9 (ascii_int); an
    integer is an index. Labels first, so that a label made of digits (a CSV's '1', '2', '3') always names its own
    class, while every class stays reachable by its index as an integer. Raises NoSuchClass."""
    if isinstance(target, str):
        if target in classes:
            return classes.index(target)
        index = ascii_int(target)
        if index is None:
            raise NoSuchClass(target, label=True)
        target = index
    if target is not None and not 0 <= target < len(classes):
        raise NoSuchClass(target, label=False)
    return target


class NotExplainable(GenforgeError):
    """The classifier, as served, cannot be explained (no torch weights to take gradients of): the verb's 409."""


class ClassifyOptions(Strict):
    """The fields beside the inputs: the JSON body's, and a multipart upload's form fields."""
    top_k: Integer = Field(3, ge=1, le=1000, description="Classes listed per input, most probable first")
    range: PixelRange = Field("auto", description="Pixel scale; auto: 0-1 if every value <= 1")


class ClassifyRequest(ClassifyOptions):
    inputs: Arrays | list[str] = Field(min_length=1, max_length=256, description="Images (H x W, C x H x W or "
                                       "flat), feature vectors, or strings (a language model's classifier)")


class ClassifyQuery(BaseModel):
    """The options a request may give in its URL."""
    top_k: IntegerOrNone = Field(None, ge=1, le=1000, description="Overrides the body's top_k")
    echo_input: bool = Field(False, description="Return the preprocessed input the model saw")


def classify_answer(served, x: np.ndarray, probs: torch.Tensor, k: int, echo_input: bool, latency_ms: float) -> dict:
    """The classify answer: every probability, the top k classes, and (echo_input) the preprocessed input."""
    classes, predictions = served.classes, []
    for i, p in enumerate(probs.tolist()):
        top = sorted(range(len(p)), key=p.__getitem__, reverse=True)[:k]  # a few classes: cheaper than Tensor.topk
        pred = {"index": top[0], "label": classes[top[0]], "probabilities": p,
                "top_k": [{"index": c, "label": classes[c], "probability": p[c]} for c in top]}
        if echo_input:
            pred["input"] = x[i].reshape(-1, *x.shape[-2:])[0].tolist() if x.ndim == 4 else x[i].tolist()
        predictions.append(pred)
    return {"model": served.name, "backend": served.backend, "latency_ms": latency_ms, "predictions": predictions}


class Classify(Verb):
    """Class probabilities. Requests for one model share forward passes (serve/batching.py): `run` gets their rows."""
    command = "predict"
    summary = "Class probabilities of images (PNG/JPEG upload or JSON arrays), feature vectors or strings"
    request, form, query, array = ClassifyRequest, ClassifyOptions, ClassifyQuery, "inputs"
    thread = "batched"
    answer_field = "predictions"

    def decode(self, served, array, fields: dict, limits: Limits) -> dict:
        x = served.task.request_inputs(served, array, fields)
        if len(x) > limits.max_batch:
            raise RequestError(f"at most {limits.max_batch} inputs per request, got {len(x)}")
        return {"x": x, "top_k": fields["top_k"], "echo_input": fields.get("echo_input", False)}

    def rows(self, inputs: dict) -> torch.Tensor:
        return torch.from_numpy(inputs["x"])

    def run(self, served, rows: torch.Tensor) -> torch.Tensor:
        return served.probabilities(rows)

    def nothing(self, served) -> torch.Tensor:
        return torch.zeros((0, len(served.classes)))

    def check(self, served, inputs: dict, probs: torch.Tensor) -> torch.Tensor:
        if not torch.isfinite(probs).all():  # finite float32 inputs can still overflow inside the model
            raise RequestError("the model's output for these inputs is not finite (values too large for its "
                               "float32 arithmetic); send inputs on the scale of its training data")
        return probs

    def answer(self, served, inputs: dict, probs: torch.Tensor, latency_ms: float) -> dict:
        k = min(inputs["top_k"], len(served.classes))
        return classify_answer(served, inputs["x"], probs, k, inputs["echo_input"], latency_ms)

    def tensors(self, served) -> dict:
        k = len(served.classes)
        return {"inputs": [served.task.input_tensor(served)], "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, k],
             "description": f"class probabilities, in the order of the card's classes ({k})"},
            {"name": "top_k", "datatype": "INT64", "shape": [-1, -1],
             "description": "class indices, most probable first; the request parameter top_k (default 3) says how "
                            "many"}]}

    def from_tensors(self, served, tensors: dict, parameters: dict) -> tuple[np.ndarray, dict]:
        return tensors["input"], {"top_k": parameters["top_k"]} if "top_k" in parameters else {}

    def outputs(self, served, inputs: dict, probs: torch.Tensor) -> dict[str, np.ndarray]:
        """Shaped as the metadata says ([N, K] and [N, k]), zero rows included."""
        p = probs.numpy().astype(np.float32, copy=False)
        k = min(inputs["top_k"], p.shape[1])
        return {"probabilities": p, "top_k": np.argsort(-p, axis=1, kind="stable")[:, :k].astype(np.int64)}


class ClassTarget(Strict):
    target: str | int | None = Field(None, description="The class to explain, by index or label; default: each "
                                     "input's predicted one", json_schema_extra={"anyOf": [
                                         {"type": "string", "minLength": 1, "maxLength": 200},
                                         {"type": "integer", "minimum": 0}, {"type": "null"}]})

    @field_validator("target", mode="before")
    @classmethod
    def _class(cls, value):  # one message for both kinds, rather than pydantic's two (one per member of the union)
        if value is None or isinstance(value, str) and 0 < len(value) <= 200 or type(value) is int and value >= 0:
            return value
        raise ValueError("give a class index (an integer from 0) or a class label")


class ExplainOptions(ClassTarget):
    method: Literal[METHODS] = Field(DEFAULT_METHOD, description="The attribution method (docs/decisions.md)")
    steps: IntegerOrNone = Field(None, ge=1, le=MAX_STEPS, description=f"Gradient evaluations per input (integrated-"
                              f"gradients: noisy copies of an image x path points; gradient-shap: samples); at most "
                              f"the server's max_explain_steps ({Limits.max_explain_steps} by default); default "
                              f"{DEFAULT_STEPS['integrated-gradients']}")
    range: PixelRange = Field("auto", description="Pixel scale; auto: 0-1 if every value <= 1")
    format: Literal["array", "png"] = Field("array", description="array: JSON with the attributions; png: the "
                                            "overlays (one input: its overlay; several: a grid, 8 per row)")


class ExplainRequest(ExplainOptions):
    inputs: Arrays = Field(min_length=1, max_length=256, description=f"Images (H x W, C x H x W or flat) or feature "
                           f"vectors; at most the server's max_explain_batch ({Limits.max_explain_batch} by default)")


def explain_answer(served, explanation, latency_ms: float) -> dict:
    """The explain answer: per input, the predicted class and every probability (as classify gives them), the
    explained class with its probability, and the attributions in the model's input shape (its card's)."""
    classes, explanations = served.classes, []
    for p, t, a in zip(explanation.probabilities.tolist(), explanation.target.tolist(), explanation.attributions):
        k = max(range(len(p)), key=p.__getitem__)
        explanations.append({"index": k, "label": classes[k], "probabilities": p,
                             "target": {"index": t, "label": classes[t], "probability": p[t]},
                             "attributions": a.tolist()})
    return {"model": served.name, "backend": "torch", "latency_ms": latency_ms, "method": explanation.method,
            "steps": explanation.steps, "copies": explanation.copies, "precision": explanation.precision,
            "explanations": explanations}


def overlay_png(images: np.ndarray, attributions: torch.Tensor) -> bytes:
    """One image: its overlay (about 224 pixels a side); several: their overlays in a grid of 8 per row."""
    scale = max(1, 224 // max(images.shape[-2:]))  # 8 for 28x28, as `genforge explain` writes them
    if len(images) == 1:
        buffer = io.BytesIO()
        overlay(images[0], attributions[0], scale).save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()
    tiles = np.stack([np.asarray(overlay(x, a, 1)) for x, a in zip(images, attributions)])  # (N, H, W, 3)
    return png_bytes(torch.from_numpy(tiles).permute(0, 3, 1, 2), min(8, len(tiles)), scale, 1)


def target_index(served, target: int | str | None) -> int | None:
    """The explained class, by class_index's rule, or a RequestError that lists what is accepted."""
    classes = served.classes
    try:
        return class_index(classes, target)
    except NoSuchClass as e:
        if e.label:
            listed = ", ".join(classes) if len(classes) <= 20 else f"GET /v1/models/{served.name} lists them"
            raise RequestError(f"target: no class labelled {target!r}; give a class index 0-{len(classes) - 1} (in "
                               f"the digits 0-9) or a label ({listed})") from None
        raise RequestError(f"target: class {e.target} is out of range; {served.name} has {len(classes)} classes "
                           f"(0-{len(classes) - 1})") from None


class Explain(Verb):
    command = "explain"
    summary = ("What a classifier looks at: attributions of its inputs (Captum) for the predicted or a chosen class, "
               "as arrays or overlays")
    description = """The inputs as classify takes them (a PNG/JPEG upload or JSON arrays, the same checks), at most
max_explain_batch of them; `method`, `target` (index or label), `steps` (at most max_explain_steps, for the methods
that take them) and `format` (array: JSON; png: one input's overlay, or a grid of several, with the classes in the
x-predicted and x-target headers).

Gradients need PyTorch, so the answer's backend is always torch: a model served with onnxruntime is explained with
its run's torch weights, loaded once on the first explanation (its probabilities here are torch's, equal to ONNX
Runtime's to float32 rounding). A run without them (an int8 run: ONNX files only) gets a 409, and so does one whose
weights changed on disk since the server loaded its export. One explanation at a time per model, on a thread of its
own: classify never queues behind one."""
    request, form, array = ExplainRequest, ExplainOptions, "inputs"
    thread, fewer = "gradients", "inputs or steps"  # backward passes, up to seconds: a thread of their own
    answer_field = "explanations"
    png = "Attributions as JSON arrays, or the overlays as a PNG"
    conflict = "The model is served without PyTorch weights to explain"

    def offered(self, served) -> bool:
        return served.explain_refusal is None

    def refusal(self, served) -> str | None:
        return served.explain_refusal

    def decode(self, served, array, fields: dict, limits: Limits) -> dict:
        x = array_inputs(array, served.input_shape, fields["range"])
        if len(x) > limits.max_explain_batch:
            raise RequestError(f"at most {limits.max_explain_batch} inputs per explain request, got {len(x)}; send "
                               f"the others in further requests")
        method, steps, fmt = fields["method"], fields["steps"], fields["format"]
        if steps is not None and method not in DEFAULT_STEPS:
            raise RequestError(f"steps: {method} takes no steps (only {' and '.join(DEFAULT_STEPS)} do); leave it out")
        if steps is not None and steps > limits.max_explain_steps:
            raise RequestError(f"steps must be at most {limits.max_explain_steps} on this server, got {steps}")
        if fmt == "png" and len(served.input_shape) != 3:
            raise RequestError(f"format png overlays images; {served.name} takes feature vectors: ask for format "
                               f"array")
        return {"x": x, "method": method, "target": target_index(served, fields["target"]), "steps": steps,
                "format": fmt}

    def run(self, served, inputs: dict):
        try:
            return served.explain(torch.from_numpy(inputs["x"]), inputs["method"], inputs["target"], inputs["steps"])
        except NotExplainable as e:
            raise RequestError(str(e), 409) from None

    def check(self, served, inputs: dict, result):
        if not (torch.isfinite(result.attributions).all() and torch.isfinite(result.probabilities).all()):
            raise RequestError("the model's output for these inputs is not finite (values too large for its float32 "
                               "arithmetic); send inputs on the scale of its training data")
        return result

    def answer(self, served, inputs: dict, result, latency_ms: float) -> dict | Answer:
        if inputs["format"] == "array":
            return explain_answer(served, result, latency_ms)
        predicted = result.probabilities.argmax(1).tolist()
        return Answer(png=functools.partial(overlay_png, inputs["x"], result.attributions), facts={
            "latency-ms": f"{latency_ms:.2f}", "backend": "torch", "method": result.method,
            "predicted": ",".join(map(str, predicted)), "target": ",".join(map(str, result.target.tolist()))})


CLASSIFY, EXPLAIN = Classify("classify"), Explain("explain")


class ClassifyTask(Task):
    name = "classify"
    tune_metric = ("val_acc", "max")
    verbs = (CLASSIFY, EXPLAIN)
    parts = (Part("model", "forward", ("x",), ("logits",)),)
    cross_validation = True
    structured_pruning = True

    def step(self, model, cfg, steps_per_epoch: int, autocast: bool, channels_last: bool):

        # looked up on the module at each call, so that a test can swap in a step that misbehaves on purpose
        return steps.ClassifierStep(model, cfg, steps_per_epoch, autocast=autocast, channels_last=channels_last)

    def validate(self, model, x: torch.Tensor, y: torch.Tensor, ds, cfg) -> dict:

        result = evaluate(model, x, y, ds.classes)
        return {"loss": result["loss"], "acc": result["accuracy"]}

    def test(self, model, ds, cfg) -> dict:

        result = evaluate(model, ds.test_x, ds.test_y, ds.classes)
        result.update(measure_speed(model, ds.test_x[:1]))
        return result

    def headline(self, result: dict) -> dict:
        return {"test_accuracy": result["accuracy"], "test_loss": result["loss"], "test_macro_f1": result["macro_f1"],
                "latency_ms_b1": result["latency_ms_b1"], "throughput_b256": result["throughput_b256"]}

    def report(self, run_dir: Path, model, ds, result: dict, summary: dict, extra=()) -> Path:

        return write_classifier_report(run_dir, model, ds, result, summary, extra)

    def print_evaluation(self, out, name: str, result: dict) -> None:

        out.print(f"[bold]{name}[/] on {result['dataset']} test ({result['n']} items)")
        table = Table("class", "precision", "recall", "F1")
        for c, m in result["per_class"].items():
            table.add_row(c, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}")
        out.print(table)
        out.print(f"accuracy {result['accuracy']:.4f}  macro F1 {result['macro_f1']:.4f}  loss {result['loss']:.4f}\n"
                  f"latency (batch 1) {result['latency_ms_b1']:.2f} ms  throughput (batch 256) "
                  f"{result['throughput_b256']:,.0f}/s")

    def onnx_threads(self) -> int:
        return 1  # batches of a few images; the event loop needs the other cores

    def warm_up(self, served) -> None:
        dtype = torch.uint8 if len(served.input_shape) == 3 else torch.float32
        for n in (1, 16):
            served.probabilities(torch.zeros((n, *served.input_shape), dtype=dtype))


TASK = ClassifyTask()
