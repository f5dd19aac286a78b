"""Property-based tests (hypothesis): generated malformed input at every reader and at prediction.

Every generated input must get either a correct result or one TwinheadError/DataError that names
the file and line (or the field): no exception from inside a library, no hang, no silently
misaligned tags. Inputs cover token/tag count mismatches, invalid BIO (I-x after O, B- with no
type), overlapping / out-of-range / reversed / empty spans and spans splitting a token, empty and
whitespace-only text, control characters, mixed scripts, emoji, 100k-character lines, a UTF-8 BOM,
CRLF line ends, invalid UTF-8, truncated JSON, 0-byte files and labels never seen in training.

The number of generated cases per property is written in pytest's terminal summary (and printed by
the last test, visible with -s). The regression tests at the end pin bugs these properties found.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import json
import math
import os
import re
import shutil
import signal
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from twinhead.errors import DataError, TwinheadError
from twinhead.readers import BIO_FILES, Example, read_bio_split, read_dataset, read_jsonl_split
from twinhead.text import bio_error, bio_to_spans, get_nlp, keep_positions, tokenize

NLP = get_nlp("en")
BOM = b"\xef\xbb\xbf"

# Generated cases: examples run per property, and the lines / texts / files they contained.
CASES: Counter[str] = Counter()
INPUTS: Counter[str] = Counter()
ENTITIES_SEEN: Counter[str] = Counter()  # entities the untrained model predicted (the check is not vacuous)
LONG_LINES: Counter[str] = Counter()  # 100k+ character lines generated


def tick(name: str, inputs: int = 1) -> None:
    CASES[name] += 1
    INPUTS[name] += inputs


# Shrinking a failure that holds 100k-character lines can take Hypothesis its full 5 minutes, so by
# default a failure is reported as generated (print_blob gives the reproduce_failure line); set
# TWINHEAD_PROP_SHRINK=1 to shrink it.
SHRINK = os.environ.get("TWINHEAD_PROP_SHRINK") == "1"
SCALE = float(os.environ.get("TWINHEAD_PROP_SCALE", "1"))  # e.g. 10 for a deeper (slower) search


def prop(n: int):
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if SHRINK else [])
    return settings(max_examples=max(1, round(n * SCALE)), deadline=None, database=None, print_blob=True,
                    phases=phases, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large, HealthCheck.large_base_example])


class _CaseReport:
    """Writes the case counts into pytest's terminal summary (shown with or without -s)."""

    def pytest_terminal_summary(self, terminalreporter):
        if not CASES:
            return
        terminalreporter.section("hypothesis cases generated (tests/test_properties.py)")
        for name in sorted(CASES):
            terminalreporter.write_line(f"{name:32s} {CASES[name]:6d} cases {INPUTS[name]:7d} inputs")
        terminalreporter.write_line(f"{'total':32s} {sum(CASES.values()):6d} cases "
                                    f"{sum(INPUTS.values()):7d} inputs")
        terminalreporter.write_line(f"(100k+ character lines: {LONG_LINES['generated']}; entities predicted by "
                                    f"the untrained model in test_predict: {ENTITIES_SEEN['predict']}, texts "
                                    f"with a multi-token entity: {ENTITIES_SEEN['multi-token']})")


@pytest.fixture(scope="module", autouse=True)
def _case_report(request):
    pm = request.config.pluginmanager
    if not pm.has_plugin("twinhead-property-cases"):
        pm.register(_CaseReport(), "twinhead-property-cases")
    yield


@contextlib.contextmanager
def scratch():
    """A fresh temp folder per generated example (tmp_path is per test, not per example)."""
    d = Path(tempfile.mkdtemp(prefix="twinhead-prop-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# --- strategies ---------------------------------------------------------------------------------

LATIN = "abcdefghijklmnopqrstuvwxyzABCXYZàéßøñ"
CYRILLIC = "абвгдеёжзийклмнопрстуфхцчшщъыьэюяЖЩЯ"
CJK = "中文字東京語日本人漢音楽"
ARABIC = "العربيةكتابمرحب"
EMOJI = ["😀", "🎵", "👍🏽", "🇫🇷", "👩‍💻", "❤️", "🙂"]  # incl. modifier, flag, ZWJ and VS16 sequences
CONTROL = ["\x00", "\x01", "\x07", "\x08", "\x0e", "\x1b", "\x7f", "\x80", "\x9f",  # C0/C1 controls
           "\u200b", "\u200d", "\u200e", "\u202e", "\u0301"]  # zero-width, bidi, combining mark
PUNCT = ".,!?;:'\"()[]-/&@#%$€0123456789"


def _word_char(c: str) -> bool:
    # Whitespace separates tokens; U+FEFF at the start of a file *is* the BOM (tested on its own).
    return not c.isspace() and c != "\ufeff"


UNIT = st.one_of(
    st.sampled_from(LATIN), st.sampled_from(CYRILLIC), st.sampled_from(CJK), st.sampled_from(ARABIC),
    st.sampled_from(EMOJI), st.sampled_from(CONTROL), st.sampled_from(PUNCT),
    st.characters(codec="utf-8").filter(_word_char),
)
SHORT_WORD = st.lists(UNIT, min_size=1, max_size=6).map("".join)
# ~1 word in 40 is a whitespace-free run of 40-900 characters (spaCy is quadratic in those: they are
# tokenized in pieces, which must keep tokens, offsets and spans aligned)
LONG_WORD = st.tuples(SHORT_WORD, st.integers(40, 150)).map(lambda t: t[0] * t[1])
WORD = st.integers(1, 40).flatmap(lambda k: LONG_WORD if k == 20 else SHORT_WORD)
KNOWN = st.sampled_from(["play", "Beatles", "PARIS", "the", "7", "am", "москва", "音乐", "😀"])
SEP = st.sampled_from([" ", " ", " ", "  ", "\t", " \t ", "\u3000", "\xa0", "\u2009", "\x0b", "\x0c", "\x1c",
                       "\x85", "\u2028", "\r"])
EDGE = st.sampled_from(["", "", "", " ", "\t", "  \u3000", "\xa0 "])
BLANK = st.lists(st.sampled_from([" ", "\t", "\u3000", "\xa0", "\x0b", "\x0c", "\x1c", "\x85", "\u2028"]),
                 max_size=4).map("".join)
TYPE = st.sampled_from(["loc", "time", "artist", "x-y", "Ω", "日付", "B-x", "😀"])
INTENT = st.one_of(st.sampled_from(["PlayMusic", "GetWeather", "NeverSeenIntent"]), WORD)
# Rare draws are mid-range values: Hypothesis favours the ends of an integer range.
LONG = st.integers(1, 50).map(lambda k: k == 25)  # ~1 text in 50 at prediction has 100k+ characters
LONG_CHARS = 100_000
NEWLINE = st.sampled_from(["\n", "\r\n"])
JUNK = st.sampled_from([b"\xff", b"\xfe", b"\xc3", b"\xe2\x82", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80",
                        b"\xf4\x90\x80\x80"])  # every one invalid UTF-8 whatever follows at a char boundary


def long_row(n: int):
    """Which of n lines (if any) is 100k+ characters long: about one file in 15 has one."""
    return st.integers(0, 15 * n - 1).map(lambda k: k - 7 * n if 7 * n <= k < 8 * n else None)


@st.composite
def bio_tags(draw, n: int) -> list[str]:
    """A valid BIO sequence of n tags."""
    tags: list[str] = []
    while len(tags) < n:
        if draw(st.integers(0, 2)) == 0:
            t = draw(TYPE)
            length = draw(st.integers(1, min(3, n - len(tags))))
            tags += [f"B-{t}"] + [f"I-{t}"] * (length - 1)
        else:
            tags.append("O")
    return tags


@st.composite
def tagged(draw, long: bool | None = None) -> tuple[list[str], list[str], bool]:
    """Words, their valid BIO tags, and whether the sentence was stretched past 100k characters
    (long=None: drawn from LONG)."""
    words = draw(st.lists(st.one_of(WORD, KNOWN), min_size=1, max_size=10))
    tags = draw(bio_tags(len(words)))
    long = draw(LONG) if long is None else long
    if long:  # a sequence starts with O or B-, so repeating it keeps it valid BIO
        LONG_LINES["generated"] += 1
        reps = LONG_CHARS // len(" ".join(words)) + 1
        words, tags = words * reps, tags * reps
    return words, tags, long


def join(draw, items: list[str], plain: bool = False) -> tuple[str, list[int]]:
    """items joined by generated whitespace (plain: one space), and the offset of each item."""
    if plain:
        starts, pos = [], 0
        for it in items:
            starts.append(pos)
            pos += len(it) + 1
        return " ".join(items), starts
    parts, starts = [draw(EDGE)], []
    pos = len(parts[0])
    for i, it in enumerate(items):
        if i:
            parts.append(draw(SEP))
            pos += len(parts[-1])
        starts.append(pos)
        parts.append(it)
        pos += len(it)
    parts.append(draw(EDGE))
    return "".join(parts), starts


def encode_file(lines: list[str], newline: str, bom: bool, trailing: bool,
                junk: tuple[int, int, bytes] | None = None) -> bytes:
    """File bytes; junk = (1-based line, char position, bytes) inserts invalid UTF-8 there."""
    parts = []
    for k, line in enumerate(lines, start=1):
        if junk and junk[0] == k:
            cut = min(junk[1], len(line))
            parts.append(line[:cut].encode("utf-8") + junk[2] + line[cut:].encode("utf-8"))
        else:
            parts.append(line.encode("utf-8"))
    data = newline.encode().join(parts)
    if trailing or (lines and lines[-1] == ""):  # a last empty line needs its newline to exist
        data += newline.encode()
    return (BOM if bom else b"") + data


# --- checks shared by the properties ------------------------------------------------------------


def check_alignment(text: str, tokens: list[str], offsets: list[int]) -> None:
    """Tokens sit at their offsets, in order, and between them lies only whitespace: nothing dropped."""
    assert len(tokens) == len(offsets)
    pos = 0
    for tok, off in zip(tokens, offsets):
        assert tok and not tok.isspace(), tokens
        assert off >= pos and text[off: off + len(tok)] == tok, (off, tok)
        assert text[pos:off] == "" or text[pos:off].isspace(), text[pos:off]
        pos = off + len(tok)
    assert text[pos:] == "" or text[pos:].isspace()


def char_spans(tokens: list[str], offsets: list[int], tags: list[str]) -> set[tuple[int, int, str]]:
    return {(offsets[s], offsets[e - 1] + len(tokens[e - 1]), t) for s, e, t in bio_to_spans(tags)}


def check_example(ex: Example) -> None:
    assert len(ex.tokens) == len(ex.tags) > 0
    assert bio_error(ex.tags) is None, ex.tags
    assert ex.intent and len(ex.intent.split()) == 1
    if ex.text is not None:
        check_alignment(ex.text, ex.tokens, ex.offsets)


def assert_located(err: Exception, path: Path | str, line: int | None = None, fragment: str | None = None):
    msg = str(err)
    assert "Traceback" not in msg and "\n" not in msg, msg
    if line is None:
        assert str(path) in msg, (msg, path)
    else:
        assert f"{path}:{line}: " in msg, (msg, path, line)
        if isinstance(err, DataError):
            assert err.line == line
    if fragment:
        assert fragment in msg, (msg, fragment)


# --- BIO folder reader --------------------------------------------------------------------------

BIO_BAD = ["count_fewer", "count_more", "i_after_o", "b_no_type", "bad_tag", "empty_sentence", "label_blank",
           "label_two_words"]
BAD_TAGS = ["X", "b-loc", "B_loc", "I-", "B-", "-loc", "O-x", "BI-x", "o", "B", "I"]


@st.composite
def bio_split(draw, allow_bad: bool, allow_long: bool = True):
    """Sentences of a BIO split, each maybe corrupted (kind), plus file options."""
    n = draw(st.integers(1, 6))
    long_at = draw(long_row(n)) if allow_long else None
    rows = []  # (words, tags, intent, kind | None, files' lines)
    for i in range(n):
        words, tags, long = draw(tagged(long=i == long_at))
        intent = draw(INTENT)
        kind = draw(st.sampled_from(BIO_BAD)) if allow_bad and draw(st.integers(0, 2)) == 0 else None
        out = list(tags)
        in_line, _ = join(draw, words, plain=long)
        label_line = draw(EDGE) + intent + draw(EDGE)
        j = draw(st.integers(0, len(out) - 1))
        if kind == "count_fewer":
            del out[j]
        elif kind == "count_more":
            out.insert(j, "O")
        elif kind == "i_after_o":
            out[j] = "I-zz"  # type zz appears nowhere else, so it never continues a chunk
        elif kind == "b_no_type":
            out[j] = draw(st.sampled_from(["B-", "I-"]))
        elif kind == "bad_tag":
            out[j] = draw(st.sampled_from(BAD_TAGS))
        elif kind == "empty_sentence":
            in_line = draw(BLANK)
        elif kind == "label_blank":
            label_line = draw(BLANK)
        elif kind == "label_two_words":
            label_line = intent + draw(SEP.filter(lambda s: s != "\r")) + draw(WORD)
        out_line = " ".join(out) if long else join(draw, out)[0]
        rows.append((words, tags, intent.strip(), kind, {"seq.in": in_line, "seq.out": out_line,
                                                         "label": label_line}))
    opts = {name: (draw(st.booleans()), draw(NEWLINE), draw(st.booleans())) for name in BIO_FILES}
    return rows, opts


BIO_BAD_FILE = {"count_fewer": "seq.out", "count_more": "seq.out", "i_after_o": "seq.out", "b_no_type": "seq.out",
                "bad_tag": "seq.out", "empty_sentence": "seq.in", "label_blank": "label", "label_two_words": "label"}


@prop(150)
@given(split=bio_split(allow_bad=True), on_error=st.sampled_from(["raise", "skip"]),
       junk=st.none() | st.tuples(st.sampled_from(BIO_FILES), st.integers(1, 6), st.integers(0, 50), JUNK))
def test_bio_reader(split, on_error, junk):
    """read_bio_split: exact tokens/tags for good lines; each bad line named by file and line."""
    rows, opts = split
    tick("bio_reader", 3 * len(rows))
    with scratch() as d:
        folder = d / "train"
        folder.mkdir()
        raws = {}
        for name in BIO_FILES:
            bom, newline, trailing = opts[name]
            lines = [r[4][name] for r in rows]
            j = None
            if junk and junk[0] == name:
                j = (min(junk[1], len(lines)), junk[2], junk[3])
            raws[name] = (encode_file(lines, newline, bom, trailing, j), j)
            (folder / name).write_bytes(raws[name][0])
        try:
            exs, report = read_bio_split(folder, on_error)
        except TwinheadError as e:
            err = e
        else:
            err = None

        # What must happen, in the reader's order: file-level problems first.
        for name in BIO_FILES:
            data, j = raws[name]
            if j:
                assert isinstance(err, DataError)
                return assert_located(err, folder / name, j[0], "invalid UTF-8")
            if not data.strip():
                assert isinstance(err, DataError)
                return assert_located(err, folder / name, None, "file is empty")
        bad = [(k, r[3]) for k, r in enumerate(rows, start=1) if r[3]]
        if bad and on_error == "raise":
            k, kind = bad[0]
            assert isinstance(err, DataError), (bad, err)
            return assert_located(err, folder / BIO_BAD_FILE[kind], k)
        assert err is None, err
        good = [(k, r) for k, r in enumerate(rows, start=1) if not r[3]]
        assert [(ex.tokens, ex.tags, ex.intent) for ex in exs] == [(r[0], r[1], r[2]) for _, r in good]
        assert [ex.source for ex in exs] == [f"{folder / 'seq.in'}:{k}" for k, _ in good]
        assert len(exs) + len(report.skipped) == len(rows)
        for msg, (k, kind) in zip(report.skipped, bad, strict=True):
            assert f"{folder / BIO_BAD_FILE[kind]}:{k}: " in msg
        for ex in exs:
            check_example(ex)


@prop(60)
@given(split=bio_split(allow_bad=False),
       damage=st.sampled_from(["zero_bytes", "whitespace_bytes", "bom_only", "missing", "extra_line",
                               "missing_line"]),
       target=st.sampled_from(BIO_FILES), on_error=st.sampled_from(["raise", "skip"]))
def test_bio_reader_file_level(split, damage, target, on_error):
    """0-byte, whitespace-only, BOM-only, missing files and line-count mismatches name the file/folder."""
    rows, opts = split
    tick("bio_reader_file_level", 3)
    with scratch() as d:
        folder = d / "dev"
        folder.mkdir()
        for name in BIO_FILES:
            bom, newline, trailing = opts[name]
            lines = [r[4][name] for r in rows]
            if name == target and damage == "extra_line":
                lines.append("O" if name == "seq.out" else "x")
            if name == target and damage == "missing_line":
                lines.pop()
            data = encode_file(lines, newline, bom, trailing) if lines else b""
            data = {"zero_bytes": b"", "whitespace_bytes": b" \r\n\t\n\n", "bom_only": BOM}.get(
                damage if name == target else "", data)
            if not (name == target and damage == "missing"):
                (folder / name).write_bytes(data)
        with pytest.raises(DataError) as ei:
            read_bio_split(folder, on_error)
        data_now = (folder / target).read_bytes() if (folder / target).exists() else b""
        if not data_now.strip():  # 0-byte, whitespace-only or missing: the error names that file
            assert_located(ei.value, folder / target)
        else:  # the counts differ: the error names the folder and all three counts
            assert_located(ei.value, folder, None, "line counts differ")


# --- JSONL reader -------------------------------------------------------------------------------

JSONL_BAD = ["truncated", "not_object", "bom_mid", "raw_control", "text_missing", "text_type", "text_blank",
             "label_bad", "entities_type", "entity_not_object", "entity_int_type", "entity_label_bad",
             "span_out_of_range", "span_reversed", "span_empty", "span_splits_token", "overlap"]


@st.composite
def jsonl_record(draw, long: bool = False) -> dict:
    """A valid record; `_spans` holds the expected character spans of its entities."""
    words, tags, long = draw(tagged(long=long))
    text, starts = join(draw, words, plain=long)
    spans = [(starts[s], starts[e - 1] + len(words[e - 1]), t) for s, e, t in bio_to_spans(tags)]
    ents = [{"start": s, "end": e, "label": t} for s, e, t in spans]
    ents = draw(st.permutations(ents)) if len(ents) < 8 else ents
    rec = {"text": text, "label": draw(EDGE) + draw(INTENT) + draw(EDGE)}
    if ents or draw(st.booleans()):
        rec["entities"] = ents
    rec.update(draw(st.sampled_from([{}, {"id": 7}, {"meta": {"source": "gen", "n": [1, 2]}}])))
    rec["_spans"] = set(spans)
    return rec


def dumps(rec: dict, ascii_: bool) -> str:
    return json.dumps({k: v for k, v in rec.items() if k != "_spans"}, ensure_ascii=ascii_)


@st.composite
def jsonl_bad_line(draw, rec: dict, kind: str, first_of_file: bool, bom: bool) -> tuple[str, str]:
    """A corrupted line made from `rec`, and a fragment the error must contain."""
    ascii_ = draw(st.booleans())
    text = rec["text"]
    ents = list(rec.get("entities", []))
    j = draw(st.integers(0, len(ents)))
    where = f"entities[{j}]"

    def with_entity(bad) -> str:
        return dumps({**rec, "entities": ents[:j] + [bad] + ents[j:]}, ascii_)

    if kind == "bom_mid" and first_of_file and not bom:
        kind = "truncated"  # U+FEFF opening a file is its BOM, not data
    if kind == "span_splits_token":
        toks, offs = tokenize(NLP, text)
        inner = [(o, t) for o, t in zip(offs, toks) if len(t) >= 2]
        if not inner:
            kind = "span_out_of_range"
    if kind == "truncated":
        line = dumps(rec, ascii_)
        return line[: draw(st.integers(1, len(line) - 1))], "bad JSON"
    if kind == "not_object":
        return draw(st.sampled_from(["[1, 2]", "null", "42", '"text"', "true", "[]"])), "expected a JSON object"
    if kind == "bom_mid":
        return "\ufeff" + dumps(rec, ascii_), "bad JSON"
    if kind == "raw_control":
        return dumps({**rec, "text": text + "\x01"}, ascii_).replace("\\u0001", "\x01"), "bad JSON"
    if kind == "text_missing":
        return dumps({k: v for k, v in rec.items() if k != "text"}, ascii_), "'text'"
    if kind == "text_type":
        return dumps({**rec, "text": draw(st.sampled_from([None, 5, 1.5, ["a"], {"a": 1}, True]))}, ascii_), "'text'"
    if kind == "text_blank":
        return dumps({**rec, "text": draw(BLANK), "entities": []}, ascii_), "'text'"
    if kind == "label_bad":
        bad = draw(st.sampled_from([None, "", "  ", "two words", "a\tb", 3, ["x"], "MISSING"]))
        obj = {k: v for k, v in rec.items() if k != "label"}
        if bad != "MISSING":
            obj["label"] = bad
        return dumps(obj, ascii_), "'label'"
    if kind == "entities_type":
        return dumps({**rec, "entities": draw(st.sampled_from([{}, "x", 3, None, {"start": 0}]))}, ascii_), \
            "'entities'"
    if kind == "entity_not_object":
        return with_entity(draw(st.sampled_from(["x", 3, [0, 1], None]))), where
    if kind == "entity_int_type":
        bad = draw(st.sampled_from([{"start": 0.0, "end": 1}, {"start": "0", "end": 1}, {"start": True, "end": 1},
                                    {"start": 0, "end": None}, {"start": 0}, {"end": 1}, {"start": 0, "end": 1e400},
                                    {"start": 0, "end": False}]))
        return with_entity({**bad, "label": "loc"}), where
    if kind == "entity_label_bad":
        bad = {"start": 0, "end": 1}
        lab = draw(st.sampled_from([None, "", "a b", 5, "x\ty", "MISSING", "x\u3000"]))
        if lab != "MISSING":
            bad["label"] = lab
        return with_entity(bad), where
    if kind == "span_out_of_range":
        n = len(text)
        s, e = draw(st.sampled_from([(-1, 1), (0, n + 1), (n, n + 3), (-5, -1), (n + 1, n + 2)]))
        return with_entity({"start": s, "end": e, "label": "loc"}), where
    if kind in ("span_reversed", "span_empty"):
        toks, offs = tokenize(NLP, text)
        k = draw(st.integers(0, len(toks) - 1))
        s, e = offs[k], offs[k] + len(toks[k])
        bad = {"start": e, "end": s} if kind == "span_reversed" else {"start": s, "end": s}
        return with_entity({**bad, "label": "loc"}), where
    if kind == "span_splits_token":
        o, t = draw(st.sampled_from(inner))
        p = o + draw(st.integers(1, len(t) - 1))
        s, e = draw(st.sampled_from([(p, o + len(t)), (o, p)]))
        return with_entity({"start": s, "end": e, "label": "loc"}), where
    assert kind == "overlap"
    if ents:
        dup = {**draw(st.sampled_from(ents)), "label": "other"}
    else:
        toks, offs = tokenize(NLP, text)
        dup = {"start": offs[0], "end": offs[0] + len(toks[0]), "label": "a"}
        ents = [dict(dup)]
        j = draw(st.integers(0, 1))
    return with_entity(dup), "overlap"


@st.composite
def jsonl_file(draw, allow_bad: bool = True, allow_long: bool = True):
    """Entries (kind, line, payload) of a JSONL file and its options."""
    bom, newline, trailing = draw(st.booleans()), draw(NEWLINE), draw(st.booleans())
    entries = []
    n = draw(st.integers(1, 8))
    long_at = draw(long_row(n)) if allow_long else None
    for i in range(n):
        roll = draw(st.integers(0, 9))
        if roll < 2:
            entries.append(("blank", draw(BLANK), None))
            continue
        rec = draw(jsonl_record(long=i == long_at))
        if allow_bad and roll < 5:
            kind = draw(st.sampled_from(JSONL_BAD))
            line, fragment = draw(jsonl_bad_line(rec, kind, i == 0, bom))
            entries.append(("bad", line, fragment))
        else:
            entries.append(("good", dumps(rec, draw(st.booleans())), rec))
    return entries, bom, newline, trailing


@prop(200)
@given(f=jsonl_file(), on_error=st.sampled_from(["raise", "skip"]),
       junk=st.none() | st.tuples(st.integers(1, 8), st.integers(0, 200), JUNK))
def test_jsonl_reader(f, on_error, junk):
    """read_jsonl_split: spans map to exactly their tokens; each bad line named by file, line and field."""
    entries, bom, newline, trailing = f
    tick("jsonl_reader", len(entries))
    lines = [line for _, line, _ in entries]
    if junk:
        junk = (min(junk[0], len(lines)), junk[1], junk[2])
    with scratch() as d:
        path = d / "train.jsonl"
        data = encode_file(lines, newline, bom, trailing, junk)
        path.write_bytes(data)
        try:
            exs, report = read_jsonl_split(path, "en", on_error)
        except TwinheadError as e:
            err = e
        else:
            err = None
        if junk:
            assert isinstance(err, DataError), err
            return assert_located(err, path, junk[0], "invalid UTF-8")
        if not data.strip():
            assert isinstance(err, DataError), err
            return assert_located(err, path, None, "file is empty")
        numbered = list(enumerate(entries, start=1))
        bad = [(k, frag) for k, (kind, _, frag) in numbered if kind == "bad"]
        good = [(k, rec) for k, (kind, _, rec) in numbered if kind == "good"]
        if bad and on_error == "raise":
            assert isinstance(err, DataError), (bad, err)
            return assert_located(err, path, bad[0][0], bad[0][1])
        if not good and not bad:
            assert isinstance(err, DataError), err
            return assert_located(err, path, None, "no examples")
        assert err is None, err
        assert [ex.source for ex in exs] == [f"{path}:{k}" for k, _ in good]
        for msg, (k, frag) in zip(report.skipped, bad, strict=True):
            assert f"{path}:{k}: " in msg and frag in msg, (msg, k, frag)
        non_blank = sum(1 for kind, _, _ in entries if kind != "blank")
        assert len(exs) + len(report.skipped) == non_blank
        for ex, (_, rec) in zip(exs, good):
            check_example(ex)
            assert ex.text == rec["text"] and ex.intent == rec["label"].strip()
            # every gold span maps to exactly the tokens whose characters it covers
            assert char_spans(ex.tokens, ex.offsets, ex.tags) == rec["_spans"]
            for s, e, _ in rec["_spans"]:
                inside = ex.tokens[bisect.bisect_left(ex.offsets, s): bisect.bisect_left(ex.offsets, e)]
                assert "".join(inside) == "".join(rec["text"][s:e].split())


@prop(40)
@given(content=st.sampled_from([b"", b"\n", b"\r\n\r\n", b" \t\n", BOM, BOM + b"\n", BOM + b"\r\n  \n",
                                "\u3000\n\xa0\n".encode(), b"{", b'{"text": "a", "label": "x"',
                                b'{"text": "a", "label"', b"\xff\xfe{\x00"]),
       on_error=st.sampled_from(["raise", "skip"]))
def test_jsonl_reader_file_level(content, on_error):
    """0-byte, blank-only, BOM-only and truncated files: one DataError naming the file (and line)."""
    tick("jsonl_reader_file_level")
    with scratch() as d:
        path = d / "test.jsonl"
        path.write_bytes(content)
        try:
            exs, report = read_jsonl_split(path, "en", on_error)
        except DataError as e:
            assert_located(e, path)
            if content.startswith(b"{") and on_error == "raise":
                assert_located(e, path, 1, "bad JSON")
        else:
            assert on_error == "skip" and not exs and len(report.skipped) == 1
            assert f"{path}:1: bad JSON" in report.skipped[0]


# --- read_dataset -------------------------------------------------------------------------------


@prop(60)
@given(data=st.data())
def test_read_dataset(data):
    """read_dataset: success with aligned examples, or one error naming the dataset, a file or a param."""
    draw = data.draw
    fmt = draw(st.sampled_from(["bio", "jsonl"]))
    fmt_arg = draw(st.sampled_from(["auto", "auto", fmt, "bio" if fmt == "jsonl" else "jsonl", "xml"]))
    on_error = draw(st.sampled_from(["raise", "raise", "skip", "ignore"]))
    dev_fraction = draw(st.sampled_from([0.1, 0.5, 0.0, 1.0]))
    drop = draw(st.sampled_from([None, None, None, "dev", "train", "test"]))
    tick("read_dataset", 3)
    with scratch() as d:
        root = d / "ds"
        root.mkdir()
        counts, bad, any_bad = {}, {"dev": 0}, False
        for split in ("train", "dev", "test"):
            if drop == split:
                continue
            if fmt == "bio":
                rows, opts = draw(bio_split(allow_bad=draw(st.booleans()), allow_long=False))
                (root / split).mkdir()
                for name in BIO_FILES:
                    bom, newline, trailing = opts[name]
                    (root / split / name).write_bytes(encode_file([r[4][name] for r in rows], newline, bom,
                                                                  trailing))
                counts[split] = sum(1 for r in rows if not r[3])
                bad[split] = len(rows) - counts[split]
                any_bad |= bad[split] > 0
            else:
                entries, bom, newline, trailing = draw(jsonl_file(allow_bad=draw(st.booleans()), allow_long=False))
                (root / f"{split}.jsonl").write_bytes(encode_file([e[1] for e in entries], newline, bom, trailing))
                counts[split] = sum(1 for e in entries if e[0] == "good")
                bad[split] = sum(1 for e in entries if e[0] == "bad")
                any_bad |= bad[split] > 0
        try:
            splits, reports = read_dataset(root, fmt_arg, "en", on_error, dev_fraction, seed=3)
        except DataError as e:
            assert str(root) in str(e), str(e)  # the dataset folder or a file under it
            assert "\n" not in str(e)
            if fmt_arg != "xml" and on_error != "ignore" and drop is None and not any_bad and fmt_arg in ("auto", fmt):
                assert min(counts.values()) == 0, str(e)  # only an empty split may fail a clean dataset
            return
        except TwinheadError as e:
            assert re.search(r"data\.(format|on_error|dev_fraction)", str(e)), str(e)
            return
        assert fmt_arg in ("auto", fmt) and on_error in ("raise", "skip")
        assert set(splits) == {"train", "dev", "test"}
        for split, exs in splits.items():
            assert exs, split
            for ex in exs:
                check_example(ex)
        if on_error == "raise":
            assert not any_bad
        if fmt == "jsonl" and drop == "dev":  # dev is held out of train, without loss or overlap
            assert len(splits["train"]) + len(splits["dev"]) == counts["train"]
            assert not {ex.source for ex in splits["train"]} & {ex.source for ex in splits["dev"]}
        else:
            assert {s: len(v) for s, v in splits.items()} == counts
        assert {s: len(r.skipped) for s, r in reports.items()} == bad  # each bad line skipped and counted


# --- prediction ---------------------------------------------------------------------------------

REMOVABLE = ["a", "by", "now", "on", "the"]
PREPROCESS = {"lang": "en", "lowercase": True, "remove_stopwords": True, "removable_stopwords": REMOVABLE}
MAX_LEN = 16


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A tiny untrained bundle; the tag head is scaled and biased so that it predicts entities, many of
    several tokens (I- tags), often."""
    import torch

    from twinhead.checkpoint import save_checkpoint
    from twinhead.export import export_bundle
    from twinhead.model import JointModel, ModelConfig
    from twinhead.vocab import build_vocabs

    d = tmp_path_factory.mktemp("prop-bundle")
    words = [["play", "beatles", "spotify"], ["wake", "7", "am"], ["rain", "paris", "tomorrow"],
             ["book", "table", "москва"], ["播放", "音乐", "😀"]]
    tags = [["O", "B-artist", "B-service"], ["O", "B-time", "I-time"], ["O", "B-city", "B-date"],
            ["O", "B-city", "I-city"], ["O", "O", "B-emoji"]]
    vocabs = build_vocabs(words, ["PlayMusic", "SetAlarm", "GetWeather", "Book", "PlayMusic"], tags)
    torch.manual_seed(0)
    cfg = ModelConfig(word_dim=8, char_dim=4, char_filters=4, hidden_size=8, num_layers=1, max_len=MAX_LEN,
                      dropout=0.0)
    model = JointModel(cfg, len(vocabs.words), len(vocabs.chars), vocabs.tags.itos, len(vocabs.intents))
    with torch.no_grad():
        model.tag_head.proj.weight.mul_(6.0)
        model.tag_head.proj.bias.zero_()
        for tag in ("I-time", "I-city"):
            model.tag_head.proj.bias[vocabs.tags.stoi[tag]] = 4.0
    save_checkpoint(d / "model.pt", model.eval(), vocabs, PREPROCESS, {"best_epoch": 0})
    export_bundle(d / "model.pt", d / "bundle")
    return d / "bundle"


@pytest.fixture(scope="module")
def predictor(bundle):
    from twinhead.predictor import Predictor

    return Predictor(bundle)


@st.composite
def raw_text(draw) -> str:
    words, _, long = draw(tagged())
    return join(draw, words, plain=long)[0]


def check_prediction(pred: dict, text: str, predictor) -> None:
    toks, offs = tokenize(NLP, text)
    assert pred["text"] == text and pred["tokens"] == toks
    assert len(pred["tags"]) == len(toks), (len(pred["tags"]), len(toks))  # one tag per token
    assert bio_error(pred["tags"]) is None, pred["tags"]  # valid BIO, also around removed stop words
    assert set(pred["tags"]) <= set(predictor.vocabs.tags.itos)
    assert pred["intent"] in predictor.vocabs.intents.itos
    assert math.isfinite(pred["probability"]) and 0.0 <= pred["probability"] <= 1.0
    # top_intents: most probable first, led by the intent predicted, probabilities of a distribution
    top = pred["top_intents"]
    assert 1 <= len(top) <= 3 and top[0] == {"intent": pred["intent"], "probability": pred["probability"]}
    probs = [t["probability"] for t in top]
    assert probs == sorted(probs, reverse=True) and all(0.0 <= q <= 1.0 for q in probs) and sum(probs) <= 1 + 1e-6
    assert len({t["intent"] for t in top}) == len(top)
    for ent in pred["entities"]:
        assert 0.0 < ent["confidence"] <= 1.0 + 1e-9
    got = [(e["start"], e["end"], e["label"]) for e in pred["entities"]]
    assert sorted(got) == sorted(char_spans(toks, offs, pred["tags"])) and len(set(got)) == len(got)
    for ent in pred["entities"]:
        assert 0 <= ent["start"] < ent["end"] <= len(text)
        assert text[ent["start"]: ent["end"]] == ent["text"] and ent["text"] == ent["text"].strip()
    json.dumps(pred, ensure_ascii=False).encode("utf-8")  # writable as a JSONL line


MIXED_100K = ("Play the Beatles\u00a0on Spotify, москва 中文字 العربية 😀👩\u200d💻 "
              "x\x01y \u202eevil\u202c\t" * 1700)[:100_001]  # mixed scripts, emoji, controls, bidi


@prop(60)
@example(texts=[MIXED_100K, "unseen wordz qqq", "🇫🇷"], batch_size=256)
@given(texts=st.lists(raw_text(), min_size=1, max_size=5), batch_size=st.sampled_from([1, 2, 256]))
def test_predict(predictor, texts, batch_size):
    """Predictor.predict: one tag per token, entities at their character offsets, probability in [0, 1]."""
    tick("predict", len(texts))
    if any(len(t) > 10_000 for t in texts):
        batch_size = 256  # batches of 1 over 100k characters (~6k windows) cost ~10 s
    seen = []
    preds = predictor.predict(texts, batch_size, progress=seen.append)
    assert len(preds) == len(texts) and sum(seen) >= len(texts)
    for text, pred in zip(texts, preds):
        check_prediction(pred, text, predictor)
        ENTITIES_SEEN["predict"] += len(pred["entities"])
        ENTITIES_SEEN["multi-token"] += sum(t.startswith("I-") for t in pred["tags"]) > 0


@prop(40)
@given(words=st.lists(st.one_of(WORD, KNOWN), min_size=MAX_LEN + 1, max_size=8 * MAX_LEN))
def test_predict_longer_than_max_len(predictor, words):
    """Texts longer than model.max_len tokens are windowed (the bundle's policy): one tag per token."""
    tick("predict_longer_than_max_len")
    text = " ".join(words)
    toks, _ = tokenize(NLP, text)
    over = len(keep_positions(toks, predictor.text.removable)) > MAX_LEN
    before = predictor.stats.windowed
    (pred,) = predictor.predict([text])
    check_prediction(pred, text, predictor)
    assert predictor.stats.windowed == before + over
    assert predictor.stats.truncated == 0


@prop(30)
@example(lengths=[40, 3])  # a truncated text, then a short one: the second call must not warn
@given(lengths=st.lists(st.integers(1, 3 * MAX_LEN), min_size=1, max_size=4))
def test_predict_truncate_policy(bundle, lengths):
    """Policy 'truncate': one tag per token, O past max_len, and a warning for (only) the calls that cut."""
    from twinhead.predictor import Predictor

    tick("predict_truncate_policy", len(lengths))
    predictor = Predictor(bundle)
    predictor.model.cfg.overlong = "truncate"
    for n in lengths:
        text = " ".join(f"w{i}" for i in range(n))  # unseen words, no stop words: n model words
        before = predictor.stats.truncated
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            (pred,) = predictor.predict([text])
        check_prediction(pred, text, predictor)
        assert all(t == "O" for t in pred["tags"][MAX_LEN:])
        assert predictor.stats.truncated == before + (n > MAX_LEN)
        said = [str(w.message) for w in caught if "truncated" in str(w.message)]
        assert len(said) == (n > MAX_LEN), (n, said)
        assert all(m.startswith("1 input(s)") for m in said), said


@prop(60)
@given(texts=st.lists(raw_text(), max_size=4), bad=st.one_of(BLANK, st.sampled_from([None, 3, b"bytes"])),
       tail=st.lists(st.one_of(raw_text(), BLANK), max_size=3),
       where=st.sampled_from(["input", "argument", "/data/in put.txt"]))
def test_predict_blank_text_names_position(predictor, texts, bad, tail, where):
    """An empty/whitespace-only (or non-string) text is a DataError naming its 1-based position."""
    tick("predict_blank_text", len(texts) + 1 + len(tail))
    n = len(texts) + 1
    with pytest.raises(DataError) as ei:
        predictor.predict(texts + [bad] + tail, where=where)
    assert_located(ei.value, where, n, "string" if not isinstance(bad, str) else "empty")


# --- CLI ----------------------------------------------------------------------------------------


@st.composite
def cli_input(draw):
    suffix = draw(st.sampled_from([".txt", ".txt", ".jsonl"]))
    texts = draw(st.lists(st.one_of(raw_text(), raw_text(), raw_text(), BLANK), min_size=1, max_size=6))
    lines, json_bad = [], []
    for k, t in enumerate(texts, start=1):
        if suffix == ".jsonl":
            line = json.dumps({"text": t, "id": k}, ensure_ascii=draw(st.booleans()))
            if draw(st.integers(0, 7)) == 0:
                line = line[: draw(st.integers(0, len(line) - 1))]  # truncated JSON (or an empty line)
                json_bad.append(k)
            lines.append(line)
        else:
            lines.append(t)
    bom, newline, trailing = draw(st.booleans()), draw(NEWLINE), draw(st.booleans())
    junk = draw(st.none() | st.tuples(st.integers(1, len(lines)), st.integers(0, 50), JUNK))
    return suffix, texts, lines, json_bad, bom, newline, trailing, junk


def first_cli_problem(suffix, texts, lines, json_bad, junk) -> tuple[int | None, str] | None:
    """The error `twinhead predict --input` must report: the first bad line (it streams, so it stops there),
    or the whole file when it holds no text at all. Blank lines are skipped in JSONL and an error in a
    text file, except that a file of blank lines only has no texts."""
    first_blank, seen = None, False
    for k, line in enumerate(lines, start=1):
        if junk and junk[0] == k:
            return k, "invalid UTF-8"
        if suffix == ".jsonl":
            if not line.strip():
                continue
            if k in json_bad:
                return k, "bad JSON"
            seen = True
            if not tokenize(NLP, texts[k - 1])[0]:
                return k, "empty"
        elif tokenize(NLP, line)[0]:
            if first_blank is not None:
                return first_blank, "empty"
            seen = True
        elif seen:
            return k, "empty"
        elif first_blank is None:
            first_blank = k
    return None if seen else (None, "no texts")


@prop(40)
@given(inp=cli_input())
def test_cli_predict_file(bundle, inp):
    """`twinhead predict --input FILE`: one JSON line per input line, or one error naming file and the first
    bad line (or the file, when it holds no text)."""
    from twinhead import cli

    suffix, texts, lines, json_bad, bom, newline, trailing, junk = inp
    tick("cli_predict_file", len(lines))
    with scratch() as d:
        path, out = d / f"in{suffix}", d / "out.jsonl"
        data = encode_file(lines, newline, bom, trailing, junk)
        path.write_bytes(data)
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                rc = cli.main(["predict", "--bundle", str(bundle), "--input", str(path), "--output", str(out),
                               "--quiet", "--batch-size", "2"])
        except TwinheadError as e:
            err = e
        else:
            err = None
        problem = first_cli_problem(suffix, texts, lines, json_bad, junk)
        if problem:
            assert isinstance(err, DataError), err
            assert not out.exists()
            return assert_located(err, path, *problem)
        assert err is None and rc == 0, err
        rows = [json.loads(x) for x in out.read_text(encoding="utf-8").split("\n")[:-1]]
        # one line per input line, in order (blank JSONL lines skipped)
        assert [r["text"] for r in rows] == [t for t, line in zip(texts, lines) if line.strip()]
        assert all(len(r["tags"]) == len(r["tokens"]) for r in rows)


@prop(30)
@given(texts=st.lists(st.one_of(raw_text(), raw_text(), BLANK), min_size=1, max_size=4))
def test_cli_predict_arguments(bundle, texts):
    """`twinhead predict TEXT...`: JSON for each text, or one error naming the argument's position."""
    from twinhead import cli

    tick("cli_predict_arguments", len(texts))
    out = io.StringIO()
    blank = [k for k, t in enumerate(texts, start=1) if not tokenize(NLP, t)[0]]
    try:
        with contextlib.redirect_stdout(out):
            rc = cli.main(["predict", "--bundle", str(bundle), "--", *texts])
    except DataError as e:
        assert blank, e
        return assert_located(e, "argument", blank[0], "empty")
    assert not blank and rc == 0
    text = out.getvalue()
    rows = [json.loads(text)] if len(texts) == 1 else [json.loads(x) for x in text.split("\n")[:-1]]
    assert [r["text"] for r in rows] == texts


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_input_names_the_path(bundle, tmp_path, kind):
    """A missing input, or a folder where a file should be: one DataError naming the path."""
    from twinhead import cli

    tick("unreadable_input")
    path = tmp_path / "in.txt"
    if kind == "directory":
        path.mkdir()
    with pytest.raises(DataError) as ei:
        read_jsonl_split(path, "en")
    assert_located(ei.value, path)
    with pytest.raises(DataError) as ei, contextlib.redirect_stderr(io.StringIO()):
        cli.main(["predict", "--bundle", str(bundle), "--input", str(path), "--quiet"])
    assert_located(ei.value, path)


# --- evaluation with labels never seen in training ---------------------------------------------


@prop(30)
@given(rows=st.lists(st.tuples(st.lists(st.one_of(WORD, KNOWN), min_size=1, max_size=8), INTENT), min_size=1,
                     max_size=6), data=st.data())
def test_evaluate_unseen_labels(predictor, rows, data):
    """Gold intents and slot types never seen in training are scored, not crashed on, and the raw-text
    path (each text through Predictor.predict, scored on character spans) agrees with the processed one."""
    from twinhead.evaluate import evaluate
    from twinhead.preprocess import through_pipeline, to_frame

    tick("evaluate_unseen_labels", len(rows))
    exs = [Example(words, data.draw(bio_tags(len(words))), intent, f"gen:{k}")
           for k, (words, intent) in enumerate(rows, start=1)]
    buf = io.BytesIO()  # through Parquet, as the evaluate stage reads it (numpy values come back)
    to_frame(through_pipeline(exs, predictor.text), predictor.text).to_parquet(buf)
    df = pd.read_parquet(buf)
    res = evaluate(predictor, df, batch_size=4)
    s = res.summary
    assert s["sentences"] == len(rows)
    assert s["raw_disagreements"] == 0
    for key in ("intent_accuracy", "slot_precision", "slot_recall", "slot_f1", "sentence_accuracy"):
        assert s[f"raw_{key}"] == pytest.approx(s[key]), key
    assert len(res.errors) == round((1 - s["sentence_accuracy"]) * len(rows))
    json.dumps(res.errors)  # errors.jsonl is written from these (Parquet gives numpy numbers)
    unseen_rows = sum(i not in predictor.vocabs.intents.itos for _, i in rows)
    assert s["intent_accuracy"] <= 1 - unseen_rows / len(rows) + 1e-9  # an unseen intent is never right
    assert res.details["intents_unseen_in_train"] == sorted({i for _, i in rows} - set(predictor.vocabs.intents.itos))
    assert 0.0 <= s["intent_ece"] <= 1.0 and 0.0 <= s["intent_ece_uncalibrated"] <= 1.0
    assert s["intent_temperature"] == predictor.temperature
    for err in res.errors:
        assert len(err["tokens"]) == len(err["gold_tags"]) == len(err["pred_tags"])
    # the predicted side of errors.jsonl is what Predictor.predict gives for that text (rounded to 4 places)
    if res.errors:
        preds = predictor.predict([e["text"] for e in res.errors])
        for err, pred in zip(res.errors, preds):
            assert err["pred_intent"] == pred["intent"]
            assert err["pred_probability"] == pytest.approx(pred["probability"], abs=1e-4)
            assert [t["intent"] for t in err["pred_top_intents"]] == [t["intent"] for t in pred["top_intents"]]
            assert [t["probability"] for t in err["pred_top_intents"]] == \
                pytest.approx([t["probability"] for t in pred["top_intents"]], abs=1e-4)
            assert [{**e, "confidence": 0} for e in err["pred_spans"]] == \
                [{**e, "confidence": 0} for e in pred["entities"]]
            # entity confidences: 4 significant digits of a CRF marginal computed in other batches (other
            # padding moves its last float digits: 0.4124 rounded against 0.41251 seen for a 130-fold repeated token)
            assert [e["confidence"] for e in err["pred_spans"]] == \
                pytest.approx([e["confidence"] for e in pred["entities"]], abs=5e-4)


# --- regressions: each of these failed on the code before commit 6204eff ----------------------


@contextlib.contextmanager
def time_limit(seconds: int, what: str):
    """Fail (instead of hanging the suite) if the block runs longer than `seconds` (POSIX main thread)."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_alarm(signum, frame):
        raise TimeoutError(f"{what}: no result within {seconds} s (hang)")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@prop(20)
@given(lines=st.lists(raw_text().filter(lambda t: len(t) < 200), min_size=2, max_size=5), data=st.data())
def test_bom_then_invalid_utf8_names_the_right_line(lines, data):
    """Invalid UTF-8 opening a line after a BOM is reported on that line (it was the line before)."""
    tick("bom_then_invalid_utf8", len(lines))
    k = data.draw(st.integers(2, len(lines)))
    junk = (k, 0, data.draw(JUNK))  # invalid bytes opening line k >= 2
    newline = data.draw(NEWLINE)
    reader = data.draw(st.sampled_from(["jsonl", "bio", "cli"]))
    with scratch() as d:
        if reader == "bio":
            path = d / "seq.in"
            for name in BIO_FILES:
                (d / name).write_bytes(encode_file(["O"] * len(lines) if name == "seq.out" else
                                                   ["x"] * len(lines), newline, True, True))
        else:
            path = d / ("train.jsonl" if reader == "jsonl" else "in.txt")
        path.write_bytes(encode_file(lines, newline, True, True, junk))
        with pytest.raises(DataError) as ei:
            if reader == "jsonl":
                read_jsonl_split(path, "en")
            elif reader == "bio":
                read_bio_split(d)
            else:
                from twinhead.inputs import open_texts

                with open_texts(str(path)) as texts:
                    list(texts)
        assert_located(ei.value, path, k, "invalid UTF-8")
        assert f"byte {junk[2][0]:#04x}" in str(ei.value)


@pytest.mark.parametrize("text", ["\U0001F600" * 100_000, '(,"' * 33_334, "\U0001F469\u200d\U0001F4BB" * 34_000],
                         ids=["emoji", "punctuation", "zwj-emoji"])
def test_100k_character_run_without_spaces_does_not_hang(predictor, tmp_path, text):
    """spaCy is quadratic in a whitespace-free run of emoji/punctuation: 100k of them took ~30 min."""
    tick("no_hang_100k_run", 2)
    path = _write(tmp_path / "t.jsonl", json.dumps({"text": text, "label": "x"}) + "\n")
    with time_limit(30, "read_jsonl_split"):
        (ex,), _ = read_jsonl_split(path, "en")
    check_example(ex)
    with time_limit(30, "Predictor.predict"):
        (pred,) = predictor.predict([text])
    check_prediction(pred, text, predictor)
    assert pred["tokens"] == ex.tokens  # training and prediction tokenize alike


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("where", ["reader", "predictor", "cli"])
def test_lone_surrogate_is_a_data_error(bundle, predictor, tmp_path, where):
    """A JSON \\ud800 escape (or a str) with an unpaired surrogate: DataError, not spaCy's UnicodeEncodeError."""
    tick("lone_surrogate")
    line = '{"text": "play \\ud800 now", "label": "x"}\n'
    if where == "reader":
        path = _write(tmp_path / "train.jsonl", '{"text": "ok", "label": "x"}\n' + line)
        with pytest.raises(DataError) as ei:
            read_jsonl_split(path, "en")
        assert_located(ei.value, path, 2, "'text'")
        exs, report = read_jsonl_split(path, "en", on_error="skip")
        assert len(exs) == 1 and len(report.skipped) == 1
    elif where == "predictor":
        with pytest.raises(DataError) as ei:
            predictor.predict(["ok", "play \ud800 now"])
        assert_located(ei.value, "input", 2, "surrogate")
    else:
        from twinhead import cli

        path = _write(tmp_path / "in.jsonl", line)
        with pytest.raises(DataError) as ei, contextlib.redirect_stderr(io.StringIO()):
            cli.main(["predict", "--bundle", str(bundle), "--input", str(path), "--output",
                      str(tmp_path / "out.jsonl"), "--quiet"])
        assert_located(ei.value, path, 1, "surrogate")


@pytest.mark.parametrize("where,line", [
    ("reader", '{"text": "a", "label": "x", "id": 1' + "0" * 5000 + "}"),  # int over 4300 digits
    ("reader", "[" * 100_000),  # 100k-character truncated, deeply nested JSON
    ("cli", '{"text": "a", "id": 1' + "0" * 5000 + "}"),
    ("cli", "[" * 100_000),
], ids=["reader-bigint", "reader-deep", "cli-bigint", "cli-deep"])
def test_json_limits_are_data_errors(bundle, tmp_path, where, line):
    """json.loads raises ValueError (int over 4300 digits) and RecursionError (deep nesting), not only
    JSONDecodeError: both must come out as a DataError naming file and line (Python refuses to read an
    int over 4300 digits, so that line cannot be used either)."""
    tick("json_limits")
    path = _write(tmp_path / "in.jsonl", '{"text": "ok", "label": "x"}\n' + line + "\n")
    with pytest.raises(DataError) as ei:
        if where == "reader":
            read_jsonl_split(path, "en")
        else:
            from twinhead import cli

            with contextlib.redirect_stderr(io.StringIO()):
                cli.main(["predict", "--bundle", str(bundle), "--input", str(path), "--output",
                          str(tmp_path / "out.jsonl"), "--quiet"])
    assert_located(ei.value, path, 2, "JSON")
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("where", ["reader", "predictor"])
def test_text_over_a_million_characters(predictor, tmp_path, where):
    """Over spaCy's nlp.max_length (1,000,000 characters): tokenized in pieces, a full result (not spaCy's
    E088 error)."""
    tick("over_1m_chars")
    text = "abcdefghijklmnopqrs " * 50_001
    if where == "reader":
        path = _write(tmp_path / "train.jsonl", json.dumps({"text": text, "label": "x"}) + "\n")
        (ex,), _ = read_jsonl_split(path, "en")
        check_example(ex)
        assert len(ex.tokens) == 50_001
    else:
        (pred,) = predictor.predict([text])
        assert len(pred["tags"]) == len(pred["tokens"]) == 50_001


# --- the count --------------------------------------------------------------------------------


# What README.md ("Reliability") says one default run of this module generates. Hypothesis draws list sizes
# and the long lines at random, so the counts move from run to run; over 9 runs: 826-831 cases, 3,272-3,970
# inputs (mean 3,670, sd 235) and 14-52 lines over 100k characters (mean 35, sd 13.5). The input range is
# mean +- 3.7 sd or more; the long lines vary too much for more than "at least one" (and not hundreds).
README_CASES = (800, 860)
README_INPUTS = (2800, 4800)
README_LONG_LINES = (1, 100)


def _whole_module_ran(request) -> str:
    """Why the counts cannot be compared with README.md ('' when they can)."""
    if SCALE != 1:
        return f"TWINHEAD_PROP_SCALE={SCALE:g}: README.md states the counts of the default scale"
    if getattr(request.config, "workerinput", {}).get("twinhead_dist", "loadfile") != "loadfile":
        return "pytest-xdist without --dist loadfile: this module's tests are shared among the workers"
    selected = {item.nodeid for item in request.session.items}
    module = [item.nodeid for item in request.node.parent.collect() if isinstance(item, pytest.Item)]
    left_out = [n for n in module if n not in selected]
    return f"{len(left_out)} of {len(module)} tests of this module were not selected" if left_out else ""


def test_zz_report_generated_cases(request):
    """The counts README.md states for one default run of this module hold, and the entity checks in
    test_predict were not vacuous (the untrained model predicted entities, multi-token ones too)."""
    width = max((len(k) for k in CASES), default=5)
    for name in sorted(CASES):
        print(f"{name:{width}s} {CASES[name]:6d} cases {INPUTS[name]:7d} inputs")
    cases, inputs, long_lines = sum(CASES.values()), sum(INPUTS.values()), LONG_LINES["generated"]
    print(f"{'total':{width}s} {cases:6d} cases {inputs:7d} inputs")
    print(f"entities predicted in test_predict: {ENTITIES_SEEN['predict']} (texts with a multi-token entity: "
          f"{ENTITIES_SEEN['multi-token']}); 100k+ character lines generated: {long_lines}")
    why = _whole_module_ran(request)
    if why:
        pytest.skip(f"counts not compared with README.md: {why}")
    assert README_CASES[0] <= cases <= README_CASES[1], f"{cases} generated cases, README.md: {README_CASES}"
    assert README_INPUTS[0] <= inputs <= README_INPUTS[1], f"{inputs} inputs, README.md: {README_INPUTS}"
    assert README_LONG_LINES[0] <= long_lines <= README_LONG_LINES[1], \
        f"{long_lines} lines over 100,000 characters, README.md: {README_LONG_LINES}"
    assert ENTITIES_SEEN["predict"] >= 50 and ENTITIES_SEEN["multi-token"] >= 5, ENTITIES_SEEN
