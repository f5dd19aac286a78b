"""Scores: intent accuracy / macro-F1 / per-class P/R/F1, span-level slot F1, sentence accuracy.

Slot F1 is exact span match, micro-averaged, with conlleval's chunking (the same as seqeval's
default mode): an I-x that does not continue an x chunk starts a new one.
"""

from __future__ import annotations

from collections import Counter

from twinhead.text import bio_to_spans


def _prf(tp: int, n_pred: int, n_gold: int) -> dict:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f, "support": n_gold}


def slot_scores(gold: list[list[str]], pred: list[list[str]]) -> dict:
    """Micro-averaged span P/R/F1 over all sentences, plus the same per slot type."""
    tp, n_pred, n_gold = Counter(), Counter(), Counter()
    for g, p in zip(gold, pred, strict=True):
        if len(g) != len(p):
            raise ValueError(f"gold has {len(g)} tags but prediction {len(p)}")
        gs, ps = set(bio_to_spans(g)), set(bio_to_spans(p))
        for s in gs:
            n_gold[s[2]] += 1
        for s in ps:
            n_pred[s[2]] += 1
        for s in gs & ps:
            tp[s[2]] += 1
    micro = _prf(sum(tp.values()), sum(n_pred.values()), sum(n_gold.values()))
    per_type = {t: _prf(tp[t], n_pred[t], n_gold[t]) for t in sorted(set(n_gold) | set(n_pred))}
    return {"micro": micro, "per_type": per_type}


def intent_scores(gold: list[str], pred: list[str]) -> dict:
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    # scikit-learn's default label set for macro averaging: gold and predicted labels together
    labels = sorted(set(gold) | set(pred))
    p, r, f, s = precision_recall_fscore_support(gold, pred, labels=labels, zero_division=0)
    return {
        "accuracy": float(accuracy_score(gold, pred)),
        "macro_f1": float(f1_score(gold, pred, labels=labels, average="macro", zero_division=0)),
        "macro_f1_labels": labels,
        "per_class": {
            lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, lab in enumerate(labels)
        },
    }


def label_scores(gold: list[str], pred: list[str], sep: str) -> dict:
    """Multi-label sentences (labels joined by `sep`): exact-set accuracy, micro P/R/F1 over single
    labels, and P/R/F1 per single label."""
    tp, n_pred, n_gold = Counter(), Counter(), Counter()
    exact = 0
    for g, p in zip(gold, pred, strict=True):
        gs, ps = set(g.split(sep)) - {""}, set(p.split(sep)) - {""}
        exact += gs == ps
        n_gold.update(gs)
        n_pred.update(ps)
        tp.update(gs & ps)
    return {
        "exact_set_accuracy": exact / len(gold) if gold else 0.0,
        "micro": _prf(sum(tp.values()), sum(n_pred.values()), sum(n_gold.values())),
        "per_label": {lab: _prf(tp[lab], n_pred[lab], n_gold[lab]) for lab in sorted(set(n_gold) | set(n_pred))},
    }


def span_scores(gold: list, pred: list) -> dict:
    """Micro P/R/F1 of exact (start, end, label) matches, per sentence, over all sentences."""
    tp = n_pred = n_gold = 0
    for g, p in zip(gold, pred, strict=True):
        g, p = set(map(tuple, g)), set(map(tuple, p))
        tp += len(g & p)
        n_pred += len(p)
        n_gold += len(g)
    return _prf(tp, n_pred, n_gold)


def sentence_accuracy(gold_intents, pred_intents, gold_tags, pred_tags) -> float:
    """Share of sentences whose intent and every tag are right."""
    n = len(gold_intents)
    ok = sum(gi == pi and list(gt) == list(pt)
             for gi, pi, gt, pt in zip(gold_intents, pred_intents, gold_tags, pred_tags, strict=True))
    return ok / n if n else 0.0


def summary(gold_intents, pred_intents, gold_tags, pred_tags) -> dict:
    """The headline numbers (the keys of metrics/eval.json and the dev columns of train_log.csv)."""
    slots = slot_scores(gold_tags, pred_tags)
    intents = intent_scores(list(gold_intents), list(pred_intents))
    return {
        "intent_accuracy": intents["accuracy"],
        "intent_macro_f1": intents["macro_f1"],
        "slot_precision": slots["micro"]["precision"],
        "slot_recall": slots["micro"]["recall"],
        "slot_f1": slots["micro"]["f1"],
        "sentence_accuracy": sentence_accuracy(gold_intents, pred_intents, gold_tags, pred_tags),
    }, intents, slots
