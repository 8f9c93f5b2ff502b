"""Would a VAE's encoder be a better start than scratch with few labels (issue 18's "a generative task of genforge's
own")? Measured before building it into `train.init_from`: train `fashion-vae` (factorized pixels, 10 epochs) on
Fashion-MNIST's training images without their labels, then learn all 10 classes from 100 labels per class with three
networks, one recipe (the transfer bench's for 100 labels: AdamW at 4e-3 with OneCycle, label smoothing 0.1, random
crops and flips, batch 50, 80 epochs):

  fastcnn scratch: fashion-cnn-fast's network from scratch (the competent reference);
  encoder scratch: the VAE encoder's network (two stride-2 convs, 256 units) + a linear head, from scratch;
  encoder fine-tuned: the same network starting from the VAE's encoder weights.

    python bench/transfer_vae_encoder.py [--seeds 3] [--labels 100]

The loop here is a plain one (fp32, one thread): a VAE's encoder is no classifier kind of genforge's."""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from _common import record
from torch import nn

from genforge import rundir, runs
from genforge.config import AugmentConfig, load_config
from genforge.data import load_dataset
from genforge.data.splits import labelled_subset
from genforge.models.classifier import FastCNNConfig, build_fastcnn
from genforge.train.augment import augment_batch
from genforge.training import train

ARMS = ("fastcnn scratch", "encoder scratch", "encoder fine-tuned")


def encoder_net(vae, classes: int) -> nn.Sequential:
    """The VAE's features and the first encoder layer, its weights, and a new linear head."""
    w = vae.cfg.width
    net = nn.Sequential(nn.Conv2d(1, w, 4, 2, 1), nn.ReLU(), nn.Conv2d(w, 2 * w, 4, 2, 1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(2 * w * 49, 256), nn.ReLU(), nn.Linear(256, classes))
    for mine, theirs in ((net[0], vae.features[0]), (net[2], vae.features[2]), (net[5], vae.encoder[0])):
        mine.load_state_dict(theirs.state_dict())
    return net


def fit(arm: str, vae, x, y, test_x, test_y, seed: int, epochs: int = 80, batch: int = 50) -> float:
    torch.manual_seed(seed)
    if arm == "fastcnn scratch":
        net, _ = build_fastcnn(FastCNNConfig(), (1, 28, 28), 10)
        mean, std = 0.286, 0.353  # Fashion-MNIST's pixel statistics, as the classifier normalizes
    else:
        net, mean, std = encoder_net(vae, 10), 0.0, 1.0  # the VAE saw pixels in 0-1
        if arm == "encoder scratch":
            for m in net.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
    steps = epochs * math.ceil(len(x) / batch)
    opt = torch.optim.AdamW(net.parameters(), lr=4e-3, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, 4e-3, total_steps=steps)
    augment = AugmentConfig(crop_padding=2, flip=True)
    for _ in range(epochs):
        net.train()
        for b in torch.randperm(len(x)).split(batch):
            xb = augment_batch(x[b].float(), augment)
            loss = F.cross_entropy(net((xb / 255 - mean) / std), y[b], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net((xb.float() / 255 - mean) / std).argmax(1) for xb in test_x.split(1000)])
    return (pred == test_y).float().mean().item()


def main(seeds: int, labels: int) -> None:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    ds = load_dataset("fashion-mnist", progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config("fashion-vae", ["model.autoregressive=false", "train.epochs=10", "train.threads=1"])
        summary = train(cfg, rundir.create_run(tmp, cfg.name, cfg), quiet=True)
        (path,) = [r["path"] for r in rundir.list_runs(tmp)]
        vae = runs.load_run(path, backend="torch").model
    print(f"VAE: test ELBO {summary.get('test_elbo')}, {summary['train_seconds']:.0f} s", flush=True)
    rows = {arm: [] for arm in ARMS}
    for seed in range(seeds):
        pool = labelled_subset(ds.train_y, labels, seed, ds.classes)
        for arm in ARMS:
            acc = fit(arm, vae, ds.train_x[pool], ds.train_y[pool], ds.test_x, ds.test_y, seed)
            rows[arm].append(acc)
            print(f"seed {seed} {arm:>20}: {acc:.4f}", flush=True)
    median = {arm: statistics.median(v) for arm, v in rows.items()}
    record("transfer_vae_encoder", {
        "vae": {"preset": "fashion-vae", "overrides": ["model.autoregressive=false", "train.epochs=10"],
                "test_elbo": summary.get("test_elbo"), "train_seconds": summary["train_seconds"]},
        "labels_per_class": labels, "seeds": seeds, "test_accuracy": rows, "median": median,
        "gain_points_vs_fastcnn": round(100 * (median["encoder fine-tuned"] - median["fastcnn scratch"]), 2),
        "wall_seconds": round(time.perf_counter() - t0, 1)})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--labels", type=int, default=100)
    args = parser.parse_args()
    main(args.seeds, args.labels)
