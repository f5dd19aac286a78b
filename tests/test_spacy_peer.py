"""benchmarks/spacy_peer.py: the DocBin conversion, spaCy's predictions mapped onto twinhead's tokens, the
time-to-accuracy comparison, and one tiny run of both systems (timings are printed, never asserted)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import spacy
import yaml
from spacy.language import Language
from spacy.tokens import DocBin

from benchmarks import spacy_peer
from tests.conftest import ROOT, TINY_PARAMS, snips_sample
from twinhead.readers import Example

EXAMPLES = [
    Example(["play", "the", "beatles", "on", "spotify"], ["O", "B-artist", "I-artist", "O", "B-service"],
            "PlayMusic", "t:1"),
    Example(["book", "a", "table"], ["O", "O", "O"], "BookRestaurant", "t:2"),
    Example(["rate", "it", "five", "stars"], ["O", "O", "B-rating_value", "B-rating_unit"], "RateBook", "t:3"),
    Example(["eat", "at", "mcdonald's", "in", "new", "york", "city"],
            ["O", "O", "B-restaurant_name", "O", "B-city", "I-city", "I-city"], "BookRestaurant", "t:4"),
    Example(["weather"], ["B-condition"], "GetWeather", "t:5"),
]
LABELS = sorted({ex.intent for ex in EXAMPLES})


def test_docbin_round_trips_tokens_entities_and_cats():
    nlp = spacy.blank("en")
    data = spacy_peer.to_docbin(nlp, EXAMPLES, LABELS).to_bytes()
    docs = list(DocBin().from_bytes(data).get_docs(nlp.vocab))
    assert len(docs) == len(EXAMPLES)
    for doc, ex in zip(docs, EXAMPLES):
        assert [t.text for t in doc] == ex.tokens  # the file's tokens, not spaCy's ("mcdonald's" stays whole)
        assert doc.text == " ".join(ex.tokens)
        assert spacy_peer.doc_bio(doc) == ex.tags  # adjacent B-x B-y and a one-token sentence included
        assert doc.cats == {lab: 1.0 if lab == ex.intent else 0.0 for lab in LABELS}
        assert spacy_peer.doc_intent(doc) == ex.intent


@Language.component("fixed_cats_for_test")
def fixed_cats(doc):
    doc.cats = {"BookRestaurant": 0.7, "PlayMusic": 0.3}
    return doc


def test_spacy_predictions_land_on_twinhead_tokens():
    """Where spaCy splits a token the gold does not ("mcdonald's"), its entity is carried by character offsets."""
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns([{"label": "restaurant_name", "pattern": [{"LOWER": "mcdonald"}, {"LOWER": "'s"}]},
                        {"label": "city", "pattern": [{"LOWER": "paris"}]}])
    nlp.add_pipe("fixed_cats_for_test")
    df = pd.DataFrame({"text": ["eat at mcdonald's", "fly to paris now"],
                       "tokens": [["eat", "at", "mcdonald's"], ["fly", "to", "paris", "now"]],
                       "offsets": [[0, 4, 7], [0, 4, 7, 13]]})
    intents, tags, differ = spacy_peer.spacy_predict(nlp, df)
    assert intents == ["BookRestaurant", "BookRestaurant"]
    assert tags == [["O", "O", "B-restaurant_name"], ["O", "O", "B-city", "O"]]
    assert differ == 1


def test_compare_takes_the_first_epoch_at_spacys_accuracy():
    spacy_res = {"test": {"sentence_accuracy": 0.80}, "seconds_to_best": 1000.0, "cpu_seconds_to_best": 800.0}
    rows = [{"epoch": 1, "seconds": 20.0, "cpu_seconds": 30.0, "test_sentence_accuracy": 0.70},
            {"epoch": 2, "seconds": 40.0, "cpu_seconds": 60.0, "test_sentence_accuracy": 0.80},
            {"epoch": 3, "seconds": 60.0, "cpu_seconds": 90.0, "test_sentence_accuracy": 0.85}]
    out = spacy_peer.compare(spacy_res, {"epochs": rows})
    assert (out["twinhead_epoch"], out["twinhead_seconds"], out["ratio"]) == (2, 40.0, 0.04)
    assert (out["twinhead_cpu_seconds"], out["cpu_ratio"]) == (60.0, 0.075)
    missed = spacy_peer.compare(spacy_res, {"epochs": rows[:1]})
    assert missed["twinhead_epoch"] is None and missed["ratio"] is None


def test_the_target_is_judged_only_against_a_spacy_run_of_the_same_run():
    """A ratio against spaCy's clock from another run (--spacy-results) mixes two loads: no met/missed then."""
    spacy_res = {"test": {"sentence_accuracy": 0.80}, "seconds_to_best": 1000.0, "cpu_seconds_to_best": 800.0}
    rows = [{"epoch": 1, "seconds": 20.0, "cpu_seconds": 30.0, "test_sentence_accuracy": 0.85}]
    texts = {}
    for same_run in (True, False):
        cmp_ = spacy_peer.compare(spacy_res, {"epochs": rows}, same_run=same_run)
        texts[same_run] = spacy_peer.format_tables({"spacy": None, "comparison": cmp_, "twinhead": {
            "train_sentences": 10, "train_words": 50, "best": {**rows[0], "test_intent_accuracy": 0.9,
                                                                "test_slot_f1": 0.9},
            "best_epoch": 1, "total_seconds": 20.0,
            "epochs": [{**rows[0], "train_seconds": 18.0, "dev_seconds": 1.0, "words_per_second": 100.0,
                        "sentences_per_second": 20.0, "lr": 0.003, "dev_sentence_accuracy": 0.8,
                        "test_intent_accuracy": 0.9, "test_slot_f1": 0.9}]}})
    assert "1/20: met)" in texts[True] and "not judged" not in texts[True]
    assert "not judged: spaCy's side is from another run" in texts[False] and ": met)" not in texts[False]


def test_tiny_run_trains_both_and_prints_every_field(tmp_path, capsys):
    raw = snips_sample(tmp_path / "data", {"train": 80, "dev": 20, "test": 20})
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    for section, values in TINY_PARAMS.items():
        params[section].update(values)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    out, res_path = tmp_path / "out", tmp_path / "res.json"
    spacy_peer.main(["--data", str(raw), "--out", str(out), "--params", str(tmp_path / "params.yaml"),
                     "--max-epochs", "2", "--spacy-max-steps", "3", "--json", str(res_path)])
    printed = capsys.readouterr().out
    res = json.loads(res_path.read_text(encoding="utf-8"))

    sp, tw = res["spacy"], res["twinhead"]
    assert sp["steps"] == 4 and [e["step"] for e in sp["evaluations"]] == [0]  # steps 0-3, evaluated at 0
    assert 0 < sp["seconds_to_best"] <= sp["total_seconds"] and sp["words"] > 0
    assert set(sp["test"]) >= {"intent_accuracy", "slot_f1", "sentence_accuracy", "tokenized_differently"}
    assert [r["epoch"] for r in tw["epochs"]] == [1, 2]
    assert tw["train_sentences"] == 80 and tw["params"]["model"]["hidden_size"] == 16
    for r in tw["epochs"]:
        assert r["words_per_second"] > 0 and 0 <= r["test_sentence_accuracy"] <= 1
    assert tw["epochs"][1]["seconds"] > tw["epochs"][0]["seconds"]
    assert set(res["comparison"]) == {"target_test_sentence_accuracy", "target_ratio", "same_run", "twinhead_epoch",
                                      "twinhead_seconds", "ratio", "twinhead_cpu_seconds", "cpu_ratio"}
    assert res["comparison"]["target_test_sentence_accuracy"] == sp["test"]["sentence_accuracy"]
    assert res["comparison"]["same_run"] is True  # spaCy trained in this run: the target is judged

    nlp = spacy.load(out / "model-best")  # what benchmarks/predict_speed.py --spacy-model loads
    assert nlp.pipe_names == ["tok2vec", "textcat", "ner"]
    assert nlp.get_pipe("textcat").cfg["threshold"] == 0.0 and not nlp.vocab.vectors.shape[0]

    table = spacy_peer.format_tables(res)
    assert table in printed
    rows = [line for line in table.splitlines() if line.startswith(("| spaCy 3", "| twinhead ("))]
    assert len(rows) == 2
    for line in rows:  # every field filled ("-" stands for a missing number)
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 10 and "-" not in cells
    assert "| twinhead epoch |" in table and "| spaCy step |" in table

    spacy_peer.main(["--from-json", str(res_path)])
    assert capsys.readouterr().out.strip() == table

    # twinhead again with one param changed, against the spaCy run above (not trained again)
    again = tmp_path / "again.json"
    common = ["--data", str(raw), "--out", str(tmp_path / "unused"), "--params", str(tmp_path / "params.yaml"),
              "--max-epochs", "1", "--set", "train.batch_size=32"]
    spacy_peer.main([*common, "--spacy-results", str(res_path), "--json", str(again)])
    res2 = json.loads(again.read_text(encoding="utf-8"))
    assert not (tmp_path / "unused" / "model-best").exists()
    assert {k: v for k, v in res2["spacy"].items() if k in sp} == sp and res2["spacy"]["from"] == str(res_path)
    assert res2["twinhead"]["params"]["train"]["batch_size"] == 32 and len(res2["twinhead"]["epochs"]) == 1
    assert "| twinhead (params.yaml defaults, train.batch_size=32) |" in capsys.readouterr().out

    # twinhead alone, then put beside spaCy's side rebuilt from its output folder (a run stopped after spaCy)
    alone, both = tmp_path / "alone.json", tmp_path / "both.json"
    spacy_peer.main([*common, "--no-spacy", "--json", str(alone)])
    assert json.loads(alone.read_text(encoding="utf-8"))["spacy"] is None and "| spaCy" not in capsys.readouterr().out
    spacy_peer.main(["--from-json", str(alone), "--spacy-results", str(out), "--params", str(tmp_path / "params.yaml"),
                     "--json", str(both)])
    rebuilt = json.loads(both.read_text(encoding="utf-8"))["spacy"]
    assert rebuilt["test"] | {"predict_seconds": 0} == sp["test"] | {"predict_seconds": 0}
    assert [e["step"] for e in rebuilt["evaluations"]] == [0] and rebuilt["steps"] == 4
    assert abs(rebuilt["seconds_to_best"] - sp["seconds_to_best"]) < 1.0


def test_set_changes_one_param_and_names_a_bad_one():
    from twinhead.errors import TwinheadError
    from twinhead.params import BaseConfig, load_config
    from twinhead.train import TrainConfig

    params = load_config({"base": BaseConfig, "train": TrainConfig}, ROOT / "params.yaml")
    out = spacy_peer.apply_sets(params, ["train.threads=2", "train.lr=0.006"])
    assert (out["train"].threads, out["train"].lr, out["train"].batch_size) == (2, 0.006, params["train"].batch_size)
    with pytest.raises(TwinheadError, match="train.threads"):
        spacy_peer.apply_sets(params, ["train.threads=-1"])
    with pytest.raises(TwinheadError, match="SECTION.KEY=VALUE"):
        spacy_peer.apply_sets(params, ["model.word_dim=8"])  # a section this run did not load
