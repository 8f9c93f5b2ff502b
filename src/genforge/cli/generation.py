"""The commands of generators: sample (GAN or VAE), interpolate (a walk through latent space), reconstruct (a VAE),
generate (a language model's continuation of a prompt, printed as it comes)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from genforge.cli.console import err, out
from genforge.cli.options import by_verb
from genforge.errors import GenforgeError

# deferred: genforge's modules (errors aside) import torch: `genforge --help` took 4.0 s with these imports at the
# top, 0.28 s with them in the commands (median of 5 starts)

OutFile = Annotated[Path, typer.Option("--out", help="A .png (image grid) or .npy (uint8 array) file.")]


def sample(
    run: Path,
    n: Annotated[int, typer.Option("-n", callback=by_verb("sample", "n"), help="Number of images (one batch).")] = 64,
    label: Annotated[int | None, typer.Option(callback=by_verb("sample", "label"),
                                             help="Class to draw (class-conditional models).")] = None,
    seed: Annotated[int, typer.Option(callback=by_verb("sample", "seed"),
                                      help="The same seed gives the same images.")] = 0,
    truncation: Annotated[float | None, typer.Option(callback=by_verb("sample", "truncation"),
                                                     help="Redraw latent entries beyond ±T.")] = None,
    out_file: OutFile = Path("samples.png"),
):
    """Draw images from a generator (GAN or VAE): a PNG grid or a uint8 .npy (N x H x W, or N x C x H x W)."""
    from genforge.grids import save_images
    from genforge.runs import load_run

    images = load_run(run).sample(n, label=label, seed=seed, truncation=truncation)
    out.print(f"wrote {n} samples to {save_images(images, out_file)}")


def interpolate(
    run: Path,
    steps: Annotated[int, typer.Option(callback=by_verb("interpolate", "steps"), help="Images along the walk.")] = 10,
    from_label: Annotated[int | None, typer.Option(callback=by_verb("interpolate", "from_label"),
                                                  help="Class at the start (class-conditional models).")] = None,
    to_label: Annotated[int | None, typer.Option(callback=by_verb("interpolate", "to_label"),
                                                help="Class at the end (class-conditional models).")] = None,
    seed: Annotated[int, typer.Option(callback=by_verb("interpolate", "seed"), help="Picks the two end points.")] = 0,
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


def reconstruct(
    run: Path,
    files: Annotated[list[Path], typer.Argument(help="PNG, JPEG or .npy (N x H x W uint8) images.")],
    label: Annotated[int | None, typer.Option(callback=by_verb("reconstruct", "label"),
                                             help="Class of the inputs (class-conditional VAEs).")] = None,
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


def generate(
    run: Path,
    prompt: Annotated[str, typer.Option(callback=by_verb("generate", "prompt"),
                                        help="The text to continue (default: a new entry).")] = "",
    max_tokens: Annotated[int, typer.Option(callback=by_verb("generate", "max_tokens"),
                                            help="Tokens to generate at most.")] = 256,
    temperature: Annotated[float, typer.Option(callback=by_verb("generate", "temperature"),
                                               help="Sampling temperature; 0 picks the likeliest token.")] = 0.8,
    top_k: Annotated[int | None, typer.Option(callback=by_verb("generate", "top_k"),
                                              help="Sample among the k likeliest tokens.")] = None,
    top_p: Annotated[float | None, typer.Option(callback=by_verb("generate", "top_p"),
                                                help="Sample among the fewest tokens whose probabilities reach p.")]
    = None,
    seed: Annotated[int, typer.Option(callback=by_verb("generate", "seed"),
                                      help="The same seed gives the same text.")] = 0,
    stop: Annotated[list[str] | None, typer.Option(callback=by_verb("generate", "stop"),
                                                   help="A string that ends the text (repeatable, up to 4).")] = None,
):
    """Continue a prompt with a language model, printing the text as it is sampled."""
    from genforge.runs import load_run

    completion = load_run(run).generate(prompt, max_tokens, temperature, top_k, top_p, seed, stop or [])
    sys.stdout.write(prompt)
    for piece in completion:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    err.print(f"[dim]{completion.tokens} tokens, ended by {completion.finish_reason}[/]", highlight=False)
