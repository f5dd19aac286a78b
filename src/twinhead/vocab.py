"""Vocabularies (itos/stoi) built from the train split only, stored as JSON lists."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from twinhead import fileio
from twinhead.errors import DataError
from twinhead.params import PosInt, section

PAD, UNK = "<pad>", "<unk>"
VOCAB_FILES = ("words", "chars", "intents", "tags")


@section
class VocabConfig:
    min_freq: PosInt = 1  # rarer words read as <unk>


class Vocab:
    """A string <-> index map. With `specials`, index 0 is <pad> and 1 is <unk>."""

    def __init__(self, itos: list[str], specials: bool):
        self.itos = list(itos)
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        self.specials = specials
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocabulary has duplicate entries")
        if specials and self.itos[:2] != [PAD, UNK]:
            raise ValueError("vocabulary with specials must start with <pad>, <unk>")

    def __len__(self) -> int:
        return len(self.itos)

    def index(self, s: str) -> int:
        """Index of `s`; <unk> when unknown (vocabularies with specials), else KeyError."""
        if self.specials:
            return self.stoi.get(s, 1)
        return self.stoi[s]

    def encode(self, items: Iterable[str]) -> list[int]:
        return [self.index(s) for s in items]

    @classmethod
    def build(cls, counts: Counter, min_freq: int = 1, specials: bool = True) -> Vocab:
        # Most frequent first, ties broken alphabetically, so the file is stable across runs.
        kept = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        return cls(([PAD, UNK] if specials else []) + kept, specials)


@dataclass
class Vocabs:
    words: Vocab
    chars: Vocab
    intents: Vocab
    tags: Vocab

    def save(self, folder: str | Path) -> None:
        with fileio.atomic_dir(folder) as tmp:
            for name in VOCAB_FILES:
                fileio.write_json(tmp / f"{name}.json", getattr(self, name).itos, indent=0)

    @classmethod
    def load(cls, folder: str | Path) -> Vocabs:
        folder = Path(folder)
        for name in VOCAB_FILES:
            if not (folder / f"{name}.json").is_file():
                raise DataError("no vocabulary file here: the vocab stage writes it (`dvc repro vocab`)",
                                str(folder / f"{name}.json"))
        return cls.from_lists({n: fileio.read_json(folder / f"{n}.json") for n in VOCAB_FILES})

    @classmethod
    def from_lists(cls, lists: dict[str, list[str]]) -> Vocabs:
        return cls(
            words=Vocab(lists["words"], specials=True),
            chars=Vocab(lists["chars"], specials=True),
            intents=Vocab(lists["intents"], specials=False),
            tags=Vocab(lists["tags"], specials=False),
        )

    def to_lists(self) -> dict[str, list[str]]:
        return {n: list(getattr(self, n).itos) for n in VOCAB_FILES}


def build_vocabs(words: Iterable[list[str]], intents: Iterable[str], tags: Iterable[list[str]],
                 min_freq: int = 1) -> Vocabs:
    """Build all vocabularies from the train split's model-side words, intents and tags.

    Args:
        words: per sentence, the (normalized, stop-word-filtered) words the model reads.
        intents: the intent of each sentence.
        tags: per sentence, the tags of those words.
        min_freq: words seen fewer times map to <unk>. Characters and labels keep everything.
    """
    sents = [list(w) for w in words]
    wc = Counter(w for s in sents for w in s)
    cc = Counter(c for s in sents for w in s for c in w)
    tag_set = Counter(t for s in tags for t in s)
    tag_set["O"] += 1  # "O" must exist: removed and padded positions are O
    return Vocabs(
        words=Vocab.build(wc, min_freq),
        chars=Vocab.build(cc, 1),
        intents=Vocab.build(Counter(intents), 1, specials=False),
        tags=Vocab(sorted(tag_set, key=lambda t: (t != "O", t[2:], t)), specials=False),
    )
