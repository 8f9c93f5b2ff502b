"""Which tokens a text classifier's answer rests on: integrated gradients on the embeddings (Captum's
LayerIntegratedGradients), from a baseline that writes the end token at every position of the entry, summed over the
embedding's width, then per character (a character of several bytes gets the sum of its tokens'); and attention
rollout (Abnar & Zuidema 2020), which follows the attention alone and has no sign or class. `genforge explain RUN
--text` shows both in colour and writes them as HTML: red towards the explained class, blue away from it."""

from __future__ import annotations

import codecs
import html
from dataclasses import dataclass

import torch
from torch import nn

STEPS = 32  # integrated gradients' path points per text, unless a caller asks for others


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
    rollout: list[float]  # per entry of `characters`: its share of the attention that reaches the pooled positions


class _TargetLogProbability(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(tokens).float().log_softmax(-1)


def explain_texts(model, tokenizer, texts: list[str], target: int | None = None,
                  steps: int = STEPS) -> list[TextExplanation]:
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
        _, shares = by_character(tokenizer, ids.tolist(), attention_rollout(model, x)[: len(ids)].tolist())
        out.append(TextExplanation(text, characters, values, int(p.argmax()), float(p.max()), chosen,
                                   float(p[chosen]), float(delta), steps, shares))
    return out


def attention_rollout(model, x: torch.Tensor) -> torch.Tensor:
    """(1, T) ids of an entry and its end token -> (T,) each token's share of the attention that flows into the
    positions the classifier pools (Abnar & Zuidema 2020, eq. 1: each layer's heads averaged, the residual added as
    0.5 A + 0.5 I, the layers multiplied from the first; then the mean over the pooled positions). Shares sum to 1.
    A causal model's early tokens are seen by more positions, so they get more of it whatever they say."""
    maps = model.attention_weights(x)[:, 0].float().mean(1)  # (layers, T, T), rows sum to 1
    eye = torch.eye(x.shape[1])
    rollout = eye
    for a in maps:
        rollout = (0.5 * a + 0.5 * eye) @ rollout
    return rollout[model.entry_mask(x)[0]].mean(0)


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


def shades(values: list[float]) -> list[tuple[int, int, int]]:
    """Each value's colour, on the scale of the largest magnitude among them (the terminal's and the HTML's)."""
    scale = max((abs(v) for v in values), default=0.0)
    return [colour(v, scale) for v in values]


def colour(value: float, scale: float) -> tuple[int, int, int]:
    """An attribution's colour, from white (none) to red (towards, at `scale`) or blue (away)."""
    strength = min(1.0, abs(value) / scale) if scale > 0 else 0.0
    fade = int(255 * (1 - 0.75 * strength))
    return (255, fade, fade) if value >= 0 else (fade, fade, 255)


def html_explanations(explanations: list[TextExplanation], classes: list[str], truths: list[int] | None = None) -> str:
    """Each explanation's text twice, its characters coloured by integrated gradients, then by attention rollout;
    truths: the true class of each (a report's mistakes)."""
    def coloured(characters: list[str], values: list[float]) -> str:
        return "".join(f'<span title="{v:+.4f}" style="background: rgb{rgb}">{html.escape(c)}</span>'
                       for c, v, rgb in zip(characters, values, shades(values)))

    rows = []
    for i, e in enumerate(explanations):
        truth = f"true <b>{html.escape(classes[truths[i]])}</b>, " if truths is not None else ""
        rows.append(f"<p>{truth}predicted <b>{html.escape(classes[e.predicted])}</b> ({e.predicted_probability:.3f}), "
                    f"explained <b>{html.escape(classes[e.target])}</b> ({e.target_probability:.3f})</p>"
                    f"<p>integrated gradients</p><pre style='white-space: pre-wrap'>"
                    f"{coloured(e.characters, e.attributions)}</pre>"
                    f"<p>attention rollout</p><pre style='white-space: pre-wrap'>"
                    f"{coloured(e.characters, e.rollout)}</pre>")
    return "".join(rows)


LEGEND = ("Integrated gradients on the embeddings, from the end token at every position: red towards the explained "
          "class, blue away from it. Attention rollout: each character's share of the attention that reaches the "
          "pooled positions (no sign, no class). Hover for the value.")


def html_page(explanations: list[TextExplanation], classes: list[str]) -> str:
    return (f"<!doctype html><meta charset='utf-8'><title>Token attributions</title><p>{LEGEND}</p>"
            f"{html_explanations(explanations, classes)}")
