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


@torch.inference_mode()
def token_losses(model, ids: torch.Tensor, batch_size: int = 32) -> tuple[float, int]:
    """(the summed cross-entropy in nats, the tokens scored) of every token of `ids` after the first, each predicted
    from up to a context of the tokens before it: windows of the model's context overlapping by half, each scoring only
    the tokens no window before it scored (the first window: all of its own)."""
    model.eval()
    device, ids = device_of(model), ids.long()
    length = min(model.context, len(ids) - 1)  # inputs per window; window s predicts ids[s + 1 : s + 1 + length]
    if length < 1:
        return 0.0, 0
    last = len(ids) - 1 - length
    starts = list(range(0, last + 1, max(1, length // 2)))
    starts += [last] if starts[-1] != last else []
    total, scored, covered = 0.0, 0, 0  # inputs before `covered` have had their next token scored
    for i in range(0, len(starts), batch_size):
        chunk = starts[i:i + batch_size]
        x = torch.stack([ids[s:s + length] for s in chunk]).to(device)
        y = torch.stack([ids[s + 1:s + 1 + length] for s in chunk]).to(device)
        nll = F.cross_entropy(model(x).float().flatten(0, 1), y.flatten(), reduction="none").view(len(chunk), -1)
        for row, s in zip(nll.cpu(), chunk):
            first = max(0, covered - s)
            total, scored, covered = total + float(row[first:].sum()), scored + length - first, s + length
    return total, scored


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
