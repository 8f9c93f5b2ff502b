"""How well a language model predicts text, in bits per character (so that tokenizers compare), beside what
general-purpose compressors need for the same text: a model that does not beat `xz -9` has learnt little."""

from __future__ import annotations

import lzma
import math
import shutil
import subprocess

import torch
import torch.nn.functional as F

from genforge.models.layers import device_of
from genforge.models.transformer import logprob_of


def windows(tokens: int, context: int) -> tuple[int, list[tuple[int, int]]]:
    """How a text of `tokens` ids is scored: every id after the first once, each from up to a context of the ids before
    it. (length, [(start, first)]): window `start` reads ids[start : start + length] and predicts the next id of each;
    its predictions from `first` on are the new ones (the windows overlap by half; the first window's are all new)."""
    length = min(context, tokens - 1)
    if length < 1:
        return 0, []
    last = tokens - 1 - length
    starts = list(range(0, last + 1, max(1, length // 2)))
    starts += [last] if starts[-1] != last else []
    covered, plan = 0, []  # ids before `covered` have had their next id scored
    for start in starts:
        plan.append((start, max(0, covered - start)))
        covered = start + length
    return length, plan


@torch.inference_mode()
def token_losses(model, ids: torch.Tensor, batch_size: int = 32) -> tuple[float, int]:
    """(the summed cross-entropy in nats, the tokens scored) of every token of `ids` after the first (see windows)."""
    model.eval()
    device, ids = device_of(model), ids.long()
    length, plan = windows(len(ids), model.context)
    total, scored = 0.0, 0
    for i in range(0, len(plan), batch_size):
        chunk = plan[i:i + batch_size]
        x = torch.stack([ids[s:s + length] for s, _ in chunk]).to(device)
        y = torch.stack([ids[s + 1:s + 1 + length] for s, _ in chunk]).to(device)
        nll = F.cross_entropy(model(x).float().flatten(0, 1), y.flatten(), reduction="none").view(len(chunk), -1)
        for row, (_, first) in zip(nll.cpu(), chunk):
            total, scored = total + float(row[first:].sum()), scored + length - first
    return total, scored


@torch.inference_mode()
def token_logprobs(model, ids: torch.Tensor, alternatives: int = 0) -> list[tuple[float, dict]]:
    """Each token of ids after the first (see windows): its log-probability given the tokens before it, and the
    `alternatives` likeliest ids there with theirs. Through the model's hidden states and output layer, not its
    forward, which a served model may run in ONNX Runtime at its exported length."""
    model.eval()
    ids = ids.long().to(device_of(model))
    length, plan = windows(len(ids), model.context)
    out: list[tuple[float, dict]] = []
    for start, first in plan:
        logits = model.lm_head(model.hidden(ids[start:start + length][None])[0])[0]
        out += [logprob_of(logits[j], int(ids[start + j + 1]), alternatives) for j in range(first, length)]
    return out


def bits_per_character(model, tokenizer, text: str) -> dict:
    """Bits per character and perplexity (per token) of `text` under the model."""
    ids = tokenizer.encode(text)
    nats, tokens = token_losses(model, ids)
    return {"bits_per_character": nats / math.log(2) / max(1, len(text) - 1), "perplexity": math.exp(nats / tokens),
            "tokens": len(ids), "characters": len(text)}


def compressor_bits(text: str) -> dict:
    """Bits per character of `text` compressed by `xz -9` and `zstd --ultra -22` (None where the tool is missing; xz
    falls back on Python's lzma at the same preset, which writes the same stream)."""
    data, chars = text.encode("utf-8"), max(1, len(text))
    out = {}
    for name, command in (("xz", ["xz", "-9", "-c"]), ("zstd", ["zstd", "--ultra", "-22", "-c", "-q"])):
        if shutil.which(command[0]):
            size = len(subprocess.run(command, input=data, capture_output=True, check=True).stdout)
        elif name == "xz":
            size = len(lzma.compress(data, preset=9))
        else:
            out[f"{name}_bpc"] = None
            continue
        out[f"{name}_bpc"] = 8 * size / chars
    return out
