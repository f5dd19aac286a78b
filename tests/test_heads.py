"""The heads own loss and decoding: multi-label sentences, the CRF tag decoder, and their use in the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import snips_sample
from twinhead.heads import CRFTagHead, SentenceHead
from twinhead.inference import predict_mapped
from twinhead.metrics import label_scores
from twinhead.model import JointModel, ModelConfig, label_atoms
from twinhead.preprocess import PreprocessConfig, preprocess
from twinhead.text import bio_error
from twinhead.train import TrainConfig, train
from twinhead.vocab import build_vocabs

TAGS = ["O", "B-a", "I-a", "B-b", "I-b"]
INTENTS = ["atis_flight", "atis_airfare", "atis_airfare#atis_flight", "atis_ground_service"]
SMALL = dict(word_dim=8, char_dim=4, char_filters=4, hidden_size=8, num_layers=1, dropout=0.0)


def test_multi_label_decisions_threshold_and_fallback():
    head = SentenceHead(4, 4, 3, 0.0, multi_label=True, threshold=0.5)
    probs = np.array([[0.9, 0.6, 0.1], [0.2, 0.4, 0.3], [0.5, 0.49, 0.7]])
    # over the threshold; none over it -> the most likely; exactly at it counts
    assert head.decide(probs) == [[0, 1], [1], [0, 2]]
    single = SentenceHead(4, 4, 3, 0.0)
    assert single.decide(probs) == [[0], [1], [2]]


def test_label_smoothing_targets_the_smoothed_distribution():
    """train.label_smoothing (eps): the single-label loss is the cross-entropy against 1 - eps on the gold label
    plus eps / L on each; multi-label, each 0/1 target moves eps / 2 towards 1/2; eps = 0 is the plain loss."""
    torch.manual_seed(0)
    logits, gold = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    head = SentenceHead(4, 4, 3, 0.0)
    target = torch.nn.functional.one_hot(gold, 3).float() * 0.8 + 0.2 / 3
    want = -(target * torch.log_softmax(logits, -1)).sum(1).mean()
    torch.testing.assert_close(head.loss(logits, gold, 0.2), want)
    torch.testing.assert_close(head.loss(logits, gold), torch.nn.functional.cross_entropy(logits, gold))
    assert head.loss(logits, gold, 0.2) != head.loss(logits, gold)
    multi = SentenceHead(4, 4, 3, 0.0, multi_label=True)
    hot = torch.tensor([[1.0, 0.0, 1.0]] * 5)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    torch.testing.assert_close(multi.loss(logits, hot, 0.2), bce(logits, torch.tensor([[0.9, 0.1, 0.9]] * 5)))


def test_multi_label_model_reads_label_sets():
    assert label_atoms(INTENTS, "#") == ["atis_airfare", "atis_flight", "atis_ground_service"]
    model = JointModel(ModelConfig(**SMALL, sentence_head="multi"), 10, 10, TAGS, INTENTS)
    assert model.intent_head.n_labels == 3
    target = model.intent_targets(["atis_flight#atis_airfare", "atis_ground_service"])
    assert target.tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    assert model.canonical_label("atis_flight#atis_airfare") == "atis_airfare#atis_flight"
    assert model.intents_from_probs(np.array([[0.8, 0.7, 0.1]])) == ["atis_airfare#atis_flight"]
    logits = torch.tensor([[2.0, -1.0, 0.0]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, target[:1])
    assert model.intent_head.loss(logits, target[:1]) == pytest.approx(expected.item())
    # single mode keeps a#b as one class: today's behaviour
    single = JointModel(ModelConfig(**SMALL), 10, 10, TAGS, INTENTS)
    assert single.intent_head.n_labels == 4
    assert single.canonical_label("atis_flight#atis_airfare") == "atis_flight#atis_airfare"


def test_label_scores_exact_sets_and_per_label():
    s = label_scores(["a#b", "a", "c"], ["b#a", "a#c", "b"], "#")
    assert s["exact_set_accuracy"] == pytest.approx(1 / 3)
    # single labels: gold {a,b},{a},{c}; predicted {a,b},{a,c},{b} -> tp 3 (a, b, a), 5 predicted, 4 gold
    assert s["micro"]["precision"] == pytest.approx(3 / 5) and s["micro"]["recall"] == pytest.approx(3 / 4)
    assert s["per_label"]["c"]["recall"] == 0.0 and s["per_label"]["a"]["f1"] == 1.0


def test_crf_tag_head_in_the_model():
    torch.manual_seed(0)
    model = JointModel(ModelConfig(**SMALL, tag_decoder="crf"), 10, 10, TAGS, 3).eval()
    assert isinstance(model.tag_head, CRFTagHead)
    words = torch.randint(2, 10, (4, 6))
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 1 + [0] * 5, [1] * 3 + [0] * 3]).bool()
    words = words.masked_fill(~mask, 0)
    chars = torch.randint(1, 10, (4, 6, 3)).masked_fill(~mask.unsqueeze(-1), 0)
    with torch.no_grad():
        model.tag_head.crf.transitions.normal_(0, 3.0)  # scores that favour invalid moves must not win
        _, scores = model(words, chars, mask)
        ids = model.decode_tags(scores, mask)
        probs = model.tag_head.token_probs(scores, mask)
    for row, m in zip(ids, mask):
        assert bio_error([TAGS[k] for k in row[: int(m.sum())]]) is None
    assert torch.allclose(probs[mask].sum(-1), torch.ones(int(mask.sum())), atol=1e-5)
    gold = torch.randint(0, 5, (4, 6)).masked_fill(~mask, -100)
    gold[:, 0] = 0
    loss = model.tag_head.loss(scores, gold, mask)
    # the CRF loss is per token: its sentence NLLs summed over the number of real tokens
    assert loss.item() == pytest.approx((model.tag_head.crf.nll(scores, gold, mask, "sum") / mask.sum()).item())
    # the CRF's learned transitions are parameters of the tag head (what the loss rules group as "tags")
    assert any(p is model.tag_head.crf.transitions for p in model.head_parameters()["tags"])
    assert not any(p is model.tag_head.crf.transitions for p in model.shared_parameters())


@pytest.mark.parametrize("model_kw", [{"tag_decoder": "crf"}, {"sentence_head": "multi"}])
def test_training_with_each_head_learns(tmp_path, model_kw):
    """A few epochs on a SNIPS sample: dev scores far above a model that learned nothing."""
    raw = snips_sample(tmp_path / "raw", {"train": 400, "dev": 100, "test": 10})
    frames, _, _, _ = preprocess(raw, None, PreprocessConfig(), seed=1)
    tr, dev = frames["train"], frames["dev"]
    vocabs = build_vocabs(tr["words"], tr["intent"], tr["word_tags"])
    mcfg = ModelConfig(word_dim=32, char_dim=8, char_filters=16, hidden_size=32, num_layers=1, **model_kw)
    res = train(tr, dev, vocabs, mcfg, TrainConfig(epochs=10, batch_size=16, lr=0.01, patience=0), seed=3,
                progress=False)
    majority = dev["intent"].value_counts().iloc[0] / len(dev)
    last = res.history[-1]
    assert last["dev_intent_accuracy"] > majority + 0.3
    assert last["dev_slot_f1"] > 0.3  # a model that learned nothing predicts no right span
    model = JointModel(mcfg, len(vocabs.words), len(vocabs.chars), vocabs.tags.itos, vocabs.intents.itos)
    model.load_state_dict(res.best_state)
    intents, _, tags = predict_mapped(model.eval(), vocabs, dev)
    assert all(bio_error(t) is None for t in tags)
    # every predicted label (or each label of a predicted set) is a training label
    assert {atom for i in intents for atom in i.split(mcfg.label_sep)} <= set(vocabs.intents.itos)


@pytest.mark.parametrize("decoder", ["softmax", "crf"])
def test_tag_probabilities_are_those_of_the_decoded_path(decoder):
    """predict_logits' tag_probs: the softmax probability (softmax decoder) or the CRF marginal, checked
    against enumerating every tag path, of each decoded tag; windows of an overlong input included."""
    from tests.test_crf import brute_force
    from twinhead.inference import collate, encode, predict_logits, span_confidences

    vocabs = build_vocabs([["a", "b", "c"]], ["x", "y"], [["B-a", "I-a", "B-b"]])
    torch.manual_seed(1)
    cfg = ModelConfig(**SMALL, tag_decoder=decoder, max_len=3)
    model = JointModel(cfg, len(vocabs.words), len(vocabs.chars), vocabs.tags.itos, vocabs.intents.itos).eval()
    if decoder == "crf":
        with torch.no_grad():
            model.tag_head.crf.transitions.normal_(0, 1.0)
    sents = [["a", "b", "c"], ["c", "a"], ["a", "b", "c", "b", "a"]]  # the last: two windows of max_len 3
    out = predict_logits(model, vocabs, sents, tag_probs=True)
    for words, tags, probs in zip(sents, out.tags, out.tag_probs):
        for s in range(0, len(words), 3):
            piece = words[s:s + 3]
            w, c, m = collate([encode(piece, vocabs, cfg.max_word_len)], "cpu")
            with torch.no_grad():
                _, scores = model(w, c, m)
                if decoder == "crf":
                    marg = brute_force(model.tag_head.crf, scores[0].double(), constrained=True)[2]
                else:
                    marg = torch.softmax(scores[0].double(), -1)
            ids = [vocabs.tags.itos.index(t) for t in tags[s:s + 3]]
            want = [float(marg[i, k]) for i, k in enumerate(ids)]
            assert probs[s:s + 3] == pytest.approx(want, abs=1e-5)
        for start, end, _, conf in span_confidences(tags, probs):
            assert conf == pytest.approx(float(np.prod(probs[start:end])))


@pytest.mark.parametrize("multi", [False, True])
def test_rdrop_divergence_is_the_symmetric_kl_between_two_passes(multi):
    """train.rdrop's consistency term: (KL(p || q) + KL(q || p)) / 2 between the two passes' intent
    distributions (softmax, or a Bernoulli per label averaged over labels), a mean over rows, weighted as the
    loss weights them; 0 when both passes agree."""
    torch.manual_seed(0)
    a, b = torch.randn(6, 4), torch.randn(6, 4)
    head = SentenceHead(4, 4, 4, 0.0, multi_label=multi)
    if multi:
        p, q = torch.sigmoid(a), torch.sigmoid(b)
        kl_pq = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).mean(-1)
        kl_qp = (q * (q / p).log() + (1 - q) * ((1 - q) / (1 - p)).log()).mean(-1)
    else:
        p, q = torch.softmax(a, -1), torch.softmax(b, -1)
        kl_pq, kl_qp = (p * (p / q).log()).sum(-1), (q * (q / p).log()).sum(-1)
    rows = (kl_pq + kl_qp) / 2
    torch.testing.assert_close(head.divergence(a, b), rows.mean())
    torch.testing.assert_close(head.divergence(b, a), rows.mean())
    assert head.divergence(a, a).item() == pytest.approx(0.0, abs=1e-7)
    weight = torch.tensor([1.0, 0.0, 2.0, 0.0, 1.0, 0.0])
    torch.testing.assert_close(head.divergence(a, b, weight), (rows * weight).sum() / weight.sum())
