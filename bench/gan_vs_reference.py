"""Equal wall time: the common PyTorch DCGAN tutorial vs genforge's fashion-cdcgan, scored by one evaluator.

The reference is written the way the PyTorch DCGAN tutorial does it, sized for 28x28: a per-sample Dataset
(ToTensor + Normalize(0.5, 0.5) per item) and a DataLoader with batch 128; G = ConvT(nz,256,7) - BN - ReLU -
ConvT(256,128,4,2,1) - BN - ReLU - ConvT(128,1,4,2,1) - Tanh; D = Conv(1,64,4,2,1) - LReLU - Conv(64,128,4,2,1)
- BN - LReLU - Conv(128,1,7) - Sigmoid; BCE; Adam(2e-4, betas (0.5, 0.999)); unconditional.

Both train for the same wall time (--minutes, default 6) in one run, then both are scored by the same cached
evaluator on the same N samples vs the test split: FD, KID, precision/recall; and genforge's conditional
accuracy. Sample grids go to bench/out/.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from _common import OUT, record
from torch import nn
from torch.utils.data import DataLoader, Dataset

from genforge import runs
from genforge.config import load_config
from genforge.data import load_dataset
from genforge.evaluate.features import load_evaluator
from genforge.evaluate.generative import evaluate_generator
from genforge.sample import save_images
from genforge.train.loop import train


class TutorialDataset(Dataset):
    def __init__(self, images: torch.Tensor):
        self.images = images.numpy()

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):  # ToTensor + Normalize((0.5,), (0.5,)), one item at a time
        return (torch.from_numpy(self.images[i]).float().div(255) - 0.5) / 0.5


class TutorialGAN(nn.Module):
    """The reference, with the tiny sampling interface the evaluation uses."""

    def __init__(self, nz: int = 100):
        super().__init__()
        self.nz = nz
        self.cfg = argparse.Namespace(conditional=False)
        self.generator = nn.Sequential(
            nn.ConvTranspose2d(nz, 256, 7, 1, 0, bias=False), nn.BatchNorm2d(256), nn.ReLU(True),
            nn.ConvTranspose2d(256, 128, 4, 2, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(True),
            nn.ConvTranspose2d(128, 1, 4, 2, 1, bias=False), nn.Tanh())
        self.discriminator = nn.Sequential(
            nn.Conv2d(1, 64, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True),
            nn.Conv2d(64, 128, 4, 2, 1, bias=False), nn.BatchNorm2d(128), nn.LeakyReLU(0.2, True),
            nn.Conv2d(128, 1, 7, 1, 0, bias=False), nn.Sigmoid())

        def init(m):  # the tutorial's weights_init
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)
        self.apply(init)

    @torch.inference_mode()
    def sample(self, n: int, labels=None, seed: int | None = None, truncation=None) -> torch.Tensor:
        self.generator.eval()
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        x = self.generator(torch.randn(n, self.nz, 1, 1, generator=g))
        return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def train_reference(ds, seconds: float) -> tuple[TutorialGAN, dict]:
    torch.manual_seed(0)
    model = TutorialGAN()
    G, D = model.generator, model.discriminator
    loader = DataLoader(TutorialDataset(ds.train_x), batch_size=128, shuffle=True)
    criterion = nn.BCELoss()
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    start, images, epochs = time.perf_counter(), 0, 0
    while time.perf_counter() - start < seconds:
        epochs += 1
        for real in loader:
            G.train()
            b = real.size(0)
            D.zero_grad()
            err_real = criterion(D(real).view(-1), torch.ones(b))
            err_real.backward()
            fake = G(torch.randn(b, model.nz, 1, 1))
            err_fake = criterion(D(fake.detach()).view(-1), torch.zeros(b))
            err_fake.backward()
            opt_d.step()
            G.zero_grad()
            err_g = criterion(D(fake).view(-1), torch.ones(b))
            err_g.backward()
            opt_g.step()
            images += b
            if time.perf_counter() - start >= seconds:
                break
    elapsed = time.perf_counter() - start
    return model, {"train_seconds": elapsed, "images_seen": images, "epochs_started": epochs}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--samples", type=int, default=10_000)
    args = parser.parse_args()
    seconds = args.minutes * 60
    ds = load_dataset("fashion-mnist")
    evaluator = load_evaluator(ds, quiet=True)  # trained once, outside both time budgets

    reference, ref_stats = train_reference(ds, seconds)
    print(f"reference: {ref_stats}", flush=True)
    cfg = load_config("fashion-cdcgan", [f"train.max_seconds={seconds}", "train.epochs=1000",
                                         f"eval.samples={args.samples}"])
    with tempfile.TemporaryDirectory() as tmp:
        run = runs.create_run(tmp, cfg.name, cfg)
        summary = train(cfg, run, quiet=True)
        ours = runs.load_run(run).model
        ours_scores = evaluate_generator(ours, ds, evaluator, n=args.samples)
    ref_scores = evaluate_generator(reference, ds, evaluator, n=args.samples)
    OUT.mkdir(exist_ok=True)
    save_images(reference.sample(100, seed=0), OUT / "gan_reference_samples.png", nrow=10)
    save_images(ours.sample(100, seed=0), OUT / "gan_genforge_cdcgan_samples.png", nrow=10)
    pick = lambda s: {k: s[k]["mean"] for k in ("fd", "kid", "precision", "recall", "conditional_accuracy")  # noqa: E731
                      if k in s}
    record("gan_vs_reference", {
        "minutes_each": args.minutes, "samples": args.samples, "evaluator": evaluator.hash,
        "calibration": ours_scores["calibration"],
        "reference": {**ref_stats, **pick(ref_scores)},
        "genforge_fashion_cdcgan": {"train_seconds": summary["train_seconds"], "steps": summary["steps"],
                                    **pick(ours_scores)},
        "fd_ratio": ours_scores["fd"]["mean"] / ref_scores["fd"]["mean"],
    })


if __name__ == "__main__":
    main()
