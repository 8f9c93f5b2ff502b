"""Tokenizers: text <-> token ids. `bytes` is the UTF-8 bytes themselves (256 symbols: nothing to train, nothing
unknown); `bpe` is a byte-level BPE (Hugging Face `tokenizers`, GPT-2's scheme) trained on the training split: its
256 byte symbols leave nothing unknown either, and its merges make a token about 2.5 characters of English. A
tokenized corpus is one flat tensor of the smallest integer type that holds its vocabulary."""

from __future__ import annotations

import codecs
import functools
import hashlib
from collections.abc import Iterable, Iterator

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from genforge.data.text import SEPARATOR
from genforge.errors import GenforgeError


class _Tokenizer:
    """What both tokenizers share: streaming decode through each token's bytes."""

    digest: str | None = None  # a trained tokenizer's sha256 (first 16 hex digits): what a run records of it

    def token_bytes(self, i: int) -> bytes:
        raise NotImplementedError

    def pieces(self, ids: Iterable[int]) -> Iterator[str]:
        """Token ids as they come -> text pieces as soon as they are whole characters (a character split over tokens
        is held back until its last byte): what streaming generation prints."""
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        for i in ids:
            piece = decoder.decode(self.token_bytes(i))
            if piece:
                yield piece
        rest = decoder.decode(b"", final=True)
        if rest:
            yield rest


class ByteTokenizer(_Tokenizer):
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

    def token_bytes(self, i: int) -> bytes:
        return bytes([int(i)])

    def token_text(self, i: int) -> str:
        """A token as text APIs list it: the character of an ASCII byte, else `bytes:\\xNN`."""
        return chr(i) if i < 128 else f"bytes:\\x{i:02x}"

    def state(self) -> dict:
        """What the run's meta.json holds of it: enough to rebuild it (tokenizer_from_state)."""
        return {"kind": self.kind, "vocab_size": self.vocab_size}


def _byte_symbols() -> dict[str, int]:
    """GPT-2's byte-level alphabet, symbol -> byte: printable bytes stand for themselves, the others for the
    characters from U+0100 on, in order (what `tokenizers`' ByteLevel pre-tokenizer writes a byte as)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + n): b for n, b in enumerate(others)}}


class BpeTokenizer(_Tokenizer):
    """A byte-level BPE: the text's UTF-8 bytes merged into the vocabulary's tokens (encoding by `tokenizers`), the
    entry separator a token of its own. Decoding goes through each token's bytes, so any ids decode, and any text
    round-trips exactly."""

    kind = "bpe"

    def __init__(self, definition: str):
        self.definition = definition  # the `tokenizers` JSON (Tokenizer.from_str reads it)
        self.digest = hashlib.sha256(definition.encode()).hexdigest()[:16]
        self._tokenizer = Tokenizer.from_str(definition)
        self.vocab_size = self._tokenizer.get_vocab_size()
        self.end_id = self._tokenizer.token_to_id(SEPARATOR)
        if self.end_id is None:
            raise GenforgeError("this BPE tokenizer has no token for the entry separator; train it with genforge")
        symbols = _byte_symbols()
        self._bytes = [b""] * self.vocab_size
        for token, i in self._tokenizer.get_vocab().items():
            self._bytes[i] = token.encode() if i == self.end_id else bytes(symbols[c] for c in token)

    def encode(self, text: str) -> torch.Tensor:
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        return torch.tensor(ids, dtype=token_dtype(self.vocab_size))

    def decode(self, ids: Iterable[int]) -> str:
        return b"".join(self._bytes[int(i)] for i in ids).decode("utf-8", "replace")

    def token_bytes(self, i: int) -> bytes:
        return self._bytes[int(i)]

    def token_text(self, i: int) -> str:
        """A token as text APIs list it: its text when its bytes are whole UTF-8, else `bytes:` and the escapes."""
        data = self._bytes[int(i)]
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in data)

    def state(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "definition": self.definition}


def train_bpe(entries: Iterable[str], vocab_size: int) -> BpeTokenizer:
    """A byte-level BPE of vocab_size tokens (the 256 bytes, the separator, merges) trained on the entries; the same
    entries give the same tokenizer."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[SEPARATOR], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(entries, trainer=trainer)
    return BpeTokenizer(tokenizer.to_str())


@functools.lru_cache(maxsize=8)
def _bpe(definition: str) -> BpeTokenizer:
    """One BpeTokenizer per definition: a served run reads its tokenizer for every request, and building one (parsing
    its JSON, the table of each token's bytes) takes milliseconds."""
    return BpeTokenizer(definition)


def tokenizer_from_state(state: dict) -> ByteTokenizer | BpeTokenizer:
    if state.get("kind") == "bytes":
        return ByteTokenizer()
    if state.get("kind") == "bpe" and isinstance(state.get("definition"), str):
        return _bpe(state["definition"])
    raise GenforgeError(f"unknown tokenizer {state.get('kind')!r} in the run's meta.json; this genforge reads: bytes, "
                        f"bpe")


def tokenizer_of(meta: dict) -> ByteTokenizer | BpeTokenizer:
    """A run's tokenizer, from its meta.json."""
    return tokenizer_from_state(meta["tokenizer"])


def token_dtype(vocab_size: int) -> torch.dtype:
    """The smallest integer type that holds every id of a vocabulary (a corpus of bytes takes one byte a token)."""
    return torch.uint8 if vocab_size <= 256 else torch.int16 if vocab_size <= 1 << 15 else torch.int32
