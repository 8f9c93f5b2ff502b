"""A decoder-only Transformer (GPT-style): token embeddings, pre-norm blocks of causal self-attention (PyTorch's
scaled_dot_product_attention) and an MLP, learned or rotary positions, the output layer tied to the embeddings. With
head=lm it predicts the next token; with head=classes it pools its last hidden states over an entry's tokens into
class logits, so a pretrained language model is fine-tuned into a classifier by loading its weights
(train.init_from). generate() samples with a key/value cache."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn


class TransformerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["transformer"] = "transformer"
    layers: int = Field(4, ge=1, le=64)
    heads: int = Field(4, ge=1, le=64)
    width: int = Field(256, ge=8, le=8192)  # the residual stream; each head has width // heads
    context: int = Field(256, ge=2, le=8192)  # tokens the model attends over
    dropout: float = Field(0.1, ge=0, lt=1)  # on attention weights, after attention and after the MLP
    positions: Literal["learned", "rotary"] = "rotary"
    tie_weights: bool = True  # the output layer is the token embedding (fewer weights, a better small model)
    tokenizer: Literal["bytes", "bpe"] = "bytes"  # bytes: the UTF-8 bytes, 256 symbols; bpe: a byte-level BPE trained
    # on the training split, of bpe_vocab tokens (data/tokens.py)
    bpe_vocab: int = Field(2048, ge=300, le=32768)  # tokens of the BPE: 256 bytes, the separator, merges
    head: Literal["lm", "classes"] = "lm"  # next-token logits (a language model), or one class per entry
    lm_weight: float = Field(0.0, ge=0, le=10)  # head=classes: in training, this weight times the next-token loss of
    # the entry's own tokens is added to the class loss (GPT-1's auxiliary objective, Radford et al. 2018 eq. 5)
    vocab_size: int | None = Field(None, ge=2)  # set from the tokenizer when training starts
    tokenizer_digest: str | None = None  # a BPE's sha256 (first 16 hex digits), set when training starts: a BPE trained
    # again from the run's data (evaluate, compress) must be this one
    end_token: int | None = Field(None, ge=0)  # the id that ends an entry (and pads a batch of them): from the data

    @model_validator(mode="after")
    def _heads_divide_width(self):
        if self.width % self.heads:
            raise ValueError(f"width={self.width} must be a multiple of heads={self.heads}")
        if self.positions == "rotary" and (self.width // self.heads) % 2:
            raise ValueError(f"rotary positions need an even head width; width // heads = {self.width // self.heads}")
        return self


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (Su et al. 2021) of (B, H, T, D) queries or keys, in half-split form."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.heads, self.dropout = cfg.heads, cfg.dropout
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.width)

    def forward(self, x: torch.Tensor, rope, cache: tuple | None, masked: bool = False) -> tuple[torch.Tensor, tuple]:
        """x (B, T, W); cache: the keys and values of the positions before x, or None (x starts at position 0).
        masked: T new tokens after a cache of any length (none included) attend causally through an explicit mask,
        one graph for every T (the exported step); otherwise a prompt attends causally and one new token after a
        cache to everything before it."""
        b, t, w = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = _rotate(q, *rope), _rotate(k, *rope)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        dropout = self.dropout if self.training else 0.0
        if masked:
            seen = k.shape[2]  # new token i (at position seen - t + i) sees the keys up to its own
            mask = torch.arange(seen, device=x.device)[None] <= torch.arange(t, device=x.device)[:, None] + (seen - t)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=cache is None and t > 1)
        return self.proj(y.transpose(1, 2).reshape(b, t, w)), (k, v)

    def weights(self, x: torch.Tensor, rope) -> torch.Tensor:
        """x (B, T, W) from position 0 -> (B, heads, T, T) causal attention probabilities, what forward's
        scaled_dot_product_attention computes without dropout (written out: that function does not return them)."""
        b, t, w = x.shape
        q, k, _ = self.qkv(x).view(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = _rotate(q, *rope), _rotate(k, *rope)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, heads, T, T)
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        return scores.masked_fill(~causal, float("-inf")).softmax(-1)


class Block(nn.Module):
    """Pre-norm: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(cfg.width), nn.LayerNorm(cfg.width)
        self.attn = Attention(cfg)
        self.mlp = nn.Sequential(nn.Linear(cfg.width, 4 * cfg.width), nn.GELU(), nn.Linear(4 * cfg.width, cfg.width))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, rope, cache: tuple | None, masked: bool = False) -> tuple[torch.Tensor, tuple]:
        a, cache = self.attn(self.norm1(x), rope, cache, masked)
        x = x + self.drop(a)
        return x + self.drop(self.mlp(self.norm2(x))), cache


class Transformer(nn.Module):
    head_prefix = "classes."  # the class head: new when a language model is fine-tuned into a classifier

    def __init__(self, cfg: TransformerConfig, num_classes: int = 0):
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("model.vocab_size is not set: it comes from the tokenizer when training starts")
        if cfg.head == "classes" and num_classes < 2:
            raise ValueError(f"head=classes needs at least 2 classes, got {num_classes}")
        self.cfg, self.context = cfg, cfg.context
        self.embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.position = nn.Embedding(cfg.context, cfg.width) if cfg.positions == "learned" else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.width)
        self.drop = nn.Dropout(cfg.dropout)
        self.lm_head = nn.Linear(cfg.width, cfg.vocab_size, bias=False)
        self.classes = nn.Linear(cfg.width, num_classes) if cfg.head == "classes" else None
        if cfg.positions == "rotary":
            d = cfg.width // cfg.heads
            freq = 1.0 / 10_000 ** (torch.arange(0, d, 2).float() / d)
            angles = torch.outer(torch.arange(cfg.context).float(), freq)  # (context, d/2)
            self.register_buffer("cos", angles.cos(), persistent=False)
            self.register_buffer("sin", angles.sin(), persistent=False)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by depth
            if name.endswith(("attn.proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.layers))
        if cfg.tie_weights:
            self.lm_head.weight = self.embed.weight

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, 0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def hidden(self, tokens: torch.Tensor, caches: list | None = None, start: int = 0) -> tuple[torch.Tensor, list]:
        """(B, T) token ids at positions start.. -> (B, T, W) final hidden states, and each block's keys and values."""
        if start + tokens.shape[1] > self.context:
            raise ValueError(f"{start + tokens.shape[1]} positions, more than the model's context of {self.context}")
        return self._blocks(tokens, caches, start, masked=False)

    def _embed(self, tokens: torch.Tensor, start: int) -> tuple[torch.Tensor, tuple | None]:
        """(B, T) ids at positions start.. -> their embeddings (with learned positions added), and the rotary angles."""
        t = tokens.shape[1]
        x = self.embed(tokens.long())
        if self.position is not None:
            return x + self.position(torch.arange(start, start + t, device=tokens.device)), None
        return x, (self.cos[start:start + t], self.sin[start:start + t])

    def _blocks(self, tokens: torch.Tensor, caches: list | None, start, masked: bool) -> tuple[torch.Tensor, list]:
        x, rope = self._embed(tokens, start)
        x = self.drop(x)
        new = []
        for i, block in enumerate(self.blocks):
            x, cache = block(x, rope, caches[i] if caches else None, masked)
            new.append(cache)
        return self.norm(x), new

    @torch.no_grad()
    def attention_weights(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) ids from position 0 -> (layers, B, heads, T, T): each block's attention probabilities (eval mode)."""
        x, rope = self._embed(tokens, 0)
        maps = []
        for block in self.blocks:
            maps.append(block.attn.weights(block.norm1(x), rope))
            x, _ = block(x, rope, None)
        return torch.stack(maps)

    def step(self, tokens: torch.Tensor, past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Generation's step as one function of tensors, step.onnx of an ONNX export: (B, T) new token ids after
        `past`, the (layers, 2, B, heads, P, head width) keys and values of P earlier positions (P = 0: none) ->
        (B, T, V) next-token logits and the keys and values of all P + T positions. The caller keeps P + T within
        the context (generate starts again from the recent tokens past it)."""
        caches = [(past[i, 0], past[i, 1]) for i in range(len(self.blocks))]
        h, caches = self._blocks(tokens, caches, past.shape[4], masked=True)
        return self.lm_head(h), torch.stack([torch.stack(kv) for kv in caches])

    def empty_past(self, batch: int = 1) -> torch.Tensor:
        """The keys and values of no position, as step() takes them."""
        cfg = self.cfg
        return torch.zeros(cfg.layers, 2, batch, cfg.heads, 0, cfg.width // cfg.heads, device=self.embed.weight.device)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> next-token logits (B, T, V), or with head=classes class logits (B, C)."""
        h, _ = self.hidden(tokens)
        if self.classes is None:
            return self.lm_head(h)
        return self.classes(self.pool(h, tokens))

    def pool(self, h: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The mean hidden state over each entry's tokens: up to and including its first end token (the rest pads)."""
        keep = self.entry_mask(tokens).unsqueeze(-1).to(h.dtype)
        return (h * keep).sum(1) / keep.sum(1).clamp(min=1)

    def entry_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) bool: each entry's tokens up to and including its first end token (the rest pads)."""
        end = (tokens == self.cfg.end_token).long() if self.cfg.end_token is not None else torch.zeros_like(tokens)
        return end.cumsum(1) - end == 0

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(-1)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy in nats: of each next token (y: x shifted by one), or of each entry's class (in training,
        plus lm_weight times the next-token loss within the entries)."""
        h, _ = self.hidden(x)
        if self.classes is None:
            return F.cross_entropy(self.lm_head(h).float().flatten(0, 1), y.long().flatten())
        loss = F.cross_entropy(self.classes(self.pool(h, x)).float(), y.long())
        if self.training and self.cfg.lm_weight > 0:
            targets = x[:, 1:].long()
            keep = self.entry_mask(x)[:, 1:]  # the entry's tokens after its first, and its end token; not the padding
            lm = F.cross_entropy(self.lm_head(h[:, :-1]).float()[keep], targets[keep])
            loss = loss + self.cfg.lm_weight * lm
        return loss

    @torch.inference_mode()
    def generate(self, prompt: torch.Tensor, max_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None, trace: list | None = None,
                 alternatives: int = 0) -> Iterator[int]:
        """Token ids after `prompt` ((L,) ids, L >= 1), one at a time, with a key/value cache. temperature 0 is greedy;
        top_k keeps the k likeliest tokens, top_p the fewest whose probabilities reach p; the same seed gives the same
        tokens. Past the context, the cache is rebuilt from the last half-context of tokens. trace: a list that gets,
        for each token, its log-probability under the model (temperature 1) and the `alternatives` likeliest ids with
        theirs."""
        device = self.embed.weight.device
        generator = torch.Generator(device=device).manual_seed(seed if seed is not None else torch.seed())
        ids = prompt.long().to(device)[-self.context:]
        logits, caches, length = self._prefill(ids)
        for _ in range(max_tokens):
            token = sample(logits, temperature, top_k, top_p, generator)
            if trace is not None:
                trace.append(logprob_of(logits, token, alternatives))
            yield token
            ids = torch.cat([ids, torch.tensor([token], device=device)])
            if length == self.context:  # no position left: start again from the recent tokens
                logits, caches, length = self._prefill(ids[-(self.context // 2):])
                continue
            logits, caches = self._next(ids[-1:], caches, length)
            length += 1

    def _stepped(self) -> bool:
        """Whether step() runs elsewhere: ONNX Runtime's step.onnx put in its place (onnx/export.py, attach)."""
        return isinstance(self.step, nn.Module)

    def _prefill(self, ids: torch.Tensor):
        if self._stepped():
            logits, past = self.step(ids[None], self.empty_past())
            return logits[0, -1], past, len(ids)
        h, caches = self.hidden(ids[None])
        return self.lm_head(h[0, -1]), caches, len(ids)

    def _next(self, token: torch.Tensor, caches, length: int):
        """The logits after one more token, and the caches with it: the per-layer keys and values in PyTorch (no
        copy of the whole cache per token), the one past tensor through a step run elsewhere."""
        if self._stepped():
            logits, past = self.step(token[None], caches)
            return logits[0, -1], past
        h, caches = self.hidden(token[None], caches, start=length)
        return self.lm_head(h[0, -1]), caches


def logprob_of(logits: torch.Tensor, token: int, alternatives: int) -> tuple[float, dict[int, float]]:
    """A token's log-probability under (V,) logits, and the `alternatives` likeliest ids with theirs."""
    lp = logits.float().log_softmax(-1)
    top = lp.topk(alternatives) if alternatives else None
    return float(lp[token]), ({} if top is None else dict(zip(top.indices.tolist(), top.values.tolist())))


def sample(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
           generator: torch.Generator) -> int:
    """One token id from (V,) logits."""
    if temperature == 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        ordered, order = logits.sort(descending=True)
        before = ordered.softmax(-1).cumsum(-1) - ordered.softmax(-1)  # the mass of the likelier tokens
        logits = logits.scatter(0, order, ordered.masked_fill(before >= top_p, float("-inf")))
    return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))


def build_transformer(cfg: TransformerConfig, input_shape, num_classes: int, mean, std) -> Transformer:
    return Transformer(cfg, num_classes)
