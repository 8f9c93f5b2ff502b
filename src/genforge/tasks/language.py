"""Language as a task: a Transformer (models/transformer.py) that is a language model (model.head=lm: next-token loss,
scored in bits per character beside xz and zstd on the same test text, and the complete verb) or a text classifier
(model.head=classes: one class per entry, scored as classifiers are). The data is a corpus of entries (data/text.py)
tokenized (data/tokens.py); generation and scoring are in genforge.language."""

from __future__ import annotations

import html
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from rich.table import Table

from genforge import rundir
from genforge.data import labelled_subset, split_validation
from genforge.data.text import TextCorpus, is_text, joined, load_text
from genforge.data.tokens import BpeTokenizer, ByteTokenizer, token_dtype, tokenizer_of, train_bpe
from genforge.errors import GenforgeError
from genforge.evaluate import evaluate, measure_speed
from genforge.evaluate.report import _plots_with_curves, write_page
from genforge.language.attribution import LEGEND, explain_texts, html_explanations
from genforge.language.generation import complete, generation_speed
from genforge.language.scoring import bits_per_character, compressor_bits
from genforge.models.layers import device_of
from genforge.onnx.parts import Part
from genforge.tasks.base import Prepared, Task
from genforge.tasks.classify import CLASSIFY
from genforge.tasks.language_verbs import COMPLETE, EXPLAIN_TEXT
from genforge.tasks.verb import RequestError
from genforge.train.steps import ModelLossStep

PROMPTS = ("", "The ", "A computer ")  # what the report continues after each epoch
SAMPLE_TOKENS = 160
MISTAKES = 8  # test entries with the highest loss that a classifier's report explains


_TRAINED: dict[tuple, BpeTokenizer] = {}  # this process's BPE tokenizers by corpus and size: train, test and the
# per-epoch samples of a run use one (training one again gives the same, in about a second for fortunes)


def tokenizer_for(cfg, ds: TextCorpus) -> ByteTokenizer | BpeTokenizer:
    """The tokenizer a run trains with: bytes; the init_from run's own (its ids are what its weights learnt); or a
    byte-level BPE of model.bpe_vocab tokens trained on the corpus's training split (every entry the run may see)."""
    kind = cfg.model.tokenizer
    if cfg.train.init_from:
        meta = rundir.read_json(Path(cfg.train.init_from) / "meta.json")
        tokenizer = tokenizer_of(meta)
        if tokenizer.kind != kind:
            raise GenforgeError(f"train.init_from={cfg.train.init_from} reads {tokenizer.kind} tokens; set "
                                f"model.tokenizer={tokenizer.kind}")
        return tokenizer
    if kind == "bytes":
        return ByteTokenizer()
    key = (ds.name, ds.checksum, tuple(ds.classes), len(ds.train), cfg.model.bpe_vocab)
    if key not in _TRAINED:
        _TRAINED[key] = train_bpe(ds.train, cfg.model.bpe_vocab)
    tokenizer = _TRAINED[key]
    if cfg.model.tokenizer_digest not in (None, tokenizer.digest):
        raise GenforgeError(f"the BPE tokenizer trained again on {ds.name} is not the one this run trained with (its "
                            f"sha256 {tokenizer.digest}, the run's {cfg.model.tokenizer_digest}): another version of "
                            f"the `tokenizers` package, or other data")
    return tokenizer


def entry_tokens(tokenizer, entries: list[str], context: int) -> torch.Tensor:
    """(N, context) ids: each entry's first context - 1 tokens, then the end token, padded with end tokens."""
    dtype = token_dtype(tokenizer.vocab_size)
    out = torch.full((len(entries), context), tokenizer.end_id, dtype=dtype)
    for i, entry in enumerate(entries):
        ids = tokenizer.encode(entry)[: context - 1]
        out[i, : len(ids)] = ids.to(dtype)
    return out


def stream_windows(ids: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A token stream cut into non-overlapping windows: inputs (N, context) and next tokens (N, context), views of
    the one stream."""
    n = (len(ids) - 1) // context
    return ids[: n * context].view(n, context), ids[1 : n * context + 1].view(n, context)


class LanguageTask(Task):
    name = "language"
    parts = (Part("model", "forward", ("tokens",), ("logits",), labels=False),)
    # a language model also exports the step of generation with its key/value cache (Transformer.step): what a
    # model served from its ONNX files (an int8 one) generates with
    generation_step = Part("step", "step", ("tokens", "past"), ("logits", "present"), labels=False,
                           axes=(((1, "new", 1),), ((2, "batch", 1), (4, "past", 0))))
    divergence_hint = "lower train.lr, set train.grad_clip=1.0, or raise train.batch_size"

    verbs = (COMPLETE,)
    reads_strings = True
    int8_method = "dynamic"  # its matrix products quantized as they run: what int8 language models use

    def export_parts(self, model) -> tuple[Part, ...]:
        return self.parts if model.classes is not None else (*self.parts, self.generation_step)

    def part_example(self, run, part: Part, n: int, seed: int, split: str) -> tuple[torch.Tensor, ...] | None:
        """The step's inputs: two tokens of held-out windows after the keys and values of the half context
        before them, as the model's own step computes them from none."""
        if part.name != self.generation_step.name:
            return None
        x, _ = self.heldout(run, n, seed, split)
        x, before = x.long(), max(2, run.model.context // 2)  # ids as generation has them (int64)
        with torch.inference_mode():
            _, past = run.model.step(x[:, :before], run.model.empty_past(n))
        return x[:, before:before + 2], past

    def rate_unit(self, cfg) -> tuple[str, int]:
        return ("entries", 1) if cfg.model.head == "classes" else ("tok", cfg.model.context)

    def dataset(self, cfg, name: str | None = None, quiet: bool = True) -> TextCorpus:
        name = name or cfg.data.name
        if not is_text(name):
            raise GenforgeError(f"model.kind={cfg.model.kind} reads text: set data.name=fortunes, text:PATH or "
                                f"textfolder:PATH, not {name!r}")
        corpus = load_text(name)
        if cfg.data.classes:
            corpus = corpus.select(cfg.data.classes)
        if cfg.data.test_subset:
            n = cfg.data.test_subset
            corpus = replace(corpus, test=corpus.test[:n], test_labels=corpus.test_labels[:n])
        return corpus

    def prepare(self, cfg, ds: TextCorpus, device: torch.device, fold=None) -> Prepared:
        if fold is not None:
            raise GenforgeError("genforge cv scores image and feature classifiers; a text model is scored by evaluate")
        tokenizer = tokenizer_for(cfg, ds)
        model_cfg = cfg.model.model_copy(update={"vocab_size": tokenizer.vocab_size, "end_token": tokenizer.end_id,
                                                 "tokenizer_digest": tokenizer.digest})
        labels = torch.tensor(ds.train_labels)
        pool = torch.arange(len(labels))
        if cfg.data.labels_per_class:
            pool = labelled_subset(labels, cfg.data.labels_per_class, cfg.seed, ds.classes)
        classes = cfg.model.head == "classes"
        train_idx, val_idx = split_validation(len(pool), cfg.data.val_fraction, cfg.seed,
                                              labels[pool] if classes else None)
        train_idx, val_idx = pool[train_idx], pool[val_idx]
        context = cfg.model.context
        if classes:
            x = entry_tokens(tokenizer, [ds.train[i] for i in train_idx], context)
            xv = entry_tokens(tokenizer, [ds.train[i] for i in val_idx], context)
            y, yv = labels[train_idx], labels[val_idx]
        else:
            def stream(idx):
                return tokenizer.encode(joined(ds.train[i] for i in sorted(idx.tolist())))
            x, y = stream_windows(stream(train_idx), context)
            xv, yv = stream_windows(stream(val_idx), context)
        if cfg.data.train_subset:  # a quick look: as many validation windows at most (each epoch scores them all)
            x, y = x[: cfg.data.train_subset], y[: cfg.data.train_subset]
            xv, yv = xv[: cfg.data.train_subset], yv[: cfg.data.train_subset]
        if len(x) == 0:
            raise GenforgeError(f"{ds.name}: its training text makes no window of model.context={context} tokens; "
                                f"give more text or lower model.context")
        meta = {"dataset": ds.name, "source": ds.source, "checksum": ds.checksum,
                "classes": ds.classes if classes else [], "input_shape": [context], "norm_shape": [1],
                "task": self.name, "tokenizer": tokenizer.state(), "head": cfg.model.head,
                "n_train": len(train_idx), "n_val": len(val_idx), "train_tokens": int(x.numel())}
        return Prepared(ds, x.to(device), y.to(device), xv, yv, (context,), len(ds.classes) if classes else 0,
                        torch.zeros(1), torch.ones(1), meta, model_config=model_cfg)

    def check_fits(self, ds, meta: dict) -> None:
        if meta["classes"] and list(ds.classes) != list(meta["classes"]):
            raise GenforgeError(f"{ds.name}'s classes ({', '.join(ds.classes[:5])}, ...) are not this model's")

    def heldout(self, run, n: int, seed: int, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
        ds, model = self.dataset(run.config), run.model
        tokenizer = tokenizer_of(run.meta)
        entries, labels = (ds.test, ds.test_labels) if split == "test" else (ds.train, ds.train_labels)
        if run.meta["classes"]:
            x, y = entry_tokens(tokenizer, entries, model.context), torch.tensor(labels)
        else:
            x, y = stream_windows(tokenizer.encode(joined(entries)), model.context)
        idx = torch.randint(0, len(x), (n,), generator=torch.Generator().manual_seed(seed))
        return x[idx], y[idx]

    def step(self, model, cfg, steps_per_epoch: int, autocast: bool, channels_last: bool):
        return ModelLossStep(model, cfg, steps_per_epoch, autocast, channels_last)

    @torch.inference_mode()
    def validate(self, model, x: torch.Tensor, y: torch.Tensor, ds, cfg) -> dict:
        model.eval()
        device = device_of(model)
        total, count, correct = 0.0, 0, 0
        for i in range(0, len(x), 64):
            xb, yb = x[i:i + 64].to(device), y[i:i + 64].to(device)
            logits = model(xb).float()
            if logits.ndim == 2:
                correct += int((logits.argmax(1) == yb).sum())
            total += float(torch.nn.functional.cross_entropy(logits.flatten(0, -2), yb.long().flatten(),
                                                             reduction="sum"))
            count += yb.numel()
        if not count:
            return {}
        out = {"loss": total / count}
        if model.classes is None:
            out["bits_per_token"] = out["loss"] / math.log(2)
        else:
            out["accuracy"] = correct / count
        return out

    def on_evaluation(self, model, run_dir: Path, epoch: int, cfg) -> None:
        if model.classes is not None:
            return
        path = run_dir / "samples.json"
        samples = rundir.read_json(path).get("samples", []) if path.is_file() else []
        samples = [s for s in samples if s["epoch"] < epoch]  # a resumed run writes its epoch again
        tokenizer = tokenizer_of(rundir.read_json(run_dir / "meta.json"))
        for prompt in PROMPTS:
            text = complete(model, tokenizer, prompt, SAMPLE_TOKENS, temperature=0.8, seed=0).text()
            samples.append({"epoch": epoch, "prompt": prompt, "text": text})
        rundir.write_json(path, {"samples": samples})

    def test(self, model, ds: TextCorpus, cfg) -> dict:
        tokenizer = tokenizer_for(cfg, ds)
        if model.classes is not None:
            x = entry_tokens(tokenizer, ds.test, model.context)
            result = evaluate(model, x, torch.tensor(ds.test_labels), ds.classes)
            return {**result, **measure_speed(model, x[:1, :64], repeats=10)}  # a 64-token entry, batch 1 and 256
        text = ds.stream("test")
        return {**bits_per_character(model, tokenizer, text), **compressor_bits(text),
                **generation_speed(model, tokenizer)}

    def headline(self, result: dict) -> dict:
        if "accuracy" in result:
            return {"test_accuracy": result["accuracy"], "test_macro_f1": result["macro_f1"],
                    "latency_ms_b1": result["latency_ms_b1"]}
        return {"test_bpc": result["bits_per_character"], "test_perplexity": result["perplexity"],
                "xz_bpc": result["xz_bpc"], "zstd_bpc": result["zstd_bpc"], "tokens_per_s": result["tokens_per_s"],
                "first_token_ms": result["first_token_ms"]}

    def report(self, run_dir: Path, model, ds, result: dict, summary: dict, extra=()) -> Path:
        _plots_with_curves(run_dir)
        path = run_dir / "samples.json"
        samples = rundir.read_json(path).get("samples", []) if path.is_file() else []
        rows = "".join(f"<tr><td>{s['epoch']}</td><td><pre>{html.escape(s['prompt'])}<b>"
                       f"{html.escape(s['text'])}</b></pre></td></tr>" for s in samples)
        sections = [("Samples after each epoch (temperature 0.8, seed 0; the prompt, then the continuation in bold)",
                     f"<table><tr><th>epoch</th><th>text</th></tr>{rows}</table>")] if rows else []
        if model.classes is not None and result.get("highest_loss"):
            sections.append(_mistakes(run_dir, model, ds, result["highest_loss"]["index"]))
        return write_page(run_dir, summary, [*extra, *sections])

    def print_evaluation(self, out, name: str, result: dict) -> None:
        table = Table(title=f"{name}: test split")
        table.add_column("metric")
        table.add_column("value", justify="right")
        if "accuracy" in result:
            rows = [("accuracy", f"{result['accuracy']:.4f}"), ("macro F1", f"{result['macro_f1']:.4f}"),
                    ("entries", f"{result['n']:,}")]
        else:
            rows = [("bits per character", f"{result['bits_per_character']:.3f}"),
                    ("xz -9", _bpc(result["xz_bpc"])), ("zstd --ultra -22", _bpc(result["zstd_bpc"])),
                    ("perplexity (per token)", f"{result['perplexity']:.2f}"),
                    ("generation, batch 1", f"{result['tokens_per_s']:,.0f} tokens/s, first after "
                                            f"{result['first_token_ms']:.1f} ms"),
                    ("characters", f"{result['characters']:,}")]
        for row in rows:
            table.add_row(*row)
        out.print(table)

    def warm_up(self, served) -> None:
        if served.classes:
            for n in (1, 16):
                served.probabilities(torch.from_numpy(self.request_inputs(served, ["a"] * n, {})))
        else:
            complete(served.model, tokenizer_of(served.run.meta), "a", 4, seed=0).text()

    def served_verbs(self, served) -> tuple:
        """A language model completes; a classifier trained from one answers the classifiers' verb (CLASSIFY) and an
        explain of texts (EXPLAIN_TEXT), which `verbs` does not list: what asks whether a task classifies
        (`"classify" in task.verbs`: the privacy audit, distillation, explain's images) means images or vectors."""
        if served.classes:
            return tuple(verb for verb in (CLASSIFY, EXPLAIN_TEXT) if verb.offered(served))
        return super().served_verbs(served)

    def request_inputs(self, served, values, fields: dict) -> np.ndarray:
        """Texts (JSON strings, or a BYTES tensor's) -> (N, context) token ids: each text's first context - 1 tokens
        and the end token, padded (entry_tokens), as the classifier was trained and tested."""
        texts = values.tolist() if isinstance(values, np.ndarray) else values
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise RequestError(f"{served.name} classifies texts: inputs must be a list of strings")
        return entry_tokens(tokenizer_of(served.run.meta), texts, served.input_shape[0]).numpy()

    def input_tensor(self, served) -> dict:
        return {"name": "input", "datatype": "BYTES", "shape": [-1], "description": "texts, UTF-8"}


def _mistakes(run_dir: Path, model, ds: TextCorpus, worst: list[int]) -> tuple[str, str]:
    """The report's section of the test entries with the highest loss, each coloured by what its answer rests on."""
    index = worst[:MISTAKES]
    found = explain_texts(model, tokenizer_of(rundir.read_json(run_dir / "meta.json")), [ds.test[i] for i in index])
    return (f"The {len(index)} test entries with the highest loss, explained towards the predicted class",
            f"<p>{LEGEND}</p>{html_explanations(found, ds.classes, [ds.test_labels[i] for i in index])}")


def _bpc(value: float | None) -> str:
    return "not installed" if value is None else f"{value:.3f} bits per character"


TASK = LanguageTask()
