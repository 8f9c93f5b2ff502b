"""What GANs and VAEs share: a sample grid from fixed noise at each evaluation, sample quality at the end (FD, KID,
precision/recall against the test images, scored by the dataset's evaluator network), and the generate verbs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from rich.table import Table

from genforge.evaluate.features import Evaluator, load_evaluator
from genforge.evaluate.generative import evaluate_generator, frechet_distance, generate
from genforge.evaluate.report import write_generator_report
from genforge.grids import save_images
from genforge.tasks.base import Task

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
