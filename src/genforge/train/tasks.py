"""What differs between model tasks, behind one small interface the loop calls:

- `step`: the step-function class (train/steps.py) that owns the optimizers;
- `validate(model, x, y, ds)`: cheap held-out metrics after each epoch ("loss" drives early stopping);
- `on_evaluation(model, run_dir, epoch, cfg)`: side outputs at each evaluation (a generator's sample grid);
- `test(model, ds, cfg)`: the final evaluation, the same function `genforge evaluate` calls;
- `headline(result)`: the few numbers that go into summary.json;
- `report(run_dir, model, ds, result, summary, extra)`: plots and report.html, with extra (title, html) sections.
"""

from __future__ import annotations

from pathlib import Path

import torch

from genforge.config import RunConfig
from genforge.evaluate import evaluate, measure_speed
from genforge.train.steps import ClassifierStep, GANStep, VAEStep


class ClassifyTask:
    step = ClassifierStep
    divergence_hint = "lower train.lr or set train.grad_clip=1.0"

    def validate(self, model, x: torch.Tensor, y: torch.Tensor, ds) -> dict:
        result = evaluate(model, x, y, ds.classes)
        return {"loss": result["loss"], "acc": result["accuracy"]}

    def on_evaluation(self, model, run_dir: Path, epoch: int, cfg: RunConfig) -> None:
        pass

    def test(self, model, ds, cfg: RunConfig) -> dict:
        result = evaluate(model, ds.test_x, ds.test_y, ds.classes)
        result.update(measure_speed(model, ds.test_x[:1]))
        return result

    def headline(self, result: dict) -> dict:
        return {"test_accuracy": result["accuracy"], "test_loss": result["loss"], "test_macro_f1": result["macro_f1"],
                "latency_ms_b1": result["latency_ms_b1"], "throughput_b256": result["throughput_b256"]}

    def report(self, run_dir: Path, model, ds, result: dict, summary: dict, extra=()) -> Path:
        from genforge.evaluate.report import write_classifier_report

        return write_classifier_report(run_dir, model, ds, result, summary, extra)


class GenerativeTask:
    """GANs and VAEs: a sample grid from fixed noise at each evaluation; sample quality at the end."""

    def validate(self, model, x: torch.Tensor, y: torch.Tensor, ds) -> dict:
        return {}

    def on_evaluation(self, model, run_dir: Path, epoch: int, cfg: RunConfig) -> None:
        from genforge.sample import save_images

        save_images(model.sample(cfg.eval.grid, seed=cfg.seed), run_dir / "samples" / f"epoch-{epoch:03d}.png")

    def test(self, model, ds, cfg: RunConfig) -> dict:
        from genforge.evaluate.features import load_evaluator
        from genforge.evaluate.generative import evaluate_generator

        evaluator = load_evaluator(ds, cfg.data.data_dir)
        return evaluate_generator(model, ds, evaluator, n=cfg.eval.samples, seeds=cfg.eval.seeds, seed=cfg.seed)

    def headline(self, result: dict) -> dict:
        keys = ["fd", "kid", "precision", "recall", "conditional_accuracy"]
        head = {key: result[key]["mean"] for key in keys if key in result}
        head["fd_train_vs_test"] = result["calibration"]["fd_train_vs_test"]
        return head

    def report(self, run_dir: Path, model, ds, result: dict, summary: dict, extra=()) -> Path:
        from genforge.evaluate.report import write_generator_report

        return write_generator_report(run_dir, model, ds, result, summary, extra)


class GANTask(GenerativeTask):
    step = GANStep
    divergence_hint = ("lower train.d_lr (or train.lr), set train.grad_clip=1.0, or use model.loss=hinge with "
                       "model.spectral_norm=true")


class VAETask(GenerativeTask):
    step = VAEStep
    divergence_hint = "lower train.lr or set train.grad_clip=1.0"

    def validate(self, model, x: torch.Tensor, y: torch.Tensor, ds) -> dict:
        from genforge.evaluate.generative import elbo

        g = torch.Generator(device=model.device).manual_seed(0)  # the same binarization every epoch
        x = model.prepare(x.to(model.device), generator=g)
        labels = y.to(model.device) if model.cfg.conditional else None
        result = elbo(model, x, labels, torch.Generator().manual_seed(0))
        return {"loss": -result["elbo"], "recon": result["recon"], "kl": result["kl"]}

    def test(self, model, ds, cfg: RunConfig) -> dict:
        result = super().test(model, ds, cfg)
        result["likelihood"] = self.likelihood(model, ds, cfg)
        return result

    def likelihood(self, model, ds, cfg: RunConfig) -> dict:
        """The likelihood part of `test`: a function of the model and the test set alone (fixed evaluation
        images and estimator noise, never cfg.seed), so runs with different seeds are scored alike."""
        from genforge.evaluate.generative import likelihood_metrics

        return likelihood_metrics(model, ds, cfg.eval.iwae_k, cfg.eval.iwae_images)

    def headline(self, result: dict) -> dict:
        like = result["likelihood"]
        return {**super().headline(result), "test_elbo": like["test_elbo"], "nll_iwae": like["nll_iwae"],
                "bits_per_dim": like["bits_per_dim"]}


TASKS = {"classify": ClassifyTask(), "gan": GANTask(), "vae": VAETask()}
