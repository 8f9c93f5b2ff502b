"""Text in, text out: a prompt is encoded, the model samples token ids (models/transformer.py), and the ids come back
as text pieces as soon as they are whole characters, ending at the end of an entry, at a stop string or at the token
limit."""

from __future__ import annotations

import codecs
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from genforge.data.text import SEPARATOR


@dataclass
class Completion:
    """An iterator of text pieces; once it is spent, `finish_reason` says why it ended (stop: the end of an entry or
    a stop string; length: the token limit) and `tokens` how many tokens the model sampled."""

    pieces: Iterator[str]
    prompt_tokens: int  # the prompt's own tokens (not the entry start before them)
    tokens: int = 0
    finish_reason: str | None = None
    ids: list[int] = field(default_factory=list)  # the sampled token ids, in order
    spans: list[int] = field(default_factory=list)  # how many of them each piece given out is made of
    trace: list | None = None  # with logprobs: per sampled token, (its log-probability, {id: log-probability})

    def close(self) -> None:
        """Stop sampling now (a client went away): the model's generator is closed."""
        self.pieces.close()

    def __iter__(self) -> Iterator[str]:
        return self.pieces

    def text(self) -> str:
        return "".join(self)


def prompt_ids(tokenizer, prompt: str) -> torch.Tensor:
    """The ids the model continues: an entry starts after SEPARATOR (the end of the one before), so an empty prompt
    asks for a new entry and a prompt is the beginning of one."""
    return tokenizer.encode(SEPARATOR + prompt)


def complete(model, tokenizer, prompt: str, max_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, seed: int | None = None, stop: list[str] | tuple[str, ...] = (),
             logprobs: int | None = None) -> Completion:
    """The continuation of `prompt`, as it is sampled (the same seed gives the same text). logprobs: also record each
    sampled token's log-probability and the `logprobs` likeliest alternatives (Completion.trace)."""
    ids = prompt_ids(tokenizer, prompt)
    done = Completion(iter(()), prompt_tokens=len(ids) - 1, trace=[] if logprobs is not None else None)
    done.pieces = _pieces(model, tokenizer, ids, max_tokens, temperature, top_k, top_p, seed,
                          [s for s in stop if s] + [SEPARATOR], done, logprobs or 0)
    return done


def _pieces(model, tokenizer, ids, max_tokens, temperature, top_k, top_p, seed, stops: list[str],
            done: Completion, alternatives: int) -> Iterator[str]:
    done.finish_reason = "length"  # unless the model ends the entry or writes a stop string first
    if max_tokens == 0:
        return
    tokens = model.generate(ids, max_tokens, temperature, top_k, top_p, seed, done.trace, alternatives)
    pending, counts = "", []  # text that may begin a stop string, held back until it cannot; tokens per character
    assigned = 0  # sampled tokens that some character accounts for
    try:
        for piece in tokenizer.pieces(_counted(tokens, done)):
            counts += [done.tokens - assigned] + [0] * (len(piece) - 1)
            assigned = done.tokens
            pending += piece
            cut = min((pending.find(s) for s in stops if s in pending), default=-1)
            if cut >= 0:
                done.finish_reason = "stop"
                if pending[:cut]:
                    done.spans.append(sum(counts[:cut]))
                    yield pending[:cut]
                return
            keep = max((_overlap(pending, s) for s in stops), default=0)
            if len(pending) > keep:
                n = len(pending) - keep
                done.spans.append(sum(counts[:n]))
                text, pending, counts = pending[:n], pending[n:], counts[n:]
                yield text
        if pending:
            done.spans.append(sum(counts))
            yield pending
    finally:
        tokens.close()  # the model stops sampling: at a stop string, or when the reader closes the completion


def _counted(tokens: Iterator[int], done: Completion) -> Iterator[int]:
    for token in tokens:
        done.tokens += 1
        done.ids.append(token)
        yield token


def _overlap(text: str, stop: str) -> int:
    """The length of the longest end of `text` that begins `stop` (and could become it with more text)."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0


@dataclass
class TextStream:
    """A completion as a text API answers it: the prompt echoed first (echo), the pieces as they come, and with
    `alternatives` set (logprobs) the log-probability of every token of the text and of the likeliest alternatives,
    per piece or for the whole text, with each token's offset in the text (characters)."""

    completion: Completion
    tokenizer: object
    prompt: str
    echo: bool = False
    alternatives: int | None = None
    prompt_trace: list = field(default_factory=list)  # echo with logprobs: (log-probability, alternatives) per token
    text: str = ""  # what was given out so far, the echoed prompt included
    given: int = 0  # sampled tokens whose log-probabilities were given out
    pieces_given: int = 0

    def __post_init__(self):
        self.text = self.echoed
        self.pieces = self._recorded()

    @property
    def echoed(self) -> str:
        return self.prompt if self.echo else ""

    @property
    def finish_reason(self) -> str | None:
        return self.completion.finish_reason

    def _recorded(self) -> Iterator[str]:
        for piece in self.completion:
            self.text += piece
            yield piece

    def cut(self, reason: str) -> None:
        """End here (a deadline): the answer is what was given out."""
        self.completion.finish_reason = reason

    def close(self) -> None:
        self.pieces.close()
        self.completion.close()

    def usage(self) -> dict:
        prompt, sampled = self.completion.prompt_tokens, self.completion.tokens
        return {"prompt_tokens": prompt, "completion_tokens": sampled, "total_tokens": prompt + sampled}

    def logprobs(self, piece: str | None = None, upto: int | None = None) -> dict | None:
        """None without logprobs. upto=0: the echoed prompt's tokens; piece: the sampled tokens that make `piece`,
        the next after those given out; neither: the whole text's (the echoed prompt's, then the sampled tokens that
        make the text)."""
        if self.alternatives is None:
            return None
        if piece is not None:  # the next piece given out, made of the next spans[k] sampled tokens
            start = self.given
            self.given += self.completion.spans[self.pieces_given]
            self.pieces_given += 1
            return self._table(self.completion.ids[start:self.given], self.completion.trace[start:self.given],
                               len(self.text) - len(piece))
        prompt_ids = self.tokenizer.encode(self.prompt).tolist() if self.echo else []
        if upto == 0:
            return self._table(prompt_ids, self.prompt_trace, 0)
        sampled = sum(self.completion.spans)
        return self._table(prompt_ids + self.completion.ids[:sampled],
                           self.prompt_trace + self.completion.trace[:sampled], 0)

    def _table(self, ids: list[int], trace: list, offset: int) -> dict:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        offsets = []
        for i in ids:
            offsets.append(offset)
            offset += len(decoder.decode(self.tokenizer.token_bytes(i)))
        name = self.tokenizer.token_text
        return {"tokens": [name(i) for i in ids], "token_logprobs": [lp for lp, _ in trace],
                "top_logprobs": [{name(k): v for k, v in top.items()} for _, top in trace], "text_offset": offsets}


def generation_speed(model, tokenizer, tokens: int = 64, repeats: int = 3) -> dict:
    """Batch-1 generation as a server does it: the milliseconds to the first token after a short prompt, and the tokens
    a second after it (median of `repeats`, greedy, the end of an entry ignored)."""
    firsts, rates = [], []
    ids = prompt_ids(tokenizer, "The ")
    for _ in range(repeats):
        t0 = time.perf_counter()
        sampled = model.generate(ids, tokens, temperature=0)
        next(sampled)
        t1 = time.perf_counter()
        n = sum(1 for _ in sampled)
        firsts.append((t1 - t0) * 1000)
        rates.append(n / max(time.perf_counter() - t1, 1e-9))
    return {"first_token_ms": statistics.median(firsts), "tokens_per_s": statistics.median(rates)}
