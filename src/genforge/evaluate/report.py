"""Plots and a self-contained report.html for a run (every image inlined, no external assets)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import torch

from genforge.evaluate.classification import predict_proba


def _figure():
    import matplotlib

    matplotlib.use("Agg")  # no display needed; set here, not at import time of genforge
    import matplotlib.pyplot as plt

    return plt


def plot_curves(metrics: list[dict], path: Path) -> None:
    plt = _figure()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4))
    epochs = [m["epoch"] for m in metrics]
    for key, ax in (("loss", ax_loss), ("acc", ax_acc)):
        ax.plot(epochs, [m[f"train_{key}"] for m in metrics], marker="o", label="train")
        if any(m.get(f"val_{key}") is not None for m in metrics):
            ax.plot(epochs, [m.get(f"val_{key}") for m in metrics], marker="o", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path) -> None:
    plt = _figure()
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * k, 1 + 0.5 * k))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(k), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = max(max(row) for row in confusion) or 1
    for i in range(k):
        for j in range(k):
            ax.text(j, i, confusion[i][j], ha="center", va="center", fontsize=7,
                    color="white" if confusion[i][j] > peak / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_decision_boundary(model, x: torch.Tensor, y: torch.Tensor, path: Path) -> None:
    """For 2-D data: the predicted class over a grid, with the test points on top."""
    plt = _figure()
    lo, hi = x.min(0).values - 0.5, x.max(0).values + 0.5
    g0, g1 = torch.meshgrid(torch.linspace(lo[0], hi[0], 200), torch.linspace(lo[1], hi[1], 200), indexing="xy")
    grid = torch.stack([g0.reshape(-1), g1.reshape(-1)], 1)
    p = predict_proba(model, grid)[:, -1].reshape(200, 200)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.contourf(g0, g1, p, levels=20, cmap="RdBu_r", alpha=0.6)
    ax.contour(g0, g1, p, levels=[0.5], colors="k")
    ax.scatter(x[:, 0], x[:, 1], c=y, cmap="RdBu_r", s=6, edgecolors="none")
    ax.set_xlabel("x0")
    ax.set_ylabel("x1")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(run_dir: Path, model, ds, test: dict, summary: dict) -> Path:
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    if metrics:
        plot_curves(metrics, plots / "curves.png")
    plot_confusion(test["confusion_matrix"], ds.classes, plots / "confusion.png")
    if not ds.is_image and ds.input_shape == (2,):
        plot_decision_boundary(model, ds.test_x, ds.test_y, plots / "decision_boundary.png")

    images = "".join(
        f'<figure><img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        f"<figcaption>{p.stem.replace('_', ' ')}</figcaption></figure>"
        for p in sorted(plots.glob("*.png"))
    )
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{v:.4g}</td></tr>" if isinstance(v, float)
                   else f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in summary.items())
    per_class = "".join(f"<tr><th>{html.escape(c)}</th><td>{m['precision']:.3f}</td><td>{m['recall']:.3f}</td>"
                        f"<td>{m['f1']:.3f}</td></tr>" for c, m in test["per_class"].items())
    config = html.escape((run_dir / "config.yaml").read_text())
    page = f"""<!doctype html><html lang="en"><meta charset="utf-8"><title>{html.escape(run_dir.name)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}
table{{border-collapse:collapse}}td,th{{padding:.2rem .6rem;border-bottom:1px solid #ddd;text-align:left}}
figure{{display:inline-block;margin:.5rem}}img{{max-width:100%}}pre{{background:#f6f6f6;padding:1rem}}</style>
<h1>{html.escape(run_dir.name)}</h1><h2>Summary</h2><table>{rows}</table>
<h2>Plots</h2>{images}
<h2>Per class (test)</h2><table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th></tr>{per_class}</table>
<h2>Config</h2><pre>{config}</pre></html>"""
    path = run_dir / "report.html"
    path.write_text(page)
    return path
