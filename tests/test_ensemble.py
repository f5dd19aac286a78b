"""benchmarks/ensemble.py: members found by name, subsets, and the combination of several models' outputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks import ensemble
from twinhead.errors import TwinheadError
from twinhead.inference import predict_frame
from twinhead.model import JointModel, ModelConfig
from twinhead.vocab import build_vocabs

SENTS = [["play", "the", "beatles"], ["wake", "me", "up", "at", "seven"], ["play", "queen", "loudly", "now"],
         ["rain"], ["play", "some", "jazz", "in", "the", "kitchen", "please"]]
TAGS = [["O", "O", "B-artist"], ["O", "O", "O", "O", "B-time"], ["O", "B-artist", "O", "O"], ["O"],
        ["O", "O", "B-genre", "O", "O", "B-room", "O"]]
INTENTS = ["Play", "Wake", "Play", "Weather", "Play"]


def make(seed: int, tag_decoder: str = "crf", **kw) -> tuple[JointModel, object]:
    vocabs = build_vocabs(SENTS, INTENTS, TAGS)
    cfg = ModelConfig(**{**dict(word_dim=8, char_dim=4, char_filters=4, char_kernel=3, hidden_size=8, num_layers=1,
                             dropout=0.1, tag_decoder=tag_decoder), **kw})
    torch.manual_seed(seed)
    model = JointModel(cfg, len(vocabs.words), len(vocabs.chars), vocabs.tags.itos, vocabs.intents.itos)
    if tag_decoder == "crf":  # a CRF starts at zero: give it scores, so that averaging them is exercised
        with torch.no_grad():
            for p in model.tag_head.crf.parameters():
                p.normal_()
    return model.eval(), vocabs


def frame() -> pd.DataFrame:
    return pd.DataFrame({"words": SENTS, "tokens": SENTS, "keep": [list(range(len(s))) for s in SENTS],
                         "tags": TAGS, "intent": INTENTS})


@pytest.mark.parametrize("decoder", ["crf", "softmax"])
def test_an_ensemble_of_one_predicts_what_the_model_predicts(decoder):
    model, vocabs = make(0, decoder)
    intents, tags = ensemble.combine([model], vocabs, [ensemble.model_outputs(model, vocabs, SENTS, batch_size=2)])
    ref = predict_frame(model, vocabs, frame())
    assert intents == ref.intents
    assert tags == ref.tags


def test_members_that_agree_make_an_ensemble_that_agrees():
    """A second member whose every score is twice the first's has the same argmax and the same best tag path;
    the mean of the two must keep both (a mean taken over the wrong axis, or of unaligned rows, would not)."""
    a, vocabs = make(1)
    b, _ = make(1)
    with torch.no_grad():
        b.intent_head.mlp[-1].weight.mul_(2)
        b.intent_head.mlp[-1].bias.mul_(2)
        b.tag_head.proj.weight.mul_(2)
        b.tag_head.proj.bias.mul_(2)
        for p in b.tag_head.crf.parameters():
            p.mul_(2)
    outs = [ensemble.model_outputs(m, vocabs, SENTS, batch_size=2) for m in (a, b)]
    assert not np.allclose(outs[0].scores, outs[1].scores)
    alone = ensemble.combine([a], vocabs, outs[:1])
    assert ensemble.combine([a, b], vocabs, outs) == alone


def test_the_mean_decides_where_members_disagree():
    a, vocabs = make(2)
    b, _ = make(3)
    outs = [ensemble.model_outputs(m, vocabs, SENTS) for m in (a, b)]
    intents, tags = ensemble.combine([a, b], vocabs, outs)
    mean = (outs[0].probs + outs[1].probs) / 2
    assert intents == [vocabs.intents.itos[k] for k in mean.argmax(1)]
    head = ensemble.ensemble_head([a, b])
    for name, p in head.crf.named_parameters():
        want = (dict(a.tag_head.crf.named_parameters())[name] + dict(b.tag_head.crf.named_parameters())[name]) / 2
        assert torch.allclose(p, want)
    ids = head.decode(torch.from_numpy((outs[0].scores + outs[1].scores) / 2), torch.from_numpy(outs[0].mask))
    assert tags == [[a.tags[j] for j in row[: len(s)]] for row, s in zip(ids.tolist(), SENTS)]


def test_scores_are_those_of_the_metrics_module():
    model, vocabs = make(0)
    got = ensemble.score(model, frame(), INTENTS, TAGS)
    assert got == {"intent_accuracy": 1.0, "slot_f1": 1.0, "sentence_accuracy": 1.0}
    wrong = [list(t) for t in TAGS]
    wrong[0][2] = "O"  # one of 5 gold spans missed
    got = ensemble.score(model, frame(), ["Wake", *INTENTS[1:]], wrong)
    assert got["intent_accuracy"] == pytest.approx(4 / 5)
    assert got["sentence_accuracy"] == pytest.approx(4 / 5)  # the same sentence is wrong twice
    assert got["slot_f1"] == pytest.approx(2 * 1 * 0.8 / 1.8)  # precision 4/4, recall 4/5


def test_members_of_other_configurations_are_refused():
    a, _ = make(0)
    b, _ = make(0, hidden_size=16)
    with pytest.raises(TwinheadError, match="m2: its model config differ"):
        ensemble.check_same_labels([a, b], ["m1", "m2"])
    c, _ = make(0)
    c.tags = [*c.tags[1:], c.tags[0]]
    with pytest.raises(TwinheadError, match="m3: its tags differ"):
        ensemble.check_same_labels([a, c], ["m1", "m3"])


def test_members_are_found_by_name_and_a_requeued_name_counts_once():
    refs = "\n".join([
        "aaa 100 refs/exps/2c/fa93/label_smoothing-base-snips-s2",
        "bbb 100 refs/exps/2c/fa93/label_smoothing-base-snips-s1",
        "ccc 300 refs/exps/dc/3d1b/label_smoothing-base-snips-s1",  # re-queued later: this one
        "ddd 100 refs/exps/2c/fa93/label_smoothing-base-atis-s1",
        "eee 100 refs/exps/2c/fa93/label_smoothing-ls-0.1-snips-s1",
        "fff 100 refs/exps/2c/fa93/label_smoothing-base-snips-s1x",
    ])
    got = ensemble.find_members(refs, "label_smoothing-base", "snips")
    assert [(m.seed, m.rev) for m in got] == [(1, "ccc"), (2, "aaa")]
    assert ensemble.find_members(refs, "average-base", "snips") == []


def test_subsets_are_all_of_them_or_a_fixed_sample():
    assert ensemble.subsets(4, 3, 60) == [(0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3)]
    drawn = ensemble.subsets(8, 3, 10)
    assert len(drawn) == len(set(drawn)) == 10 and drawn == ensemble.subsets(8, 3, 10)
    with pytest.raises(TwinheadError, match="an ensemble of 5 needs at least 5 members; there are 3"):
        ensemble.subsets(3, 5, 60)


def test_sentences_longer_than_the_model_reads_are_refused_not_cut():
    model, vocabs = make(0, max_len=4)
    with pytest.raises(TwinheadError, match="sentence 1 has 5 words, more than the model's max_len 4"):
        ensemble.model_outputs(model, vocabs, SENTS)


def test_shared_errors_count_how_the_members_intent_errors_overlap():
    model, _ = make(0)
    df = frame()  # gold: Play, Wake, Play, Weather, Play
    preds = [(["Play", "Play", "Play", "Play", "Play"], []),  # wrong on sentences 1 and 3
             (["Play", "Play", "Wake", "Weather", "Play"], []),  # wrong on 1 and 2
             (["Play", "Wake", "Play", "Weather", "Wake"], [])]  # wrong on 4
    got = ensemble.shared_errors(model, df, preds)
    assert got == {"per_member": [2, 2, 1], "half_or_more": 1, "all": 0, "any": 4, "sentences": 5}
    line = ensemble.format_errors({"x": got})
    assert line == ("x test intent errors of the 3 members alone: 1-2 each; wrong in half of them or more: 1, "
                    "in all: 0, in any: 4 (of 5 sentences)")
