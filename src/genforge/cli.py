"""genforge's command line: one command per lifecycle verb. Parse, call the library, print."""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from genforge.errors import GenforgeError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, evaluate, compress and serve image models.")
runs_app = typer.Typer(help="List and compare run directories.", invoke_without_command=True)
data_app = typer.Typer(help="Inspect datasets.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
app.add_typer(data_app, name="data")
out = Console()
err = Console(stderr=True, soft_wrap=True, highlight=False)  # messages stay one line, paths unbroken

RunsDir = Annotated[Path, typer.Option("--runs-dir", help="Parent folder of run directories.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Plain log lines instead of a progress bar.")]


def _train_new(source: str, overrides: list[str], name: str | None, runs_dir: Path, quiet: bool) -> tuple[Path, dict]:
    from genforge import rundir, track
    from genforge.config import load_config
    from genforge.training import train

    cfg = load_config(source, [*overrides, *([f"name={name}"] if name else [])])  # validated like any key
    track.require(cfg.track.names())  # before the run directory: a refused run leaves nothing behind
    run_dir = rundir.create_run(runs_dir, cfg.name, cfg)
    err.print(f"run directory: {run_dir}")
    return run_dir, train(cfg, run_dir, quiet=quiet)


def _launch(nproc: int, max_restarts: int, worker_args: list[str]) -> int:
    """`genforge train ... --nproc N`: torchrun's own launcher (torch.distributed.run) on this machine, starting N
    workers of `python -m genforge train ...`; its exit code. Its flags and environment variables behave as its
    documentation says (https://pytorch.org/docs/stable/elastic/run.html)."""
    import signal
    import subprocess

    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            f"--max-restarts={max_restarts}", "-m", "genforge", "train", *worker_args]
    interrupted = False

    def note(signum, frame):  # torchrun got the same Ctrl-C and stops its workers (they checkpoint): keep waiting
        nonlocal interrupted
        interrupted = True

    # a handler of our own, not Python's KeyboardInterrupt: a process started in the background inherits SIGINT
    # ignored, and Python then installs none, while torchrun's agent always handles it
    previous = signal.signal(signal.SIGINT, note)
    try:
        code = subprocess.Popen(argv).wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    return 130 if interrupted else code  # torchrun itself ends a Ctrl-C with a traceback and exit code 1


def _launch_args(config, overrides, name, runs_dir: Path, resume, track, quiet: bool, nproc: int | None,
                 max_restarts: int | None) -> list[str]:
    """Check --nproc's arguments here, before any process starts, and return the workers' `genforge train` args."""
    from genforge.config import load_config
    from genforge.train import distributed

    if nproc is None:
        raise GenforgeError("--max-restarts restarts the processes of --nproc N: give --nproc too")
    if nproc < 1:
        raise GenforgeError(f"--nproc {nproc}: give the number of processes, 1 or more")
    if max_restarts is not None and max_restarts < 0:
        raise GenforgeError(f"--max-restarts {max_restarts}: give 0 or more")
    if distributed.launched():
        raise GenforgeError("--nproc inside a torchrun launch: torchrun already started the processes; drop --nproc")
    if resume is not None:
        from genforge import rundir
        if config is not None or overrides or name is not None or track is not None:
            raise GenforgeError("--resume continues a run with its own config.yaml: give no preset, overrides, "
                                "--name or --track")
        cfg = load_config(str(rundir.resolve_run(resume) / "config.yaml"))
    elif config is None:
        raise GenforgeError("give a preset or a config file; list presets with `genforge presets`")
    else:
        cfg = load_config(config, [*(overrides or []), *([f"name={name}"] if name else [])])
    if cfg.train.privacy is not None and nproc > 1:
        raise GenforgeError("train.privacy with --nproc: Opacus' distributed mode is not wired into genforge; train "
                            "privately in one process (drop --nproc)")
    if cfg.train.batch_size % nproc:
        raise GenforgeError(f"train.batch_size={cfg.train.batch_size} is the global batch, split evenly over the "
                            f"processes: make it a multiple of --nproc {nproc}")
    args = []
    if resume is not None:
        args += ["--resume", str(resume)]
    else:
        args += [config, *(overrides or []), *(["--name", name] if name else [])]
        args += ["--track", track] if track else []
    return [*args, "--runs-dir", str(runs_dir), *(["--quiet"] if quiet else [])]


def _elastic_run_dir(runs_dir: Path, cfg) -> Path:
    """Rank 0's choice of the run directory under torchrun: a new one at the first start, the same one when torchrun
    restarts the group (TORCHELASTIC_RESTART_COUNT > 0), found through a marker named by the launch's run ID."""
    import os

    from genforge import rundir
    marker = runs_dir / ".torchrun" / os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0 and marker.is_file():
        return Path(marker.read_text())
    run_dir = rundir.create_run(runs_dir, cfg.name, cfg)
    marker.parent.mkdir(parents=True, exist_ok=True)
    rundir.write_text(marker, str(run_dir))
    return run_dir


def _train_worker(cfg, run_dir: Path | None, runs_dir: Path, quiet: bool) -> tuple[Path, dict | None]:
    """One rank of a torchrun launch: join the group, agree on the run directory (rank 0's), resume from its
    checkpoint when there is one (a restarted group), train. Rank 0 returns the summary; the others None."""
    from genforge import rundir
    from genforge.train import distributed
    from genforge.training import train as train_loop

    with distributed.process_group(cfg.train.device) as world:
        if run_dir is None:
            run_dir = Path(distributed.from_main(lambda: str(_elastic_run_dir(runs_dir, cfg))))
        elif distributed.from_main(lambda: rundir.read_json(run_dir / "summary.json").get("status") == "complete"):
            raise GenforgeError(f"{run_dir} finished training already; there is nothing to resume")
        resume = distributed.from_main((run_dir / rundir.CHECKPOINT).is_file)
        if world.is_main:
            err.print(f"run directory: {run_dir} ({world.size} processes, {world.backend or 'one process'}"
                      f"{', resumed' if resume else ''})", markup=False)
        summary = train_loop(cfg, run_dir, resume=resume, quiet=quiet or not world.is_main)
    return run_dir, summary if world.is_main else None


def _print_summary(summary: dict) -> None:
    table = Table(show_header=False, box=None)
    for k, v in summary.items():
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    out.print(table)


@app.command()
def train(
    config: Annotated[str | None, typer.Argument(help="A preset name or a YAML file.")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value, e.g. train.lr=3e-4 seed=1")] = None,
    name: Annotated[str | None, typer.Option(help="Run name (prefix of the run directory).")] = None,
    runs_dir: RunsDir = Path("runs"),
    resume: Annotated[Path | None, typer.Option(help="Continue this run directory in place.")] = None,
    track: Annotated[str | None, typer.Option(help="Mirror the run into trackers: mlflow, tensorboard or both "
                                                   "(mlflow,tensorboard); the same as track=[...].")] = None,
    quiet: Quiet = False,
    nproc: Annotated[int | None, typer.Option("--nproc", help="Data-parallel training in N processes on this machine "
                                                               "(torchrun --standalone; gloo on CPU, NCCL on CUDA); "
                                                               "train.batch_size is the global batch.")] = None,
    max_restarts: Annotated[int | None, typer.Option("--max-restarts", help="With --nproc: restart the group up "
                                                                            "to K times after a process dies; "
                                                                            "training resumes from the last "
                                                                            "checkpoint.")] = None,
):
    """Train a model into a new run directory, or --resume an interrupted one."""
    from genforge.train import distributed
    from genforge.train.loop import Interrupted

    if nproc is not None or max_restarts is not None:
        args = _launch_args(config, overrides, name, runs_dir, resume, track, quiet, nproc, max_restarts)
        raise typer.Exit(_launch(nproc, max_restarts or 0, args))
    try:
        if distributed.launched():  # a worker of torchrun (or of --nproc)
            from genforge.config import load_config

            if resume is not None and (config is not None or overrides or name is not None or track is not None):
                raise GenforgeError("--resume continues a run with its own config.yaml: give no preset, overrides, "
                                    "--name or --track")
            if resume is None and config is None:
                raise GenforgeError("give a preset or a config file; list presets with `genforge presets`")
            if resume is not None:
                from genforge import rundir
                resume = rundir.resolve_run(resume)
                cfg = load_config(str(resume / "config.yaml"))
            else:
                tracked = [f"track=[{track}]"] if track is not None else []
                cfg = load_config(config, [*(overrides or []), *tracked, *([f"name={name}"] if name else [])])
            run_dir, summary = _train_worker(cfg, resume, runs_dir, quiet)
            if summary is None:  # ranks other than 0 print nothing
                return
        elif resume is not None:
            from genforge import rundir
            from genforge.config import load_config
            from genforge.training import train as train_loop

            run_dir = rundir.resolve_run(resume)
            if config is not None or overrides or name is not None or track is not None:
                raise GenforgeError("--resume continues a run with its own config.yaml: give no preset, overrides, "
                                    "--name or --track (to change the config, train a new run; to mirror a run "
                                    "into a tracker, genforge runs track RUN)")
            if (run_dir / "compression.json").is_file():  # a pruned child: its schedule, then the comparison
                from genforge.compress.prune import resume_prune

                _print_comparison(*resume_prune(run_dir, quiet, progress=err.print))
                return
            if rundir.read_json(run_dir / "summary.json").get("status") == "complete":
                raise GenforgeError(f"{run_dir} finished training already; there is nothing to resume")
            summary = train_loop(load_config(str(run_dir / "config.yaml")), run_dir, resume=True, quiet=quiet)
        else:
            if config is None:
                raise GenforgeError("give a preset or a config file; list presets with `genforge presets`")
            tracked = [f"track=[{track}]"] if track is not None else []
            run_dir, summary = _train_new(config, [*(overrides or []), *tracked], name, runs_dir, quiet)
    except Interrupted as e:
        if not distributed.launched() or os.environ["RANK"] == "0":  # one message for a group of processes
            err.print(str(e), markup=False)
        raise typer.Exit(130) from None
    _print_summary(summary)
    out.print(f"run: {run_dir}\nreport: {run_dir / 'report.html'}")
    from genforge.track import views

    for line in views(run_dir):  # where `track` mirrored the run
        out.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command()
def evaluate(
    run: Path,
    data: Annotated[str | None, typer.Option(help="Evaluate on this dataset's test split instead.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
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
    from rich.table import Table

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
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

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
    out.print(f"[bold]{loaded.path.name}[/]: {result['examples']} {ds.name} test images (sanity check on "
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


@app.command()
def predict(
    run: Path,
    files: Annotated[list[Path], typer.Argument(help="PNG, JPEG or .npy (N x H x W uint8) files.")],
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Classes to show per input.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """Classify images with a trained run."""
    from genforge.data.inputs import load_inputs
    from genforge.evaluate.classification import predict_proba
    from genforge.runs import load_run

    loaded = load_run(run)
    if "classify" not in loaded.task.verbs:
        raise GenforgeError(f"{run} is a {loaded.config.model.kind} model, not a classifier: predict classifies; "
                            f"use genforge sample (or reconstruct, for a VAE)")
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


@app.command()
def explain(
    run: Path,
    files: Annotated[list[Path], typer.Argument(help="PNG, JPEG or .npy (N x H x W uint8) files.")],
    method: Annotated[str | None, typer.Option(help="integrated-gradients, saliency, gradient-shap, occlusion or "
                                                    "grad-cam (default: the most faithful; see docs).")] = None,
    target: Annotated[str | None, typer.Option(help="Class to explain, by label or index (default: the "
                                                    "predicted one).")] = None,
    steps: Annotated[int | None, typer.Option(min=1, max=256, help="Gradient evaluations per input "
                                                                   "(integrated-gradients, gradient-shap; default "
                                                                   "32).")] = None,
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
    loaded.require("classify")
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


OutFile = Annotated[Path, typer.Option("--out", help="A .png (image grid) or .npy (uint8 array) file.")]


@app.command()
def sample(
    run: Path,
    n: Annotated[int, typer.Option("-n", min=1, max=10_000, help="Number of images (one batch).")] = 64,
    label: Annotated[int | None, typer.Option(help="Class to draw (class-conditional models).")] = None,
    seed: Annotated[int, typer.Option(help="The same seed gives the same images.")] = 0,
    truncation: Annotated[float | None, typer.Option(min=0.01, help="Redraw latent entries beyond ±T.")] = None,
    out_file: OutFile = Path("samples.png"),
):
    """Draw images from a generator (GAN or VAE): a PNG grid or a uint8 .npy (N x H x W, or N x C x H x W)."""
    from genforge.grids import save_images
    from genforge.runs import load_run

    images = load_run(run).sample(n, label=label, seed=seed, truncation=truncation)
    out.print(f"wrote {n} samples to {save_images(images, out_file)}")


@app.command()
def interpolate(
    run: Path,
    steps: Annotated[int, typer.Option(min=2, max=256, help="Images along the walk.")] = 10,
    from_label: Annotated[int | None, typer.Option(help="Class at the start (class-conditional models).")] = None,
    to_label: Annotated[int | None, typer.Option(help="Class at the end (class-conditional models).")] = None,
    seed: Annotated[int, typer.Option(help="Picks the two end points.")] = 0,
    out_file: OutFile = Path("interpolation.png"),
):
    """A walk through latent space between two random points (spherical: the prior is Gaussian)."""
    from genforge.grids import save_images
    from genforge.models.latent import interpolate as walk
    from genforge.runs import load_run

    loaded = load_run(run)
    loaded.require("render")
    images = walk(loaded.model, steps, seed, from_label, to_label)
    out.print(f"wrote a {steps}-step walk to {save_images(images, out_file, nrow=steps)}")


@app.command()
def reconstruct(
    run: Path,
    files: Annotated[list[Path], typer.Argument(help="PNG, JPEG or .npy (N x H x W uint8) images.")],
    label: Annotated[int | None, typer.Option(help="Class of the inputs (class-conditional VAEs).")] = None,
    out_file: OutFile = Path("reconstructions.png"),
):
    """A VAE's reconstructions: each input beside its reconstruction, with the error (mean |x - x'|, 0-255)."""
    import torch

    from genforge.data.inputs import load_inputs
    from genforge.grids import save_images
    from genforge.models.latent import reconstruction_errors
    from genforge.runs import load_run

    loaded = load_run(run)
    loaded.require("reconstruct")
    x = load_inputs(files, tuple(loaded.meta["input_shape"]), loaded.meta.get("light_background", False))
    labels = None
    if loaded.model.cfg.conditional:
        if label is None:
            raise GenforgeError("this VAE is class-conditional: give the inputs' class with --label K")
        labels = torch.full((len(x),), label, dtype=torch.long)
    recon = loaded.model.reconstruct(x, labels)
    pairs = torch.stack([x, recon], 1).flatten(0, 1)  # (2N, C, H, W): input, reconstruction
    save_images(pairs, out_file, nrow=min(8, 2 * len(x)))
    for i, error in enumerate(reconstruction_errors(x, recon)):
        out.print(f"{i}: mean abs error {error:.2f} / 255")
    out.print(f"wrote input | reconstruction pairs to {out_file}")


@app.command()
def forecast(
    run: Path,
    out_path: Annotated[Path, typer.Option("--out", help="forecast.csv (a table) or a .png (a picture).")],
    series: Annotated[list[str] | None, typer.Option("--series", help="Only this series (repeatable).")] = None,
    horizon: Annotated[int | None, typer.Option(min=1, help="Steps ahead (default: the trained horizon; longer "
                                                           "ones feed the model its own forecasts).")] = None,
    input_csv: Annotated[Path | None, typer.Option("--input", help="Forecast this CSV's series instead (a time "
                                                                   "column and value columns).")] = None,
):
    """Forecast the future of a run's series (or of a CSV's) with intervals: a table or a picture."""
    from genforge.forecasting.presentation import forecast_table, histories, plot_future
    from genforge.rundir import write_text
    from genforge.runs import load_run

    loaded = load_run(run)
    loaded.require("forecast")
    if out_path.suffix.lower() not in (".csv", ".png"):
        raise GenforgeError(f"--out must end in .csv or .png, got {out_path.name}")
    ds = histories(loaded, input_csv, series)
    table, forecasts = forecast_table(loaded, ds, horizon)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.suffix.lower() == ".png":
        plot_future(ds, forecasts, out_path)
    else:
        write_text(out_path, table.to_csv(index=False, float_format="%.6g"))
    steps = len(table) // len(forecasts)  # every series gets the same horizon
    if steps > loaded.model.horizon:
        err.print(f"note: {steps} steps exceed the trained horizon ({loaded.model.horizon}); later steps were "
                  f"forecast from the model's own forecasts")
    out.print(f"{len(forecasts)} series x {steps} steps -> {out_path}")


@app.command()
def backtest(
    source: Annotated[str, typer.Argument(help="A run directory, or a preset / YAML file to train and backtest.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value, for a preset")] = None,
    windows: Annotated[int, typer.Option(min=1, help="Rolling origins: the last N horizons of every series.")] = 3,
    horizon: Annotated[int | None, typer.Option(min=1, help="Steps per window (default: the model's horizon).")] = None,
    refit: Annotated[bool, typer.Option(help="A preset: train again before every window (else once, before "
                                             "the first).")] = False,
    runs_dir: RunsDir = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    quiet: Quiet = False,
):
    """Rolling-origin backtest of a forecaster beside the naive, seasonal naive, drift and season-mean baselines."""
    from genforge.backtest import backtest_preset, backtest_run
    from genforge.runs import load_run
    from genforge.tasks.forecast import TASK

    if Path(source).is_dir():
        if overrides or refit:
            raise GenforgeError("a run is backtested as trained: overrides and --refit need a preset or config file")
        loaded = load_run(source)
        loaded.require("forecast")
        result, warning = backtest_run(loaded, windows, horizon)
        if warning:
            err.print(f"warning: {warning}")
        name = loaded.path.name
    else:
        result = backtest_preset(source, overrides or [], windows, horizon, refit, runs_dir, quiet or as_json,
                                 say=err.print)
        name = source
    if as_json:
        print(json.dumps(result))
        return
    TASK.print_evaluation(out, name, result)


@app.command()
def cv(
    config: Annotated[str, typer.Argument(help="A preset name or a YAML file.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides.")] = None,
    folds: Annotated[int, typer.Option(min=2, help="Number of stratified folds.")] = 5,
    runs_dir: RunsDir = Path("runs"),
    quiet: Quiet = False,
):
    """Stratified k-fold cross-validation on the training split: mean ± sd of the fold accuracies."""
    from genforge import rundir
    from genforge.config import load_config
    from genforge.training import train as train_loop

    cfg = load_config(config, overrides or [])
    parent = rundir.create_run(runs_dir, f"{cfg.name}-cv", cfg)
    scores = []
    for k in range(folds):  # a fold trains and scores on its validation part only: no test evaluation or report
        fold_dir = rundir.create_run(parent, f"fold{k}", cfg)
        summary = train_loop(cfg, fold_dir, quiet=quiet, fold=(k, folds))
        scores.append(summary["fold_accuracy"])
        err.print(f"fold {k + 1}/{folds}: accuracy {summary['fold_accuracy']:.4f}")
    result = {"folds": folds, "accuracies": scores, "mean": statistics.mean(scores), "sd": statistics.stdev(scores)}
    rundir.write_json(parent / "cv.json", result)
    out.print(f"cross-validated accuracy: {result['mean']:.4f} ± {result['sd']:.4f} over {folds} folds  ({parent})")


@app.command()
def tune(
    config: Annotated[str, typer.Argument(help="A preset name or a YAML file.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value, applied to every trial before the "
                                                                "sampled values.")] = None,
    trials: Annotated[int, typer.Option(min=1, help="Trials to run now, split between the workers; an existing "
                                                    "study gets this many more.")] = ...,
    space: Annotated[Path | None, typer.Option(help="Search space YAML (default: the preset's, or NAME.space.yaml "
                                                    "beside a config file).")] = None,
    storage: Annotated[str | None, typer.Option(
        envvar="GENFORGE_TUNE_STORAGE",  # tune.STORAGE_ENV: a URL with a password stays off the command line
        help="Optuna storage URL (default: SQLite in the study directory; postgresql://USER@HOST/DB for workers on "
             "many machines). A password in it is better given in the environment variable or ~/.pgpass than on "
             "the command line, which every user of the machine can read.")] = None,
    study: Annotated[str | None, typer.Option(help="Study name (default: the config's name).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes on this machine, on the same study.")] = 1,
    timeout: Annotated[float | None, typer.Option(min=1, help="Start no trial after this many seconds.")] = None,
    metric: Annotated[str | None, typer.Option(help="What a trial is scored on: a key of metrics.jsonl (pruned "
                                                    "per epoch) or of summary.json (default: val_acc for "
                                                    "classifiers, else val_loss).")] = None,
    direction: Annotated[str | None, typer.Option(help="min or max (with --metric).")] = None,
    pruner: Annotated[str, typer.Option(help="hyperband, median or none.")] = "hyperband",
    reports_per_epoch: Annotated[int | None, typer.Option(
        min=1, max=100, help="Validations per epoch, each a point where the pruner may stop a trial (default: 4 for "
                             "a validation metric with a pruner, else 1; a resumed study keeps its own).")] = None,
    seed: Annotated[int | None, typer.Option(help="Sampler seed (worker i adds i).")] = None,
    threads: Annotated[int, typer.Option(min=1, help="torch threads per trial when the config sets no "
                                                     "train.threads; for more speed, add workers.")] = 1,
    heartbeat: Annotated[int, typer.Option(min=1, help="Seconds between a trial's heartbeats; a trial silent for 3 "
                                                       "of them (its worker died) is marked failed.")] = 10,
    worker_index: Annotated[int | None, typer.Option(hidden=True)] = None,  # a worker that --workers started
    runs_dir: RunsDir = Path("runs"),
):
    """Tune hyperparameters with Optuna: every trial is a run directory; the study directory RUNS/tune-STUDY gets
    the best config (best.yaml), trials.csv and report.html. The same --storage and --study in several processes
    or machines share one study; running the command again resumes and extends it."""
    import re
    import time

    from genforge import tune as tuning
    from genforge.config import load_config

    tuning.require()
    if direction not in (None, "min", "max"):
        raise GenforgeError(f"--direction {direction}: give min or max")
    tuning.check_pruner(pruner)
    cfg = load_config(config, overrides or [])
    params, space_path = tuning.load_space(config, space)
    tuning.check_space(config, overrides or [], params)
    name = study or cfg.name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}", name):
        raise GenforgeError(f"--study {name}: a study name is letters, digits, '.', '_' and '-'")
    study_dir = runs_dir / f"tune-{name}"
    url = storage or tuning.sqlite_url(study_dir)
    existing = tuning.existing_attrs(url, name)
    metric, direction = tuning.study_metric(metric, direction, cfg, existing)
    reports = tuning.reports_per_epoch(reports_per_epoch, metric, pruner, existing)
    if extra := tuning.metric_overrides(cfg, metric):
        if worker_index is None:
            err.print(f"{metric} needs {' '.join(extra)}: every trial gets it", markup=False)
        overrides = [*(overrides or []), *extra]
    plan = tuning.Plan(config, overrides or [], params, name, study_dir, url, metric, direction, pruner, seed,
                       None if cfg.train.threads else threads, heartbeat, reports)
    if worker_index is not None:  # one of --workers' processes: trials only, the parent writes the study directory
        if tuning.optimize(plan, trials, timeout, worker_index, say=err.print)["interrupted"]:
            raise typer.Exit(130)
        return
    before = len(tuning.open_study(plan).trials)  # creates the study, or checks that it tunes the same thing
    err.print(f"study {name} ({tuning.shown_url(url)}): {metric} ({direction}), {len(params)} parameters from "
              f"{space_path if space else 'the default space of ' + config}"
              + (f"; {reports} reports per epoch to the {pruner} pruner" if pruner != "none" else "")
              + (f"; resuming after {before} trials" if before else ""), markup=False)
    started = time.perf_counter()
    try:
        if workers == 1:
            ran = tuning.optimize(plan, trials, timeout, say=err.print)
        else:
            ran = tuning.run_workers(plan, trials, timeout, workers, runs_dir, space_path)
    except tuning.StorageError as e:  # said once the study directory is written from what is known
        ran, lost = {"interrupted": False}, str(e)
    else:
        lost = None
    result = tuning.write_study_dir(plan)  # from the run directories where the storage is gone
    lost = lost or result.get("storage_error")  # --workers: the workers said why; this process says it once more
    counts = f"{result['complete']} complete, {result['pruned']} pruned, {result['fail']} failed"
    out.print(f"study {name}: {result['trials']} trials ({counts}), {result['trials'] - before} in "
              f"{time.perf_counter() - started:.0f} s", highlight=False)
    if result["best"]:
        best = result["best"]
        out.print(f"best: trial {best['trial']}, {metric} {best['value']:.4g}", highlight=False)
        table = Table(show_header=False, box=None)
        for key, value in best["params"].items():
            table.add_row(f"  {key}", f"{value:.4g}" if isinstance(value, float) else str(value))
        out.print(table)
        out.print(f"best config: {best['config']}", highlight=False)
    out.print(f"report:      {study_dir / 'report.html'}", highlight=False)
    for worker, code in ran.get("failed", []):  # killed, or an error it printed; its trial fails once stale
        err.print(f"worker {worker} exited with code {code}; a trial it was running is marked failed when its "
                  f"heartbeat is {3 * heartbeat} s old", markup=False)
    if lost:
        source = ("the trials' run directories (each keeps its result in summary.json)" if "storage_error" in result
                  else "the storage")
        raise tuning.StorageError(f"{lost}; {study_dir} was written from {source}; run the command again to resume "
                                  f"once the storage answers")
    if ran["interrupted"]:
        again = " ".join(["genforge tune", config, *(overrides or []), "--trials", str(trials), "--study", name,
                          *(["--storage", tuning.shown_url(url)] if storage else []), "--runs-dir", str(runs_dir)])
        err.print(f"interrupted; the study keeps every finished trial; continue it with: {again}", markup=False)
        raise typer.Exit(130)
    if not result["best"]:
        err.print(f"no trial completed; see the errors in {study_dir / 'trials.csv'}", markup=False)
    if not result["best"] or ran.get("failed"):
        raise typer.Exit(1)


@app.command()
def serve(
    runs: Annotated[list[Path], typer.Argument(help="Run directories to serve (classifiers, GANs, VAEs).")],
    host: Annotated[str, typer.Option(help="Interface to bind; anything but loopback needs --token-file.")] = (
        "127.0.0.1"),
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    token_file: Annotated[Path | None, typer.Option(help="A file holding the bearer token clients must send.")] = None,
    max_body: Annotated[int, typer.Option(min=1024, help="Largest request body, bytes.")] = 1 << 20,
    max_concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight before 503.")] = 32,
    timeout: Annotated[float, typer.Option(min=0.1, help="Inference timeout, seconds (then 504).")] = 10.0,
    body_timeout: Annotated[float, typer.Option(min=0.1, help="Seconds a request's body may take to arrive (then "
                                                              "408); it holds no concurrency slot meanwhile.")] = 10.0,
    backend: Annotated[str, typer.Option(
        help="auto, torch or onnxruntime for every run. auto: onnxruntime wherever a run can run there (a trained "
             "run is exported once, into RUN/export), else torch")] = "auto",
    workers: Annotated[int, typer.Option(min=1, max=64, help="Server processes on the one port, each with its own "
                                                             "copy of the models and its share of the cores")] = 1,
):
    """Serve runs over HTTP: a JSON API (docs at /docs) and a web playground at /."""
    from genforge.serve.limits import Limits
    from genforge.serve.server import serve as run_server

    run_server(runs, host, port, token_file,
               Limits(max_body_bytes=max_body, max_concurrency=max_concurrency, timeout_s=timeout,
                      body_timeout_s=body_timeout), backend=backend,
               workers=workers)


@app.command()
def export(
    run: Path,
    format: Annotated[str, typer.Option("--format", help="Only onnx for now.")] = "onnx",
    opset: Annotated[int, typer.Option(min=1, help="ONNX opset (18 or newer).")] = 18,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch", help="Any batch size (else --batch-size only).")]
    = False,
    batch_size: Annotated[int | None, typer.Option(min=1, help="The fixed batch size without --dynamic-batch "
                                                             "(default 1).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Folder for the .onnx files (default RUN/export).")]
    = None,
):
    """Export a run to ONNX (classifier; GAN generator; VAE encoder and decoder), each file checked against
    PyTorch with ONNX Runtime on held-out data (max abs difference <= 1e-4, or nothing is saved)."""
    from genforge.onnx.export import export_run
    from genforge.runs import load_run

    if format != "onnx":
        raise GenforgeError(f"--format {format} is not supported; use onnx")
    if dynamic_batch and batch_size is not None:
        raise GenforgeError("--batch-size fixes the batch; with --dynamic-batch any batch works: give one of them")
    record = export_run(load_run(run, backend="torch"), out_dir, opset=opset, dynamic_batch=dynamic_batch,
                        batch_size=batch_size or 1, progress=err.print)
    where = out_dir or Path(run) / "export"
    for part in record["parts"].values():
        out.print(f"{where / part['file']}  {part['bytes'] / 1024:,.0f} KiB  max |onnxruntime - torch| "
                  f"{part['max_diff']:.1e} on {part['parity_batch']} held-out inputs")


def _cell(v) -> str:
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    return f"{v:,}" if isinstance(v, int) else f"{v:.4g}" if isinstance(v, float) else str(v)


def _print_comparison(child: Path, comparison: dict) -> None:
    rows = comparison["rows"]
    table = Table(title=f"{child.name} vs its parent ({comparison['threads']} thread(s))")
    table.add_column("")
    for name in rows:
        table.add_column(name, justify="right")
    fields = list(dict.fromkeys(k for row in rows.values() for k in row))
    for field in fields:
        table.add_row(field, *(_cell(row.get(field)) for row in rows.values()))
    out.print(table)
    out.print(f"run directory: {child}\nreport:        {child / 'report.html'}")


@app.command()
def compress(
    run: Path,
    overrides: Annotated[list[str] | None, typer.Argument(help="Fine-tuning config, e.g. train.lr=1e-3")] = None,
    quantize: Annotated[str | None, typer.Option(help="int8: post-training quantization (ONNX Runtime).")] = None,
    method: Annotated[str | None, typer.Option(help="static (calibrated, the default) or dynamic quantization.")]
    = None,
    calibration: Annotated[int | None, typer.Option(min=1, help="Training inputs that calibrate static ranges "
                                                                "(default 512).")] = None,
    prune: Annotated[float | None, typer.Option(help="Fraction of weights (or channels) to remove, e.g. 0.8.")]
    = None,
    structured: Annotated[bool, typer.Option("--structured", help="Remove whole channels (torch-pruning).")] = False,
    finetune_epochs: Annotated[int, typer.Option(min=0, help="Fine-tune the pruned model this many epochs.")] = 0,
    distill: Annotated[bool, typer.Option(help="Fine-tune a pruned classifier on its parent's outputs too.")] = True,
    threads: Annotated[int, typer.Option(min=1, help="CPU threads for timing and fine-tuning.")] = 1,
    runs_dir: RunsDir = Path("runs"),
    quiet: Quiet = False,
):
    """Compress a run into a new run that points to it: int8 quantization or pruning, then a side-by-side
    comparison (size, parameters, latency, quality) in the terminal and in the new run's report.html."""
    from genforge.train.loop import Interrupted

    if (quantize is None) == (prune is None):
        raise GenforgeError("give one of --quantize int8 or --prune FRACTION")
    if quantize is not None:
        from genforge.compress.quantize import quantize_run

        if quantize != "int8":
            raise GenforgeError(f"--quantize {quantize} is not supported; use int8")
        if overrides or structured or finetune_epochs or not distill:
            raise GenforgeError("--structured, --finetune-epochs, --no-distill and config overrides go with --prune")
        child, comparison = quantize_run(run, method or "static", calibration or 512, runs_dir, threads,
                                         progress=err.print)
    else:
        from genforge.compress.prune import prune_run

        if method is not None or calibration is not None:
            raise GenforgeError("--method and --calibration go with --quantize int8")

        try:
            child, comparison = prune_run(run, prune, structured, finetune_epochs, overrides or [], runs_dir, threads,
                                          quiet, distill=distill, progress=err.print)
        except Interrupted as e:  # the fine-tuning was: its message names the command that finishes the child
            err.print(str(e), markup=False)
            raise typer.Exit(130) from None
    _print_comparison(child, comparison)


@runs_app.callback()
def runs_list(ctx: typer.Context, runs_dir: RunsDir = Path("runs")):
    """List runs with their headline metrics."""
    if ctx.invoked_subcommand is not None:
        return
    from genforge.rundir import list_runs

    rows = list_runs(runs_dir)
    if not rows:
        out.print(f"no runs in {runs_dir}; train one with `genforge train quickstart`")
        return
    table = Table("run", "kind", "dataset", "status", "test acc", "train s")
    for r in rows:
        acc = r.get("test_accuracy")
        table.add_row(r["run"], r.get("kind", "?"), r.get("dataset", "?"), r["status"],
                      f"{acc:.4f}" if acc is not None else "-", str(r.get("train_seconds", "-")))
    out.print(table)


@runs_app.command("compare")
def runs_compare(a: Path, b: Path, diff: Annotated[bool, typer.Option("--diff", help="Only the keys that differ.")]
                 = False):
    """Put two runs' configs and metrics side by side; differences are highlighted (--diff: only those)."""
    import yaml

    from genforge.rundir import read_json, resolve_run

    def flat(d: dict, prefix: str = "") -> dict:
        items = {}
        for k, v in d.items():
            items.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return items

    left, right = ({**flat(yaml.safe_load((resolve_run(r) / "config.yaml").read_text())),
                    **flat(read_json(r / "summary.json"), "summary.")} for r in (a, b))
    table = Table("key", a.name, b.name)
    for key in sorted(set(left) | set(right)):
        va, vb = left.get(key, "-"), right.get(key, "-")
        if diff and va == vb:
            continue
        fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
        style = "bold yellow" if va != vb else None
        table.add_row(key, fmt(va), fmt(vb), style=style)
    out.print(table)


@runs_app.command("track")
def runs_track(
    run_paths: Annotated[list[Path], typer.Argument(metavar="RUN...", help="Run directories.")],
    to: Annotated[str, typer.Option(help="mlflow, tensorboard or both (mlflow,tensorboard).")],
    uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: the run's track.mlflow.uri, else "
                                                 "sqlite:///RUNS/mlruns/mlflow.db).")] = None,
    experiment: Annotated[str | None, typer.Option(help="MLflow experiment (default: the run's config name).")]
    = None,
    log_dir: Annotated[Path | None, typer.Option(help="TensorBoard folder (default: RUNS/tensorboard).")] = None,
):
    """Export run directories to MLflow or TensorBoard: config, every metric with its step, tags, the report and
    plots. Exporting again adds only what is new (a run that was tracked while it trained continues its view)."""
    from genforge import rundir, track
    from genforge.config import TrackConfig, load_config

    names = [name.strip() for name in to.split(",") if name.strip()]
    if not names or set(names) - set(TrackConfig.model_fields):
        raise GenforgeError(f"--to {to}: give mlflow, tensorboard or mlflow,tensorboard")
    for path in run_paths:
        run = rundir.resolve_run(path)
        cfg = load_config(str(run / "config.yaml"))
        given = {"mlflow": {"uri": uri, "experiment": experiment}, "tensorboard": {"log_dir": log_dir and str(log_dir)}}
        settings = {n: {"name": cfg.name, **(getattr(cfg.track, n).model_dump() if getattr(cfg.track, n) else {}),
                        **{k: v for k, v in given[n].items() if v is not None}} for n in names}
        tracking = track.open_tracking(run, names, settings)
        if rundir.read_json(run / "summary.json").get("status") is None:  # interrupted (or training): so far
            tracking.sync()
            tracking.close("KILLED")
        else:
            tracking.finish()
        out.print(run.name, markup=False, highlight=False)
        for line in track.views(run):
            out.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)


@data_app.command("info")
def data_info_command(
    name: str,
    options: Annotated[list[str] | None, typer.Argument(
        help="Series: data.series options as key=value (fill=ffill, outliers=clip, freq=MS, target=[a,b]); "
             "imagefolder:PATH: image_size=[H,W].",
        show_default=False)] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Where to look for the files.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
):
    """Cleaning report. Images and tables: class counts, duplicates, constant images, pixel statistics; a CSV's
    label column; an image folder's sizes (height x width) and the one its images are resized to (image_size=[H,W]
    sets it). Series (series:NAME, csv-series:PATH): frequency, season, and per series gaps, missing values,
    duplicates, outliers, seasonality."""
    from genforge.config import apply_override, validate
    from genforge.data import data_info, load_dataset
    from genforge.data.series import is_series, load_series, options_from

    if is_series(name):
        info = load_series(name, options_from(options or [])).info()
    else:
        raw: dict = {}
        for pair in options or []:
            if pair.partition("=")[0].strip().removeprefix("data.") != "image_size":
                raise GenforgeError(f"{pair}: key=value options are for series (series:NAME, csv-series:PATH), "
                                    f"and image_size=[H,W] for imagefolder:PATH")
            apply_override(raw, "data.image_size=" + pair.partition("=")[2])
        image_size = validate(raw).data.image_size if raw else None
        info = data_info(load_dataset(name, data_dir, progress=not as_json, image_size=image_size))
    if as_json:
        print(json.dumps(info))
        return
    table = Table(show_header=False, box=None)
    for k, v in info.items():
        if k != "series":
            table.add_row(k, json.dumps(v) if isinstance(v, (dict, list)) else str(v))
    out.print(table)
    if "series" in info:
        keys = ("length", "start", "gaps", "missing", "duplicates", "outliers", "seasonal")  # the rest: --json
        if any("known_ahead" in report for report in info["series"].values()):  # covariates' planned future steps
            keys += ("known_ahead",)
        rows = Table(box=None)
        rows.add_column("series", no_wrap=True)
        for key in keys:
            rows.add_column(key, no_wrap=True)
        for sid, report in info["series"].items():
            rows.add_row(sid, *(str(report[k]) for k in keys), style="yellow" if report["constant"] else None)
        out.print(rows)


@app.command()
def presets():
    """List the shipped presets."""
    from importlib import resources

    import yaml

    from genforge.config import preset_names

    for name in preset_names():
        text = resources.files("genforge.presets").joinpath(f"{name}.yaml").read_text()
        first = text.splitlines()[0].lstrip("# ") if text.startswith("#") else ""
        model = (yaml.safe_load(text) or {}).get("model", {}).get("kind", "")
        out.print(f"[bold]{name:18}[/] {model:8} {first}")


@app.command()
def quickstart(runs_dir: RunsDir = Path("runs"), quiet: Quiet = False):
    """Train a CNN on MNIST (or the offline 5k sample), evaluate it, and show what to try next."""
    from genforge.data import load_dataset

    dataset = "mnist"
    try:
        load_dataset("mnist", progress=not quiet)
    except GenforgeError as e:
        err.print(f"mnist is not available ({e}); using the offline mnist-5k sample instead")
        dataset = "mnist-5k"
    run_dir, summary = _train_new("quickstart", [f"data.name={dataset}"], None, runs_dir, quiet)
    _print_summary(summary)
    out.print(f"\nrun directory: {run_dir}\nreport:        {run_dir / 'report.html'}\n\nnext, try:\n"
              f"  genforge evaluate {run_dir}\n"
              f"  genforge train fashion-cnn-fast\n"
              f"  genforge runs")


def main() -> None:
    """Entry point: a user's mistake, or a file system that refuses (a file where a folder should be, permissions,
    a full disk), is one line and exit code 2; a bug is a traceback and exit code 1. Argument errors that click
    catches (an unknown command or option, a bad value, a missing argument) are one line too, naming the command
    and its --help, instead of typer's boxed panel."""
    click = sys.modules[typer.BadParameter.__module__]  # the click typer runs on: its own copy since typer 0.23
    no_args = getattr(click, "NoArgsIsHelpError", ())  # click >= 8.2
    try:
        code = app(standalone_mode=False, prog_name="genforge")
    except no_args as e:  # `genforge` or a group alone: its help, as before
        e.show()
        sys.exit(e.exit_code)
    except click.UsageError as e:
        command = e.ctx.command_path if e.ctx is not None else "genforge"
        message = " ".join(e.format_message().split()).rstrip(".")
        err.print(f"error: {command}: {message} (see {command} --help)", markup=False)
        sys.exit(2)
    except click.ClickException as e:
        err.print(f"error: {' '.join(e.format_message().split())}", markup=False)
        sys.exit(e.exit_code)
    except (typer.Abort, getattr(click, "Abort", typer.Abort)):
        err.print("aborted", markup=False)
        sys.exit(1)
    except (GenforgeError, OSError) as e:
        err.print(f"error: {e}", markup=False)
        sys.exit(2)
    if isinstance(code, int) and code:  # typer.Exit(n) and Ctrl-C (130) come back as the exit code
        sys.exit(code)
