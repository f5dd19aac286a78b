"""The evaluation figures: intent confusion matrix and slot F1 per type, as figures and as PNG files."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest

from twinhead import evaluate
from twinhead.metrics import slot_scores
from twinhead.plots import DPI, confusion_figure, confusion_png, slot_f1_figure, slot_f1_png

# 3 PlayMusic right, 1 PlayMusic taken for GetWeather, 2 GetWeather right, 1 SetAlarm right.
PAIRS = [("PlayMusic", "PlayMusic")] * 3 + [("PlayMusic", "GetWeather")] + [("GetWeather", "GetWeather")] * 2 + [
    ("SetAlarm", "SetAlarm")]
RECORDS = [{"actual": a, "predicted": p} for a, p in PAIRS]
GOLD = [["B-artist", "I-artist", "O", "B-city"], ["B-artist", "O", "B-time"], ["B-city", "O"]]
PRED = [["B-artist", "I-artist", "O", "B-time"], ["B-artist", "O", "B-time"], ["O", "O"]]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def png_pixels(path) -> np.ndarray:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return mpimg.imread(path)  # (H, W, 4) floats


def test_evaluate_keeps_confusion_png_for_its_callers():
    assert evaluate.confusion_png is confusion_png  # stages/evaluate.py imports it from twinhead.evaluate


def test_confusion_figure_counts_and_axes():
    fig = confusion_figure(RECORDS, "intent confusion (dev)")
    ax = fig.axes[0]
    labels = ["GetWeather", "PlayMusic", "SetAlarm"]
    assert [t.get_text() for t in ax.get_xticklabels()] == labels
    assert [t.get_text() for t in ax.get_yticklabels()] == labels
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("predicted", "actual", "intent confusion (dev)")
    shown = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    # (row = actual, column = predicted); zero cells are blank
    assert {k: v for k, v in shown.items() if v} == {(0, 0): "2", (1, 0): "1", (1, 1): "3", (2, 2): "1"}


def test_confusion_png_is_written_and_grows_with_the_labels(tmp_path):
    small, big = tmp_path / "small.png", tmp_path / "big.png"
    confusion_png(RECORDS, small)
    many = [{"actual": f"intent_{k:02d}", "predicted": f"intent_{(k * 7) % 24:02d}"} for k in range(24)]
    confusion_png(many, big)
    a, b = png_pixels(small), png_pixels(big)
    assert a.shape[:2] == (5 * DPI, 5 * DPI)  # the 5-inch minimum
    assert b.shape[0] == b.shape[1] == round((0.45 * 24 + 2) * DPI)  # room for 24 labels
    # Not a blank canvas: the darkest cell is drawn in a deep blue.
    rgb = a[..., :3].reshape(-1, 3)
    assert (rgb.min(axis=1) < 0.95).mean() > 0.05
    assert ((rgb[:, 2] > 0.3) & (rgb[:, 0] < 0.15)).any()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.png", "small.png"]  # no temp left behind


def test_slot_f1_figure_bars_are_the_per_type_f1_worst_on_top():
    per_type = slot_scores(GOLD, PRED)["per_type"]
    # artist: 2 of 2 right; city: 0 of 2 found; time: 1 right, 1 wrong
    assert {t: s["f1"] for t, s in per_type.items()} == pytest.approx({"artist": 1.0, "city": 0.0, "time": 2 / 3})
    fig = slot_f1_figure(per_type, "slot F1 per type (dev)")
    ax = fig.axes[0]
    bars = sorted(ax.patches, key=lambda r: r.get_y())  # bottom to top
    names = [t.get_text() for t in ax.get_yticklabels()]
    assert names == ["artist (2)", "time (1)", "city (2)"]
    assert [b.get_width() for b in bars] == pytest.approx([1.0, 2 / 3, 0.0])
    assert [t.get_text() for t in ax.texts] == ["1.00", "0.67", "0.00"]
    assert ax.get_title() == "slot F1 per type (dev)"


def test_slot_f1_png_from_eval_details_shape(tmp_path):
    """The per_type dict exactly as eval_details.json holds it (slot.per_type)."""
    per_type = {f"type_{k:02d}": {"precision": 0.5, "recall": 1.0, "f1": k / 39, "support": k} for k in range(40)}
    path = tmp_path / "metrics" / "slot_f1.png"
    slot_f1_png(per_type, path)
    px = png_pixels(path)
    assert px.shape[:2] == (round((0.28 * 40 + 1.2) * DPI), 7 * DPI)  # taller with more types
    rgb = px[..., :3].reshape(-1, 3)
    bar = np.array([0x4C, 0x72, 0xB0]) / 255
    assert (np.abs(rgb - bar).max(axis=1) < 0.02).mean() > 0.05  # the bars are there


def test_slot_f1_png_without_slots(tmp_path):
    """An intent-only model has no slot types: the chart is empty, not an error."""
    slot_f1_png({}, tmp_path / "slot_f1.png")
    assert png_pixels(tmp_path / "slot_f1.png").shape[:2] == (round(2.5 * DPI), 7 * DPI)
