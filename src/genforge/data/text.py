"""Text corpora: Debian's fortunes (human-written English in 40 labelled files), text:PATH (a file or a folder of .txt
files) and textfolder:PATH (one subfolder per class, one file per example; or a CSV file with a text and a label
column). A corpus is a list of entries, each with its label (the file, folder or label it came from); the split is by
entry, fixed by each entry's own text (docs/decisions.md), so that no entry, and no exact duplicate of one, is on both
sides, and the same every run."""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from genforge.data.dataset import class_indices
from genforge.errors import GenforgeError

FORTUNES_DIR = Path("/usr/share/games/fortunes")
TEST_SHARE = 10  # percent of the entries in the test split (by their hash, so about this share)
MAX_BYTES = 1 << 30  # text read at most, all files together: a larger corpus is refused, not loaded
MAX_ENTRY = 1 << 16  # characters: a longer paragraph of text:PATH is cut into pieces of at most this, at whitespace
SEPARATOR = "\x1e"  # ASCII record separator: ends each entry in the stream a language model reads


@dataclass(frozen=True)
class TextCorpus:
    """Entries of text with their labels, split into train and test by entry."""

    name: str
    source: str  # where it was read from
    classes: list[str]  # the label names (a file or folder each); a single-file corpus has one
    train: list[str]
    train_labels: list[int]
    test: list[str]
    test_labels: list[int]
    checksum: str = field(default="")  # sha256 of every entry and label, in order

    def stream(self, split: str = "train") -> str:
        """The split as one text, each entry ended by SEPARATOR: what a language model reads and what the compressors
        it is compared with compress."""
        return joined(self.train if split == "train" else self.test)

    @property
    def characters(self) -> int:
        return sum(len(e) + 1 for e in self.train) + sum(len(e) + 1 for e in self.test)

    def select(self, classes: list[int | str]) -> TextCorpus:
        """Only these classes (labels or indices, data.classes), relabelled 0..k-1 in this order."""
        index = class_indices(self.classes, classes, self.name)
        new = {old: i for i, old in enumerate(index)}

        def keep(entries, labels):
            pairs = [(e, new[label]) for e, label in zip(entries, labels) if label in new]
            return [e for e, _ in pairs], [label for _, label in pairs]

        train, train_labels = keep(self.train, self.train_labels)
        test, test_labels = keep(self.test, self.test_labels)
        return replace(self, classes=[self.classes[i] for i in index], train=train, train_labels=train_labels,
                       test=test, test_labels=test_labels)

    def info(self, longest: int = 5, tokenizers: dict | None = None) -> dict:
        """`genforge data info`: entries, characters and tokens per split (UTF-8 bytes, and for each of `tokenizers`,
        name -> an object with encode(text)), the classes and their sizes, duplicates (within train, and test entries
        also in train), the longest entries."""
        train, test = Counter(self.train), set(self.test)
        streams = {split: self.stream(split) for split in ("train", "test")}
        sizes = {split: Counter(labels) for split, labels in (("train", self.train_labels), ("test", self.test_labels))}
        ranked = sorted(((len(e), self.classes[label], e) for e, label in zip(self.train + self.test,
                                                                                self.train_labels + self.test_labels)),
                        key=lambda t: -t[0])[:longest]
        return {
            "name": self.name, "source": self.source, "checksum": self.checksum,
            "entries": {"train": len(self.train), "test": len(self.test)},
            "characters": {split: len(text) for split, text in streams.items()},
            "tokens": {"bytes": {split: len(text.encode()) for split, text in streams.items()},
                       **{name: {split: len(t.encode(text)) for split, text in streams.items()}
                          for name, t in (tokenizers or {}).items()}},
            "split": f"by entry: sha256 of its text, {TEST_SHARE}% to test (the same text always on the same side)",
            "classes": {c: {"train": sizes["train"][i], "test": sizes["test"][i]} for i, c in enumerate(self.classes)},
            "duplicates": {"within_train": sum(n - 1 for n in train.values()),
                           "test_in_train": sum(1 for e in test if e in train)},
            "longest": [{"class": c, "characters": n, "begins": e[:60]} for n, c, e in ranked],
        }


def joined(entries) -> str:
    """Entries as one stream, each ended by SEPARATOR."""
    return "".join(entry + SEPARATOR for entry in entries)


def is_text(name: str) -> bool:
    """Whether the dataset name is a text corpus (read by load_text)."""
    return name == "fortunes" or name.split(":", 1)[0] in ("text", "textfolder")


def in_test(entry: str) -> bool:
    """The split rule: an entry is a test entry when the first 4 bytes of sha256(its UTF-8 text), read as an integer,
    mod 100 are below TEST_SHARE; the same text always falls on the same side."""
    digest = hashlib.sha256(entry.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:4], "big") % 100 < TEST_SHARE


def load_text(name: str) -> TextCorpus:
    """A text corpus by name: fortunes, text:PATH or textfolder:PATH."""
    prefix, _, path = name.partition(":")
    if name == "fortunes":
        return _fortunes()
    if prefix == "text" and path:
        return _plain(name, Path(path).expanduser())
    if prefix == "textfolder" and path:
        path = Path(path).expanduser()
        return _table(name, path) if path.suffix.lower() == ".csv" else _folder(name, path)
    raise GenforgeError(f"unknown text dataset {name!r}; use fortunes, text:PATH (a .txt file or a folder of them) "
                        f"or textfolder:PATH (one subfolder per class, or a .csv file with text and label columns)")


def _fortunes() -> TextCorpus:
    if not FORTUNES_DIR.is_dir():
        raise GenforgeError(f"the fortunes corpus is not installed ({FORTUNES_DIR} is missing): "
                            f"sudo apt-get install -y fortunes")
    files = sorted(p for p in FORTUNES_DIR.iterdir() if p.is_file() and not p.suffix and not p.is_symlink())
    groups = {p.name: [e for e in (_clean(x) for x in re.split(r"^%$", read_text(p), flags=re.M)) if e]
              for p in files}
    return _split("fortunes", str(FORTUNES_DIR), groups)


def _plain(name: str, path: Path) -> TextCorpus:
    """One file, or every .txt file under a folder: entries are paragraphs (split at blank lines)."""
    files = [path] if path.is_file() else sorted(path.rglob("*.txt")) if path.is_dir() else None
    if files is None:
        raise GenforgeError(f"{name}: {path} does not exist")
    if not files:
        raise GenforgeError(f"{name}: no .txt file under {path}")
    _check_size(name, files)
    entries = [piece for p in files for e in (_clean(x) for x in re.split(r"\n\s*\n", read_text(p))) if e
               for piece in _cut(e)]
    if not entries:
        raise GenforgeError(f"{name}: the text is empty")
    return _split(name, str(path), {path.stem or "text": entries})


def _folder(name: str, path: Path) -> TextCorpus:
    """One subfolder per class, each file in it one example."""
    if not path.is_dir():
        raise GenforgeError(f"{name}: {path} is not a folder (textfolder:PATH wants one subfolder per class)")
    folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(folders) < 2:
        raise GenforgeError(f"{name}: {path} needs at least two subfolders, one per class, found {len(folders)}")
    files = {d.name: sorted(p for p in d.rglob("*") if p.is_file() and not p.name.startswith(".")) for d in folders}
    _check_size(name, [p for group in files.values() for p in group])
    groups = {label: [e for e in (_clean(read_text(p)) for p in group) if e] for label, group in files.items()}
    empty = [label for label, entries in groups.items() if not entries]
    if empty:
        raise GenforgeError(f"{name}: class folder {empty[0]!r} holds no text")
    return _split(name, str(path), groups)


def _table(name: str, path: Path) -> TextCorpus:
    """A CSV file with a header: each row one example, its `text` column the entry and its `label` column the class
    (the column names in any case; other columns are ignored). Classes are the labels in sorted order."""
    if not path.is_file():
        raise GenforgeError(f"{name}: {path} does not exist")
    _check_size(name, [path])
    rows = csv.reader(io.StringIO(read_text(path), newline=""))
    header = [h.strip().lower() for h in next(rows, [])]
    if "text" not in header or "label" not in header:
        raise GenforgeError(f"{name}: {path} needs a header with a 'text' and a 'label' column; its columns are "
                            f"{header or 'none'}")
    text_at, label_at = header.index("text"), header.index("label")
    groups: dict[str, list[str]] = {}
    try:
        for row in rows:
            if not any(cell.strip() for cell in row):
                continue  # a blank line
            if len(row) <= max(text_at, label_at) or not row[label_at].strip():
                raise GenforgeError(f"{name}: {path} line {rows.line_num} has no label: {row!r:.80}")
            entry = _clean(row[text_at])
            if entry:
                groups.setdefault(row[label_at].strip(), []).extend(_cut(entry))
    except csv.Error as e:
        if "field limit" in str(e):  # Python's csv module reads at most csv.field_size_limit() characters a cell
            raise GenforgeError(f"{name}: {path} line {rows.line_num} has a cell of more than "
                                f"{csv.field_size_limit():,} characters; give long texts as one file each "
                                f"(textfolder:FOLDER) or as text:PATH") from None
        raise GenforgeError(f"{name}: {path} line {rows.line_num} is not valid CSV: {e}") from None
    if len(groups) < 2:
        raise GenforgeError(f"{name}: {path} needs at least two labels, found {len(groups)}")
    return _split(name, str(path), {label: groups[label] for label in sorted(groups)})


def _split(name: str, source: str, groups: dict[str, list[str]]) -> TextCorpus:
    classes = list(groups)
    train, train_labels, test, test_labels = [], [], [], []
    digest = hashlib.sha256()
    for label, entries in enumerate(groups.values()):
        for entry in entries:
            side, labels = (test, test_labels) if in_test(entry) else (train, train_labels)
            side.append(entry)
            labels.append(label)
            digest.update(entry.encode("utf-8", "surrogatepass") + b"\0" + str(label).encode() + b"\0")
    if not train or not test:
        raise GenforgeError(f"{name}: {len(train) + len(test)} entries are too few to split into train and test "
                            f"(about {TEST_SHARE}% go to test): give more text")
    return TextCorpus(name, source, classes, train, train_labels, test, test_labels, digest.hexdigest())


def _cut(entry: str) -> list[str]:
    """An entry of at most MAX_ENTRY characters, or pieces of one (a file that is one long line), cut at spaces."""
    pieces, start = [], 0
    while len(entry) - start > MAX_ENTRY:
        cut = entry.rfind(" ", start + MAX_ENTRY // 2, start + MAX_ENTRY)
        cut = cut if cut > 0 else start + MAX_ENTRY
        pieces.append(entry[start:cut])
        start = cut + (entry[cut:cut + 1] == " ")
    return [*pieces, entry[start:]]


def _check_size(name: str, files: list[Path]) -> None:
    total = sum(p.stat().st_size for p in files)
    if total > MAX_BYTES:
        raise GenforgeError(f"{name}: {total / 2**30:.1f} GiB of text is more than the {MAX_BYTES >> 30} GiB genforge "
                            f"reads into memory; give a part of it")


def _clean(text: str) -> str:
    """An entry as a reader sees it: no overstriking, no carriage returns, no SEPARATOR, no surrounding blank lines."""
    text = text.replace("\r\n", "\n").replace(SEPARATOR, "")
    if "\b" in text:
        text = _overstruck(text)
    return text.strip("\n").rstrip()


def _overstruck(text: str) -> str:
    """What a terminal shows of text written for it with backspaces ("_\bX" underlines X, "X\bX" bolds it,
    "___\b\b\bONE" underlines a word): each backspace moves back a character, which the next one overprints (an
    underscore never hides a letter)."""
    shown: list[str] = []
    at = 0
    for ch in text:
        if ch == "\b":
            at = max(0, at - 1)
            continue
        if ch == "\n":
            shown.append(ch)
            at = len(shown)
            continue
        if at < len(shown):
            if ch != "_":
                shown[at] = ch
        else:
            shown.append(ch)
        at += 1
    return "".join(shown)


def read_text(path: Path) -> str:
    """A file's text: UTF-8 (a byte-order mark dropped) or UTF-16 with its mark; anything else is refused in one line
    that says how to convert it."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    if b"\0" in data[:8192]:
        raise GenforgeError(f"{path} is a binary file, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise GenforgeError(f"{path} is not UTF-8 text (byte {e.start}: {data[e.start:e.start + 1]!r}); convert it, "
                            f"e.g. iconv -f latin1 -t utf-8 {path} > {path.stem}.utf8.txt") from None
