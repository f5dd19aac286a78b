"""Evaluation of an exported bundle on a processed split: summary metrics (processed and raw-text
paths), per-class details, errors, intent confusion."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from twinhead.calibration import expected_calibration_error
from twinhead.inference import intent_probs, predict_frame, span_confidences, top_labels
from twinhead.metrics import label_scores, span_scores, summary
from twinhead.params import PosInt, section
from twinhead.plots import confusion_png  # noqa: F401  (drawn in twinhead.plots; callers import it from here)
from twinhead.text import char_spans


@section
class EvaluateConfig:
    split: Literal["train", "dev", "test"] = "test"  # the split scored into metrics/eval.json
    batch_size: PosInt = 256


@dataclass
class EvalResult:
    summary: dict  # headline numbers (metrics/eval.json)
    details: dict  # per-intent and per-slot-type P/R/F1
    errors: list[dict]  # every wrong sentence
    confusion: list[dict]  # {"actual", "predicted"} per sentence (DVC confusion plot)
    confidence: list[float]  # the intent probability of each sentence, as the bundle gives it (calibrated)
    intent_right: list[bool]  # whether its intent is right (reliability diagram)


def _spans(text: str, spans) -> list[dict]:
    return [{"text": text[s:e], "label": t, "start": s, "end": e} for s, e, t in spans]


def _sig(x: float) -> float:
    """4 significant digits: a long entity's confidence can be far below 1e-4 and still tell something."""
    return float(f"{x:.4g}")


def _pred_spans(text: str, toks: list[str], offs: list[int], tags: list[str], tag_probs) -> list[dict]:
    """Predicted entities as Predictor.predict gives them: with their confidence."""
    out = []
    for s, e, t, conf in span_confidences(tags, tag_probs):
        start, end = offs[s], offs[e - 1] + len(toks[e - 1])
        out.append({"text": text[start:end], "label": t, "start": start, "end": end, "confidence": _sig(conf)})
    return out


def intent_confidence(model, probs: np.ndarray) -> list[float]:
    """The intent probability the Predictor reports: the top probability, or (multi-label) that of the least
    probable label of the set predicted."""
    return [float(min(row[k] for k in ks)) for row, ks in zip(probs, model.intent_head.decide(probs))]


def calibration_scores(model, logits: np.ndarray, confidence: list[float], right: list[bool],
                       temperature: float) -> dict:
    """intent_ece of the confidences as given (temperature-scaled), intent_ece_uncalibrated of those at
    temperature 1, and the temperature."""
    raw = intent_confidence(model, intent_probs(model, logits, 1.0))
    return {"intent_ece": expected_calibration_error(confidence, right),
            "intent_ece_uncalibrated": expected_calibration_error(raw, right),
            "intent_temperature": temperature}


def raw_text_scores(predictor, df: pd.DataFrame, batch_size: int = 256) -> tuple[dict, list[dict]]:
    """Each sentence's text through Predictor.predict (what `twinhead predict` does), scored on
    character spans against the gold spans. Returns the raw_* headline numbers and the predictions."""
    preds = predictor.predict(list(df["text"]), batch_size, where="evaluation text")
    gold = [char_spans(list(t), [int(x) for x in o], list(g))
            for t, o, g in zip(df["tokens"], df["offsets"], df["tags"])]
    pred = [[(e["start"], e["end"], e["label"]) for e in p["entities"]] for p in preds]
    gold_intents = [predictor.model.canonical_label(i) for i in df["intent"]]
    slots = span_scores(gold, pred)
    ok = sum(gi == p["intent"] and set(g) == set(ps) for gi, p, g, ps in zip(gold_intents, preds, gold, pred))
    n = len(df)
    scores = {
        "raw_intent_accuracy": sum(gi == p["intent"] for gi, p in zip(gold_intents, preds)) / n if n else 0.0,
        "raw_slot_precision": slots["precision"],
        "raw_slot_recall": slots["recall"],
        "raw_slot_f1": slots["f1"],
        "raw_sentence_accuracy": ok / n if n else 0.0,
    }
    return scores, preds


TASK_METRICS = {"intent": ("intent_",), "tags": ("slot_",)}


def only_trained(summary: dict, tasks: list[str]) -> dict:
    """A single-task model's summary without the scores of the task it never learned (and without
    sentence accuracy, which needs both)."""
    if set(tasks) >= set(TASK_METRICS):
        return summary
    drop = tuple(p for t, ps in TASK_METRICS.items() if t not in tasks for p in ps) + ("sentence_",)
    return {k: v for k, v in summary.items()
            if not k.removeprefix("raw_").startswith(drop) and k != "raw_disagreements"}


def evaluate(predictor, df: pd.DataFrame, batch_size: int = 256, progress=None, top_k: int = 3) -> EvalResult:
    """Score a processed split with an exported bundle's model, twice: on the processed words (the
    pipeline's tokens, gold tags on them) and on the raw text through the Predictor (raw_* keys).

    The intent probabilities are the bundle's (temperature-scaled); their calibration error goes into the
    summary (intent_ece, intent_ece_uncalibrated, intent_temperature). Each error record carries the
    predicted side as Predictor.predict gives it: the top_k intents and each entity's confidence."""
    model, vocabs = predictor.model, predictor.vocabs
    pred = predict_frame(model, vocabs, df, batch_size, progress, temperature=predictor.temperature,
                         tag_probs=True)
    pred_intents, probs, pred_tags = pred.intents, pred.probs, pred.tags
    gold_tags = [list(t) for t in df["tags"]]
    gold_intents = [model.canonical_label(i) for i in df["intent"]]  # multi-label: exact-set match
    head, intents, slots = summary(gold_intents, pred_intents, gold_tags, pred_tags)
    right = [g == p for g, p in zip(gold_intents, pred_intents)]
    calib_conf = intent_confidence(model, probs)
    calib = calibration_scores(model, pred.logits, calib_conf, right, predictor.temperature)
    tops = top_labels(model, vocabs, probs, top_k)
    raw, raw_preds = raw_text_scores(predictor, df, batch_size)
    head = {"sentences": len(df), **head, **calib, **raw,
            "raw_disagreements": sum(p["intent"] != i or p["tags"] != t
                                     for p, i, t in zip(raw_preds, pred_intents, pred_tags))}
    head = only_trained(head, predictor.tasks)
    unseen = sorted(set(gold_intents) - set(vocabs.intents.itos))
    details = {"intent": intents, "slot": slots, "intents_unseen_in_train": unseen}
    if model.intent_head.multi_label:
        details["intent_labels"] = label_scores(gold_intents, pred_intents, model.cfg.label_sep)
    errors = []
    rows = zip(df["text"], df["tokens"], df["offsets"], gold_intents, pred_intents, gold_tags, pred_tags,
               pred.tag_probs)
    for k, (text, toks, offs, gi, pi, gt, pt, tp) in enumerate(rows):
        if gi == pi and gt == pt:
            continue
        toks, offs = [str(t) for t in toks], [int(o) for o in offs]  # numpy values from Parquet are not JSON
        errors.append({
            "source": df["source"].iloc[k],
            "text": text,
            "tokens": toks,
            "gold_intent": gi,
            "pred_intent": pi,
            "pred_probability": round(calib_conf[k], 4),
            "pred_top_intents": [{**t, "probability": _sig(t["probability"])} for t in tops[k]],
            "intent_wrong": gi != pi,
            "gold_spans": _spans(text, char_spans(toks, offs, gt)),
            "pred_spans": _pred_spans(text, toks, offs, pt, tp),
            "gold_tags": gt,
            "pred_tags": pt,
        })
    confusion = [{"actual": g, "predicted": p} for g, p in zip(gold_intents, pred_intents)]
    return EvalResult(head, details, errors, confusion, calib_conf, right)

