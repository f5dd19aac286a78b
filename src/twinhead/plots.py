"""Evaluation figures as PNG files: the intent confusion matrix and the F1 of each slot type.

Both are written atomically (twinhead.fileio) with matplotlib's Agg backend, so they render on a machine
without a display (a DVC stage, CI).
"""

from __future__ import annotations

from pathlib import Path

from twinhead import fileio

DPI = 100


def pyplot():
    """matplotlib.pyplot on the Agg backend (also for the figures of benchmarks/)."""
    import matplotlib

    matplotlib.use("Agg")  # draws without a display: DVC stages and CI have none
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | Path) -> None:
    """The figure as a PNG at `path`, written atomically, then closed."""
    import matplotlib.pyplot as plt

    try:
        with fileio.atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI)
    finally:
        plt.close(fig)  # pyplot keeps every figure alive until closed


def confusion_figure(records: list[dict], title: str = "intent confusion (test)"):
    """The intent confusion matrix (rows: actual, columns: predicted) drawn by scikit-learn's
    ConfusionMatrixDisplay; `records` are {"actual", "predicted"} per sentence. Zero cells stay blank."""
    plt = pyplot()
    from sklearn.metrics import ConfusionMatrixDisplay

    labels = sorted({r["actual"] for r in records} | {r["predicted"] for r in records})
    size = max(5.0, 0.45 * len(labels) + 2)  # inches: room for every label at a readable size
    fig, ax = plt.subplots(figsize=(size, size))
    if labels:
        disp = ConfusionMatrixDisplay.from_predictions(
            [r["actual"] for r in records], [r["predicted"] for r in records], labels=labels, ax=ax,
            cmap="Blues", colorbar=False, xticks_rotation="vertical", text_kw={"fontsize": 7})
        # With 20+ intents the zeros would bury the few cells that matter.
        for text, count in zip(disp.text_.ravel(), disp.confusion_matrix.ravel()):
            if count == 0:
                text.set_text("")
        ax.tick_params(labelsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def confusion_png(records: list[dict], path: str | Path, title: str = "intent confusion (test)") -> None:
    """confusion_figure as a PNG file."""
    save_png(confusion_figure(records, title), path)


def slot_f1_figure(per_type: dict[str, dict], title: str = "slot F1 per type (test)"):
    """One horizontal bar per slot type, its F1, worst at the top, labelled with its gold support.

    `per_type` is eval_details.json's slot.per_type: {type: {"precision", "recall", "f1", "support"}}.
    """
    plt = pyplot()
    rows = sorted(per_type.items(), key=lambda kv: (kv[1]["f1"], kv[0]), reverse=True)  # barh draws bottom-up
    fig, ax = plt.subplots(figsize=(7.0, max(2.5, 0.28 * len(rows) + 1.2)))
    f1 = [s["f1"] for _, s in rows]
    bars = ax.barh(range(len(rows)), f1, color="#4c72b0")
    ax.set_yticks(range(len(rows)), [f"{t} ({s['support']})" for t, s in rows], fontsize=8)
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in f1], padding=2, fontsize=7)
    ax.set_xlim(0, 1.08)  # room for the value labels of perfect types
    ax.set_xlabel("F1 (gold support in brackets)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def slot_f1_png(per_type: dict[str, dict], path: str | Path, title: str = "slot F1 per type (test)") -> None:
    """slot_f1_figure as a PNG file."""
    save_png(slot_f1_figure(per_type, title), path)
