"""displaCy pages of predictions and of evaluation errors, checked in the DOM a real browser renders:
`twinhead predict --html`, twinhead.render, and the evaluate stage's errors.html and slot_f1.png."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.browser import dom
from tests.test_cli import cli, one_error_line
from tests.test_spacy_component import fixed_bundle  # noqa: F401  (a fixture)
from twinhead.evaluate import evaluate
from twinhead.predictor import Predictor
from twinhead.preprocess import through_pipeline, to_frame
from twinhead.readers import Example
from twinhead.render import errors_html, predictions_html

ROOT = Path(__file__).resolve().parents[1]
P_SETALARM = f"{np.exp(4) / (np.exp(4) + 2):.3f}"  # the fixed bundle's intent probability
TEXTS = ["Play the Beatles now, please", "wake me\nup at 7 am"]


class Blocks(HTMLParser):
    """displaCy's blocks as (title, [(entity text, label)]), in page order."""

    def __init__(self):
        super().__init__()
        self.blocks: list[tuple[str | None, list[tuple[str, str]]]] = []
        self._in: str | None = None  # "h2", "mark" or "label"
        self._buf = ""

    def handle_starttag(self, tag, attrs):
        cls = dict(attrs).get("class")
        if tag == "figure":
            self.blocks.append((None, []))
        elif tag == "h2":
            self._in, self._buf = "h2", ""
        elif tag == "mark" and cls == "entity":
            self._in, self._buf = "mark", ""
        elif tag == "span" and self._in == "mark":
            self.blocks[-1][1].append((" ".join(self._buf.split()), ""))
            self._in, self._buf = "label", ""

    def handle_endtag(self, tag):
        if tag == "h2" and self._in == "h2":
            self.blocks[-1] = (" ".join(self._buf.split()), self.blocks[-1][1])
            self._in = None
        elif tag == "span" and self._in == "label":
            text, _ = self.blocks[-1][1][-1]
            self.blocks[-1][1][-1] = (text, self._buf.strip())
            self._in = None

    def handle_data(self, data):
        if self._in:
            self._buf += data


def rendered(path: Path) -> list[tuple[str | None, list[tuple[str, str]]]]:
    page = dom(path)
    parser = Blocks()
    parser.feed(page)
    assert "<mark" not in page or parser.blocks, "displaCy's <figure> blocks are missing"
    return parser.blocks


def expected_blocks(preds: list[dict]) -> list[tuple[str, list[tuple[str, str]]]]:
    return [(f"{p['intent']} ({p['probability']:.3f})", [(" ".join(e["text"].split()), e["label"])
                                                         for e in p["entities"]]) for p in preds]


# --- twinhead predict --html ---------------------------------------------------------------------


def test_predict_html_for_text_arguments(fixed_bundle, tmp_path):  # noqa: F811
    page = tmp_path / "out.html"
    res = cli(fixed_bundle, "--html", str(page), *TEXTS)
    assert res.returncode == 0, res.stderr
    assert [json.loads(line)["text"] for line in res.stdout.decode().splitlines()] == TEXTS  # still printed
    blocks = rendered(page)
    assert blocks == [
        (f"SetAlarm ({P_SETALARM})", [("Play", "artist"), ("Beatles", "artist"), (",", "artist"),
                                      ("please", "artist")]),
        (f"SetAlarm ({P_SETALARM})", [("wake", "artist"), ("me", "artist"), ("up", "artist"), ("at", "artist"),
                                      ("7", "artist"), ("am", "artist")]),
    ]
    assert blocks == expected_blocks(Predictor(fixed_bundle).predict(TEXTS))


def test_predict_html_for_an_input_file_in_batches(fixed_bundle, tmp_path):  # noqa: F811
    texts = ["rain in Paris", "Play the Beatles now", "the by now", "wake me up"]
    src, page, out = tmp_path / "in.txt", tmp_path / "pages" / "p.html", tmp_path / "out.jsonl"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    res = cli(fixed_bundle, "--input", str(src), "--batch-size", "3", "--output", str(out), "--html", str(page))
    assert res.returncode == 0, res.stderr
    assert f"wrote 4 predictions as HTML to {page}" in res.stderr.decode()
    preds = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    blocks = rendered(page)
    assert blocks == expected_blocks(preds)
    assert blocks[2][1] == [("the", "artist"), ("by", "artist"), ("now", "artist")]  # only stop words: all kept


def test_predict_html_into_a_folder_is_one_line(fixed_bundle, tmp_path):  # noqa: F811
    res = cli(fixed_bundle, "--html", str(tmp_path), "wake me up")
    assert one_error_line(res) == f"error: --html {tmp_path}: is a folder; give a file name"


def test_predict_html_unwritable_is_one_line(fixed_bundle, tmp_path):  # noqa: F811
    (tmp_path / "file").write_text("x")
    target = tmp_path / "file" / "out.html"
    res = cli(fixed_bundle, "--html", str(target), "wake me up")
    assert one_error_line(res).startswith(f"error: --html {target}: cannot write the page: ")


def test_labels_and_intents_are_text_not_markup(tmp_path):
    preds = [{"text": "see <b>you</b> at 7", "intent": "<i>Greet</i>", "probability": 0.5,
              "entities": [{"text": "<b>you</b>", "label": "<u>who</u>", "start": 4, "end": 14}]}]
    page = tmp_path / "p.html"
    page.write_text(predictions_html(preds), encoding="utf-8")
    assert rendered(page) == [("<i>Greet</i> (0.500)", [("<b>you</b>", "<u>who</u>")])]
    body = dom(page)
    assert not re.search(r"<(b|i|u)>", body)  # no element was made from the data


def test_tags_only_model_has_no_intent_title(tmp_path):
    preds = [{"text": "wake me up", "intent": None, "probability": None,
              "entities": [{"text": "wake", "label": "verb", "start": 0, "end": 4}]}]
    page = tmp_path / "p.html"
    page.write_text(predictions_html(preds), encoding="utf-8")
    assert rendered(page) == [(None, [("wake", "verb")])]


# --- errors.html -------------------------------------------------------------------------------


def processed(predictor: Predictor, rows: list[tuple[list[str], list[str], str]]) -> pd.DataFrame:
    """A processed split as the evaluate stage reads it (through Parquet)."""
    exs = [Example(words, tags, intent, f"test.bio:{k}") for k, (words, tags, intent) in enumerate(rows, start=1)]
    buf = io.BytesIO()
    to_frame(through_pipeline(exs, predictor.text), predictor.text).to_parquet(buf)
    return pd.read_parquet(buf)


ROWS = [
    (["play", "the", "beatles"], ["O", "O", "B-artist"], "PlayMusic"),  # intent and slots wrong
    (["beatles"], ["B-artist"], "SetAlarm"),  # right: not an error
    (["wake", "me"], ["B-artist", "B-artist"], "GetWeather"),  # only the intent wrong
    (["alarm", "by", "7"], ["B-time", "O", "B-artist"], "SetAlarm"),  # only the slots wrong
]


def test_errors_html_gold_over_predicted(fixed_bundle, tmp_path):  # noqa: F811
    predictor = Predictor(fixed_bundle)
    res = evaluate(predictor, processed(predictor, ROWS), batch_size=2)
    errors = [json.loads(json.dumps(e)) for e in res.errors]  # as read back from errors.jsonl
    page = tmp_path / "errors.html"
    page.write_text(errors_html(errors), encoding="utf-8")
    pred = f"predicted: SetAlarm ({P_SETALARM})"
    assert rendered(page) == [
        ("1. gold: PlayMusic (test.bio:1)", [("beatles", "artist")]),
        (f"{pred} ✗ intent", [("play", "artist"), ("beatles", "artist")]),
        ("2. gold: GetWeather (test.bio:3)", [("wake", "artist"), ("me", "artist")]),
        (f"{pred} ✗ intent", [("wake", "artist"), ("me", "artist")]),
        ("3. gold: SetAlarm (test.bio:4)", [("alarm", "time"), ("7", "artist")]),
        (pred, [("alarm", "artist"), ("7", "artist")]),
    ]


def test_errors_html_without_errors(tmp_path):
    page = tmp_path / "errors.html"
    page.write_text(errors_html([]), encoding="utf-8")
    assert rendered(page) == [(None, [])]
    assert "Every sentence was predicted right" in dom(page)


# --- the evaluate stage ------------------------------------------------------------------------


def test_evaluate_stage_writes_and_logs_the_pictures(fixed_bundle, tmp_path):  # noqa: F811
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(exp).info.run_id
    (tmp_path / "run.json").write_text(json.dumps({"tracking_uri": uri, "run_id": run_id, "reason": None}))
    predictor = Predictor(fixed_bundle)
    (tmp_path / "processed").mkdir()
    processed(predictor, ROWS).to_parquet(tmp_path / "processed" / "test.parquet")
    (tmp_path / "processed" / "meta.json").write_text(json.dumps(  # what preprocess records of the dataset
        {"dataset": {"name": "tiny", "path": "data/raw/tiny", "digest": "0123456789abcdef.dir"}}))
    params = {"evaluate": {"split": "test", "batch_size": 2}, "mlflow": {"enabled": True}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    res = subprocess.run([sys.executable, str(ROOT / "stages" / "evaluate.py"), str(fixed_bundle), "processed",
                          "run.json", "metrics"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert res.returncode == 0, res.stderr
    assert "WARNING" not in res.stderr
    metrics = tmp_path / "metrics"
    blocks = rendered(metrics / "errors.html")
    assert [b[0] for b in blocks[::2]] == ["1. gold: PlayMusic (test.bio:1)", "2. gold: GetWeather (test.bio:3)",
                                           "3. gold: SetAlarm (test.bio:4)"]
    details = json.loads((metrics / "eval_details.json").read_text())
    assert set(details["slot"]["per_type"]) == {"artist", "time"}
    for name in ("slot_f1.png", "intent_confusion.png", "intent_reliability.png"):
        data = (metrics / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    logged = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert {"evaluation/errors.html", "evaluation/slot_f1.png", "evaluation/intent_confusion.png",
            "evaluation/errors.jsonl"} <= logged


@pytest.mark.parametrize("name", ["errors.html", "slot_f1.png"])
def test_dvc_yaml_declares_the_new_outputs(name):
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["evaluate"]
    declared = {next(iter(o)) if isinstance(o, dict) else o: o for o in stage.get("outs", []) + stage.get("plots", [])}
    assert declared[f"metrics/{name}"] == {f"metrics/{name}": {"cache": False}}
    if name.endswith(".png"):
        assert f"metrics/{name}" in [next(iter(p)) for p in stage["plots"]]
