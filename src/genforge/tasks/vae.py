"""VAEs: the ELBO step, the validation ELBO, and the likelihood (ELBO and IWAE NLL) beside sample quality."""

from __future__ import annotations

import torch
from torch import nn

from genforge.evaluate.generative import elbo, likelihood_metrics
from genforge.onnx.parts import Part
from genforge.tasks.generative import GenerativeTask
from genforge.train.steps import VAEStep

# what the pixels above/left add to each logit: the likelihood of an autoregressive VAE needs it
CONTEXT = Part("context", "context_logits", ("x",), ("logits",), labels=False, unit_range=True)


class VAETask(GenerativeTask):
    name = "vae"
    verbs = ("generate", "interpolate", "reconstruct")
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
