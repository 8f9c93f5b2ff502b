"""Which tokens a text classifier's answer rests on: integrated gradients on the embeddings (Captum's
LayerIntegratedGradients), from a baseline that writes the end token at every position of the entry, summed over the
embedding's width, then per character (a character of several bytes gets the sum of its tokens'). `genforge explain
RUN --text` shows them in colour and writes them as HTML: red towards the explained class, blue away from it."""

from __future__ import annotations

import codecs
import html
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class TextExplanation:
    text: str
    characters: list[str]  # the text as its tokens write it, one or more characters per entry
    attributions: list[float]  # per entry of `characters`
    predicted: int
    predicted_probability: float
    target: int
    target_probability: float
    delta: float  # integrated gradients' completeness gap: attributions' sum - (log p(x) - log p(baseline))
    steps: int


class _TargetLogProbability(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(tokens).float().log_softmax(-1)


def explain_texts(model, tokenizer, texts: list[str], target: int | None = None,
                  steps: int = 32) -> list[TextExplanation]:
    """Each text's character attributions towards `target` (default: its predicted class)."""
    from captum.attr import LayerIntegratedGradients  # deferred: captum takes a second to import

    model.eval()
    end = model.cfg.end_token
    ig = LayerIntegratedGradients(_TargetLogProbability(model), model.embed)
    out = []
    for text in texts:
        ids = tokenizer.encode(text)[: model.context - 1].long()
        x = torch.cat([ids, torch.tensor([end])])[None]  # the entry and its end token, as the classifier read it
        baseline = torch.full_like(x, end)
        with torch.no_grad():
            p = model.probabilities(model(x))[0]
        chosen = int(p.argmax()) if target is None else target
        attributions, delta = ig.attribute(x, baselines=baseline, target=chosen, n_steps=steps,
                                           return_convergence_delta=True)
        per_token = attributions[0, : len(ids)].sum(-1).tolist()
        characters, values = by_character(tokenizer, ids.tolist(), per_token)
        out.append(TextExplanation(text, characters, values, int(p.argmax()), float(p.max()), chosen,
                                   float(p[chosen]), float(delta), steps))
    return out


def by_character(tokenizer, ids: list[int], values: list[float]) -> tuple[list[str], list[float]]:
    """Token values -> (the characters they write, each with the sum of its tokens' values): the tokens' bytes
    decoded as they come, as a stream's logprobs are placed (language.generation.TextStream)."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    characters, summed, pending = [], [], 0.0
    for i, value in zip(ids, values):
        pending += value
        if piece := decoder.decode(tokenizer.token_bytes(i)):
            characters.append(piece)
            summed.append(pending)
            pending = 0.0
    if rest := decoder.decode(b"", final=True):  # an incomplete character at the end: U+FFFD
        characters.append(rest)
        summed.append(pending)
    return characters, summed


def colour(value: float, scale: float) -> tuple[int, int, int]:
    """An attribution's colour, from white (none) to red (towards, at `scale`) or blue (away)."""
    strength = min(1.0, abs(value) / scale) if scale > 0 else 0.0
    fade = int(255 * (1 - 0.75 * strength))
    return (255, fade, fade) if value >= 0 else (fade, fade, 255)


def html_page(explanations: list[TextExplanation], classes: list[str]) -> str:
    rows = []
    for e in explanations:
        scale = max((abs(v) for v in e.attributions), default=0.0)
        spans = "".join(f'<span title="{v:+.4f}" style="background: rgb{colour(v, scale)}">{html.escape(c)}</span>'
                        for c, v in zip(e.characters, e.attributions))
        rows.append(f"<p>predicted <b>{html.escape(classes[e.predicted])}</b> ({e.predicted_probability:.3f}), "
                    f"explained <b>{html.escape(classes[e.target])}</b> ({e.target_probability:.3f})</p>"
                    f"<pre style='white-space: pre-wrap'>{spans}</pre>")
    legend = ("<p>Integrated gradients on the embeddings, from the end token at every position: red towards the "
              "explained class, blue away from it (hover for the value).</p>")
    return f"<!doctype html><meta charset='utf-8'><title>Token attributions</title>{legend}{''.join(rows)}"
