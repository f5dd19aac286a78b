"""Evaluation on a processed split: summary metrics, per-class details, errors, intent confusion."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from twinhead import fileio
from twinhead.inference import predict_mapped
from twinhead.metrics import summary
from twinhead.text import bio_to_spans


@dataclass
class EvalResult:
    summary: dict  # headline numbers (metrics/eval.json)
    details: dict  # per-intent and per-slot-type P/R/F1
    errors: list[dict]  # every wrong sentence
    confusion: list[dict]  # {"actual", "predicted"} per sentence (DVC confusion plot)


def _spans(tokens: list[str], tags: list[str]) -> list[dict]:
    return [{"text": " ".join(tokens[s:e]), "label": t, "start": s, "end": e} for s, e, t in bio_to_spans(tags)]


def evaluate(model, vocabs, df: pd.DataFrame, batch_size: int = 256, progress=None) -> EvalResult:
    pred_intents, probs, pred_tags = predict_mapped(model, vocabs, df, batch_size, progress)
    gold_tags = [list(t) for t in df["tags"]]
    gold_intents = list(df["intent"])
    head, intents, slots = summary(gold_intents, pred_intents, gold_tags, pred_tags)
    head = {"sentences": len(df), **head}
    unseen = sorted(set(gold_intents) - set(vocabs.intents.itos))
    details = {"intent": intents, "slot": slots, "intents_unseen_in_train": unseen}
    errors = []
    for k, (toks, gi, pi, gt, pt) in enumerate(zip(df["tokens"], gold_intents, pred_intents, gold_tags, pred_tags)):
        toks = list(toks)
        if gi == pi and gt == pt:
            continue
        errors.append({
            "source": df["source"].iloc[k],
            "tokens": toks,
            "gold_intent": gi,
            "pred_intent": pi,
            "pred_probability": round(float(probs[k].max()), 4),
            "intent_wrong": gi != pi,
            "gold_spans": _spans(toks, gt),
            "pred_spans": _spans(toks, pt),
            "gold_tags": gt,
            "pred_tags": pt,
        })
    confusion = [{"actual": g, "predicted": p} for g, p in zip(gold_intents, pred_intents)]
    return EvalResult(head, details, errors, confusion)


def confusion_png(records: list[dict], path: str | Path, title: str = "intent confusion (test)") -> None:
    """The intent confusion matrix as a PNG (rows: actual, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    labels = sorted({r["actual"] for r in records} | {r["predicted"] for r in records})
    cm = confusion_matrix([r["actual"] for r in records], [r["predicted"] for r in records], labels=labels)
    size = max(5.0, 0.45 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    vmax = cm.max() if cm.size else 0
    for i in range(len(labels)):
        for j in range(len(labels)):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > vmax / 2 else "black")
    fig.tight_layout()
    with fileio.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
