"""Checkpoint round trip, weights-only loading, bundle export and integrity, and the Predictor on raw text."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from twinhead.bundle import write_manifest
from twinhead.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from twinhead.errors import DataError, TwinheadError
from twinhead.export import export_bundle
from twinhead.inference import predict_mapped
from twinhead.model import JointModel, ModelConfig
from twinhead.predictor import Predictor
from twinhead.text import keep_positions, normalize
from twinhead.vocab import build_vocabs

REMOVABLE = ["by", "now", "the"]
PREPROCESS = {"lang": "en", "lowercase": True, "remove_stopwords": True, "removable_stopwords": REMOVABLE}
TRAIN_WORDS = [["play", "beatles", "spotify"], ["wake", "7", "am"], ["rain", "paris", "tomorrow"]]
TEXTS = [
    "Play the Beatles on Spotify now",
    "  wake me up at 7 am\t",
    "will it rain tomorrow in Paris?",
    "the by now",  # only stop words: kept whole
    "Rüdiger's café, São Paulo",
]


def make_model(seed: int = 0, **cfg_kw):
    vocabs = build_vocabs(TRAIN_WORDS, ["PlayMusic", "SetAlarm", "GetWeather"],
                          [["O", "B-artist", "B-service"], ["O", "B-time", "I-time"], ["O", "B-city", "O"]])
    # the softmax tag head: the hand-checked tests below set its weights and compute its arithmetic
    cfg = dict(word_dim=8, char_dim=4, char_filters=4, char_kernel=3, hidden_size=8, num_layers=1, dropout=0.1,
               tag_decoder="softmax")
    cfg.update(cfg_kw)
    torch.manual_seed(seed)
    model = JointModel(ModelConfig(**cfg), len(vocabs.words), len(vocabs.chars), vocabs.tags.itos,
                       len(vocabs.intents))
    return model.eval(), vocabs


def make_bundle(tmp_path: Path, model=None, vocabs=None, calibration: dict | None = None) -> tuple[Path, Path]:
    if model is None:
        model, vocabs = make_model()
    ckpt = tmp_path / "model.pt"
    extra = {"best_epoch": 3, "dev_scores": {"slot_f1": 0.5}}
    if calibration is not None:
        extra["calibration"] = calibration
    save_checkpoint(ckpt, model, vocabs, PREPROCESS, extra)
    bundle = tmp_path / "bundle"
    export_bundle(ckpt, bundle)
    return ckpt, bundle


# --- checkpoint ---------------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path):
    model, vocabs = make_model()
    path = tmp_path / "sub" / "model.pt"
    save_checkpoint(path, model, vocabs, PREPROCESS, {"best_epoch": 3})
    loaded, lvocabs, ckpt = load_checkpoint(path)
    assert ckpt["format"] == FORMAT
    assert ckpt["best_epoch"] == 3
    assert ckpt["preprocess"] == PREPROCESS
    assert loaded.cfg == model.cfg
    assert lvocabs.to_lists() == vocabs.to_lists()
    assert loaded.tags == vocabs.tags.itos
    assert not loaded.training
    ref, got = model.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left


def test_load_checkpoint_missing_file(tmp_path):
    with pytest.raises(TwinheadError, match="file not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_load_checkpoint_wrong_format(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"format": "something-else", "state_dict": {}}, path)
    with pytest.raises(TwinheadError, match="not a twinhead checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("data", [b"", b"PK\x03\x04not really a zip"])
def test_load_checkpoint_not_a_torch_file(tmp_path, data):
    path = tmp_path / "junk.pt"
    path.write_bytes(data)
    with pytest.raises(TwinheadError, match="not a readable torch checkpoint") as exc:
        load_checkpoint(path)
    assert str(exc.value).startswith(f"{path}: ")


@pytest.mark.parametrize("data", [b"this is not a checkpoint", b"hello world\n"])
def test_load_checkpoint_text_file_is_a_user_error(tmp_path, data):
    path = tmp_path / "junk.pt"
    path.write_bytes(data)
    with pytest.raises(TwinheadError) as exc:
        load_checkpoint(path)
    assert str(exc.value).startswith(f"{path}: ")


def test_load_checkpoint_weights_not_matching_vocab(tmp_path):
    model, vocabs = make_model()
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, vocabs, PREPROCESS, {})
    ckpt = torch.load(path, weights_only=True)
    ckpt["vocabs"]["words"].append("extra")
    torch.save(ckpt, path)
    with pytest.raises(TwinheadError, match="weights do not match the model config and vocabularies"):
        load_checkpoint(path)


class _Payload:
    """Pickles as a call to os.system: what a malicious checkpoint would contain."""

    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def test_crafted_pickle_checkpoint_is_refused_not_executed(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    model, vocabs = make_model()
    torch.save({"format": FORMAT, "state_dict": model.state_dict(), "model_config": model.cfg.to_dict(),
                "vocabs": vocabs.to_lists(), "preprocess": PREPROCESS,
                "payload": _Payload(f"echo pwned > '{marker}'")}, path)
    with pytest.raises(TwinheadError) as exc:
        load_checkpoint(path)
    assert str(path) in str(exc.value)
    assert "refused to load" in str(exc.value)
    assert not marker.exists()
    with pytest.raises(TwinheadError):
        export_bundle(path, tmp_path / "bundle")
    assert not marker.exists()
    assert not (tmp_path / "bundle").exists()


# --- export + Predictor -------------------------------------------------------------------------


def test_export_writes_bundle_files(tmp_path):
    _, bundle = make_bundle(tmp_path)
    names = ["config.json", "manifest.json", "model.safetensors", "vocab.json"]
    assert sorted(p.name for p in bundle.iterdir()) == names
    cfg = json.loads((bundle / "config.json").read_text(encoding="utf-8"))
    assert cfg["format"] == "twinhead-bundle/3"
    assert cfg["calibration"] == {"temperature": 1.0, "fitted_on": None}  # a checkpoint without one
    assert cfg["intents"] == ["GetWeather", "PlayMusic", "SetAlarm"]
    assert cfg["slot_types"] == ["artist", "city", "service", "time"]
    assert cfg["preprocess"] == PREPROCESS
    assert cfg["trained"] == {"best_epoch": 3, "dev_scores": {"slot_f1": 0.5}}
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["format"] == "twinhead-manifest/1"
    assert sorted(manifest["files"]) == [n for n in names if n != "manifest.json"]  # every other file
    for name, entry in manifest["files"].items():
        data = (bundle / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def test_predictor_entities_index_into_the_text(tmp_path):
    _, bundle = make_bundle(tmp_path)
    pred = Predictor(bundle)
    out = pred.predict(TEXTS)
    assert [o["text"] for o in out] == TEXTS
    for o in out:
        assert len(o["tags"]) == len(o["tokens"])
        assert o["intent"] in {"GetWeather", "PlayMusic", "SetAlarm"}
        assert 0 < o["probability"] <= 1
        for ent in o["entities"]:
            assert o["text"][ent["start"] : ent["end"]] == ent["text"]
            assert ent["text"] == ent["text"].strip() and ent["text"]
    assert out[1]["tokens"] == ["wake", "me", "up", "at", "7", "am"]
    # removed stop words always get O
    first = out[0]
    assert [first["tags"][i] for i, t in enumerate(first["tokens"]) if t.lower() in REMOVABLE] == ["O", "O"]


def hand_set_model(b_artist_bias: float = 5.0):
    """Every kept word becomes B-artist, the intent logits are (0, 0, 4): SetAlarm."""
    model, vocabs = make_model()
    b_artist = vocabs.tags.itos.index("B-artist")
    with torch.no_grad():
        model.tag_head.proj.weight.zero_()
        model.tag_head.proj.bias.zero_()
        model.tag_head.proj.bias[b_artist] = b_artist_bias
        model.intent_head.mlp[-1].weight.zero_()
        model.intent_head.mlp[-1].bias.copy_(torch.tensor([0.0, 0.0, 4.0]))
    return model, vocabs


def test_predictor_hand_checked_output(tmp_path):
    model, vocabs = hand_set_model()
    _, bundle = make_bundle(tmp_path, model, vocabs)
    text = "  Play  the Beatles\tnow, please"
    (out,) = Predictor(bundle).predict([text])
    assert out["tokens"] == ["Play", "the", "Beatles", "now", ",", "please"]
    assert out["tags"] == ["B-artist", "O", "B-artist", "O", "B-artist", "B-artist"]
    assert out["intent"] == "SetAlarm"
    assert out["probability"] == pytest.approx(np.exp(4) / (np.exp(4) + 2))
    # the other two intents tie at 1 / (e^4 + 2); ties keep the vocabulary's order
    assert out["top_intents"] == [
        {"intent": "SetAlarm", "probability": pytest.approx(np.exp(4) / (np.exp(4) + 2))},
        {"intent": "GetWeather", "probability": pytest.approx(1 / (np.exp(4) + 2))},
        {"intent": "PlayMusic", "probability": pytest.approx(1 / (np.exp(4) + 2))},
    ]
    k = len(vocabs.tags)
    conf = pytest.approx(np.exp(5) / (np.exp(5) + k - 1))  # one-token entities: the softmax prob of B-artist
    assert out["entities"] == [
        {"text": "Play", "label": "artist", "start": 2, "end": 6, "confidence": conf},
        {"text": "Beatles", "label": "artist", "start": 12, "end": 19, "confidence": conf},
        {"text": ",", "label": "artist", "start": 23, "end": 24, "confidence": conf},
        {"text": "please", "label": "artist", "start": 25, "end": 31, "confidence": conf},
    ]


def test_top_k_lists_that_many_intents_at_most(tmp_path):
    model, vocabs = hand_set_model()
    _, bundle = make_bundle(tmp_path, model, vocabs)
    pred = Predictor(bundle)
    assert [t["intent"] for t in pred.predict(["play"], top_k=1)[0]["top_intents"]] == ["SetAlarm"]
    assert len(pred.predict(["play"], top_k=10)[0]["top_intents"]) == 3  # there are only three intents
    with pytest.raises(TwinheadError, match="top_k must be a positive integer, not 0"):
        pred.predict(["play"], top_k=0)


def test_the_bundle_temperature_scales_intent_probabilities_not_decisions(tmp_path):
    model, vocabs = hand_set_model()
    _, bundle = make_bundle(tmp_path, model, vocabs, calibration={"temperature": 2.0, "fitted_on": "dev"})
    pred = Predictor(bundle)
    assert pred.temperature == 2.0
    (out,) = pred.predict(["play the beatles"])
    assert out["intent"] == "SetAlarm"  # the argmax is the same at any temperature
    # logits (0, 0, 4) / 2 = (0, 0, 2)
    assert out["probability"] == pytest.approx(np.exp(2) / (np.exp(2) + 2))
    assert [t["probability"] for t in out["top_intents"]] == pytest.approx(
        [np.exp(2) / (np.exp(2) + 2), 1 / (np.exp(2) + 2), 1 / (np.exp(2) + 2)])
    # the tag head is not scaled
    k = len(vocabs.tags)
    assert out["entities"][0]["confidence"] == pytest.approx(np.exp(5) / (np.exp(5) + k - 1))


def test_predictor_multi_token_entity_offsets(tmp_path):
    model, vocabs = make_model()
    b, i = vocabs.tags.itos.index("B-time"), vocabs.tags.itos.index("I-time")
    with torch.no_grad():  # B-time then I-time on every kept word: one chunk per run of kept words
        model.tag_head.proj.weight.zero_()
        model.tag_head.proj.bias.zero_()
        model.tag_head.proj.bias[b] = 3.0
        model.tag_head.proj.bias[i] = 5.0
    _, bundle = make_bundle(tmp_path, model, vocabs)
    text = "wake  me up at 7\tam"
    (out,) = Predictor(bundle).predict([text])
    assert out["tags"] == ["B-time", "I-time", "I-time", "I-time", "I-time", "I-time"]
    # confidence: the product of the decoded tags' softmax probabilities, B-time once then I-time five times
    z = np.exp(3) + np.exp(5) + len(vocabs.tags) - 2
    conf = np.exp(3) / z * (np.exp(5) / z) ** 5
    assert out["entities"] == [{"text": "wake  me up at 7\tam", "label": "time", "start": 0, "end": 19,
                                "confidence": pytest.approx(conf)}]


def test_predict_tokens_equals_predict_mapped_through_checkpoint(tmp_path):
    ckpt, bundle = make_bundle(tmp_path)
    token_lists = [t.split() for t in TEXTS] + [["x"] * 70]
    got = Predictor(bundle).predict_tokens(token_lists)
    model, vocabs, meta = load_checkpoint(ckpt)
    removable = frozenset(meta["preprocess"]["removable_stopwords"])
    keeps = [keep_positions(t, removable) for t in token_lists]
    df = pd.DataFrame({"tokens": token_lists, "keep": keeps,
                       "words": [[normalize(t[i], True) for i in k] for t, k in zip(token_lists, keeps)]})
    intents, probs, tags = predict_mapped(model, vocabs, df)
    assert [g["intent"] for g in got] == intents
    assert [g["tags"] for g in got] == tags
    assert [g["tokens"] for g in got] == token_lists
    np.testing.assert_allclose([g["probability"] for g in got], probs.max(1), atol=1e-6)


# --- bundle integrity: every refusal names the file and the reason ------------------------------


def refusal(bundle: Path) -> str:
    with pytest.raises(TwinheadError) as exc:
        Predictor(bundle)
    msg = str(exc.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


def edit_json(path: Path, edit) -> None:
    obj = json.loads(path.read_text(encoding="utf-8"))
    edit(obj)
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def set_in(keys: tuple[str, ...], value):
    def edit(obj):
        for k in keys[:-1]:
            obj = obj[k]
        obj[keys[-1]] = value
    return edit


@pytest.fixture
def bundle(tmp_path) -> Path:
    return make_bundle(tmp_path)[1]


@pytest.mark.parametrize("keys,value", [
    (("preprocess", "removable_stopwords"), ["by", "now"]),
    (("preprocess", "removable_stopwords"), ["by", "now", "thy"]),  # same size: only the hash can tell
    (("preprocess", "lowercase"), False),
    (("model_config", "overlong"), "truncate"),
    (("model_config", "max_len"), 32),
    (("intents",), ["GetWeather", "SetAlarm", "PlayMusic"]),  # informational fields are covered too
], ids=["stopwords-removed", "stopwords-same-size", "lowercase", "overlong", "max_len", "intents"])
def test_edited_config_is_refused(bundle, keys, value):
    path = bundle / "config.json"
    before = json.loads(path.read_text(encoding="utf-8"))
    edit_json(path, set_in(keys, value))
    assert json.loads(path.read_text(encoding="utf-8")) != before
    msg = refusal(bundle)
    assert msg.startswith(f"{path}: edited after export (")
    assert "re-export the model" in msg


def test_config_edit_keeping_size_is_caught_by_the_hash(bundle):
    path = bundle / "config.json"
    text = path.read_text(encoding="utf-8")
    assert '"the"' in text
    path.write_text(text.replace('"the"', '"thy"'), encoding="utf-8")
    assert refusal(bundle) == (f"{path}: edited after export (its sha256 differs from the one recorded in "
                               "manifest.json); re-export the model")


def test_bundle_with_edited_vocab_is_refused(bundle):
    path = bundle / "vocab.json"
    lists = json.loads(path.read_text(encoding="utf-8"))
    lists["intents"] = list(reversed(lists["intents"]))  # same sizes: only the hash can tell
    path.write_text(json.dumps(lists, ensure_ascii=False), encoding="utf-8")
    msg = refusal(bundle)
    assert msg.startswith(f"{path}: edited after export")
    assert "sha256" in msg


def test_bundle_with_replaced_weights_is_refused(tmp_path, bundle):
    _, other = make_bundle(tmp_path / "other", *make_model(seed=1))
    path = bundle / "model.safetensors"
    path.write_bytes((other / "model.safetensors").read_bytes())  # same size, other values
    msg = refusal(bundle)
    assert msg.startswith(f"{path}: edited after export")
    assert "sha256" in msg


def test_truncated_weights_are_refused_by_size(bundle):
    path = bundle / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    assert refusal(bundle) == (f"{path}: edited after export (size {len(data) - 10} bytes, {len(data)} recorded "
                               "in manifest.json); re-export the model")


def test_garbled_vocab_is_refused_before_it_is_parsed(bundle):
    path = bundle / "vocab.json"
    path.write_bytes(b"{not json")
    assert refusal(bundle).startswith(f"{path}: edited after export")


@pytest.mark.parametrize("name", ["model.safetensors", "vocab.json", "config.json"])
def test_deleted_file_is_refused(bundle, name):
    (bundle / name).unlink()
    assert refusal(bundle) == (f"{bundle / name}: missing from the bundle (listed in manifest.json); "
                               "re-export the model")


def test_deleted_manifest_is_refused(bundle):
    (bundle / "manifest.json").unlink()
    assert refusal(bundle).startswith(f"{bundle / 'manifest.json'}: missing, so the bundle's files cannot be "
                                      "checked")


def garble_manifest(kind: str):
    def edit(m):
        files = m["files"]
        if kind == "format":
            m["format"] = "something-else"
        elif kind == "files-not-object":
            m["files"] = list(files)
        elif kind == "bad-digest":
            files["vocab.json"]["sha256"] = "xyz"
        elif kind == "size-not-int":
            files["vocab.json"]["size"] = "343"
        elif kind == "path-outside":
            files["../config.json"] = files.pop("config.json")
        elif kind == "unlisted-config":
            del files["config.json"]
    return edit


@pytest.mark.parametrize("kind,fragment", [
    ("not-json", "garbled bundle manifest (not JSON"),
    ("truncated", "garbled bundle manifest (not JSON"),
    ("not-utf8", "garbled bundle manifest (not JSON"),
    ("array", "garbled bundle manifest (format 'list'"),
    ("format", "garbled bundle manifest (format 'something-else'"),
    ("files-not-object", "garbled bundle manifest (field 'files' must be an object)"),
    ("bad-digest", "garbled bundle manifest (entry 'vocab.json' must be"),
    ("size-not-int", "garbled bundle manifest (entry 'vocab.json' must be"),
    ("path-outside", "garbled bundle manifest (entry '../config.json' must be"),
    ("unlisted-config", "does not list config.json"),
])
def test_garbled_manifest_is_refused(bundle, kind, fragment):
    path = bundle / "manifest.json"
    if kind == "not-json":
        path.write_text("manifest", encoding="utf-8")
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    elif kind == "not-utf8":
        path.write_bytes(b"\xff\xfe{}")
    elif kind == "array":
        path.write_text("[]", encoding="utf-8")
    else:
        edit_json(path, garble_manifest(kind))
    msg = refusal(bundle)
    assert msg.startswith(f"{path}: ") and fragment in msg, msg


@pytest.mark.parametrize("name", ["notes.txt", ".hidden", "config.json~", "extra-folder"])
def test_file_added_after_export_is_refused(bundle, name):
    path = bundle / name
    if name == "extra-folder":
        path.mkdir()
    else:
        path.write_text("x", encoding="utf-8")
    assert refusal(bundle) == (f"{path}: not part of the bundle (not listed in manifest.json: added after "
                               "export); remove it or re-export the model")


def rewrite_config(bundle: Path, edit) -> Path:
    """Edit config.json and re-record the manifest, as a careless hand-made bundle would: what is left to
    catch is the config's own shape."""
    path = bundle / "config.json"
    edit_json(path, edit)
    write_manifest(bundle)
    return path


@pytest.mark.parametrize("field", ["format", "model_config", "preprocess", "sizes", "calibration"])
def test_config_missing_a_required_field_is_refused(bundle, field):
    path = rewrite_config(bundle, lambda c: c.pop(field))
    assert refusal(bundle) == f"{path}: missing field {field!r}"


@pytest.mark.parametrize("field,value,message", [
    ("model_config", [], "field 'model_config' must be an object, not list"),
    ("preprocess", "en", "field 'preprocess' must be an object, not str"),
    ("sizes", None, "field 'sizes' must be an object, not NoneType"),
    ("format", 1, "field 'format' must be a string, not int"),
    ("format", "twinhead-bundle/1", "bundle format 'twinhead-bundle/1', expected 'twinhead-bundle/3'"),
    ("calibration", 2.0, "field 'calibration' must be an object, not float"),
    ("calibration", {"temperature": 0}, "field 'calibration.temperature' must be a number > 0, got 0"),
    ("calibration", {"temperature": -1.5}, "field 'calibration.temperature' must be a number > 0, got -1.5"),
    ("calibration", {"temperature": "2"}, "field 'calibration.temperature' must be a number > 0, got '2'"),
    ("calibration", {}, "field 'calibration.temperature' must be a number > 0, got None"),
    ("sizes", {"words": 1}, "field 'sizes' must map words, chars, intents, tags to integers"),
])
def test_config_field_of_the_wrong_type_is_refused(bundle, field, value, message):
    path = rewrite_config(bundle, set_in((field,), value))
    assert refusal(bundle).startswith(f"{path}: {message}")


def test_bundle_of_the_previous_format_is_refused_with_advice(bundle):
    """A /2 bundle (before calibration was recorded) has no 'calibration' field: its format is what is named."""
    def to_v2(c):
        c["format"] = "twinhead-bundle/2"
        c.pop("calibration")

    path = rewrite_config(bundle, to_v2)
    assert refusal(bundle) == (f"{path}: bundle format 'twinhead-bundle/2', expected 'twinhead-bundle/3'; "
                               "re-export the model with this version of twinhead")


def test_config_not_an_object_is_refused(bundle):
    path = bundle / "config.json"
    path.write_text("[1, 2]", encoding="utf-8")
    write_manifest(bundle)
    assert refusal(bundle) == f"{path}: must hold a JSON object, not list"


def test_vocab_sizes_must_match_the_config(bundle):
    path = bundle / "vocab.json"
    edit_json(path, lambda v: v["words"].append("extra"))
    write_manifest(bundle)
    assert "vocabulary sizes" in refusal(bundle)


def test_untouched_bundle_still_loads_after_a_refusal_check(bundle):
    write_manifest(bundle)  # re-recording unchanged files changes nothing
    assert Predictor(bundle).predict(["play the beatles"])[0]["tokens"] == ["play", "the", "beatles"]


@pytest.mark.parametrize("kind", ["empty", "missing", "file"])
def test_not_a_bundle(tmp_path, kind):
    path = tmp_path / "bundle"
    if kind == "empty":
        path.mkdir()
    elif kind == "file":
        path.write_text("x", encoding="utf-8")
    with pytest.raises(TwinheadError, match="not a twinhead bundle") as exc:
        Predictor(path)
    assert str(exc.value).startswith(f"{path}: ")


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_text_is_a_data_error_naming_its_position(tmp_path, text):
    _, bundle = make_bundle(tmp_path)
    pred = Predictor(bundle)
    with pytest.raises(DataError) as exc:
        pred.predict(["hello there", text], where="request")
    assert exc.value.line == 2
    assert str(exc.value) == "request:2: text is empty or whitespace only"


def test_non_string_text_is_a_data_error(tmp_path):
    _, bundle = make_bundle(tmp_path)
    with pytest.raises(DataError, match="input:1: text must be a string, got NoneType"):
        Predictor(bundle).predict([None])
