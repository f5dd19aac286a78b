"""How far the intent probabilities can be trusted: expected calibration error, temperature scaling and the
reliability diagram.

A model is calibrated when, among the sentences it predicts with confidence ~0.8, ~80% are right. The
confidence of a prediction is its top probability (max-probability confidence), the expected calibration
error (ECE) the mean gap |accuracy - confidence| over 15 equal-width confidence bins, weighted by the
share of sentences in each (Guo et al., 2017, "On Calibration of Modern Neural Networks").

Temperature scaling divides the sentence logits by one scalar T > 0 fitted on the dev split (minimum
negative log-likelihood). It never changes the argmax, so accuracy stays the same; T > 1 softens
over-confident probabilities. Only the single-label (softmax) head is scaled: with per-label sigmoids
(sentence_head: multi) the decisions are thresholds on the probabilities, which a temperature would move.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

N_BINS = 15
T_BOUNDS = (0.01, 100.0)  # the search range of T: far beyond any useful value


@dataclass
class Bin:
    lower: float
    upper: float
    count: int
    confidence: float  # mean confidence of the predictions in the bin (NaN when empty)
    accuracy: float  # share of them that are right (NaN when empty)


def reliability_bins(confidence, correct, n_bins: int = N_BINS) -> list[Bin]:
    """Predictions grouped by confidence into equal-width bins (lower, upper] of [0, 1] (0 goes to the first)."""
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    if conf.shape != ok.shape or conf.ndim != 1:
        raise ValueError(f"confidence and correct must be 1-D of one length, got {conf.shape} and {ok.shape}")
    if conf.size and (np.isnan(conf).any() or conf.min() < 0 or conf.max() > 1):
        raise ValueError("confidences must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        sel = idx == b
        n = int(sel.sum())
        bins.append(Bin(float(edges[b]), float(edges[b + 1]), n,
                        float(conf[sel].mean()) if n else float("nan"), float(ok[sel].mean()) if n else float("nan")))
    return bins


def expected_calibration_error(confidence, correct, n_bins: int = N_BINS) -> float:
    """sum over bins of |bin| / N * |accuracy - mean confidence|; 0.0 for no predictions."""
    bins = reliability_bins(confidence, correct, n_bins)
    total = sum(b.count for b in bins)
    if not total:
        return 0.0
    return float(sum(b.count / total * abs(b.accuracy - b.confidence) for b in bins if b.count))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature. (N, L) -> (N, L)"""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of the labels (N,) under softmax(logits / temperature) (N, L)."""
    from scipy.special import logsumexp

    z = np.asarray(logits, dtype=np.float64) / temperature
    labels = np.asarray(labels, dtype=np.int64)
    return float(np.mean(logsumexp(z, 1) - z[np.arange(len(labels)), labels]))


def fit_temperature(logits, labels) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T) on (logits (N, L), label ids (N,)).

    A bounded 1-D search on log T (the NLL is smooth and has one minimum in log T when it has one at all).
    Returns 1.0 for no data, and when every argmax is right: the NLL then keeps falling as T -> 0, and a
    "fitted" T near 0 would report probability 1 for everything, whatever the unseen data holds.
    """
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"logits must be (N, L) and labels (N,), got {logits.shape} and {labels.shape}")
    if not len(labels) or (logits.argmax(1) == labels).all():
        return 1.0
    lo, hi = np.log(T_BOUNDS[0]), np.log(T_BOUNDS[1])
    res = minimize_scalar(lambda log_t: nll(logits, labels, float(np.exp(log_t))), bounds=(lo, hi),
                          method="bounded", options={"xatol": 1e-6})
    return float(np.exp(res.x))


def reliability_png(confidence, correct, path: str | Path, title: str = "intent reliability",
                    n_bins: int = N_BINS) -> None:
    """Reliability diagram: accuracy per confidence bin against the diagonal of perfect calibration, the gap
    shaded, the share of predictions per bin below; ECE in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from twinhead import fileio

    bins = reliability_bins(confidence, correct, n_bins)
    ece = expected_calibration_error(confidence, correct, n_bins)
    total = max(1, sum(b.count for b in bins))
    width = 1.0 / n_bins
    mids = [(b.lower + b.upper) / 2 for b in bins]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    filled = [b for b in bins if b.count]
    top.bar([(b.lower + b.upper) / 2 for b in filled], [b.accuracy for b in filled], width=width,
            edgecolor="black", color="tab:blue", label="accuracy")
    top.bar([(b.lower + b.upper) / 2 for b in filled], [b.confidence - b.accuracy for b in filled],
            bottom=[b.accuracy for b in filled], width=width, color="tab:red", alpha=0.3, label="gap to confidence")
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1)
    top.set_title(f"{title} (ECE {ece:.4f}, {sum(b.count for b in bins)} sentences)")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(mids, [b.count / total for b in bins], width=width, edgecolor="black", color="tab:gray")
    bottom.set_xlabel("confidence (top intent probability)")
    bottom.set_ylabel("share")
    bottom.set_xlim(0, 1)
    fig.tight_layout()
    with fileio.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
