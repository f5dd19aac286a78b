"""Expected calibration error, temperature scaling and the reliability diagram (twinhead.calibration), and the
temperature fitted on dev by training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from twinhead.calibration import (
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability_bins,
    reliability_png,
    softmax,
)


def test_ece_hand_computed():
    # bins of width 1/15: 0.95 and 0.99 in the last bin (14/15, 1], 0.55 and 0.59 in (8/15, 9/15],
    # 0.3 in (4/15, 5/15]
    conf = [0.95, 0.99, 0.55, 0.59, 0.3]
    right = [True, False, True, True, False]
    # last bin: mean conf 0.97, accuracy 0.5 -> gap 0.47, weight 2/5
    # (8/15, 9/15]: mean conf 0.57, accuracy 1 -> gap 0.43, weight 2/5
    # (4/15, 5/15]: conf 0.3, accuracy 0 -> gap 0.3, weight 1/5
    expected = 2 / 5 * 0.47 + 2 / 5 * 0.43 + 1 / 5 * 0.3
    assert expected_calibration_error(conf, right) == pytest.approx(expected)
    bins = reliability_bins(conf, right)
    assert [b.count for b in bins] == [0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 2]
    assert bins[14].confidence == pytest.approx(0.97) and bins[14].accuracy == 0.5


def test_ece_of_a_calibrated_and_of_an_overconfident_model():
    assert expected_calibration_error([0.8] * 10, [True] * 8 + [False] * 2) == pytest.approx(0.0)
    assert expected_calibration_error([1.0] * 4, [True, False, False, False]) == pytest.approx(0.75)
    assert expected_calibration_error([], []) == 0.0


def reference_ece(conf: np.ndarray, right: np.ndarray, n_bins: int = 15) -> float:
    """Guo et al.'s reference code (temperature_scaling.py, _ECELoss), transcribed to numpy."""
    edges = np.linspace(0, 1, n_bins + 1)
    ece = 0.0
    for lower, upper in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lower) & (conf <= upper)
        prop = in_bin.mean()
        if prop > 0:
            ece += abs(conf[in_bin].mean() - right[in_bin].mean()) * prop
    return float(ece)


@pytest.mark.parametrize("seed", range(5))
def test_ece_equals_an_independent_implementation_on_random_data(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (500, 7))
    labels = rng.integers(0, 7, 500)
    probs = softmax(logits)
    conf, right = probs.max(1), probs.argmax(1) == labels
    assert expected_calibration_error(conf, right) == pytest.approx(reference_ece(conf, right), abs=1e-12)


def test_ece_rejects_probabilities_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error([1.2], [True])
    with pytest.raises(ValueError, match="one length"):
        expected_calibration_error([0.5, 0.6], [True])


def test_fit_temperature_recovers_the_temperature_that_generated_the_labels():
    """Labels drawn from softmax(z / 2.5): the NLL-optimal temperature on z is ~2.5."""
    rng = np.random.default_rng(0)
    z = rng.normal(0, 4, (20000, 5))
    p = softmax(z, 2.5)
    labels = np.array([rng.choice(5, p=row) for row in p])
    t = fit_temperature(z, labels)
    assert t == pytest.approx(2.5, rel=0.05)
    # and it is the minimum: a grid around it does no better
    grid = np.exp(np.linspace(np.log(0.5), np.log(10), 200))
    assert nll(z, labels, t) <= min(nll(z, labels, g) for g in grid) + 1e-9


def test_temperature_scaling_lowers_the_ece_of_an_overconfident_model():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, (5000, 4))
    labels = np.array([rng.choice(4, p=row) for row in softmax(z)])
    over = z * 3  # the same ranking, three times too sharp
    t = fit_temperature(over, labels)
    assert t == pytest.approx(3.0, rel=0.1)
    right = over.argmax(1) == labels
    before = expected_calibration_error(softmax(over).max(1), right)
    after = expected_calibration_error(softmax(over, t).max(1), right)
    assert after < before / 3
    assert (softmax(over, t).argmax(1) == over.argmax(1)).all()  # the decision never changes


def test_fit_temperature_edge_cases():
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 1.0
    # every prediction right: the NLL falls as T -> 0, which would make every probability 1; left unscaled
    z = np.array([[3.0, 0.0], [0.0, 2.0]])
    assert fit_temperature(z, np.array([0, 1])) == 1.0
    # one wrong, and the minimum is finite and inside the bounds
    t = fit_temperature(z, np.array([0, 0]))
    assert 0.01 < t < 100 and nll(z, np.array([0, 0]), t) < nll(z, np.array([0, 0]), 1.0)
    with pytest.raises(ValueError, match=r"\(N, L\)"):
        fit_temperature(np.zeros(3), np.zeros(3, dtype=int))


def test_reliability_png_is_written(tmp_path):
    path = tmp_path / "rel.png"
    reliability_png([0.9, 0.6, 0.3], [True, False, True], path)
    assert path.read_bytes()[:4] == b"\x89PNG"
    reliability_png([], [], tmp_path / "empty.png")  # a single-task tag model has no intents to show
    assert (tmp_path / "empty.png").read_bytes()[:4] == b"\x89PNG"


def test_fit_calibration_on_dev_matches_fit_temperature_on_the_models_logits():
    from tests.test_bundle import make_model
    from twinhead.train import fit_calibration

    model, vocabs = make_model(seed=4, dropout=0.0)
    with torch.no_grad():  # sharp, partly wrong intent logits: a temperature far from 1
        model.intent_head.mlp[-1].weight.mul_(40)
    words = [["play", "beatles"], ["wake", "7", "am"], ["rain", "paris"], ["play", "spotify"], ["rain"]]
    intents = ["PlayMusic", "SetAlarm", "GetWeather", "SetAlarm", "Unseen"]
    dev = pd.DataFrame({"words": words, "tokens": words, "keep": [list(range(len(w))) for w in words],
                        "intent": intents})
    got = fit_calibration(model, vocabs, dev, 2)
    # the sentence whose intent train never saw is left out
    from twinhead.inference import predict_logits

    logits = predict_logits(model, vocabs, words[:4]).logits
    labels = np.array([vocabs.intents.itos.index(i) for i in intents[:4]])
    assert got["fitted_on"] == "dev" and got["dev_sentences"] == 4
    assert got["temperature"] > 2  # over-confident and often wrong: softened
    assert got["temperature"] == pytest.approx(fit_temperature(logits, labels), rel=1e-6)
    right = logits.argmax(1) == labels
    assert got["dev_intent_ece_uncalibrated"] == pytest.approx(expected_calibration_error(softmax(logits).max(1),
                                                                                          right))
    assert got["dev_intent_ece"] == pytest.approx(expected_calibration_error(
        softmax(logits, got["temperature"]).max(1), right))


def test_fit_calibration_leaves_a_multi_label_head_unscaled():
    from twinhead.model import JointModel, ModelConfig
    from twinhead.train import fit_calibration
    from twinhead.vocab import build_vocabs

    vocabs = build_vocabs([["a", "b"]], ["x#y", "x"], [["O", "O"]])
    model = JointModel(ModelConfig(word_dim=4, char_dim=0, hidden_size=4, num_layers=1, sentence_head="multi"),
                       len(vocabs.words), len(vocabs.chars), vocabs.tags.itos, vocabs.intents.itos)
    dev = pd.DataFrame({"words": [["a"]], "tokens": [["a"]], "keep": [[0]], "intent": ["x"]})
    assert fit_calibration(model, vocabs, dev, 8) == {"temperature": 1.0, "fitted_on": None}
