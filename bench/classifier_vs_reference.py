"""Time to 90% Fashion-MNIST test accuracy: the common PyTorch tutorial vs genforge, in one run.

The reference is written the way the PyTorch MNIST example does it: a per-sample Dataset that
normalizes each item, a DataLoader with batch 64, conv32-conv64-maxpool-dropout-fc128-fc10, Adadelta
lr 1.0 with StepLR gamma 0.7. Its time to 90% is the training time (evaluation excluded) of the first
epoch after which its test accuracy is >= 90%.

genforge's time to 90% is the median `train_seconds` over 3 seeds of complete runs of the fashion-cnn-fast
recipe shortened to 2 epochs (its OneCycle schedule fitted to 2 epochs, test set untouched until the end);
every one of those runs must end >= 90%. The 3-epoch preset itself is measured by fashion_presets.py.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from _common import record, train_preset
from torch import nn
from torch.utils.data import DataLoader, Dataset

from genforge.data import load_dataset


class TutorialDataset(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images.numpy(), labels.numpy()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):  # ToTensor + Normalize((0.1307,), (0.3081,)), one item at a time
        x = torch.from_numpy(self.images[i]).float().div(255)
        return (x - 0.1307) / 0.3081, int(self.labels[i])


class TutorialNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, 1), nn.Conv2d(32, 64, 3, 1)
        self.dropout1, self.dropout2 = nn.Dropout(0.25), nn.Dropout(0.5)
        self.fc1, self.fc2 = nn.Linear(9216, 128), nn.Linear(128, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = torch.flatten(self.dropout1(x), 1)
        return F.log_softmax(self.fc2(self.dropout2(F.relu(self.fc1(x)))), dim=1)


def reference_time_to_90(max_epochs: int = 3) -> dict:
    torch.manual_seed(1)
    ds = load_dataset("fashion-mnist")
    train_loader = DataLoader(TutorialDataset(ds.train_x, ds.train_y), batch_size=64, shuffle=True)
    test_loader = DataLoader(TutorialDataset(ds.test_x, ds.test_y), batch_size=1000)
    model = TutorialNet()
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    elapsed, epochs = 0.0, []
    for epoch in range(1, max_epochs + 1):
        t0 = time.perf_counter()
        model.train()
        for x, y in train_loader:
            optimizer.zero_grad()
            F.nll_loss(model(x), y).backward()
            optimizer.step()
        scheduler.step()
        elapsed += time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            correct = sum((model(x).argmax(1) == y).sum().item() for x, y in test_loader)
        acc = correct / len(ds.test_y)
        epochs.append({"epoch": epoch, "seconds": round(elapsed, 1), "test_accuracy": acc})
        print(f"reference epoch {epoch}: {elapsed:.1f} s, test accuracy {acc:.4f}", flush=True)
        if acc >= 0.90:
            return {"seconds_to_90": elapsed, "epochs": epochs}
    return {"seconds_to_90": None, "epochs": epochs}


def main() -> None:
    reference = reference_time_to_90()
    genforge = [train_preset("fashion-cnn-fast", [f"seed={s}", "train.epochs=2"]) for s in range(3)]
    times = sorted(g["train_seconds"] for g in genforge)
    accs = sorted(g["test_accuracy"] for g in genforge)
    ours = times[1]
    result = {
        "reference": reference,
        "genforge_fashion_cnn_fast_2_epochs": {"train_seconds": times, "test_accuracy": accs, "median_seconds": ours},
        "all_genforge_runs_reached_90": all(a >= 0.90 for a in accs),
        "speedup_to_90": (reference["seconds_to_90"] / ours) if reference["seconds_to_90"] else None,
    }
    record("classifier_vs_reference", result)


if __name__ == "__main__":
    main()
