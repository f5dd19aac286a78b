"""Other languages, raw text with character spans: JSONL in German, French, Arabic and Chinese (no spaces between
words) through preprocess, vocab, training, export and `Predictor.predict`; the entities come back as the gold
character offsets of the text as given."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_fast_predict import HAS_ORT
from twinhead.checkpoint import build_model, save_checkpoint
from twinhead.errors import TwinheadError
from twinhead.export import export_bundle
from twinhead.model import ModelConfig
from twinhead.predictor import Predictor
from twinhead.preprocess import PreprocessConfig, preprocess
from twinhead.train import TrainConfig, train
from twinhead.vocab import build_vocabs

# (text, intent, [(entity text, label), ...]): each entity's first occurrence in the text is its span.
SENTENCES = {
    "de": [("Spiele das neue Album von Die Ärzte auf Spotify", "play",
            [("Die Ärzte", "artist"), ("Spotify", "service")]),
           ("Wie wird das Wetter morgen in München?", "weather", [("morgen", "date"), ("München", "city")]),
           ("Weck mich um 7 Uhr morgens", "alarm", [("7 Uhr morgens", "time")]),
           ("Eine Fahrkarte nach Köln-Süd, bitte.", "travel", [("Köln-Süd", "city")])],
    # spaCy splits the elisions (l', d') off the word they precede: a span may start right after one
    "fr": [("Joue l'album de Stromae sur Deezer", "play", [("Stromae", "artist"), ("Deezer", "service")]),
           ("Quel temps fera-t-il demain à Paris ?", "weather", [("demain", "date"), ("Paris", "city")]),
           ("Réveille-moi à 7 h", "alarm", [("7 h", "time")]),
           ("Un billet pour l'Île-de-France", "travel", [("Île-de-France", "city")])],
    "ar": [("شغل ألبوم فيروز على سبوتيفاي", "play", [("فيروز", "artist"), ("سبوتيفاي", "service")]),
           ("كيف الطقس غدا في القاهرة", "weather", [("غدا", "date"), ("القاهرة", "city")]),
           ("أيقظني الساعة السابعة", "alarm", [("الساعة السابعة", "time")]),
           ("تذكرة إلى دبي", "travel", [("دبي", "city")])],
    # spacy.blank("zh") segments by character: every character is a token
    "zh": [("在网易云音乐播放周杰伦的新专辑", "play", [("网易云音乐", "service"), ("周杰伦", "artist")]),
           ("明天北京天气怎么样", "weather", [("明天", "date"), ("北京", "city")]),
           ("早上七点叫醒我", "alarm", [("早上七点", "time")]),
           ("去上海的火车票", "travel", [("上海", "city")])],
}


def gold(text: str, entities: list[tuple[str, str]]) -> list[dict]:
    spans = []
    for surface, label in entities:
        start = text.index(surface)
        spans.append({"start": start, "end": start + len(surface), "label": label})
    return spans


def write_jsonl(folder: Path, lang: str, copies: dict[str, int]) -> Path:
    folder.mkdir(parents=True)
    for split, n in copies.items():
        rows = [{"text": t, "label": y, "entities": gold(t, ents)} for t, y, ents in SENTENCES[lang]] * n
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                               encoding="utf-8")
    return folder


def trained_bundle(tmp: Path, lang: str) -> Path:
    """The whole pipeline in this process, on a small model that learns the four sentences by heart."""
    raw = write_jsonl(tmp / "raw", lang, {"train": 8, "dev": 1, "test": 1})
    frames, meta, report, _ = preprocess(raw, None, PreprocessConfig(lang=lang), seed=1)
    assert report["train"]["sentences"] == 32 and report["train"]["skipped_lines"] == 0
    tr, dev = frames["train"], frames["dev"]
    vocabs = build_vocabs(tr["words"], tr["intent"], tr["word_tags"])
    mcfg = ModelConfig(word_dim=16, char_dim=8, char_filters=8, hidden_size=16, num_layers=1, dropout=0.0)
    tcfg = TrainConfig(epochs=40, batch_size=8, lr=0.02, patience=0, word_dropout=0.0, calibrate=False)
    result = train(tr, dev, vocabs, mcfg, tcfg, seed=3, progress=False)
    assert result.best_scores["dev_sentence_accuracy"] == 1.0, result.best_scores
    model = build_model(result.model_config.to_dict(), vocabs)
    model.load_state_dict(result.best_state)
    save_checkpoint(tmp / "model.pt", model, vocabs, meta, {"best_epoch": result.best_epoch})
    export_bundle(tmp / "model.pt", tmp / "bundle", onnx=HAS_ORT)
    return tmp / "bundle"


@pytest.mark.parametrize("lang", sorted(SENTENCES))
def test_raw_text_in_other_languages_gets_its_entities_back_as_character_spans(tmp_path, lang):
    bundle = trained_bundle(tmp_path, lang)
    predictor = Predictor(bundle)
    assert json.loads((bundle / "config.json").read_text())["preprocess"]["lang"] == lang
    texts = [t for t, _, _ in SENTENCES[lang]]
    # The same texts with whitespace around and inside them: offsets point into the text as given.
    def pad(t: str) -> str:
        return t.replace(" ", "  ")

    for given, surface in ((texts, str), (["  " + pad(t) + "\t" for t in texts], pad)):
        preds = predictor.predict(given)
        for text, pred, (_, intent, ents) in zip(given, preds, SENTENCES[lang]):
            assert pred["intent"] == intent, (text, pred)
            spans = [{"start": e["start"], "end": e["end"], "label": e["label"]} for e in pred["entities"]]
            assert spans == gold(text, [(surface(s), y) for s, y in ents]), (text, pred["entities"])
            assert all(text[e["start"]: e["end"]] == e["text"] for e in pred["entities"])


def test_a_language_that_needs_another_package_is_one_clear_error(tmp_path):
    """spaCy's Japanese tokenizer needs SudachiPy, which twinhead does not install: preprocess says so."""
    try:
        import sudachipy  # noqa: F401
        pytest.skip("SudachiPy is installed here")
    except ImportError:
        pass
    raw = write_jsonl(tmp_path / "raw", "zh", {"train": 1, "dev": 1, "test": 1})
    with pytest.raises(TwinheadError, match=r"preprocess\.lang='ja': spaCy's tokenizer for it needs a package "
                       r"that is not installed: .*SudachiPy") as err:
        preprocess(raw, None, PreprocessConfig(lang="ja"), seed=1)
    assert "not a language spaCy knows" not in str(err.value)
