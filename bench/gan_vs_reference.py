"""Equal wall time: the PyTorch DCGAN tutorial vs genforge's fashion-dcgan (and, apart, fashion-cdcgan), one evaluator.

The reference is written the way the PyTorch DCGAN tutorial does it, sized for 28x28: a per-sample Dataset
(ToTensor + Normalize(0.5, 0.5) per item) and a DataLoader with batch 128; G = ConvT(nz,256,7) - BN - ReLU -
ConvT(256,128,4,2,1) - BN - ReLU - ConvT(128,1,4,2,1) - Tanh; D = Conv(1,64,4,2,1) - LReLU - Conv(64,128,4,2,1)
- BN - LReLU - Conv(128,1,7) - Sigmoid; BCE; Adam(2e-4, betas (0.5, 0.999)); the tutorial's weights_init;
unconditional. The like-for-like row is genforge's unconditional `fashion-dcgan` (target: FD ratio
genforge / reference <= 0.6); the class-conditional `fashion-cdcgan` is a separate row, since labels are
information the reference does not get.

All three train one after another in one process, each for the same wall time (--minutes), with the same torch
threads (genforge: train.max_seconds, no schedule to end). Then each is scored by the same cached evaluator
(trained once, outside the budgets) on the same N = --samples samples against the first N test images: FD, KID,
precision/recall (and the conditional model's conditional accuracy). Sample grids go to bench/out/.

    python bench/gan_vs_reference.py --minutes 6                      # the record (about 3 x 6 min + scoring)
    python bench/gan_vs_reference.py --minutes 0.3 --samples 1000     # smoke test
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import OUT, record, train_and_load
from torch import nn
from torch.utils.data import DataLoader, Dataset

from genforge.config import load_config
from genforge.data import load_dataset
from genforge.evaluate.generative import evaluate_generator
from genforge.grids import save_images
from genforge.training import load_or_train_evaluator as load_evaluator

GENFORGE = ("fashion-dcgan", "fashion-cdcgan")  # the like-for-like row first, then the conditional one
METRICS = ("fd", "kid", "precision", "recall", "conditional_accuracy")


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
    return model, {"train_seconds": round(elapsed, 2), "images_seen": images, "epochs_started": epochs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=6.0, help="wall-time budget of each of the three models")
    parser.add_argument("--samples", type=int, default=10_000, help="generated (and test) images per score")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads, all models")
    args = parser.parse_args()
    seconds = args.minutes * 60
    torch.set_num_threads(args.threads)
    ds = load_dataset("fashion-mnist")
    evaluator = load_evaluator(ds, quiet=True)  # trained once, outside every time budget

    reference, ref_stats = train_reference(ds, seconds)
    print(f"reference: {ref_stats}", flush=True)
    models, stats = {"reference": reference}, {"reference": ref_stats}
    for preset in GENFORGE:
        # eval.samples=100: the run's own end-of-run scoring, made cheap; the bench scores every model itself
        summary, models[preset] = train_and_load(preset, [f"train.threads={args.threads}", "train.epochs=1000",
                                                          f"train.max_seconds={seconds}", "eval.samples=100"])
        stats[preset] = {"train_seconds": summary["train_seconds"], "steps": summary["steps"],
                         "images_seen": summary["steps"] * load_config(preset).train.batch_size}
        print(f"genforge {preset}: {stats[preset]}", flush=True)

    OUT.mkdir(exist_ok=True)
    result = {"minutes_each": args.minutes, "threads": args.threads, "samples": args.samples,
              "evaluator": evaluator.hash, "evaluator_test_accuracy": evaluator.test_accuracy}
    for name, model in models.items():
        scores = evaluate_generator(model, ds, evaluator, n=args.samples)
        result.setdefault("calibration", scores["calibration"])
        result[name.replace("-", "_")] = {**stats[name], **{k: scores[k]["mean"] for k in METRICS if k in scores}}
        save_images(model.sample(100, seed=0), OUT / f"gan_{name.replace('fashion-', 'genforge_')}_samples.png",
                    nrow=10)
    for preset in GENFORGE:
        ratio = result[preset.replace("-", "_")]["fd"] / result["reference"]["fd"]
        result[f"fd_ratio_{preset.replace('fashion-', '')}"] = ratio
        print(f"  {'MET ' if ratio <= 0.6 else 'MISS'} {preset}: FD ratio genforge / reference {ratio:.3f} "
              f"(target <= 0.6{'; conditional, a separate row' if preset == 'fashion-cdcgan' else ''})", flush=True)
    result["target_fd_ratio"] = 0.6
    record("gan_vs_reference", result)


if __name__ == "__main__":
    main()
