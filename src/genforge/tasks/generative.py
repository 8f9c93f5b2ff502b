"""What GANs and VAEs share: a sample grid from fixed noise at each evaluation, sample quality at the end (FD, KID,
precision/recall against the test images, scored by the dataset's evaluator network), and the generate and
interpolate verbs."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from rich.table import Table

from genforge.evaluate.features import Evaluator, load_evaluator
from genforge.evaluate.generative import evaluate_generator, frechet_distance, generate
from genforge.evaluate.report import write_generator_report
from genforge.grids import png_bytes, save_images
from genforge.tasks.base import Task
from genforge.tasks.verb import Answer, Integer, IntegerOrNone, Limits, RequestError, Strict, Verb


class GenerateRequest(Strict):
    n: Integer = Field(16, ge=1, le=256, description="Number of images")
    label: IntegerOrNone = Field(None, ge=0, le=100_000, description="Class to draw (class-conditional models)")
    seed: Integer = Field(0, ge=0, le=2**31 - 1, description="The same seed gives the same images")
    truncation: float | None = Field(None, gt=0, le=10, description="Redraw latent entries beyond ±T")
    format: Literal["png", "array"] = "png"


class InterpolateRequest(Strict):
    steps: Integer = Field(10, ge=2, le=256)
    seed: Integer = Field(0, ge=0, le=2**31 - 1)
    from_label: IntegerOrNone = Field(None, ge=0, le=100_000)
    to_label: IntegerOrNone = Field(None, ge=0, le=100_000)
    format: Literal["png", "array"] = "array"


def as_array(images: torch.Tensor) -> list:
    """uint8 (N, C, H, W) -> nested lists (N, H, W) for one channel, else (N, C, H, W)."""
    array = images.numpy()
    return (array[:, 0] if array.shape[1] == 1 else array).astype(np.uint8).tolist()


def images_answer(served, images: torch.Tensor, fmt: str, extra: dict, latency_ms: float,
                  nrow: int | None = None) -> Answer:
    """A PNG grid (zlib level 1: ~3x faster to encode than the default, for a ~17% larger file), or the uint8
    arrays as JSON beside `extra`."""
    facts = {"latency-ms": f"{latency_ms:.2f}", "backend": served.backend}
    if fmt == "png":
        scale = 2 if images.shape[-1] < 64 else 1
        return Answer(png=functools.partial(png_bytes, images, nrow, scale, 1), facts=facts)
    return Answer(body={**extra, "latency_ms": latency_ms, "backend": served.backend, "images": as_array(images)},
                  facts=facts)


class Generate(Verb):
    """Samples; the Open Inference Protocol may also give the latents to render (its `latent` input)."""
    command = "sample"
    summary = "Samples from a generator: a PNG grid or uint8 arrays; the same seed gives the same images"
    request = GenerateRequest
    answer_field, answer_images, json_answer = "images", True, {"format": "array"}
    png = "A PNG grid or JSON arrays"

    def decode(self, served, latent, fields: dict, limits: Limits) -> dict:
        if latent is not None:
            if not 1 <= len(latent) <= limits.max_n:
                raise RequestError(f"latent: 1 to {limits.max_n} rows, got {len(latent)}")
            if not np.isfinite(latent).all():
                raise RequestError("latent: values must be finite numbers (no NaN or infinity)")
        elif fields["n"] > limits.max_n:
            raise RequestError(f"n must be at most {limits.max_n}")
        return {**fields, "latent": latent}

    def run(self, served, inputs: dict) -> torch.Tensor:
        if inputs["latent"] is not None:
            return served.render(torch.from_numpy(np.array(inputs["latent"])), inputs["label"])
        return served.generate(inputs["n"], inputs["label"], inputs["seed"], inputs["truncation"])

    def answer(self, served, inputs: dict, images: torch.Tensor, latency_ms: float) -> Answer:
        extra = {"model": served.name, "n": inputs["n"], "seed": inputs["seed"], "label": inputs["label"]}
        return images_answer(served, images, inputs["format"], extra, latency_ms)

    def tensors(self, served) -> dict:
        one = "a tensor of shape [1]"
        return {"inputs": [
            {"name": "n", "datatype": "INT64", "shape": [1], "description": f"images to draw ({one}); with seed and "
             "label, the same images as /v1 generate", "optional": True},
            {"name": "seed", "datatype": "INT64", "shape": [1], "description": f"{one}; default 0", "optional": True},
            {"name": "label", "datatype": "INT64", "shape": [1], "description": f"the class to draw ({one}), "
             "class-conditional models; default: every class in turn", "optional": True},
            {"name": "latent", "datatype": "FP32", "shape": [-1, served.model.latent_dim], "description": "latents z "
             "to render, instead of n and seed", "optional": True}],
            "outputs": [{"name": "images", "datatype": "UINT8", "shape": [-1, *served.input_shape],
                         "description": "0-255"}]}

    def from_tensors(self, served, tensors: dict, parameters: dict) -> tuple[np.ndarray | None, dict]:
        latent = tensors.get("latent")
        if latent is not None and ("n" in tensors or "seed" in tensors):
            raise RequestError("give either latent or n and seed, not both")
        return latent, {k: tensors[k] for k in ("n", "seed", "label") if k in tensors}

    def outputs(self, served, inputs: dict, images: torch.Tensor) -> dict[str, np.ndarray]:
        return {"images": images.numpy().astype(np.uint8)}


class Interpolate(Verb):
    command = "interpolate"
    summary = "A walk through latent space (spherical), from one class to another for conditional models"
    request = InterpolateRequest
    answer_field, answer_images, json_answer = "images", True, {"format": "array"}
    png = "A PNG grid or JSON arrays"

    def decode(self, served, array, fields: dict, limits: Limits) -> dict:
        if fields["steps"] > limits.max_n:
            raise RequestError(f"steps must be at most {limits.max_n}")
        return fields

    def run(self, served, inputs: dict) -> torch.Tensor:
        return served.interpolate(inputs["steps"], inputs["seed"], inputs["from_label"], inputs["to_label"])

    def answer(self, served, inputs: dict, images: torch.Tensor, latency_ms: float) -> Answer:
        extra = {"model": served.name, "steps": inputs["steps"], "seed": inputs["seed"]}
        return images_answer(served, images, inputs["format"], extra, latency_ms, nrow=inputs["steps"])


GENERATE, INTERPOLATE = Generate("generate"), Interpolate("interpolate")

BETTER = {"fd": "lower", "kid": "lower", "precision": "higher", "recall": "higher", "conditional_accuracy": "higher"}


class GenerativeTask(Task):
    needs_evaluator = True

    def __init__(self, evaluator: Callable[..., Evaluator] = load_evaluator):
        # evaluator(ds, data_dir): the network the samples are scored in; the cached one, or the application's source
        # that trains it first (genforge.training.scored)
        self.evaluator = evaluator

    def scored_by(self, evaluator: Callable[..., Evaluator]) -> GenerativeTask:
        """This task, scoring with the networks `evaluator(ds, data_dir)` returns."""
        return type(self)(evaluator)

    def validate(self, model, x: torch.Tensor, y: torch.Tensor, ds, cfg) -> dict:
        """With eval.val_samples: the FD of that many samples (the run's seed, so every epoch draws the same noise)
        against as many validation images, in the evaluator's features: the per-epoch quality a GAN's tuning is
        pruned and ranked by (a GAN has no held-out loss). The validation images are raw, as the test's are."""
        n = min(cfg.eval.val_samples, len(x))
        if n < 2:
            return {}
        evaluator = self.evaluator(ds, cfg.data.data_dir)
        labels = torch.arange(n) % len(ds.classes) if getattr(model.cfg, "conditional", False) else None
        samples = generate(model, n, cfg.seed, labels)
        return {"fd": frechet_distance(evaluator.features(samples), evaluator.features(x[:n]))}

    def on_evaluation(self, model, run_dir: Path, epoch: int, cfg) -> None:
        save_images(model.sample(cfg.eval.grid, seed=cfg.seed), run_dir / "samples" / f"epoch-{epoch:03d}.png")

    def test(self, model, ds, cfg) -> dict:
        evaluator = self.evaluator(ds, cfg.data.data_dir)
        return evaluate_generator(model, ds, evaluator, n=cfg.eval.samples, seeds=cfg.eval.seeds, seed=cfg.seed)

    def headline(self, result: dict) -> dict:
        head = {key: result[key]["mean"] for key in BETTER if key in result}
        head["fd_train_vs_test"] = result["calibration"]["fd_train_vs_test"]
        return head

    def report(self, run_dir: Path, model, ds, result: dict, summary: dict, extra=()) -> Path:
        return write_generator_report(run_dir, model, ds, result, summary, extra)

    def print_evaluation(self, out, name: str, result: dict) -> None:
        prov = result["provenance"]
        out.print(f"[bold]{name}[/]: {prov['n']} samples vs {prov['reference']}, evaluator {prov['evaluator']} "
                  f"(test accuracy {prov['evaluator_test_accuracy']:.4f}), seeds {prov['seeds']}")
        table = Table("score", "mean", "sd", "better")
        for key, direction in BETTER.items():
            if key in result:
                table.add_row(key, f"{result[key]['mean']:.4g}", f"{result[key]['sd']:.2g}", direction)
        out.print(table)
        cal = result["calibration"]
        out.print(f"calibration on the same scale: FD(train vs test) {cal['fd_train_vs_test']:.4g}  "
                  f"FD(uniform noise vs test) {cal['fd_noise_vs_test']:.4g}")
        mem = result["memorization"]
        out.print(f"memorization: nearest-train distance median {mem['sample_nn_median']:.3f} for samples vs "
                  f"{mem['test_nn_median']:.3f} for test images (ratio {mem['ratio_median']:.3f}; "
                  f"{mem['share_closer_than_test_p05']:.1%} of samples closer than the test 5th percentile)")
        out.print(f"class histogram of the samples: {result['class_histogram']}")

    def warm_up(self, served) -> None:
        served.generate(4, 0 if served.conditional else None, 0, None)
