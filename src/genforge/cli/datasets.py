"""The data info command: a dataset's cleaning report (images, tables and series)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from genforge.cli.console import out
from genforge.errors import GenforgeError

# deferred: genforge's modules (errors aside) import torch: `genforge --help` took 4.0 s with these imports at the
# top, 0.28 s with them in the commands (median of 5 starts)


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
    duplicates, outliers, seasonality. Text (fortunes, text:PATH, textfolder:PATH): entries, characters and tokens per
    split, classes, duplicates, the longest entries."""
    from genforge.config import apply_override, validate
    from genforge.data import data_info, load_dataset
    from genforge.data.series import is_series, load_series, options_from
    from genforge.data.text import is_text, load_text
    from genforge.data.tokens import train_bpe
    from genforge.models.transformer import TransformerConfig

    if is_series(name):
        info = load_series(name, options_from(options or [])).info()
    elif is_text(name):
        corpus = load_text(name)  # and the default BPE a run would train on it (about a second for fortunes)
        vocab = TransformerConfig.model_fields["bpe_vocab"].default
        info = corpus.info(tokenizers={f"bpe {vocab}": train_bpe(corpus.train, vocab)})
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
    _print_info(info)


def _print_info(info: dict) -> None:
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
