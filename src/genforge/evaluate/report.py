"""Plots and self-contained HTML pages (every image inlined, no external assets): a run's report.html, and the page
of a tuning study (write_html)."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from genforge import rundir
from genforge.errors import GenforgeError
from genforge.evaluate import mistakes
from genforge.evaluate.classification import predict_proba
from genforge.explain import DEFAULT_METHOD, DEFAULT_STEPS, Explainer, overlay, pixel_map
from genforge.grids import image_grid
from genforge.plots import figure


def plot_curves(metrics: list[dict], path: Path) -> None:
    """One panel per logged quantity (train_X, with val_X on the same axes when there is one), per epoch."""
    plt = figure()
    names = [k[6:] for k in metrics[0] if k.startswith("train_") and k not in ("train_seconds", "train_lr")][:4]
    if not names:
        return
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.4), squeeze=False)
    epochs = [m["epoch"] for m in metrics]
    for name, ax in zip(names, axes[0]):
        ax.plot(epochs, [m.get(f"train_{name}") for m in metrics], marker="o", label="train")
        if any(m.get(f"val_{name}") is not None for m in metrics):
            ax.plot(epochs, [m.get(f"val_{name}") for m in metrics], marker="o", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    rundir.write_with(path, lambda f: fig.savefig(f, format="png", dpi=90))
    plt.close(fig)


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path) -> None:
    plt = figure()
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
    rundir.write_with(path, lambda f: fig.savefig(f, format="png", dpi=90))
    plt.close(fig)


def plot_decision_boundary(model, x: torch.Tensor, y: torch.Tensor, path: Path) -> None:
    """For 2-D data: the predicted class over a grid, with the test points on top."""
    plt = figure()
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
    rundir.write_with(path, lambda f: fig.savefig(f, format="png", dpi=90))
    plt.close(fig)


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []


def _table(rows: dict) -> str:
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))  # noqa: E731
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{fmt(v)}</td></tr>" for k, v in rows.items())
    return f"<table>{cells}</table>"


def rows_table(rows: list[dict]) -> str:
    """A table with a column per key of the first row and a line per row: floats to 4 significant digits, None empty."""
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else html.escape("" if v is None else str(v))  # noqa: E731
    columns = list(rows[0]) if rows else []
    return "<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{cell(r[c])}</td>" for c in columns) + "</tr>" for r in rows) + "</table>"


def write_html(path: Path, title: str, summary: dict, plots: Path, sections: list[tuple[str, str]]) -> Path:
    """A self-contained page (every image inlined, no external assets): the summary, every PNG under plots/, then the
    (title, html) sections. A run's report.html (write_page) and a tuning study's are written here."""
    images = "".join(
        f'<figure><img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        f"<figcaption>{p.stem.replace('_', ' ')}</figcaption></figure>"
        for p in sorted(plots.glob("*.png"))
    )
    *extra, (last_title, last_body) = sections
    extra = "".join(f"<h2>{html.escape(heading)}</h2>{body}" for heading, body in extra)
    page = f"""<!doctype html><html lang="en"><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}
table{{border-collapse:collapse}}td,th{{padding:.2rem .6rem;border-bottom:1px solid #ddd;text-align:left}}
figure{{display:inline-block;margin:.5rem}}img{{max-width:100%}}pre{{background:#f6f6f6;padding:1rem}}</style>
<h1>{html.escape(title)}</h1><h2>Summary</h2>{_table(summary)}
<h2>Plots</h2>{images}{extra}
<h2>{html.escape(last_title)}</h2>{last_body}</html>"""
    rundir.write_text(path, page)
    return path


def write_page(run_dir: Path, summary: dict, sections: list[tuple[str, str]]) -> Path:
    """report.html: the summary, every PNG under plots/ inlined, extra (title, html) sections, the config."""
    config = html.escape((run_dir / "config.yaml").read_text())
    return write_html(run_dir / "report.html", run_dir.name, summary, run_dir / "plots",
                      [*sections, ("Config", f"<pre>{config}</pre>")])


def _plots_with_curves(run_dir: Path) -> Path:
    """plots/, with the training curves drawn when the run logged any epochs."""
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    if metrics := read_metrics(run_dir):
        plot_curves(metrics, plots / "curves.png")
    return plots


def write_classifier_report(run_dir: Path, model, ds, test: dict, summary: dict,
                            extra: list[tuple[str, str]] = ()) -> Path:
    plots = _plots_with_curves(run_dir)
    plot_confusion(test["confusion_matrix"], ds.classes, plots / "confusion.png")
    if not ds.is_image and ds.input_shape == (2,):
        plot_decision_boundary(model, ds.test_x, ds.test_y, plots / "decision_boundary.png")
    per_class = "".join(f"<tr><th>{html.escape(c)}</th><td>{m['precision']:.3f}</td><td>{m['recall']:.3f}</td>"
                        f"<td>{m['f1']:.3f}</td></tr>" for c, m in test["per_class"].items())
    table = f"<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th></tr>{per_class}</table>"
    sections = [*extra, ("Per class (test)", table), *mistakes_sections(model, ds, test["highest_loss"])]
    if privacy := summary.get("privacy"):  # a private run shows no training example anywhere in its report
        plot_privacy(read_metrics(run_dir), privacy, plots / "privacy_spent.png")
        text = (f"<p>Trained with DP-SGD (Opacus): ({privacy['epsilon']:.3g}, {privacy['delta']:.0e})-differentially "
                f"private with respect to the training examples, by the {privacy['accountant'].upper()} accountant. "
                f"The report shows no training example.</p>")
        sections.insert(0, ("Privacy", text + _table(privacy)))
    return write_page(run_dir, summary, sections)


def plot_class_attributions(maps: torch.Tensor, counts: torch.Tensor, classes: list[str]) -> bytes:
    """A PNG, one panel per class: its mean attribution map (channels summed), on one colour scale centred on zero so
    the panels compare (red: towards the class, as in explain.overlay)."""
    plt = figure()
    m = pixel_map(maps).numpy()  # (classes, H, W)
    peak = float(np.quantile(np.abs(m), 0.995)) or 1.0  # a few extreme pixels would wash out every other one
    k = len(classes)
    cols = min(k, 5 if k <= 10 else 10)  # 10 classes in two rows: panels large enough on the 60rem page
    rows = -(-k // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.25 * cols + 1.2, 1.45 * rows + 0.2), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, name, a, n in zip(axes.flat, classes, m, counts.tolist()):
        shown = ax.imshow(a, cmap="RdBu_r", vmin=-peak, vmax=peak)
        ax.set_title(f"{name} ({n})", fontsize=7)
    fig.colorbar(shown, ax=axes, shrink=0.8, label="attribution (log-prob.)")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _png(image) -> str:
    """A PIL image or PNG bytes as a data URI, so the page stays self-contained."""
    if not isinstance(image, bytes):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        image = buffer.getvalue()
    return f"data:image/png;base64,{base64.b64encode(image).decode()}"


def _pil(image: torch.Tensor, scale: int):
    """(C, H, W) uint8 -> a PIL image, scale times larger with square pixels."""
    a = image.numpy()
    out = Image.fromarray(a[0], "L") if a.shape[0] == 1 else Image.fromarray(a[:3].transpose(1, 2, 0), "RGB")
    return out.resize((out.width * scale, out.height * scale), Image.Resampling.NEAREST)


def _caption(i: int, loss: float, p: torch.Tensor, true: int, pred: int, classes: list[str]) -> str:
    return (f"test #{i} · loss {loss:.3g}<br>true {html.escape(classes[true])} {p[true]:.1%}<br>"
            f"predicted {html.escape(classes[pred])} {p[pred]:.1%}")


def _image_mistakes(ds, index, losses, probs, attributions) -> str:
    """A figure per item: the test image, and the attributions of its predicted class over it."""
    scale = max(1, 112 // ds.input_shape[-1])  # about 112 px wide
    figures = []
    for j, i in enumerate(index.tolist()):
        image = ds.test_x[i].cpu()
        shown = f'<img alt="test #{i}" src="{_png(_pil(image, scale))}">'
        if attributions is not None:
            shown += f' <img alt="attributions #{i}" src="{_png(overlay(image, attributions[j], scale))}">'
        caption = _caption(i, losses[j].item(), probs[j], int(ds.test_y[i]), int(probs[j].argmax()), ds.classes)
        figures.append(f'<figure>{shown}<figcaption style="font-size:.8rem">{caption}</figcaption></figure>')
    return "".join(figures)


def _table_mistakes(ds, index, losses, probs, attributions, features: int = 8) -> str:
    """A row per item: its features (the `features` with the largest mean |attribution| over the rows), each with its
    attribution for the predicted class in brackets."""
    x = ds.test_x[index].cpu()
    a = attributions if attributions is not None else torch.zeros_like(x)
    order = a.abs().mean(0).argsort(descending=True)[:features].sort().values.tolist()
    head = "".join(f"<th>x{d}</th>" for d in order)
    rows = []
    for j, i in enumerate(index.tolist()):
        true, pred = int(ds.test_y[i]), int(probs[j].argmax())
        cells = "".join(f"<td>{x[j, d]:.3g}" + (f" ({a[j, d]:+.2g})" if attributions is not None else "") + "</td>"
                        for d in order)
        rows.append(f"<tr><td>#{i}</td><td>{losses[j]:.3g}</td><td>{html.escape(ds.classes[true])} "
                    f"{probs[j, true]:.1%}</td><td>{html.escape(ds.classes[pred])} {probs[j, pred]:.1%}</td>"
                    f"{cells}</tr>")
    return (f"<table><tr><th>test item</th><th>loss</th><th>true</th><th>predicted</th>{head}</tr>"
            f"{''.join(rows)}</table>")


def mistakes_sections(model, ds, highest_loss: dict) -> list[tuple[str, str]]:
    """Report sections: the test items with the highest loss (evaluate's highest_loss) with attributions of the
    predicted class, and for images the mean attributions of each class. Attributions are left out, with the reason,
    for a model the explainer refuses or that ONNX Runtime runs."""
    index, losses = torch.tensor(highest_loss["index"], dtype=torch.long), torch.tensor(highest_loss["loss"])
    probs = predict_proba(model, ds.test_x[index])
    attributions, averages, why = None, None, None
    if mistakes.runs_in_onnx(model):
        why = "this model runs in ONNX Runtime, which has no gradients (the parent run's report has them)"
    else:
        try:
            explainer = Explainer(mistakes.on_cpu(model), ds.input_shape)
            attributions = explainer(ds.test_x[index].cpu(), target=probs.argmax(1)).attributions
            if ds.is_image:
                per_class = mistakes.images_per_class(len(ds.classes), ds.input_shape)
                averages = mistakes.class_attributions(explainer, ds.test_x, ds.test_y, len(ds.classes), per_class)
        except GenforgeError as e:  # the explainer refuses this model; anything else is a bug and stops the report
            why = str(e).rstrip(".")
    method = DEFAULT_METHOD + (f" ({DEFAULT_STEPS[DEFAULT_METHOD]} steps)" if DEFAULT_METHOD in DEFAULT_STEPS else "")
    text = f"<p>The {len(index)} test {'images' if ds.is_image else 'items'} with the highest loss (cross-entropy)"
    if why:
        text += f". No attributions: {html.escape(why)}.</p>"
    elif ds.is_image:
        text += (f", each beside the {method} attributions of its predicted class (red pixels raise that class's "
                 f"probability, blue ones lower it).</p>")
    else:
        text += (f", each feature with its {method} attribution to the predicted class's log-probability in "
                 f"brackets, relative to the model's baseline input (the mean it normalizes with).</p>")
    shown = _image_mistakes if ds.is_image else _table_mistakes
    sections = [("Mistakes (test)", text + shown(ds, index, losses, probs, attributions))]
    if averages is not None:
        figure = _png(plot_class_attributions(*averages, ds.classes))
        method = f"{mistakes.CLASS_METHOD} ({mistakes.CLASS_STEPS} steps)"
        text = (f"<p>For each class, the mean {method} attributions of its first {per_class} test images to their "
                f"true class (how many in brackets): where the model looks.</p>")
        sections.append(("Attributions per class (test)", f'{text}<img alt="class attributions" src="{figure}">'))
    return sections


def plot_privacy(metrics: list[dict], privacy: dict, path: Path) -> None:
    """Epsilon spent after each epoch, and the budget."""
    plt = figure()
    epochs = [m["epoch"] for m in metrics if "epsilon" in m]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(epochs, [m["epsilon"] for m in metrics if "epsilon" in m], marker="o", label="epsilon spent")
    if privacy.get("target_epsilon"):
        ax.axhline(privacy["target_epsilon"], color="gray", ls=":", label="budget")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"epsilon (delta {privacy['delta']:.0e})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    rundir.write_with(path, lambda f: fig.savefig(f, format="png", dpi=90))
    plt.close(fig)


def write_generator_report(run_dir: Path, model, ds, result: dict, summary: dict,
                           extra: list[tuple[str, str]] = ()) -> Path:
    """Curves, a sample grid (and input | reconstruction pairs for a VAE), the scores with their calibration."""
    plots = _plots_with_curves(run_dir)
    scale = 3 if ds.input_shape[-1] < 64 else 1
    grid = image_grid(model.sample(64, seed=0), scale=scale)
    rundir.write_with(plots / "samples.png", lambda f: grid.save(f, format="PNG"))
    if hasattr(model, "reconstruct"):
        x = ds.test_x[:16]
        labels = ds.test_y[:16] if model.cfg.conditional else None
        pairs = torch.stack([x, model.reconstruct(x, labels)], 1).flatten(0, 1)  # (32, C, H, W): input, recon
        grid = image_grid(pairs, nrow=8, scale=scale)
        rundir.write_with(plots / "reconstructions.png", lambda f: grid.save(f, format="PNG"))
    scores = {f"{k} (mean ± sd)": f"{v['mean']:.4g} ± {v['sd']:.2g}" for k, v in result.items()
              if isinstance(v, dict) and "mean" in v}
    scores.update(result["calibration"])
    sections = [*extra, ("Scores", _table(scores)), ("Memorization", _table(result["memorization"])),
                ("Provenance", _table(result["provenance"]))]
    if "likelihood" in result:
        sections.insert(1, ("Likelihood (discrete: nats per image, bits per dimension)", _table(result["likelihood"])))
    return write_page(run_dir, summary, sections)
