"""benchmarks/ema.py: the EMA shadows' arithmetic and the dev-based choice of each one's epoch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmarks import ema


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))


def steps(model: Tiny, shadows: ema.Shadows, values: list[float]) -> None:
    for v in values:  # an "optimizer step" that sets the weights, then the shadows' update
        with torch.no_grad():
            model.w.fill_(v)
            model.count += 1
        shadows.update(model)


def test_a_shadow_is_the_plain_mean_until_its_horizon_then_an_exponential_average():
    model, shadows = Tiny(), ema.Shadows([0.5, 0.99])
    steps(model, shadows, [1.0, 2.0, 3.0])
    # d = 0.99 is capped at 1 - 1/n: the mean of the steps so far, not a start stuck near the first weights
    assert torch.allclose(shadows.models[0.99].w, torch.full((3,), 2.0))
    # d = 0.5 past its horizon of 2 steps: 0.5 * mean(1, 2) + 0.5 * 3
    assert torch.allclose(shadows.models[0.5].w, torch.full((3,), 2.25))
    assert shadows.models[0.5].count.item() == 3  # integer buffers are copied, not averaged
    assert model.w.tolist() == [3.0, 3.0, 3.0]  # the trained weights are untouched


def test_each_weights_epoch_is_chosen_on_dev_and_reports_that_epochs_test():
    def row(epoch, dev_sent, test_sent, ema_dev, ema_test):
        r = {"epoch": epoch}
        for name, dev, test in (("trained", dev_sent, test_sent), ("ema0.9", ema_dev, ema_test)):
            r |= {f"{name}_dev_intent_accuracy": 0.9, f"{name}_dev_slot_f1": 0.8,
                  f"{name}_dev_sentence_accuracy": dev, f"{name}_test_intent_accuracy": 0.9,
                  f"{name}_test_slot_f1": 0.8, f"{name}_test_sentence_accuracy": test}
        return r

    rows = [row(1, 0.70, 0.60, 0.60, 0.99), row(2, 0.80, 0.65, 0.75, 0.50), row(3, 0.80, 0.90, 0.70, 0.40)]
    trained = ema.best_of(rows, "trained", "sentence_accuracy")
    assert (trained["epoch"], trained["test_sentence_accuracy"]) == (2, 0.65)  # a tie keeps the earlier epoch
    shadow = ema.best_of(rows, "ema0.9", "sentence_accuracy")
    assert (shadow["epoch"], shadow["dev_sentence_accuracy"], shadow["test_sentence_accuracy"]) == (2, 0.75, 0.50)


def test_decays_outside_zero_to_one_are_refused():
    with pytest.raises(SystemExit):
        ema.main(["--seed", "1", "--decays", "1.0"])
