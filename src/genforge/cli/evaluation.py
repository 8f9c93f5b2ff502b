"""The commands that judge or use a trained classifier: evaluate (the test split; --privacy-audit; --explain),
predict and explain."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from genforge.cli.console import err, out
from genforge.cli.options import AsJson, by_verb
from genforge.errors import GenforgeError

# deferred: genforge's modules (errors aside) import torch: `genforge --help` took 4.0 s with these imports at the
# top, 0.28 s with them in the commands (median of 5 starts)


def evaluate(
    run: Path,
    data: Annotated[str | None, typer.Option(help="Evaluate on this dataset's test split instead.")] = None,
    as_json: AsJson = False,
    samples: Annotated[int | None, typer.Option(min=100, help="Generators: N samples per score.")] = None,
    seeds: Annotated[int | None, typer.Option(min=1, help="Generators: sampling seeds (mean ± sd).")] = None,
    privacy_audit: Annotated[bool, typer.Option("--privacy-audit", help="Classifiers: membership-inference attacks "
                                                "on the run's training examples (writes audit.json).")] = False,
    against: Annotated[list[Path] | None, typer.Option(help="With --privacy-audit: audit these runs too, side by "
                                                            "side (e.g. the same recipe without privacy).")] = None,
    explain: Annotated[bool, typer.Option("--explain", help="Classifiers: how faithful each attribution method is "
                                          "(deletion/insertion, randomization check; writes explain.json).")] = False,
    examples: Annotated[int, typer.Option(min=20, help="With --privacy-audit: members and non-members each; with "
                                                       "--explain: test images scored.")] = 1000,
):
    """Evaluate a run's model on the test split (the same evaluation training ends with); writes eval.json."""
    from genforge import rundir
    from genforge.runs import load_run

    if privacy_audit:
        return _privacy_audit([run, *(against or [])], examples, as_json)
    loaded = load_run(run)
    if explain:
        return _explain_faithfulness(loaded, examples, as_json)
    task = loaded.task
    ds = task.dataset(loaded.config, data or loaded.meta["dataset"], quiet=as_json)
    task.check_fits(ds, loaded.meta)
    loaded.config.eval.samples = samples or loaded.config.eval.samples
    loaded.config.eval.seeds = seeds or loaded.config.eval.seeds
    result = {**task.test(loaded.model, ds, loaded.config), "dataset": ds.name}
    rundir.write_json(loaded.path / "eval.json", result)
    if as_json:
        print(json.dumps(result))
        return
    task.print_evaluation(out, loaded.path.name, result)


def _privacy_audit(paths: list[Path], examples: int, as_json: bool) -> None:
    from genforge import rundir, runs
    from genforge.evaluate.privacy import FPRS, audit_run

    results = []
    for path in paths:
        loaded = runs.load_run(path)
        result = audit_run(loaded, examples)
        rundir.write_json(loaded.path / "audit.json", result)
        results.append(result)
    if as_json:
        print(json.dumps(results if len(results) > 1 else results[0]))
        return
    out.print(f"membership inference: {results[0]['members']} training examples against {results[0]['non_members']} "
              f"test examples per run (delta {results[0]['delta']:.0e})")
    for r in results:
        spent = "not private" if r["accounted_epsilon"] is None else f"epsilon spent {r['accounted_epsilon']:.3g}"
        table = Table("attack", "AUC", *(f"TPR at {f:.1%} FPR" for f in FPRS), "epsilon >=", title=None)
        for name, a in r["attacks"].items():
            table.add_row(name, f"{a['auc']:.3f}", *(f"{a[f'tpr_at_{f:.1%}_fpr']:.1%}" for f in FPRS),
                          f"{a['epsilon_lower_bound']:.3g}")
        out.print(f"[bold]{r['run']}[/] ({spent})")
        out.print(table)


def _explain_faithfulness(loaded, examples: int, as_json: bool) -> None:
    import torch

    from genforge import rundir
    from genforge.evaluate.faithfulness import faithfulness

    loaded.require("classify")
    ds = loaded.task.dataset(loaded.config, quiet=as_json)
    if not ds.is_image:
        raise GenforgeError(f"{loaded.path.name} reads features, not images: --explain scores image classifiers")
    idx = torch.randperm(len(ds.test_y), generator=torch.Generator().manual_seed(0))[:examples]
    with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[what]}"), console=err, disable=as_json) as bar:
        task = bar.add_task("attribution faithfulness", total=None, what="")
        result = faithfulness(loaded.model, ds.test_x[idx], seed=0,
                              progress=lambda what, done, total: bar.update(task, completed=done, total=total,
                                                                             what=what))
    result.update(run=loaded.path.name, dataset=ds.name, subset="test images, the first of a permutation seeded 0")
    rundir.write_json(loaded.path / "explain.json", result)
    if as_json:
        print(json.dumps(result))
        return
    _print_faithfulness(result, loaded.path.name, ds.name)


def _print_faithfulness(result: dict, run: str, dataset: str) -> None:
    out.print(f"[bold]{run}[/]: {result['examples']} {dataset} test images (sanity check on "
              f"{result['sanity_examples']}, seed {result['seed']}; attributions in {result['precision']})")
    table = Table("ordering", "deletion", "x random", "insertion", "x random", "rho rand.", "sanity")
    for name, r in result["methods"].items():
        checked = "sanity" in r
        table.add_row(name, f"{r['deletion_auc']:.3f}", f"{r['deletion_vs_random']:.2f}", f"{r['insertion_auc']:.3f}",
                      f"{r['insertion_vs_random']:.2f}", f"{r['spearman_abs_full']:+.2f}" if checked else "-",
                      ("pass" if r["passes_sanity"] else "[red]FAIL[/]") if checked else "-")
    out.print(table)
    out.print(f"deletion/insertion: area under the class probability as pixels are removed/added in the order "
              f"(lower/higher is more faithful); rho rand.: rank correlation of |attributions| with those of the "
              f"fully randomized model over the object's pixels; FAIL (above {result['sanity_max']}): the method "
              f"explains the image, not the model")
    out.print(f"most faithful method that passes the sanity check: {result['most_faithful_passing']}")


def predict(
    run: Path,
    files: Annotated[list[Path] | None, typer.Argument(help="PNG, JPEG or .npy (N x H x W uint8) files.")] = None,
    text: Annotated[list[str] | None, typer.Option("--text", help="A text to classify (a text classifier; may be "
                                                   "repeated).")] = None,
    top_k: Annotated[int, typer.Option("--top-k", callback=by_verb("predict", "top_k"),
                                       help="Classes to show per input.")] = 3,
    as_json: AsJson = False,
):
    """Classify images (or texts, with --text) with a trained run."""
    from genforge.data.inputs import load_inputs
    from genforge.evaluate.classification import predict_proba
    from genforge.registry import verb_of_command
    from genforge.runs import load_run

    loaded = load_run(run)
    if loaded.task.reads_strings and loaded.meta["classes"]:
        from genforge.data.tokens import tokenizer_of
        from genforge.tasks.language import entry_tokens

        if files or not text:
            raise GenforgeError(f"{run.name} classifies texts: give --text \"...\" (files are for image classifiers)")
        x = entry_tokens(tokenizer_of(loaded.meta), text, loaded.meta["input_shape"][0])
    elif verb_of_command("predict") not in loaded.task.verbs:
        instead = "generate" if loaded.task.reads_strings else "sample (or reconstruct, for a VAE)"
        raise GenforgeError(f"{run} is a {loaded.config.model.kind} model, not a classifier: predict classifies; "
                            f"use genforge {instead}")
    elif text or not files:
        raise GenforgeError(f"{run.name} classifies {loaded.meta.get('dataset', 'images')}: give image files, not "
                            f"--text")
    else:
        x = load_inputs(files, tuple(loaded.meta["input_shape"]), loaded.meta.get("light_background", False))
    probs = predict_proba(loaded.model, x)
    classes = loaded.meta["classes"]
    preds = [{"index": int(p.argmax()), "label": classes[int(p.argmax())], "probabilities": p.tolist()}
             for p in probs]
    if as_json:
        print(json.dumps({"predictions": preds}))
        return
    k = min(top_k, len(classes))
    for i, p in enumerate(probs):
        values, idx = p.topk(k)
        ranked = ", ".join(f"{classes[j]} {v:.3f}" for v, j in zip(values.tolist(), idx.tolist()))
        out.print(f"{i}: [bold]{classes[int(idx[0])]}[/]  ({ranked})")


def explain(
    run: Path,
    files: Annotated[list[Path] | None, typer.Argument(help="PNG, JPEG or .npy (N x H x W uint8) files.")] = None,
    text: Annotated[list[str] | None, typer.Option("--text", help="A text to explain (a text classifier; may be "
                                                                 "given several times).")] = None,
    method: Annotated[str | None, typer.Option(help="integrated-gradients, saliency, gradient-shap, occlusion or "
                                                    "grad-cam (default: the most faithful; see docs).")] = None,
    target: Annotated[str | None, typer.Option(callback=by_verb("explain", "target"),
                                               help="Class to explain, by label or index (default: the "
                                                    "predicted one).")] = None,
    steps: Annotated[int | None, typer.Option(callback=by_verb("explain", "steps"),
                                              help="Gradient evaluations per input (integrated-gradients, "
                                                   "gradient-shap; default 32).")] = None,
    smooth: Annotated[bool, typer.Option(help="integrated-gradients of an image: gradients averaged over the "
                                              "paths to 8 noisy copies (SmoothGrad); --no-smooth: the path to the "
                                              "image alone, every step a point (complete).")] = True,
    out_path: Annotated[Path | None, typer.Option("--out", help="A .png grid, or a folder for one overlay per "
                                                                "input (default: explanations.png; none with "
                                                                "--json).")] = None,
    precision: Annotated[str, typer.Option(help="auto (bf16 autocast where the device runs it fast), fp32 or "
                                                "bf16.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON with the attributions.")] = False,
):
    """Show what a classifier looks at: each input, its attribution overlaid (red: towards the class, blue: away),
    the predicted and explained classes with their probabilities."""
    import torch

    from genforge.data.inputs import load_inputs
    from genforge.explain import write_explanations
    from genforge.runs import load_run

    loaded = load_run(run)
    if loaded.task.reads_strings or text:
        _explain_texts(loaded, text or [], target, steps, out_path, as_json)
        return
    loaded.require("classify")
    if not files:
        raise GenforgeError("give the image files to explain")
    shape, light = tuple(loaded.meta["input_shape"]), loaded.meta.get("light_background", False)
    parts = [load_inputs([f], shape, light) for f in files]
    names = [f.name if len(p) == 1 else f"{f.name}[{i}]" for f, p in zip(files, parts) for i in range(len(p))]
    x = torch.cat(parts)
    if len(x) > 256:
        raise GenforgeError(f"{len(x)} inputs: explain at most 256 at a time")
    result = loaded.explainer(precision)(x, method, loaded.class_index(target), steps, smooth)
    if out_path is None and not as_json:
        out_path = Path("explanations.png")
    rows = write_explanations(x, result, loaded.meta["classes"], names, out_path)
    if as_json:
        for row, a in zip(rows, result.attributions):
            row["attributions"] = a.tolist()
        print(json.dumps({"method": result.method, "steps": result.steps, "copies": result.copies,
                          "precision": result.precision, "explanations": rows}))
        return
    for row in rows:
        out.print(f"{row['input']}: predicted [bold]{row['predicted']}[/] ({row['predicted_probability']:.3f}), "
                  f"explained {row['target']} ({row['target_probability']:.3f})")
    out.print(f"{result.describe()}, {result.precision}: wrote {out_path}")


def _explain_texts(loaded, texts: list[str], target: int | None, steps: int | None, out_path: Path | None,
                   as_json: bool) -> None:
    """explain --text: each text's characters coloured by their attribution, and an HTML page (--out, default
    explanations.html)."""
    from rich.text import Text

    from genforge.data.tokens import tokenizer_of
    from genforge.language.attribution import STEPS, explain_texts, html_page, shades
    from genforge.runs import load_run

    if not loaded.task.reads_strings:
        raise GenforgeError(f"{loaded.path.name} classifies {loaded.meta.get('dataset', 'images')}: give files to "
                            f"explain, not --text")
    if not loaded.meta["classes"]:
        raise GenforgeError(f"{loaded.path.name} is a language model: explain a text classifier (model.head=classes)")
    target, steps = loaded.class_index(target), steps or STEPS
    if not texts:
        raise GenforgeError(f"{loaded.path.name} classifies texts: give --text \"...\"")
    if len(texts) > 256:
        raise GenforgeError(f"{len(texts)} texts: explain at most 256 at a time")
    model = loaded.model if loaded.backend == "torch" else load_run(loaded.path, backend="torch").model
    found = explain_texts(model, tokenizer_of(loaded.meta), texts, target, steps)
    classes = loaded.meta["classes"]
    if as_json:
        print(json.dumps({"method": "integrated-gradients", "steps": steps, "explanations": [
            {"text": e.text, "predicted": classes[e.predicted], "predicted_probability": e.predicted_probability,
             "target": classes[e.target], "target_probability": e.target_probability, "delta": e.delta,
             "characters": e.characters, "attributions": e.attributions, "rollout": e.rollout} for e in found]}))
        return
    out_path = out_path or Path("explanations.html")
    out_path.write_text(html_page(found, classes))
    def coloured(characters: list[str], values: list[float]) -> Text:
        shown = Text()
        for character, rgb in zip(characters, shades(values)):
            shown.append(character, style="black on rgb({},{},{})".format(*rgb))
        return shown

    for e in found:
        out.print(f"predicted [bold]{classes[e.predicted]}[/] ({e.predicted_probability:.3f}), explained "
                  f"{classes[e.target]} ({e.target_probability:.3f})")
        out.print("integrated gradients: ", coloured(e.characters, e.attributions))
        out.print("attention rollout:    ", coloured(e.characters, e.rollout))
    out.print(f"integrated gradients on the embeddings, {steps} steps (red: towards the class, blue: away); attention "
              f"rollout (the share of attention): wrote {out_path}")
