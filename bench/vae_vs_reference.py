"""Equal wall time: the PyTorch example's MLP VAE vs genforge's fashion-vae, by IWAE NLL on the same test images.

The reference is the PyTorch examples VAE (784-400-20, Bernoulli decoder, BCE summed + KL, Adam 1e-3,
batch 128) with its per-sample DataLoader (ToTensor per item, continuous pixels as targets). Both train for
the same wall time (--minutes, default 15) in one run; both are then scored on one fixed binarization of the
first --images test images (seed 0) with the same IWAE estimator (k = --k, Burda et al. 2016), in nats.
A reconstruction grid (input | genforge | reference) goes to bench/out/.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F
from _common import OUT, record
from torch import nn
from torch.utils.data import DataLoader, Dataset

from genforge import runs
from genforge.config import load_config
from genforge.data import load_dataset
from genforge.evaluate.generative import likelihood_metrics
from genforge.sample import save_images
from genforge.train.loop import train


class TutorialDataset(Dataset):
    def __init__(self, images: torch.Tensor):
        self.images = images.numpy()

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):  # ToTensor: one item at a time, floats in [0, 1]
        return torch.from_numpy(self.images[i]).float().div(255)


class TutorialVAE(nn.Module):
    """pytorch/examples vae/main.py, plus the protocol genforge's likelihood code calls."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
        self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)
        self.cfg = argparse.Namespace(conditional=False, likelihood="bernoulli")

    device = property(lambda self: self.fc1.weight.device)

    def encode(self, x, labels=None):
        h = F.relu(self.fc1(x.reshape(-1, 784)))
        return self.fc21(h), self.fc22(h)

    def decode(self, z, labels=None):  # logits; the example applies sigmoid and BCE, the same model
        return self.fc4(F.relu(self.fc3(z))).reshape(-1, 1, 28, 28)

    def log_likelihood(self, x, params):
        return -F.binary_cross_entropy_with_logits(params, x.expand_as(params), reduction="none").flatten(1).sum(1)

    def prepare(self, x, generator=None):  # the evaluation's binarization, identical to genforge's
        return torch.bernoulli(x.float() / 255, generator=generator)

    def forward(self, x):
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar


def train_reference(ds, seconds: float) -> tuple[TutorialVAE, dict]:
    torch.manual_seed(0)
    model = TutorialVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TutorialDataset(ds.train_x), batch_size=128, shuffle=True)
    start, images = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        for x in loader:
            model.train()
            optimizer.zero_grad()
            logits, mu, logvar = model(x)
            bce = F.binary_cross_entropy(torch.sigmoid(logits).view(-1, 784), x.view(-1, 784), reduction="sum")
            kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            (bce + kld).backward()
            optimizer.step()
            images += len(x)
            if time.perf_counter() - start >= seconds:
                break
    return model.eval(), {"train_seconds": time.perf_counter() - start, "images_seen": images}


@torch.inference_mode()
def reference_reconstruct(model: TutorialVAE, x: torch.Tensor) -> torch.Tensor:
    mu, _ = model.encode(x.float() / 255)
    return (torch.sigmoid(model.decode(mu)) * 255).round().to(torch.uint8)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--epochs", type=int, default=24, help="genforge's epochs (default 24: 15 minutes on a "
                        "slow 2-core VM); the budget caps them, so pick what fits it on the machine: the one-cycle "
                        "schedule needs its end")
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    seconds = args.minutes * 60
    ds = load_dataset("fashion-mnist")

    reference, ref_stats = train_reference(ds, seconds)
    print(f"reference: {ref_stats}", flush=True)
    epochs = [f"train.epochs={args.epochs}"] if args.epochs else []
    cfg = load_config("fashion-vae", [*epochs, f"train.max_seconds={seconds}", "eval.samples=1000", "eval.iwae_k=1",
                                      "eval.iwae_images=1"])
    with tempfile.TemporaryDirectory() as tmp:
        run = runs.create_run(tmp, cfg.name, cfg)
        summary = train(cfg, run, quiet=True)
        ours = runs.load_run(run).model
    ref_like = likelihood_metrics(reference, ds, args.k, args.images, seed=0)
    our_like = likelihood_metrics(ours, ds, args.k, args.images, seed=0)
    x = ds.test_x[:10]
    save_images(torch.cat([x, ours.reconstruct(x), reference_reconstruct(reference, x)]),
                OUT / "vae_reconstructions.png", nrow=10)
    keep = ("test_elbo", "nll_iwae", "nll_iwae_se")
    record("vae_vs_reference", {
        "minutes_each": args.minutes, "iwae_k": args.k, "iwae_images": args.images,
        "reference": {**ref_stats, **{k: ref_like[k] for k in keep}},
        "genforge_fashion_vae": {"train_seconds": summary["train_seconds"], "epochs": summary["epochs"],
                                 **{k: our_like[k] for k in keep}},
        "nll_gain_nats": ref_like["nll_iwae"] - our_like["nll_iwae"],
    })


if __name__ == "__main__":
    main()
