"""Transfer learning with few labels (issue 18): pretrain fashion-cnn-fast on Fashion-MNIST's classes 0-4 (T-shirt/top,
Trouser, Pullover, Dress, Coat), then learn classes 5-9 (Sandal, Shirt, Sneaker, Bag, Ankle boot) from 10, 100 and
1,000 labels per class, from scratch and from the pretrained run, on the same labels (a seed draws the same images for
every arm) with the same schedule, batch and augmentation. Scored on the 5,000 test images of classes 5-9, beside the
preset trained from scratch on all 6,000 labels per class (the ceiling).

    python bench/transfer_few_labels.py [--seeds 3] [--reverse | --split SOURCE/TARGET] [--labels 10,100,1000]
        [--arm scratch --arm fine-tuned ...]

Arms: scratch; fine-tuned (every layer at train.lr); fine-tuned with the pretrained layers at a tenth of it
(train.pretrained_lr_scale=0.1); a linear probe (train.freeze=[pretrained]: only the new head trains). --reverse
swaps the halves (pretrain on 5-9, learn 0-4); --split takes any two lists of classes, e.g. 0,1,5,8,9/2,3,4,6,7 (the
record is then transfer_few_labels_split). The recipe came from a few single-seed trials (docs/benchmarks.md):
augmentation and the longer schedule each helped scratch, so every arm has them."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from _common import record

from genforge import rundir
from genforge.config import load_config
from genforge.training import train

PRESET = "fashion-cnn-fast"
HALVES = ("data.classes=[0,1,2,3,4]", "data.classes=[5,6,7,8,9]")
# per budget: a batch that gives several steps an epoch, and about 600-800 steps in all
SCHEDULE = {10: ["train.batch_size=25", "train.epochs=300"], 100: ["train.batch_size=50", "train.epochs=80"],
            1000: ["train.batch_size=128", "train.epochs=20"]}
COMMON = ["data.val_fraction=0",  # every label trains; a fixed schedule, so no validation split is needed
          "data.augment.crop_padding=2", "data.augment.flip=true"]
ARMS = {"scratch": [], "fine-tuned": ["INIT"],  # INIT: train.init_from=the pretrained run
        "fine-tuned, pretrained at 0.1 lr": ["INIT", "train.pretrained_lr_scale=0.1"],
        "linear probe": ["INIT", "train.freeze=[pretrained]"]}


def train_in(folder: str, overrides: list[str]) -> dict:
    cfg = load_config(PRESET, ["train.threads=1", *overrides])  # 2 threads on 2 shared cores ran 10-40x slower here
    return train(cfg, rundir.create_run(folder, cfg.name, cfg), quiet=True)


def main(seeds: int, reverse: bool, split: str | None = None, budgets=tuple(SCHEDULE), arms=tuple(ARMS)) -> None:
    source, target = HALVES[::-1] if reverse else HALVES
    if split:
        source, target = (f"data.classes=[{half}]" for half in split.split("/"))
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        pretrained = train_in(tmp, [source, "name=pretrained"])
        (parent,) = [r["path"] for r in rundir.list_runs(tmp) if r["run"].startswith("pretrained")]
        print(f"pretrained on {source}: test accuracy {pretrained['test_accuracy']:.4f} "
              f"({pretrained['train_seconds']:.0f} s)", flush=True)
        ceiling = train_in(tmp, [target, "name=all-labels"])
        print(f"scratch on all labels of {target}: {ceiling['test_accuracy']:.4f}", flush=True)
        rows = {}
        for n in budgets:
            schedule = SCHEDULE[n]
            rows[n] = {arm: [] for arm in arms}
            for seed in range(seeds):
                for arm in arms:
                    extra = [f"train.init_from={parent}" if e == "INIT" else e for e in ARMS[arm]]
                    s = train_in(tmp, [target, f"data.labels_per_class={n}", *COMMON, *schedule, f"seed={seed}", *extra,
                                       f"name=n{n}"])
                    rows[n][arm].append({"test_accuracy": s["test_accuracy"], "train_seconds": s["train_seconds"]})
                    print(f"{n:>5} labels/class seed {seed} {arm:>33}: {s['test_accuracy']:.4f} "
                          f"({s['train_seconds']:.0f} s)", flush=True)
    table = {}
    for n, by_arm in rows.items():
        med = {arm: statistics.median(r["test_accuracy"] for r in by_arm[arm]) for arm in by_arm}
        gain = round(100 * (med["fine-tuned"] - med["scratch"]), 2) if {"fine-tuned", "scratch"} <= set(med) else None
        table[n] = {"median": med, "gain_points": gain, "runs": by_arm}
    result = {"pretrain": {"classes": source, "test_accuracy": pretrained["test_accuracy"],
                           "train_seconds": pretrained["train_seconds"]},
              "target": target, "all_labels_scratch": ceiling["test_accuracy"], "seeds": seeds,
              "schedule": {n: SCHEDULE[n] for n in budgets}, "common": COMMON,
              "arms": {arm: ARMS[arm] for arm in arms}, "labels_per_class": table,
              "wall_seconds": round(time.perf_counter() - t_start, 1)}
    record("transfer_few_labels" + ("_split" if split else "_reverse" if reverse else ""), result)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--reverse", action="store_true", help="pretrain on classes 5-9, learn 0-4")
    parser.add_argument("--split", help="SOURCE/TARGET classes, e.g. 0,1,5,8,9/2,3,4,6,7")
    parser.add_argument("--labels", default="10,100,1000", help="labels per class to learn from (of 10, 100, 1000)")
    parser.add_argument("--arm", action="append", choices=list(ARMS), help="an arm to train (default: all)")
    args = parser.parse_args()
    main(args.seeds, args.reverse, args.split, tuple(int(n) for n in args.labels.split(",")),
         tuple(args.arm or ARMS))
