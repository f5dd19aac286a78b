"""Text handling shared by training and prediction: spaCy tokenization, BIO <-> spans, stop words.

Everything here is applied identically at training and prediction time, so it lives in one place.
"""

from __future__ import annotations

import functools
import re

from twinhead.errors import TwinheadError

TAG_RE = re.compile(r"^(O|[BI]-\S+)$")


@functools.lru_cache(maxsize=8)
def get_nlp(lang: str):
    """A blank spaCy pipeline: tokenizer and stop words, no download."""
    import spacy

    try:
        return spacy.blank(lang)
    except (ImportError, KeyError, ValueError) as e:
        raise TwinheadError(f"params: preprocess.lang={lang!r} is not a language spaCy knows ({e})") from e


MAX_RUN = 200  # longest whitespace-free run handed to spaCy at once (its affix splitting is quadratic)
CHUNK = 20_000  # texts are tokenized in pieces of about this many characters, cut at whitespace
LONG_RUN = re.compile(rf"\S{{{MAX_RUN + 1},}}")
SPACE = re.compile(r"\s")


def text_problem(text: str) -> str | None:
    """Why `text` cannot be tokenized (an unpaired UTF-16 surrogate), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"text has an unpaired surrogate {text[e.start]!r} at character {e.start}"
    return None


def _pieces(text: str) -> list[tuple[int, int]]:
    """(start, end) pieces covering `text`: cut at whitespace near every CHUNK characters, and
    whitespace-free runs longer than MAX_RUN cut every MAX_RUN characters."""
    cuts = {0, len(text)}
    for m in LONG_RUN.finditer(text):
        cuts.update(range(m.start(), m.end(), MAX_RUN))
    pos = CHUNK
    while pos < len(text):
        ws = SPACE.search(text, pos)
        if ws is None:
            break
        cuts.add(ws.start())
        pos = ws.start() + CHUNK
    cuts = sorted(cuts)
    return list(zip(cuts, cuts[1:]))


def tokenize(nlp, text: str) -> tuple[list[str], list[int]]:
    """spaCy tokens of `text` (whitespace tokens dropped) and each token's character offset.

    Ordinary text goes to spaCy whole. Very long texts, and words longer than MAX_RUN characters
    (100k emoji in a row, say), are tokenized in pieces: spaCy's time grows with the square of a
    whitespace-free run's length and it refuses texts over nlp.max_length.
    """
    if len(text) <= CHUNK and not LONG_RUN.search(text):
        spans = [(0, len(text))]
    else:
        spans = _pieces(text)
    tokens, offsets = [], []
    for start, end in spans:
        for tok in nlp.make_doc(text[start:end]):
            if tok.is_space:
                continue
            tokens.append(tok.text)
            offsets.append(start + tok.idx)
    return tokens, offsets


def bio_error(tags: list[str]) -> str | None:
    """Why `tags` is not a valid BIO sequence (strict: I-x must follow B-x or I-x), or None."""
    prev = "O"
    for i, tag in enumerate(tags):
        if not TAG_RE.match(tag):
            return f"invalid tag {tag!r} at token {i + 1} (expected O, B-<type> or I-<type>)"
        if tag.startswith("I-") and prev[2:] != tag[2:]:
            return f"invalid BIO sequence: {tag!r} at token {i + 1} follows {prev!r}"
        prev = tag
    return None


def bio_to_spans(tags: list[str]) -> list[tuple[int, int, str]]:
    """Chunks as (start, end_exclusive, type), conlleval semantics.

    An I-x that does not continue an x chunk starts a new chunk, as in conlleval and seqeval's
    default mode, so predicted sequences that are not valid BIO are still scored the standard way.
    """
    spans = []
    start, typ = None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, t = tag.partition("-")
        if prefix not in ("B", "I") or not t:
            prefix, t = "O", ""
        ends = typ is not None and (prefix in ("O", "B") or t != typ)
        if ends:
            spans.append((start, i, typ))
            start, typ = None, None
        if prefix == "B" or (prefix == "I" and typ is None):
            start, typ = i, t
    return spans


def spans_to_bio(n: int, spans: list[tuple[int, int, str]]) -> list[str]:
    tags = ["O"] * n
    for s, e, t in spans:
        tags[s] = f"B-{t}"
        for i in range(s + 1, e):
            tags[i] = f"I-{t}"
    return tags


def removable_stopwords(nlp, entity_words: set[str] | None = None) -> set[str]:
    """spaCy's stop words, minus words seen inside training entities ("the" in "the beatles")."""
    words = {w.lower() for w in nlp.Defaults.stop_words}
    if entity_words:
        words -= {w.lower() for w in entity_words}
    return words


def keep_positions(tokens: list[str], removable: set[str] | frozenset[str]) -> list[int]:
    """Indices of tokens kept after stop-word removal.

    A sentence made only of stop words is kept whole: an empty input would give the model
    nothing to classify.
    """
    if not removable:
        return list(range(len(tokens)))
    kept = [i for i, t in enumerate(tokens) if t.lower() not in removable]
    return kept if kept else list(range(len(tokens)))


def map_back(n: int, kept: list[int], kept_tags: list[str]) -> list[str]:
    """Tags for every original token: predictions at kept positions, O where a token was removed.

    A removed word inside a predicted entity splits it in two; the result is re-written as valid
    BIO (the second part starts with B-), which is how conlleval would read it anyway.
    """
    full = ["O"] * n
    for i, tag in zip(kept, kept_tags):
        full[i] = tag
    return spans_to_bio(n, bio_to_spans(full))


def normalize(token: str, lowercase: bool) -> str:
    return token.lower() if lowercase else token
