"""Equal wall time: the PyTorch example's MLP VAE vs genforge's two fashion-vae models, by IWAE NLL on the same images.

Reference: pytorch/examples vae/main.py as its README runs it (784-400-20, Bernoulli decoder, BCE summed + KL,
Adam 1e-3, batch 128, its per-sample DataLoader with ToTensor), trained the way a binarized-likelihood VAE is
trained and the way genforge's models are: on dynamically binarized pixels, a fresh Bernoulli draw of every image
at every step (`torch.bernoulli` of the loaded batch, Salakhutdinov & Murray 2008). genforge: `fashion-vae` with
`model.autoregressive=false` (conv encoder/decoder, factorized Bernoulli pixels) and `fashion-vae` as shipped (the
same plus a 7x7 causal pixel window).

All three train one after another in one process, each for --minutes of wall time, with the same torch threads.
genforge's one-cycle schedule must end inside the budget: unless --epochs-factorized/--epochs-autoregressive are
given, a probe run of each model (--probe-seconds, outside the budget) measures its seconds per epoch, and the
epochs are the whole number that fits --margin of the budget. Then all three are scored by genforge's own
likelihood_metrics (the function `genforge evaluate` calls): one fixed binarization of the test images, the ELBO
on all of them and the IWAE NLL (k = --k importance samples, Burda et al. 2016) on the first --images, nats per
image. gap = reference NLL minus genforge NLL (positive: genforge better; target >= 3 nats). A reconstruction grid
(rows: input | factorized | autoregressive | reference) goes to bench/out/vae_reconstructions.png.

    python bench/vae_vs_reference.py --minutes 6          # the record (about 3 x 6 min + probes + scoring)
    python bench/vae_vs_reference.py --minutes 0.3 --k 10 --images 50 --probe-seconds 5   # smoke test
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from _common import OUT, record, train_and_load
from torch import nn
from torch.utils.data import DataLoader, Dataset

from genforge.config import load_config
from genforge.data import load_dataset, split_validation
from genforge.evaluate.generative import evaluation_inputs, likelihood_metrics
from genforge.grids import save_images

MODELS = {"factorized": ["model.autoregressive=false"], "autoregressive": []}  # fashion-vae overrides
NLL = "nll_iwae"  # the likelihood_metrics key the gap is taken on


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

    def prepare(self, x, generator=None):  # the evaluation's binarization, identical to genforge's VAE.prepare
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
    start, images, epochs = time.perf_counter(), 0, 0
    while time.perf_counter() - start < seconds:
        epochs += 1
        for gray in loader:
            x = torch.bernoulli(gray)  # dynamic binarization: a fresh draw of each image at every step
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
    return model.eval(), {"train_seconds": round(time.perf_counter() - start, 2), "images_seen": images,
                          "epochs_started": epochs}


@torch.inference_mode()
def reference_reconstruct(model: TutorialVAE, x: torch.Tensor) -> torch.Tensor:
    mu, _ = model.encode(x.float() / 255)
    return (torch.sigmoid(model.decode(mu)) * 255).round().to(torch.uint8)


def quiet_eval() -> list[str]:
    """The training run's own end-of-run test evaluation, made cheap: the bench scores every model itself."""
    return ["eval.samples=100", "eval.iwae_k=1", "eval.iwae_images=1"]


def steps_per_epoch(ds, overrides: list[str]) -> int:
    """Optimizer steps in one of genforge's epochs (the loop drops the ragged last batch)."""
    cfg = load_config("fashion-vae", overrides)
    train_idx, _ = split_validation(len(ds.train_y), cfg.data.val_fraction, cfg.seed, ds.train_y)
    return len(train_idx) // cfg.train.batch_size


def pick_epochs(ds, overrides: list[str], seconds: float, probe_seconds: float, margin: float) -> tuple[int, dict]:
    """Whole epochs whose one-cycle schedule ends inside margin * seconds, from a probe run's seconds per step
    (its train_seconds include one validation pass, as every epoch of the real run does: a conservative rate)."""
    summary, _ = train_and_load("fashion-vae", [*overrides, "train.epochs=1", f"train.max_seconds={probe_seconds}",
                                                *quiet_eval()])
    epoch_seconds = summary["train_seconds"] / max(summary["steps"], 1) * steps_per_epoch(ds, overrides)
    epochs = max(1, math.floor(margin * seconds / epoch_seconds))
    return epochs, {"probe_steps": summary["steps"], "probe_seconds": summary["train_seconds"],
                    "estimated_epoch_seconds": round(epoch_seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=6.0, help="wall-time budget of each of the three models")
    parser.add_argument("--epochs-factorized", type=int, help="genforge factorized model's epochs (default: probe)")
    parser.add_argument("--epochs-autoregressive", type=int, help="the autoregressive model's (default: probe)")
    parser.add_argument("--probe-seconds", type=float, default=30.0, help="length of each probe run")
    parser.add_argument("--margin", type=float, default=0.9, help="share of the budget the planned epochs may fill")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads, all models")
    parser.add_argument("--k", type=int, default=1000, help="IWAE importance samples per image")
    parser.add_argument("--images", type=int, default=1000, help="test images the IWAE NLL is estimated on")
    args = parser.parse_args()
    seconds = args.minutes * 60
    torch.set_num_threads(args.threads)
    ds = load_dataset("fashion-mnist")
    common = [f"train.threads={args.threads}"]

    reference, ref_stats = train_reference(ds, seconds)
    print(f"reference: {ref_stats}", flush=True)
    given = {"factorized": args.epochs_factorized, "autoregressive": args.epochs_autoregressive}
    ours, rows = {}, {}
    for name, overrides in MODELS.items():
        overrides = [*common, *overrides]
        probe = {}
        epochs = given[name] or None
        if epochs is None:
            epochs, probe = pick_epochs(ds, overrides, seconds, args.probe_seconds, args.margin)
        summary, ours[name] = train_and_load("fashion-vae", [*overrides, f"train.epochs={epochs}",
                                                             f"train.max_seconds={seconds}", *quiet_eval()])
        planned_steps = epochs * steps_per_epoch(ds, overrides)
        # the loop counts an epoch cut by the time limit as an epoch: compare steps
        rows[name] = {"overrides": overrides, "epochs_planned": epochs, "steps_planned": planned_steps,
                      "steps": summary["steps"], "schedule_completed": summary["steps"] >= planned_steps,
                      "train_seconds": summary["train_seconds"], **probe}
        print(f"genforge {name}: {rows[name]}", flush=True)
        if not rows[name]["schedule_completed"]:
            done = summary["steps"] / planned_steps * epochs
            print(f"warning: the budget cut {name}'s one-cycle schedule at epoch {done:.1f}/{epochs}; rerun with "
                  f"--epochs-{name} {max(1, math.floor(done))}", flush=True)

    scored = [evaluation_inputs(model, ds.test_x) for model in (reference, *ours.values())]
    if not all(torch.equal(scored[0], x) for x in scored[1:]):
        raise SystemExit("the three models would be scored on different binarizations of the test images")
    ref_like = likelihood_metrics(reference, ds, args.k, args.images)  # the evaluation's fixed binarization
    print(f"reference NLL {ref_like[NLL]:.2f}", flush=True)
    result = {"minutes_each": args.minutes, "threads": args.threads, "iwae_k": args.k, "iwae_images": args.images,
              "margin": args.margin, "reference": {**ref_stats, **ref_like}}
    for name, model in ours.items():
        like = likelihood_metrics(model, ds, args.k, args.images)
        gap = ref_like[NLL] - like[NLL]
        result[f"genforge_{name}"] = {**rows[name], **like}
        result[f"gap_nats_{name}"] = gap
        print(f"  {'MET ' if gap >= 3 else 'MISS'} {name}: NLL {like[NLL]:.2f}, reference minus genforge "
              f"{gap:+.2f} nats (target >= 3)", flush=True)
    result["target_gap_nats"] = 3.0
    x = ds.test_x[:10]
    OUT.mkdir(exist_ok=True)
    save_images(torch.cat([x, *(model.reconstruct(x) for model in ours.values()), reference_reconstruct(reference, x)]),
                OUT / "vae_reconstructions.png", nrow=10)
    record("vae_vs_reference", result)


if __name__ == "__main__":
    main()
