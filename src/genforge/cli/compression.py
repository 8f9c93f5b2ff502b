"""The commands that make a run smaller or portable: compress (int8 quantization or pruning, into a child run) and
export (ONNX files checked against PyTorch)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from genforge.cli.console import err, out, print_comparison
from genforge.cli.options import Quiet, RunsDir
from genforge.errors import GenforgeError

# deferred: genforge's modules (errors aside) import torch: `genforge --help` took 4.0 s with these imports at the
# top, 0.28 s with them in the commands (median of 5 starts)


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


def compress(
    run: Path,
    overrides: Annotated[list[str] | None, typer.Argument(help="Fine-tuning config, e.g. train.lr=1e-3")] = None,
    quantize: Annotated[str | None, typer.Option(help="int8: post-training quantization (ONNX Runtime).")] = None,
    method: Annotated[str | None, typer.Option(help="static (calibrated; the default) or dynamic (the default for "
                                                             "language models).")] = None,
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
        child, comparison = quantize_run(run, method, calibration or 512, runs_dir, threads,
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
    print_comparison(child, comparison)
