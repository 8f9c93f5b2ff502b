"""Text in, text out: a prompt is encoded, the model samples token ids (models/transformer.py), and the ids come back
as text pieces as soon as they are whole characters, ending at the end of an entry, at a stop string or at the token
limit."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from genforge.data.text import SEPARATOR


@dataclass
class Completion:
    """An iterator of text pieces; once it is spent, `finish_reason` says why it ended (stop: the end of an entry or
    a stop string; length: the token limit) and `tokens` how many tokens the model sampled."""

    pieces: Iterator[str]
    prompt_tokens: int
    tokens: int = 0
    finish_reason: str | None = None

    def __iter__(self) -> Iterator[str]:
        return self.pieces

    def text(self) -> str:
        return "".join(self)


def prompt_ids(tokenizer, prompt: str) -> torch.Tensor:
    """The ids the model continues: an entry starts after SEPARATOR (the end of the one before), so an empty prompt
    asks for a new entry and a prompt is the beginning of one."""
    return tokenizer.encode(SEPARATOR + prompt)


def complete(model, tokenizer, prompt: str, max_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, seed: int | None = None, stop: list[str] | tuple[str, ...] = ()) -> Completion:
    """The continuation of `prompt`, as it is sampled (the same seed gives the same text)."""
    ids = prompt_ids(tokenizer, prompt)
    done = Completion(iter(()), prompt_tokens=len(ids))
    done.pieces = _pieces(model, tokenizer, ids, max_tokens, temperature, top_k, top_p, seed,
                          [s for s in stop if s] + [SEPARATOR], done)
    return done


def _pieces(model, tokenizer, ids, max_tokens, temperature, top_k, top_p, seed, stops: list[str],
            done: Completion) -> Iterator[str]:
    tokens = model.generate(ids, max_tokens, temperature, top_k, top_p, seed)
    pending = ""  # text that may be the start of a stop string: held back until it is not
    done.finish_reason = "length"
    for piece in tokenizer.pieces(_counted(tokens, done)):
        pending += piece
        cut = min((pending.find(s) for s in stops if s in pending), default=-1)
        if cut >= 0:
            if pending[:cut]:
                yield pending[:cut]
            done.finish_reason = "stop"
            tokens.close()
            return
        keep = max((_overlap(pending, s) for s in stops), default=0)
        if len(pending) > keep:
            yield pending[:len(pending) - keep]
            pending = pending[len(pending) - keep:]
    if pending:
        yield pending


def _counted(tokens: Iterator[int], done: Completion) -> Iterator[int]:
    for token in tokens:
        done.tokens += 1
        yield token


def _overlap(text: str, stop: str) -> int:
    """The length of the longest end of `text` that begins `stop` (and could become it with more text)."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0
