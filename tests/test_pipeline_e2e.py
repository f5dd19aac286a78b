"""End to end: `dvc repro` in a temporary copy of the repo on a small sample, then predict."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.conftest import env_with_venv, run, set_params

pytestmark = pytest.mark.e2e


def ran_stages(output: str) -> list[str]:
    return [s for s in ("preprocess", "vocab", "train", "evaluate", "export") if f"Running stage '{s}'" in output]


def test_dvc_repro_end_to_end(tiny_repo, tmp_path):
    env = env_with_venv(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db")
    # 12 epochs (~6 s on 240 sentences): after 2 the tiny model still answers the majority intent and tags
    # nothing, and the early-stopping pick on the one-intent dev sample is epoch 1.
    set_params(tiny_repo, {"train": {"epochs": 12}})
    out = run(["dvc", "repro"], tiny_repo, env)
    assert ran_stages(out.stdout) == ["preprocess", "vocab", "train", "evaluate", "export"]

    # Outputs: processed splits, vocab, checkpoint, metrics, bundle.
    test_df = pd.read_parquet(tiny_repo / "data/processed/test.parquet")
    assert len(test_df) == 40
    assert all(len(t) == len(g) for t, g in zip(test_df["tokens"], test_df["tags"]))
    data = json.loads((tiny_repo / "metrics/data.json").read_text())
    assert data["train"]["sentences"] == 240 and data["test"]["sentences"] == 40
    ev = json.loads((tiny_repo / "metrics/eval.json").read_text())
    assert ev["sentences"] == 40
    # The tiny model learned something: better than always answering the most frequent training intent,
    # and some predicted spans exactly right (type and boundaries; slot F1 > 0 iff a span is right).
    train_df = pd.read_parquet(tiny_repo / "data/processed/train.parquet")
    majority = train_df["intent"].value_counts().idxmax()
    baseline = (test_df["intent"] == majority).mean()
    assert ev["intent_accuracy"] > baseline, (ev["intent_accuracy"], majority, baseline)
    details = json.loads((tiny_repo / "metrics/eval_details.json").read_text())
    right_spans = sum(round(c["recall"] * c["support"]) for c in details["slot"]["per_type"].values())
    assert ev["slot_f1"] > 0 and right_spans > 0
    log = pd.read_csv(tiny_repo / "metrics/train_log.csv")
    assert list(log["epoch"]) == list(range(1, 13))
    assert {"train_intent_loss", "train_tags_loss", "train_grad_cosine", "dev_intent_accuracy", "dev_slot_f1",
            "dev_sentence_accuracy", "seconds"} <= set(log.columns)
    errors = [json.loads(x) for x in (tiny_repo / "metrics/errors.jsonl").read_text().splitlines()]
    # errors.jsonl lists exactly the sentences that are not fully right.
    assert len(errors) == round((1 - ev["sentence_accuracy"]) * 40)
    confusion = json.loads((tiny_repo / "metrics/intent_confusion.json").read_text())
    assert len(confusion) == 40 and set(confusion[0]) == {"actual", "predicted"}
    assert sum(r["actual"] == r["predicted"] for r in confusion) == round(ev["intent_accuracy"] * 40)
    from sklearn.metrics import f1_score

    actual, predicted = [r["actual"] for r in confusion], [r["predicted"] for r in confusion]
    assert ev["intent_macro_f1"] == pytest.approx(f1_score(actual, predicted, labels=sorted(set(actual)),
                                                           average="macro", zero_division=0))
    assert (tiny_repo / "metrics/intent_confusion.png").read_bytes()[:4] == b"\x89PNG"
    # Calibration: the temperature fitted on dev travels in the bundle; eval.json scores the bundle's
    # probabilities and the unscaled ones; the reliability diagram sits beside the confusion matrix.
    bundle_cfg = json.loads((tiny_repo / "models/export/config.json").read_text())
    assert bundle_cfg["calibration"]["fitted_on"] == "dev"
    assert ev["intent_temperature"] == bundle_cfg["calibration"]["temperature"] > 0
    assert 0 <= ev["intent_ece"] <= 1 and 0 <= ev["intent_ece_uncalibrated"] <= 1
    assert (tiny_repo / "metrics/intent_reliability.png").read_bytes()[:4] == b"\x89PNG"
    for err in errors:
        assert err["pred_top_intents"][0]["intent"] == err["pred_intent"]
        assert all(0 < e["confidence"] <= 1 for e in err["pred_spans"])

    # DVC sees the metrics and plots.
    shown = run(["dvc", "metrics", "show", "--json"], tiny_repo, env).stdout
    assert "slot_f1" in shown
    run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], tiny_repo, env)
    assert (tmp_path / "plots" / "index.html").exists()

    # A second repro does nothing; changing train.epochs reruns train and what follows it only.
    again = run(["dvc", "repro"], tiny_repo, env)
    assert ran_stages(again.stdout) == []
    set_params(tiny_repo, {"train": {"epochs": 1}})
    partial = run(["dvc", "repro"], tiny_repo, env)
    assert ran_stages(partial.stdout) == ["train", "evaluate", "export"]

    # The exported bundle predicts on raw text through the console script.
    res = run(["twinhead", "predict", "--bundle", "models/export", "play the new album by the beatles"],
              tiny_repo, env)
    pred = json.loads(res.stdout)
    assert set(pred) >= {"intent", "probability", "top_intents", "entities", "tokens", "tags"}
    assert len(pred["top_intents"]) == min(3, len(bundle_cfg["intents"]))
    assert pred["top_intents"][0] == {"intent": pred["intent"], "probability": pred["probability"]}
    assert all(0 < e["confidence"] <= 1 for e in pred["entities"])
    assert len(pred["tokens"]) == len(pred["tags"]) == 7
    for e in pred["entities"]:
        assert "play the new album by the beatles"[e["start"]:e["end"]] == e["text"]

    # --input: a file of lines -> JSONL, one prediction per line, in order.
    (tmp_path / "in.txt").write_text("add this song to my playlist\nwhat is the weather in rome\n")
    run(["twinhead", "predict", "-q", "--bundle", "models/export", "--input", str(tmp_path / "in.txt"),
         "--output", str(tmp_path / "out.jsonl")], tiny_repo, env)
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == ["add this song to my playlist", "what is the weather in rome"]


def test_bad_input_stops_preprocess_with_file_and_line(tiny_repo):
    seq_out = tiny_repo / "data/raw/tiny/train/seq.out"
    lines = seq_out.read_text().split("\n")
    lines[4] = lines[4] + " O"
    seq_out.write_text("\n".join(lines))
    res = run(["dvc", "repro", "preprocess"], tiny_repo, check=False)
    assert res.returncode != 0
    assert "seq.out:5:" in res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    assert not (tiny_repo / "data/processed").exists()


def test_single_task_pipeline_exports_and_scores_only_its_task(tiny_repo, tmp_path):
    """train.tasks: [tags] through every stage: the bundle says so, eval.json has no intent scores, and
    prediction gives entities but no intent."""
    set_params(tiny_repo, {"train": {"tasks": ["tags"], "epochs": 3}})
    env = env_with_venv(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db")
    out = run(["dvc", "repro"], tiny_repo, env)
    assert "(no intent head)" in out.stdout
    ev = json.loads((tiny_repo / "metrics/eval.json").read_text())
    assert "slot_f1" in ev and "raw_slot_f1" in ev and ev["raw_slot_f1"] == ev["slot_f1"]
    assert not {k for k in ev if "intent" in k or k.startswith(("sentence_", "raw_sentence"))}
    assert json.loads((tiny_repo / "models/export/config.json").read_text())["tasks"] == ["tags"]
    res = run(["twinhead", "predict", "--bundle", "models/export", "play the beatles"], tiny_repo, env)
    pred = json.loads(res.stdout)
    assert pred["intent"] is None and pred["probability"] is None and len(pred["tags"]) == 3
