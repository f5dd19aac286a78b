"""Predictions as displaCy HTML pages: entities highlighted in the text, the intent above it.

`predictions_html` renders what Predictor.predict returns (`twinhead predict --html`); `errors_html`
renders the rows of metrics/errors.jsonl, each sentence twice: the gold annotation over the prediction.
Both use displaCy's entity style on manually given character spans, so the text shows exactly as it was
given (spacing, line breaks), whatever tokenizer produced the spans.
"""

from __future__ import annotations

import html
import zlib
from collections.abc import Iterable

# Light tones (black text stays readable on them) for the slot types. A type's colour comes from a hash of
# its name, so it is the same on every page (predictions, errors) and in every run.
PALETTE = ("#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d",
           "#9edae5", "#fdd0a2", "#c7e9c0", "#dadaeb", "#fcbba1", "#c6dbef", "#e5d8bd", "#d9d9d9")


def _colors(labels: Iterable[str]) -> dict[str, str]:
    # displaCy looks colours up by the upper-cased label.
    return {lab.upper(): PALETTE[zlib.crc32(lab.encode("utf-8")) % len(PALETTE)] for lab in set(labels)}


def _ents(spans: list[dict]) -> list[dict]:
    # displaCy escapes the entity text but not the label: a label is data, it must not become markup.
    return [{"start": s["start"], "end": s["end"], "label": html.escape(s["label"])} for s in spans]


def _render(docs: list[dict], labels: Iterable[str]) -> str:
    from spacy import displacy

    return displacy.render(docs, style="ent", manual=True, page=True, options={"colors": _colors(labels)})


def intent_title(intent: str | None, probability: float | None, prefix: str = "") -> str | None:
    """The heading above a text: its intent and probability (escaped: displaCy inserts titles as markup)."""
    if intent is None:  # a tags-only model predicts no intent
        return html.escape(prefix.rstrip(": ")) or None
    p = f" ({probability:.3f})" if probability is not None else ""
    return html.escape(f"{prefix}{intent}{p}")


def predictions_html(preds: list[dict]) -> str:
    """One displaCy block per prediction ({"text", "intent", "probability", "entities": [{"start", "end",
    "label"}]}), titled with the intent and its probability."""
    docs = [{"text": p["text"], "ents": _ents(p["entities"]), "title": intent_title(p["intent"], p["probability"])}
            for p in preds]
    return _render(docs, (html.escape(e["label"]) for p in preds for e in p["entities"]))


def errors_html(errors: list[dict]) -> str:
    """Every wrong sentence (rows of errors.jsonl) twice: the gold annotation, then the prediction below it.

    The rows carry gold_spans and pred_spans as character offsets into their `text` (twinhead.evaluate
    writes them from the BIO tags), so the sentence shows as it was in the data.
    """
    docs = []
    for k, e in enumerate(errors, start=1):
        mark = "  ✗ intent" if e["intent_wrong"] else ""
        docs.append({"text": e["text"], "ents": _ents(e["gold_spans"]),
                     "title": html.escape(f"{k}. gold: {e['gold_intent']}   ({e['source']})")})
        docs.append({"text": e["text"], "ents": _ents(e["pred_spans"]),
                     "title": intent_title(e["pred_intent"], e["pred_probability"], "predicted: ") + mark})
    if not docs:
        docs = [{"text": "Every sentence was predicted right: no errors to show.", "ents": [], "title": None}]
    labels = (html.escape(s["label"]) for e in errors for s in [*e["gold_spans"], *e["pred_spans"]])
    return _render(docs, labels)
