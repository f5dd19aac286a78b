"""The "twinhead" spaCy component: doc.cats and doc.ents from a bundle, alone and inside a pipeline."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import spacy
import torch
from spacy.language import Language
from spacy.tokens import Doc

from tests.test_bundle import TEXTS, make_bundle, make_model
from twinhead.errors import TwinheadError
from twinhead.predictor import Predictor
from twinhead.spacy_component import TwinheadComponent, annotate, make_twinhead

ROOT = Path(__file__).resolve().parents[1]
INTENTS = {"GetWeather", "PlayMusic", "SetAlarm"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("spacy-bundle"))[1]


@pytest.fixture(scope="module")
def fixed_bundle(tmp_path_factory) -> Path:
    """Every kept word is B-artist, the intent SetAlarm with probability e^4 / (e^4 + 2)."""
    model, vocabs = make_model()
    with torch.no_grad():
        model.tag_head.proj.weight.zero_()
        model.tag_head.proj.bias.zero_()
        model.tag_head.proj.bias[vocabs.tags.itos.index("B-artist")] = 5.0
        model.intent_head.mlp[-1].weight.zero_()
        model.intent_head.mlp[-1].bias.copy_(torch.tensor([0.0, 0.0, 4.0]))
    return make_bundle(tmp_path_factory.mktemp("spacy-fixed"), model, vocabs)[1]


def blank(bundle: Path, *before: str) -> Language:
    nlp = spacy.blank("en")
    for name in before:
        nlp.add_pipe(name)
    nlp.add_pipe("twinhead", config={"bundle": str(bundle)})
    return nlp


def ents(doc: Doc) -> list[tuple[int, int, str]]:
    return [(e.start_char, e.end_char, e.label_) for e in doc.ents]


def test_hand_checked_cats_and_ents(fixed_bundle):
    doc = blank(fixed_bundle)("Play the Beatles now, please")
    top = np.exp(4) / (np.exp(4) + 2)
    assert doc.cats == pytest.approx({"GetWeather": 1 / (np.exp(4) + 2), "PlayMusic": 1 / (np.exp(4) + 2),
                                      "SetAlarm": top})
    # "the" and "now" are removable stop words: O
    assert [(e.text, e.label_) for e in doc.ents] == [("Play", "artist"), ("Beatles", "artist"), (",", "artist"),
                                                     ("please", "artist")]
    # one-token entities: the confidence is the token's softmax probability of B-artist (bias 5, the others 0)
    n_tags = len(Predictor(fixed_bundle).vocabs.tags.itos)
    assert [e._.confidence for e in doc.ents] == pytest.approx([np.exp(5) / (np.exp(5) + n_tags - 1)] * 4, rel=1e-3)


def test_cats_and_ents_are_the_predictors(bundle):
    nlp = blank(bundle)
    preds = Predictor(bundle).predict(TEXTS)
    for text, pred in zip(TEXTS, preds):
        doc = nlp(text)
        assert set(doc.cats) == INTENTS
        assert sum(doc.cats.values()) == pytest.approx(1.0)
        assert max(doc.cats, key=doc.cats.get) == pred["intent"]
        assert doc.cats[pred["intent"]] == pytest.approx(pred["probability"])
        assert ents(doc) == [(e["start"], e["end"], e["label"]) for e in pred["entities"]]
        # one doc at a time here, all texts in one batch there: equal up to float rounding
        assert [e._.confidence for e in doc.ents] == pytest.approx([e["confidence"] for e in pred["entities"]])


def test_pipe_equals_one_doc_at_a_time(bundle):
    nlp = blank(bundle)
    texts = [TEXTS[0], "", TEXTS[1], "   ", *TEXTS[2:]]  # blank docs in the middle of a batch
    piped = list(nlp.pipe(texts, batch_size=2))
    assert [d.text for d in piped] == texts
    for doc, text in zip(piped, texts):
        one = nlp(text)
        assert doc.cats == pytest.approx(one.cats) and ents(doc) == ents(one)
    assert [(d.cats, ents(d)) for d in piped if not d.text.strip()] == [({}, []), ({}, [])]
    assert all(set(d.cats) == INTENTS for d in piped if d.text.strip())


def test_spans_expand_to_the_docs_tokens(fixed_bundle):
    """The doc's tokenizer cuts differently from the bundle's: an entity inside a doc token grows to that
    token, and two that then cover the same token become one."""
    nlp = blank(fixed_bundle)
    words = ["Play", "Rüdiger's", "song", "now,", "please"]
    doc = Doc(nlp.vocab, words=words, spaces=[True, True, True, True, False])
    # The bundle tokenizes Rüdiger / 's and now / , ("now" is a stop word, "," gets B-artist).
    assert [(e["text"]) for e in Predictor(fixed_bundle).predict([doc.text])[0]["entities"]] == [
        "Play", "Rüdiger", "'s", "song", ",", "please"]
    doc = nlp.get_pipe("twinhead")(doc)
    assert [(e.text, e.label_) for e in doc.ents] == [("Play", "artist"), ("Rüdiger's", "artist"),
                                                     ("song", "artist"), ("now,", "artist"), ("please", "artist")]


def test_confidence_goes_to_the_span_extension():
    nlp = spacy.blank("en")
    doc = nlp("wake me up at 7 am")
    pred = {"entities": [{"start": 14, "end": 18, "label": "time", "confidence": 0.25},
                         {"start": 0, "end": 4, "label": "verb"}]}
    annotate(doc, pred, {"SetAlarm": 0.9})
    assert [(e.text, e.label_, e._.confidence) for e in doc.ents] == [("wake", "verb", None), ("7 am", "time", 0.25)]
    assert doc.cats == {"SetAlarm": 0.9}


@Language.component("read_intent", requires=["doc.cats"])
def read_intent(doc: Doc) -> Doc:
    """A downstream component that acts on the intent twinhead set."""
    doc.user_data["intent"] = max(doc.cats, key=doc.cats.get) if doc.cats else None
    return doc


def test_inside_a_pipeline(fixed_bundle):
    nlp = blank(fixed_bundle, "sentencizer")
    nlp.add_pipe("read_intent")
    assert nlp.pipe_names == ["sentencizer", "twinhead", "read_intent"]
    docs = list(nlp.pipe(["wake me up. Play the Beatles!", "rain in Paris?"]))
    assert [[s.text for s in d.sents] for d in docs] == [["wake me up.", "Play the Beatles!"], ["rain in Paris?"]]
    assert [d.user_data["intent"] for d in docs] == ["SetAlarm", "SetAlarm"]
    assert [e.text for e in docs[0].ents] == ["wake", "me", "up", ".", "Play", "Beatles", "!"]
    assert nlp.get_pipe_meta("twinhead").assigns == ["doc.cats", "doc.ents", "span._.confidence"]


def test_missing_bundle_is_one_clear_error(tmp_path):
    with pytest.raises(TwinheadError, match=str(tmp_path / "nope")):
        spacy.blank("en").add_pipe("twinhead", config={"bundle": str(tmp_path / "nope")})


def test_component_config_reaches_the_predictor(bundle):
    nlp = spacy.blank("en")
    comp = nlp.add_pipe("twinhead", config={"bundle": str(bundle), "batch_size": 2})
    assert isinstance(comp, TwinheadComponent) and comp.batch_size == 2
    assert nlp.config["components"]["twinhead"] == {"factory": "twinhead", "bundle": str(bundle), "batch_size": 2,
                                                    "device": "cpu"}


# --- the spacy_factories entry point -------------------------------------------------------------


def entry_point() -> str:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return meta["project"]["entry-points"]["spacy_factories"]["twinhead"]


def test_pyproject_entry_point_names_the_factory():
    module, _, attr = entry_point().partition(":")
    assert getattr(importlib.import_module(module), attr) is make_twinhead
    assert Language.get_factory_meta("twinhead").factory == "twinhead"


def test_spacy_finds_the_component_through_the_entry_point(bundle, tmp_path):
    """A fresh interpreter whose code never imports twinhead.spacy_component: with the entry point declared
    (as pyproject.toml does; here in a stand-in dist-info, so the shared environment stays as it is) spaCy
    finds the factory, without it spaCy does not."""
    site = tmp_path / "site"
    dist = site / "twinhead_entry_point_probe-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: twinhead-entry-point-probe\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(f"[spacy_factories]\ntwinhead = {entry_point()}\n")
    code = (
        "import json, spacy\n"
        "nlp = spacy.blank('en')\n"
        f"nlp.add_pipe('twinhead', config={{'bundle': {str(bundle)!r}}})\n"
        "doc = nlp('wake me up at 7 am')\n"
        "print(json.dumps({'cats': sorted(doc.cats), 'pipes': nlp.pipe_names}))\n"
    )

    def run(*path: Path) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, [ROOT / "src", *path]))}
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)

    res = run(site)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"cats": sorted(INTENTS), "pipes": ["twinhead"]}
    installed = [ep.value for ep in importlib.metadata.entry_points(group="spacy_factories", name="twinhead")]
    if installed:  # the environment's twinhead was installed from a tree with the entry point: the same one
        assert installed == [entry_point()]
    else:  # without the declaration spaCy does not know the name: the stand-in is what made it work
        res = run()
        assert res.returncode != 0 and "Can't find factory for 'twinhead'" in res.stderr


def test_the_entry_point_module_is_cheap_to_import():
    """spaCy imports every spacy_factories entry point whenever it builds any pipeline (spacy.blank too):
    the module must not load the predictor (and what it needs) until a twinhead component is made."""
    code = ("import sys, twinhead.spacy_component; "
            "print(sorted(m for m in sys.modules if m.startswith('twinhead.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "twinhead.predictor" not in out and "twinhead.spacy_component" in out
