"""One text pipeline: preprocess, evaluation and the predictor read text the same way, whatever the format."""

from __future__ import annotations

import json

import pytest

from tests.test_bundle import make_bundle, make_model
from twinhead.errors import TwinheadError
from twinhead.predictor import Predictor
from twinhead.preprocess import PreprocessConfig, preprocess
from twinhead.text import TextPipeline, char_spans, tags_for_spans


def test_pretokenized_input_is_retokenized_and_tags_follow_their_characters():
    pipe = TextPipeline("en", lowercase=True)
    text, toks, offs, tags = pipe.from_tokens(["book", "a", "table", "at", "mcdonald's", "u.s.a."],
                                              ["O", "O", "O", "O", "B-restaurant", "B-country"])
    assert text == "book a table at mcdonald's u.s.a."
    assert toks == ["book", "a", "table", "at", "mcdonald", "'s", "u.s.a", "."]  # what spaCy makes of the text
    assert tags == ["O", "O", "O", "O", "B-restaurant", "I-restaurant", "B-country", "I-country"]
    # the gold spans are exactly the file's, in characters
    assert char_spans(toks, offs, tags) == [(16, 26, "restaurant"), (27, 33, "country")]


def test_a_split_o_token_stays_o():
    _, toks, _, tags = TextPipeline("en", True).from_tokens(["i", "can't", "find", "it"], ["O", "O", "B-x", "O"])
    assert toks == ["i", "ca", "n't", "find", "it"] and tags == ["O", "O", "O", "B-x", "O"]


def test_tags_for_spans_refuses_spans_off_token_boundaries():
    assert tags_for_spans(["ab", "cd"], [0, 3], [(0, 5, "x")]) == ["B-x", "I-x"]
    assert tags_for_spans(["ab", "cd"], [0, 3], [(1, 5, "x")]) is None


def test_bio_training_tokens_are_what_the_predictor_sees(tmp_path):
    """The tokens preprocess gives the model for a BIO line equal those the predictor gets from the
    same words typed as raw text: the train/serve mismatch of contractions is gone."""
    raw = tmp_path / "raw"
    lines = {"seq.in": ["i can't find rock'n'roll music", "book a table at mcdonald's"],
             "seq.out": ["O O O B-genre I-genre", "O O O O B-restaurant"],
             "label": ["PlayMusic", "BookRestaurant"]}
    for split in ("train", "dev", "test"):
        (raw / split).mkdir(parents=True)
        for name, ls in lines.items():
            (raw / split / name).write_text("\n".join(ls) + "\n", encoding="utf-8")
    frames, meta, _, _ = preprocess(raw, None, PreprocessConfig(remove_stopwords=False), seed=0)
    df = frames["test"]
    assert list(df["tokens"][0]) == ["i", "ca", "n't", "find", "rock'n'roll", "music"]
    assert list(df["tags"][1]) == ["O", "O", "O", "O", "B-restaurant", "I-restaurant"]
    pipe = TextPipeline.from_settings(meta)
    for text, toks, words in zip(df["text"], df["tokens"], df["words"]):
        assert pipe.tokenize(text)[0] == list(toks)
        assert pipe.model_words(list(toks))[1] == list(words)


def test_predictor_uses_the_saved_pipeline(tmp_path):
    model, vocabs = make_model()
    _, bundle = make_bundle(tmp_path, model, vocabs)
    pred = Predictor(bundle)
    settings = json.loads((bundle / "config.json").read_text())["preprocess"]
    assert pred.text.settings() == TextPipeline.from_settings(settings).settings()
    out = pred.predict(["Play the Beatles now"])[0]
    keep, words = pred.text.model_words(out["tokens"])
    assert words == ["play", "beatles"]  # stop words "the", "now" removed, lowercased, as at training
    assert [out["tags"][i] for i in range(len(out["tokens"])) if i not in keep] == ["O", "O"]


@pytest.mark.parametrize("settings, message", [
    ({"lang": "en", "lowercase": True}, "missing field.*removable_stopwords"),
    ({"lang": "en", "lowercase": "yes", "removable_stopwords": []}, "'lowercase' must be true or false"),
    ({"lang": "", "lowercase": True, "removable_stopwords": []}, "'lang' must be a language code"),
    ({"lang": "en", "lowercase": True, "removable_stopwords": "the"}, "must be a list of strings"),
    ([], "expected an object"),
])
def test_bad_saved_settings_name_the_field(settings, message):
    with pytest.raises(TwinheadError, match=message):
        TextPipeline.from_settings(settings, "bundle/config.json: preprocess")


def test_removed_first_word_of_an_entity_leaves_valid_bio_for_training(tmp_path):
    raw = tmp_path / "raw"
    lines = {"seq.in": ["play the beatles now"], "seq.out": ["O B-artist I-artist O"], "label": ["PlayMusic"]}
    for split in ("train", "dev", "test"):
        (raw / split).mkdir(parents=True)
        for name, ls in lines.items():
            (raw / split / name).write_text("\n".join(ls) + "\n", encoding="utf-8")
    # without the entity exception "the" is removed although it begins the entity
    cfg = PreprocessConfig(remove_stopwords=True, keep_entity_stopwords=False)
    frames, _, _, _ = preprocess(raw, None, cfg, seed=0)
    row = frames["train"].iloc[0]
    assert list(row["words"]) == ["play", "beatles"]
    assert list(row["word_tags"]) == ["O", "B-artist"]  # not the invalid I-artist after O
    assert list(row["tags"]) == ["O", "B-artist", "I-artist", "O"]  # gold on every token is untouched


def test_a_missing_split_names_the_file_and_the_stage(tmp_path):
    import pandas as pd

    from twinhead.errors import DataError
    from twinhead.preprocess import load_split

    pd.DataFrame({"words": [["hi"]], "intent": ["greet"]}).to_parquet(tmp_path / "train.parquet")
    assert load_split(tmp_path, "train")["intent"].tolist() == ["greet"]
    with pytest.raises(DataError, match="dvc repro preprocess") as e:
        load_split(tmp_path, "dev")
    assert e.value.path == str(tmp_path / "dev.parquet")
