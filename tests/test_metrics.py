"""Slot F1 (hand-checked and against seqeval), intent scores, sentence accuracy."""

from __future__ import annotations

import random
import warnings

import pytest
from seqeval.metrics import f1_score, precision_score, recall_score

from twinhead.metrics import intent_scores, sentence_accuracy, slot_scores, span_scores, summary

# --- slot scores --------------------------------------------------------------------------------


def test_slot_scores_hand_checked():
    gold = [
        ["O", "B-time", "I-time", "O", "B-loc"],
        ["B-act", "O", "B-loc", "I-loc"],
    ]
    pred = [
        ["O", "B-time", "I-time", "O", "O"],  # time right, loc missed
        ["B-act", "O", "B-loc", "O"],  # act right, loc cut short (wrong), no extra
    ]
    # gold spans: time, loc, act, loc = 4; predicted: time, act, loc = 3; correct: time, act = 2
    s = slot_scores(gold, pred)
    assert s["micro"]["precision"] == pytest.approx(2 / 3)
    assert s["micro"]["recall"] == pytest.approx(2 / 4)
    assert s["micro"]["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))  # 4/7
    assert s["micro"]["f1"] == pytest.approx(4 / 7)
    assert s["micro"]["support"] == 4
    assert s["per_type"]["time"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert s["per_type"]["act"]["f1"] == 1.0
    assert s["per_type"]["loc"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert list(s["per_type"]) == ["act", "loc", "time"]


def test_slot_scores_predicted_type_unseen_in_gold():
    s = slot_scores([["O", "O"]], [["B-x", "O"]])
    assert s["micro"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert s["per_type"]["x"]["support"] == 0


def test_slot_scores_i_after_o_counts_as_a_span():
    # conlleval: "O I-t I-t" is the chunk (1, 3, t), so it matches gold "O B-t I-t"
    s = slot_scores([["O", "B-t", "I-t"]], [["O", "I-t", "I-t"]])
    assert s["micro"]["f1"] == 1.0


def test_slot_scores_length_mismatch():
    with pytest.raises(ValueError, match="gold has 2 tags but prediction 1"):
        slot_scores([["O", "O"]], [["O"]])
    with pytest.raises(ValueError):
        slot_scores([["O"]], [["O"], ["O"]])


SEQEVAL_CASES = [
    # (gold, pred)
    ([["B-a", "I-a", "O", "B-b"]], [["B-a", "I-a", "O", "B-b"]]),
    ([["B-a", "I-a", "O", "B-b"], ["O", "B-c", "I-c", "I-c"]],
     [["B-a", "O", "O", "B-b"], ["O", "B-c", "I-c", "O"]]),
    # predictions that are not valid BIO: I- after O
    ([["O", "B-a", "I-a", "O"], ["B-b", "I-b", "O"]],
     [["O", "I-a", "I-a", "O"], ["O", "I-b", "O"]]),
    # type switches inside a chunk
    ([["B-a", "I-a", "I-a", "O"], ["B-a", "I-a", "B-b", "I-b"]],
     [["B-a", "I-b", "I-a", "O"], ["B-a", "I-a", "I-b", "I-b"]]),
    # adjacent same-type chunks, chunk at sentence end, B after I
    ([["B-a", "B-a", "I-a"], ["O", "O", "B-a"]],
     [["B-a", "I-a", "I-a"], ["I-a", "O", "I-a"]]),
    # a chunk at the end of one sentence must not join one at the start of the next
    ([["O", "B-a"], ["I-a", "O"]], [["O", "B-a"], ["I-a", "O"]]),
]


def assert_matches_seqeval(gold, pred):
    s = slot_scores(gold, pred)["micro"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns on zero division; we compare the 0.0 it returns
        expected = (precision_score(gold, pred), recall_score(gold, pred), f1_score(gold, pred))
    assert (s["precision"], s["recall"], s["f1"]) == pytest.approx(expected)


@pytest.mark.parametrize("gold, pred", SEQEVAL_CASES)
def test_slot_scores_match_seqeval(gold, pred):
    assert_matches_seqeval(gold, pred)


def test_slot_scores_match_seqeval_on_random_invalid_sequences():
    rng = random.Random(0)
    tagset = ["O", "O", "B-a", "I-a", "B-b", "I-b"]
    for _ in range(200):
        n = rng.randint(1, 4)
        lens = [rng.randint(1, 7) for _ in range(n)]
        gold = [[rng.choice(tagset) for _ in range(k)] for k in lens]
        pred = [[rng.choice(tagset) for _ in range(k)] for k in lens]
        if not any(t != "O" for s in gold + pred for t in s):
            continue
        assert_matches_seqeval(gold, pred)


# --- intents ------------------------------------------------------------------------------------


def test_intent_scores_hand_checked_with_intent_unseen_in_train():
    # "c" never appears in train, so the model cannot predict it: it is counted wrong.
    gold = ["a", "a", "b", "c"]
    pred = ["a", "b", "b", "a"]
    s = intent_scores(gold, pred)
    assert s["accuracy"] == pytest.approx(2 / 4)
    # a: P 1/2 R 1/2 F 1/2;  b: P 1/2 R 1 F 2/3;  c: F 0  -> macro over gold ∪ predicted labels
    assert s["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0.0) / 3)
    assert s["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert s["per_class"]["b"]["precision"] == pytest.approx(0.5)
    assert s["per_class"]["b"]["recall"] == pytest.approx(1.0)
    assert s["per_class"]["b"]["f1"] == pytest.approx(2 / 3)
    assert s["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_intent_scores_predicted_label_absent_from_gold():
    s = intent_scores(["a", "a"], ["a", "z"])
    assert s["accuracy"] == 0.5
    # scikit-learn's default: macro over gold ∪ predicted labels. a: P 1, R 1/2, F 2/3; z: F 0
    assert s["macro_f1"] == pytest.approx((2 / 3 + 0.0) / 2)
    assert s["macro_f1_labels"] == ["a", "z"]
    assert s["per_class"]["z"]["support"] == 0
    from sklearn.metrics import f1_score

    assert s["macro_f1"] == pytest.approx(f1_score(["a", "a"], ["a", "z"], average="macro", zero_division=0))


def test_intent_scores_perfect():
    s = intent_scores(["x", "y", "y"], ["x", "y", "y"])
    assert s["accuracy"] == 1.0 and s["macro_f1"] == 1.0


def test_span_scores_hand_checked():
    gold = [[(0, 4, "city"), (8, 12, "time")], [], [(3, 9, "artist")]]
    pred = [[(0, 4, "city"), (8, 13, "time")], [(0, 2, "x")], [(3, 9, "artist")]]
    s = span_scores(gold, pred)
    # tp 2 (city, artist), 4 predicted, 3 gold
    assert s["precision"] == pytest.approx(2 / 4) and s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert s["support"] == 3


# --- sentence accuracy --------------------------------------------------------------------------


def test_sentence_accuracy_needs_intent_and_every_tag():
    gold_i = ["a", "b", "a", "b"]
    pred_i = ["a", "b", "b", "b"]
    gold_t = [["O", "B-x"], ["B-y"], ["O"], ["O", "O"]]
    pred_t = [["O", "B-x"], ["I-y"], ["O"], ("O", "O")]
    # 1 right; 2 wrong tag; 3 wrong intent; 4 right (tuple vs list does not matter)
    assert sentence_accuracy(gold_i, pred_i, gold_t, pred_t) == 0.5


def test_sentence_accuracy_empty():
    assert sentence_accuracy([], [], [], []) == 0.0


def test_summary_headline_numbers():
    head, intents, slots = summary(["a", "b"], ["a", "a"], [["B-x", "O"], ["O"]], [["B-x", "O"], ["B-x"]])
    assert head["intent_accuracy"] == 0.5
    assert head["slot_precision"] == 0.5 and head["slot_recall"] == 1.0
    assert head["slot_f1"] == pytest.approx(2 / 3)
    assert head["sentence_accuracy"] == 0.5
    assert head["intent_macro_f1"] == intents["macro_f1"]
    assert head["slot_f1"] == slots["micro"]["f1"]
