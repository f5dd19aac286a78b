"""Tokenization, BIO validation and BIO <-> span conversion, stop-word filtering."""

from __future__ import annotations

import pytest
import spacy

from twinhead.errors import TwinheadError
from twinhead.text import (
    bio_error,
    bio_to_spans,
    get_nlp,
    keep_positions,
    map_back,
    normalize,
    removable_stopwords,
    spans_to_bio,
    tokenize,
)


@pytest.fixture(scope="module")
def nlp():
    return spacy.blank("en")


# --- tokenization -------------------------------------------------------------------------------


def test_tokenize_drops_whitespace_tokens_and_keeps_offsets(nlp):
    text = "  Hello,  world!\n"
    tokens, offsets = tokenize(nlp, text)
    assert tokens == ["Hello", ",", "world", "!"]
    assert offsets == [2, 7, 10, 15]
    for tok, off in zip(tokens, offsets):
        assert text[off : off + len(tok)] == tok


def test_tokenize_tab_and_double_space(nlp):
    text = "Play  the Beatles\tnow"
    tokens, offsets = tokenize(nlp, text)
    assert tokens == ["Play", "the", "Beatles", "now"]
    assert offsets == [0, 6, 10, 18]


def test_tokenize_whitespace_only_gives_nothing(nlp):
    assert tokenize(nlp, " \t\n ") == ([], [])


def test_get_nlp_unknown_language_is_a_user_error():
    with pytest.raises(TwinheadError, match=r"preprocess\.lang='xx-nope' is not a language spaCy knows"):
        get_nlp("xx-nope")
    with pytest.raises(TwinheadError, match=r"preprocess\.lang='\.\./en' is not a language spaCy knows"):
        get_nlp("../en")


def test_normalize():
    assert normalize("Beatles", True) == "beatles"
    assert normalize("Beatles", False) == "Beatles"


# --- BIO validation -----------------------------------------------------------------------------


@pytest.mark.parametrize("tags", [
    [],
    ["O", "O"],
    ["B-time", "I-time", "O", "B-loc"],
    ["B-a", "B-a", "I-a", "B-b", "I-b", "I-b"],
    ["B-artist.name", "I-artist.name"],
])
def test_bio_error_accepts_valid(tags):
    assert bio_error(tags) is None


def test_bio_error_i_after_o_names_token_and_previous_tag():
    err = bio_error(["O", "I-time"])
    assert err == "invalid BIO sequence: 'I-time' at token 2 follows 'O'"


def test_bio_error_i_at_start():
    assert bio_error(["I-time"]) == "invalid BIO sequence: 'I-time' at token 1 follows 'O'"


def test_bio_error_type_switch():
    assert bio_error(["B-a", "I-b"]) == "invalid BIO sequence: 'I-b' at token 2 follows 'B-a'"


@pytest.mark.parametrize("tag", ["B-", "I-", "X-time", "b-time", "Otime", "B time", "", "B-a b"])
def test_bio_error_rejects_malformed_tag(tag):
    err = bio_error(["O", tag])
    assert err is not None
    assert err.startswith(f"invalid tag {tag!r} at token 2")


# --- BIO -> spans (conlleval semantics) ---------------------------------------------------------


@pytest.mark.parametrize("tags, spans", [
    ([], []),
    (["O", "O"], []),
    (["B-t"], [(0, 1, "t")]),
    (["O", "B-t", "I-t", "O"], [(1, 3, "t")]),
    (["B-t", "I-t", "I-t"], [(0, 3, "t")]),  # a chunk ending at the last token is closed
    (["B-t", "B-t"], [(0, 1, "t"), (1, 2, "t")]),  # B always starts a new chunk
    (["B-a", "I-a", "B-b", "O", "B-c", "I-c"], [(0, 2, "a"), (2, 3, "b"), (4, 6, "c")]),
    # invalid BIO, scored as conlleval does:
    (["O", "I-t", "I-t"], [(1, 3, "t")]),  # I-x after O starts a chunk
    (["I-t"], [(0, 1, "t")]),  # ...also at the start
    (["B-x", "I-y"], [(0, 1, "x"), (1, 2, "y")]),  # I-y after B-x starts a new chunk
    (["B-x", "I-x", "I-y", "I-y", "O"], [(0, 2, "x"), (2, 4, "y")]),
    (["B-x", "B-", "I-x"], [(0, 1, "x"), (2, 3, "x")]),  # a typeless tag counts as O
])
def test_bio_to_spans(tags, spans):
    assert bio_to_spans(tags) == spans


def test_spans_to_bio_hand_checked():
    assert spans_to_bio(6, [(4, 6, "time"), (0, 1, "act")]) == ["B-act", "O", "O", "O", "B-time", "I-time"]
    assert spans_to_bio(2, []) == ["O", "O"]


@pytest.mark.parametrize("tags", [
    ["O"],
    ["B-a", "I-a", "I-a", "O", "B-b"],
    ["B-a", "B-a", "I-a", "B-b", "I-b", "O", "O", "B-c"],
])
def test_spans_bio_round_trip(tags):
    spans = bio_to_spans(tags)
    assert spans_to_bio(len(tags), spans) == tags
    assert bio_to_spans(spans_to_bio(len(tags), spans)) == spans


def test_spans_to_bio_repairs_invalid_bio():
    # Going through spans turns conlleval chunks into valid BIO.
    fixed = spans_to_bio(4, bio_to_spans(["O", "I-t", "I-u", "I-u"]))
    assert fixed == ["O", "B-t", "B-u", "I-u"]
    assert bio_error(fixed) is None


# --- stop words ---------------------------------------------------------------------------------


def test_keep_positions_drops_stop_words_case_insensitively():
    tokens = ["Play", "The", "album", "by", "Queen"]
    assert keep_positions(tokens, {"the", "by"}) == [0, 2, 4]


def test_keep_positions_keeps_an_all_stopword_sentence_whole():
    assert keep_positions(["The", "and", "of"], {"the", "and", "of"}) == [0, 1, 2]


def test_keep_positions_without_rule_keeps_everything():
    assert keep_positions(["the", "cat"], set()) == [0, 1]
    assert keep_positions(["the", "cat"], frozenset()) == [0, 1]


def test_map_back_gives_o_to_removed_positions():
    assert map_back(5, [0, 2, 4], ["B-act", "B-album", "B-artist"]) == ["B-act", "O", "B-album", "O", "B-artist"]
    assert map_back(3, [0, 1, 2], ["O", "B-t", "I-t"]) == ["O", "B-t", "I-t"]


def test_keep_then_map_back_restores_length(nlp):
    tokens, _ = tokenize(nlp, "play the new album by the beatles")
    removable = removable_stopwords(nlp)
    kept = keep_positions(tokens, removable)
    assert [tokens[i] for i in kept] == ["play", "new", "album", "beatles"]
    full = map_back(len(tokens), kept, ["O", "B-a", "I-a", "B-b"])
    assert full == ["O", "O", "B-a", "I-a", "O", "O", "B-b"]


def test_removable_stopwords_are_spacy_stop_words_lowercased(nlp):
    words = removable_stopwords(nlp)
    assert {"the", "by", "and", "of"} <= words
    assert "beatles" not in words
    assert all(w == w.lower() for w in words)
    assert words == {w.lower() for w in nlp.Defaults.stop_words}


def test_removable_stopwords_keep_entity_words(nlp):
    everything = removable_stopwords(nlp)
    words = removable_stopwords(nlp, {"The", "Beatles"})
    assert "the" not in words
    assert "by" in words
    assert words == everything - {"the"}


def test_map_back_keeps_bio_valid_when_a_removed_word_splits_an_entity():
    # "wake the 7 am": "the" removed, the model tags "wake 7 am" as one time span.
    assert map_back(4, [0, 2, 3], ["B-time", "I-time", "I-time"]) == ["B-time", "O", "B-time", "I-time"]
