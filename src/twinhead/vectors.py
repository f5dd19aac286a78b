"""Pretrained word vectors (optional): word2vec / GloVe / fastText text files as the embeddings' start.

One vector per line, `word v1 ... vD`, separated by spaces; word2vec and fastText `.vec` files start with a
`count dim` header line, GloVe files do not. Only the vocabulary's words are kept while reading, so a
multi-GB file costs one pass and the memory of the vocabulary. The vectors only initialise the embedding
table (then trained further); the bundle stores the trained table, so it never needs the file again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from twinhead.errors import DataError


@dataclass(frozen=True)
class Coverage:
    """How much of the vocabulary the file covered (the specials <pad>, <unk> are not counted)."""

    path: str
    dim: int
    vocab_words: int
    found: int  # words initialised from the file
    found_lowercased: int  # of those, found only under their lowercased form
    file_words: int  # vectors read from the file

    @property
    def coverage(self) -> float:
        return self.found / self.vocab_words if self.vocab_words else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "coverage": self.coverage}


def _is_header(fields: list[str]) -> bool:
    return len(fields) == 2 and all(f.isdigit() for f in fields)


def read_vectors(path: str | Path, dim: int, wanted: set[str]) -> tuple[dict[str, np.ndarray], set[str], int]:
    """The vectors of the `wanted` words (exact form, else the first form in the file that lowercases to the
    word's lowercased form), the words found only that way, and how many lines held vectors. Checks every
    line's dimension against `dim` (model.word_dim), naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError("model.vectors: no such file (put it under data/vectors/ and `dvc add` it)", str(path))
    lower_wanted = {w.lower() for w in wanted}
    exact: dict[str, np.ndarray] = {}
    lowered: dict[str, np.ndarray] = {}
    n = 0
    with open(path, encoding="utf-8", errors="strict") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.rstrip("\n\r").rstrip(" ").split(" ")
            if lineno == 1 and _is_header(fields):
                if int(fields[1]) != dim:
                    raise DataError(f"the header says dimension {fields[1]}, but model.word_dim is {dim}",
                                    str(path), lineno)
                continue
            if fields == [""]:
                continue
            if len(fields) != dim + 1:
                raise DataError(f"expected a word and {dim} numbers (model.word_dim), found {len(fields) - 1} "
                                "values", str(path), lineno)
            word = fields[0]
            n += 1
            if word not in wanted and word.lower() not in lower_wanted:
                continue
            try:
                vec = np.asarray(fields[1:], dtype=np.float32)
            except ValueError:
                raise DataError(f"the vector of {word!r} holds a value that is not a number", str(path),
                                lineno) from None
            if word in wanted:
                exact.setdefault(word, vec)
            lowered.setdefault(word.lower(), vec)  # the first form in the file (files list frequent first)
    if n == 0:
        raise DataError("no vectors in the file", str(path))
    via_lower = {w for w in wanted if w not in exact and w.lower() in lowered}
    out = {**{w: exact[w] for w in wanted if w in exact}, **{w: lowered[w.lower()] for w in via_lower}}
    return out, via_lower, n


def init_embeddings(emb: nn.Embedding, itos: list[str], path: str | Path, specials: int = 2) -> Coverage:
    """Copy the file's vectors into `emb` rows of the vocabulary words it has (rows 0..specials-1, <pad> and
    <unk>, keep their initialisation). Casing: a word missing in its own form takes its lowercased form's
    vector, so a cased file serves a lowercased vocabulary and the other way round."""
    words = itos[specials:]
    found, via_lower, n = read_vectors(path, emb.embedding_dim, set(words))
    with torch.no_grad():
        for i, w in enumerate(words, specials):
            if w in found:
                emb.weight[i] = torch.from_numpy(found[w]).to(emb.weight)
    return Coverage(str(path), emb.embedding_dim, len(words), len(found), len(via_lower), n)
