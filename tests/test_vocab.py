"""Vocabularies: specials, min_freq, stable order, JSON round trip."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from twinhead.vocab import PAD, UNK, Vocab, Vocabs, build_vocabs

WORDS = [["play", "the", "beatles"], ["play", "queen"], ["wake", "me", "play"], ["the", "wake"]]
INTENTS = ["PlayMusic", "PlayMusic", "SetAlarm", "GetWeather"]
TAGS = [["O", "O", "B-artist"], ["O", "B-artist"], ["O", "O", "O"], ["B-time", "I-time"]]


def test_specials_at_0_and_1():
    v = build_vocabs(WORDS, INTENTS, TAGS)
    assert v.words.itos[:2] == [PAD, UNK] == ["<pad>", "<unk>"]
    assert v.chars.itos[:2] == [PAD, UNK]
    assert v.words.index(PAD) == 0 and v.words.index(UNK) == 1


def test_min_freq_maps_rare_words_to_unk():
    v = build_vocabs(WORDS, INTENTS, TAGS, min_freq=2)
    # counts: play 3, the 2, wake 2, everything else 1
    assert v.words.itos == [PAD, UNK, "play", "the", "wake"]
    assert v.words.encode(["play", "beatles", "queen", "wake", "never-seen"]) == [2, 1, 1, 4, 1]


def test_min_freq_does_not_touch_chars():
    v = build_vocabs(WORDS, INTENTS, TAGS, min_freq=100)
    assert v.words.itos == [PAD, UNK]
    assert set(v.chars.itos[2:]) == set("playthebeatlesqueenwakem")


def test_order_is_frequency_then_alphabetical():
    v = Vocab.build(Counter({"b": 2, "a": 2, "z": 5, "c": 1}))
    assert v.itos == [PAD, UNK, "z", "a", "b", "c"]
    # insertion order of the counter does not matter
    w = Vocab.build(Counter({"c": 1, "z": 5, "b": 2, "a": 2}))
    assert w.itos == v.itos


def test_build_vocabs_is_stable_across_input_order():
    a = build_vocabs(WORDS, INTENTS, TAGS)
    b = build_vocabs(list(reversed(WORDS)), list(reversed(INTENTS)), list(reversed(TAGS)))
    assert a.to_lists() == b.to_lists()


def test_intents_and_tags_have_no_specials():
    v = build_vocabs(WORDS, INTENTS, TAGS)
    assert v.intents.itos == ["PlayMusic", "GetWeather", "SetAlarm"]  # by count, then name
    assert v.tags.itos == ["O", "B-artist", "B-time", "I-time"]  # O first, then by type, B before I
    assert PAD not in v.intents.stoi and UNK not in v.tags.stoi


def test_tags_always_contain_o():
    v = build_vocabs([["x"]], ["A"], [["B-t"]])
    assert v.tags.itos == ["O", "B-t"]


def test_unknown_intent_raises_keyerror():
    v = build_vocabs(WORDS, INTENTS, TAGS)
    assert v.intents.index("SetAlarm") == 2
    with pytest.raises(KeyError):
        v.intents.index("BookFlight")
    with pytest.raises(KeyError):
        v.tags.encode(["O", "B-nope"])


def test_unknown_word_is_unk_not_error():
    v = build_vocabs(WORDS, INTENTS, TAGS)
    assert v.words.index("zzz") == 1
    assert v.chars.index("\u00e9") == 1


def test_save_load_round_trip(tmp_path):
    v = build_vocabs(WORDS, INTENTS, TAGS)
    folder = tmp_path / "vocab"
    v.save(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["chars.json", "intents.json", "tags.json", "words.json"]
    assert json.loads((folder / "words.json").read_text(encoding="utf-8")) == v.words.itos
    assert json.loads((folder / "tags.json").read_text(encoding="utf-8")) == ["O", "B-artist", "B-time", "I-time"]
    w = Vocabs.load(folder)
    assert w.to_lists() == v.to_lists()
    assert w.words.stoi == v.words.stoi
    assert w.words.specials and not w.intents.specials
    # saving again replaces the folder's content
    build_vocabs([["x"]], ["A"], [["O"]]).save(folder)
    assert Vocabs.load(folder).words.itos == [PAD, UNK, "x"]
    assert [p.name for p in tmp_path.iterdir()] == ["vocab"]  # no temp folders left behind


def test_non_ascii_is_written_readably(tmp_path):
    v = build_vocabs([["caf\u00e9"]], ["A"], [["O"]])
    v.save(tmp_path / "v")
    assert "caf\u00e9" in (tmp_path / "v" / "words.json").read_text(encoding="utf-8")
    assert Vocabs.load(tmp_path / "v").words.itos[2] == "caf\u00e9"


def test_invalid_vocab_lists_are_refused():
    with pytest.raises(ValueError, match="duplicate"):
        Vocab(["a", "a"], specials=False)
    with pytest.raises(ValueError, match="must start with <pad>, <unk>"):
        Vocab(["a", PAD, UNK], specials=True)


def test_a_missing_vocabulary_names_the_file_and_the_stage(tmp_path):
    from twinhead.errors import DataError

    build_vocabs(WORDS, INTENTS, TAGS).save(tmp_path / "v")
    (tmp_path / "v" / "tags.json").unlink()
    with pytest.raises(DataError, match="dvc repro vocab") as e:
        Vocabs.load(tmp_path / "v")
    assert e.value.path == str(tmp_path / "v" / "tags.json")
    with pytest.raises(DataError) as e:
        Vocabs.load(tmp_path / "nowhere")
    assert e.value.path.startswith(str(tmp_path / "nowhere"))
