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
        spacy.util.get_lang_class(lang)
    except (ImportError, KeyError, ValueError) as e:
        raise TwinheadError(f"params: preprocess.lang={lang!r} is not a language spaCy knows ({e})") from e
    try:
        return spacy.blank(lang)
    except ImportError as e:
        # spaCy knows the language; its tokenizer needs a package that is not installed (ja: SudachiPy)
        raise TwinheadError(f"params: preprocess.lang={lang!r}: spaCy's tokenizer for it needs a package "
                            f"that is not installed: {e}") from e


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
    tokens, offsets = [], []
    # Most texts are shorter than MAX_RUN and cannot hold a long run: no regex search for them.
    whole = len(text) <= MAX_RUN or (len(text) <= CHUNK and not LONG_RUN.search(text))
    spans = [(0, len(text))] if whole else _pieces(text)
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


def char_spans(tokens: list[str], offsets: list[int], tags: list[str]) -> list[tuple[int, int, str]]:
    """BIO tags on tokens -> (start, end_exclusive, type) character spans in the text."""
    return [(offsets[s], offsets[e - 1] + len(tokens[e - 1]), t) for s, e, t in bio_to_spans(tags)]


def tags_for_spans(tokens: list[str], offsets: list[int], spans: list[tuple[int, int, str]]) -> list[str] | None:
    """BIO tags on tokens for character spans, or None if a span does not fall on token boundaries."""
    starts = {o: k for k, o in enumerate(offsets)}
    ends = {o + len(t): k for k, (o, t) in enumerate(zip(offsets, tokens))}
    if any(s not in starts or e not in ends for s, e, _ in spans):
        return None
    return spans_to_bio(len(tokens), [(starts[s], ends[e] + 1, t) for s, e, t in spans])


class TextPipeline:
    """The one way text becomes what the model reads, at training, evaluation and prediction time.

    Built from saved settings (processed/meta.json -> checkpoint -> bundle config.json), so the
    predictor applies exactly what preprocess applied: spaCy's tokenizer for `lang`, the stop-word
    rule learned from train, optional lowercasing. Pre-tokenized input (BIO files) goes through the
    same tokenizer: its tokens are joined by single spaces, as a user would type them, re-tokenized,
    and each tag follows its characters. spaCy never merges across a space, so every file token is
    one or more pipeline tokens and the gold spans survive exactly.
    """

    SETTINGS = ("lang", "lowercase", "removable_stopwords")

    def __init__(self, lang: str, lowercase: bool, removable_stopwords=()):
        self.lang = lang
        self.lowercase = lowercase
        self.removable = frozenset(removable_stopwords)
        self.nlp = get_nlp(lang)

    @classmethod
    def from_settings(cls, settings, where: str = "preprocess settings") -> TextPipeline:
        """From a saved settings dict; a missing or mistyped field is a TwinheadError naming it."""
        if not isinstance(settings, dict):
            raise TwinheadError(f"{where}: expected an object, got {type(settings).__name__}")
        missing = [k for k in cls.SETTINGS if k not in settings]
        if missing:
            raise TwinheadError(f"{where}: missing field(s) {', '.join(missing)}")
        lang, lowercase, removable = (settings[k] for k in cls.SETTINGS)
        if not isinstance(lang, str) or not lang:
            raise TwinheadError(f"{where}: field 'lang' must be a language code, got {lang!r}")
        if not isinstance(lowercase, bool):
            raise TwinheadError(f"{where}: field 'lowercase' must be true or false, got {lowercase!r}")
        if not isinstance(removable, list) or not all(isinstance(w, str) for w in removable):
            raise TwinheadError(f"{where}: field 'removable_stopwords' must be a list of strings")
        return cls(lang, lowercase, removable)

    def settings(self) -> dict:
        return {"lang": self.lang, "lowercase": self.lowercase, "removable_stopwords": sorted(self.removable)}

    def tokenize(self, text: str) -> tuple[list[str], list[int]]:
        return tokenize(self.nlp, text)

    def model_words(self, tokens: list[str]) -> tuple[list[int], list[str]]:
        """Positions kept after stop-word removal, and the (normalized) words the model reads there."""
        keep = keep_positions(tokens, self.removable)
        return keep, [normalize(tokens[i], self.lowercase) for i in keep]

    def from_tokens(self, tokens: list[str], tags: list[str]) -> tuple[str, list[str], list[int], list[str]]:
        """Pre-tokenized input -> (text, pipeline tokens, their offsets, tags on them)."""
        text = " ".join(tokens)
        starts, pos = [], 0
        for tok in tokens:
            starts.append(pos)
            pos += len(tok) + 1
        toks, offs = self.tokenize(text)
        new_tags = tags_for_spans(toks, offs, char_spans(tokens, starts, tags))
        if new_tags is None:  # cannot happen with spaCy (it never merges across a space); be loud if it does
            raise TwinheadError(f"tokenizer for {self.lang!r} merged tokens across a space in {text[:80]!r}")
        return text, toks, offs, new_tags
