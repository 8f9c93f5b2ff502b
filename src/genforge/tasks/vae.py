"""VAEs: the ELBO step, the validation ELBO, and the likelihood (ELBO and IWAE NLL) beside sample quality; the
reconstruct verb beside the generators' two."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from genforge.evaluate.generative import elbo, likelihood_metrics
from genforge.models.latent import reconstruction_errors
from genforge.onnx.parts import Part
from genforge.tasks.generative import GENERATE, INTERPOLATE, GenerativeTask, as_array, images_answer
from genforge.tasks.verb import Answer, Arrays, IntegerOrNone, Limits, PixelRange, Strict, Verb, array_inputs
from genforge.train.steps import VAEStep

# what the pixels above/left add to each logit: the likelihood of an autoregressive VAE needs it
CONTEXT = Part("context", "context_logits", ("x",), ("logits",), labels=False, unit_range=True)


class ReconstructOptions(Strict):
    label: IntegerOrNone = Field(None, ge=0, le=100_000, description="The inputs' class (class-conditional VAEs)")
    range: PixelRange = "auto"
    format: Literal["png", "array"] = "array"


class ReconstructRequest(ReconstructOptions):
    inputs: Arrays = Field(min_length=1, max_length=256)


class Reconstruct(Verb):
    command = "reconstruct"
    summary = "A VAE's reconstructions of images, with the mean absolute error per image (0-255)"
    request, form, array = ReconstructRequest, ReconstructOptions, "inputs"
    png = "A PNG grid or JSON arrays"

    def decode(self, served, array, fields: dict, limits: Limits) -> dict:
        return {"x": array_inputs(array, served.input_shape, fields["range"]), "label": fields["label"],
                "format": fields["format"]}

    def run(self, served, inputs: dict) -> tuple[torch.Tensor, list[float]]:
        x = torch.from_numpy(inputs["x"])
        recon = served.reconstruct(x, inputs["label"])
        return recon, reconstruction_errors(x, recon)

    def answer(self, served, inputs: dict, result: tuple, latency_ms: float) -> dict | Answer:
        recon, errors = result
        if inputs["format"] == "png":  # each input beside its reconstruction
            pairs = torch.stack([torch.from_numpy(inputs["x"]), recon], 1).flatten(0, 1)
            return images_answer(served, pairs, "png", {}, latency_ms, nrow=min(8, len(pairs)))
        return {"model": served.name, "latency_ms": latency_ms, "backend": served.backend, "errors": errors,
                "images": as_array(recon)}


RECONSTRUCT = Reconstruct("reconstruct")


class VAETask(GenerativeTask):
    name = "vae"
    verbs = (GENERATE, INTERPOLATE, RECONSTRUCT)
    parts = (Part("encoder", "encode", ("x",), ("mu", "logvar"), unit_range=True),
             Part("decoder", "decode", ("z",), ("params",)))

    def step(self, model, cfg, steps_per_epoch: int, autocast: bool, channels_last: bool):

        return VAEStep(model, cfg, steps_per_epoch, autocast=autocast, channels_last=channels_last)

    def validate(self, model, x: torch.Tensor, y: torch.Tensor, ds, cfg) -> dict:

        g = torch.Generator(device=model.device).manual_seed(0)  # the same binarization every epoch
        prepared = model.prepare(x.to(model.device), generator=g)  # x stays raw: the FD compares raw images
        labels = y.to(model.device) if model.cfg.conditional else None
        result = elbo(model, prepared, labels, torch.Generator().manual_seed(0))
        return {"loss": -result["elbo"], "recon": result["recon"], "kl": result["kl"],
                **super().validate(model, x, y, ds, cfg)}

    def test(self, model, ds, cfg) -> dict:
        result = super().test(model, ds, cfg)
        result["likelihood"] = self.likelihood(model, ds, cfg)
        return result

    def likelihood(self, model, ds, cfg) -> dict:
        """The likelihood part of `test`: a function of the model and the test set alone (fixed evaluation
        images and estimator noise, never cfg.seed), so runs with different seeds are scored alike."""
        return likelihood_metrics(model, ds, cfg.eval.iwae_k, cfg.eval.iwae_images)

    def headline(self, result: dict) -> dict:
        like = result["likelihood"]
        return {**super().headline(result), "test_elbo": like["test_elbo"], "nll_iwae": like["nll_iwae"],
                "bits_per_dim": like["bits_per_dim"]}

    def print_evaluation(self, out, name: str, result: dict) -> None:
        super().print_evaluation(out, name, result)
        like = result["likelihood"]
        out.print(f"likelihood ({like['likelihood']}; {like['measure']}): test ELBO {like['test_elbo']:.2f} "
                  f"(recon {like['test_recon']:.2f}, KL {like['test_kl']:.2f}); IWAE NLL {like['nll_iwae']:.2f} "
                  f"± {like['nll_iwae_se']:.2f} = {like['bits_per_dim']:.4f} bits/dim "
                  f"(k={like['iwae_k']}, {like['iwae_images']} images)")
        if "nll_iwae_continuous" in like:
            out.print(f"continuous density on [0, 1]^D (not a probability; can be negative): IWAE NLL "
                      f"{like['nll_iwae_continuous']:.2f} nats")

    def export_parts(self, model: nn.Module) -> tuple[Part, ...]:
        if getattr(model, "context", None) is not None:  # autoregressive: the decoder stays the last part
            return (self.parts[0], CONTEXT, *self.parts[1:])
        return self.parts


TASK = VAETask()
