"""Tokenizers: text <-> token ids. `bytes` is the UTF-8 bytes themselves (256 symbols: nothing to train, nothing
unknown); a tokenized corpus is one flat tensor of the smallest integer type that holds its vocabulary."""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator

import torch

from genforge.data.text import SEPARATOR
from genforge.errors import GenforgeError


class ByteTokenizer:
    """UTF-8 bytes as tokens."""

    kind = "bytes"
    vocab_size = 256
    end_id = ord(SEPARATOR)  # the id that ends an entry (and pads a batch of entries)

    def encode(self, text: str) -> torch.Tensor:
        """(L,) uint8 token ids."""
        data = text.encode("utf-8", "surrogatepass")
        return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)

    def decode(self, ids: Iterable[int]) -> str:
        """Token ids -> text; an incomplete or invalid UTF-8 sequence (a model may sample one) becomes U+FFFD."""
        return bytes(int(i) for i in ids).decode("utf-8", "replace")

    def pieces(self, ids: Iterable[int]) -> Iterator[str]:
        """Token ids as they come -> text pieces as soon as they are whole characters (a multi-byte character is held
        back until its last byte): what streaming generation prints."""
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        for i in ids:
            piece = decoder.decode(bytes([int(i)]))
            if piece:
                yield piece
        rest = decoder.decode(b"", final=True)
        if rest:
            yield rest

    def token_bytes(self, i: int) -> bytes:
        return bytes([int(i)])

    def token_text(self, i: int) -> str:
        """A token as text APIs list it: the character of an ASCII byte, else `bytes:\\xNN`."""
        return chr(i) if i < 128 else f"bytes:\\x{i:02x}"

    def state(self) -> dict:
        """What tokenizer.json holds: enough to rebuild it (tokenizer_from_state)."""
        return {"kind": self.kind, "vocab_size": self.vocab_size}


def tokenizer_from_state(state: dict) -> ByteTokenizer:
    if state.get("kind") == "bytes":
        return ByteTokenizer()
    raise GenforgeError(f"unknown tokenizer {state.get('kind')!r} in tokenizer.json; this genforge reads: bytes")


def tokenizer_of(meta: dict) -> ByteTokenizer:
    """A run's tokenizer, from its meta.json."""
    return tokenizer_from_state(meta["tokenizer"])


def make_tokenizer(kind: str) -> ByteTokenizer:
    if kind == "bytes":
        return ByteTokenizer()
    raise GenforgeError(f"unknown tokenizer {kind!r}; tokenizers: bytes")


def token_dtype(vocab_size: int) -> torch.dtype:
    """The smallest integer type that holds every id of a vocabulary (a corpus of bytes takes one byte a token)."""
    return torch.uint8 if vocab_size <= 256 else torch.int16 if vocab_size <= 1 << 15 else torch.int32
