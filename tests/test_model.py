"""JointModel shapes, padding invariance, BIO-constrained decoding, overlong-input policies."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch

from twinhead.crf import NEG
from twinhead.crf import bio_mask as bio_transitions
from twinhead.heads import viterbi
from twinhead.inference import OverlongStats, collate, encode, predict_words
from twinhead.model import JointModel, ModelConfig
from twinhead.text import bio_error
from twinhead.vocab import build_vocabs

TAGS = ["O", "B-a", "I-a", "B-b", "I-b"]
SENTS = [["play", "the", "beatles"], ["wake", "me", "up", "at", "seven"], ["play", "queen", "loudly", "now"]]


def tiny_config(**kw) -> ModelConfig:
    base = dict(word_dim=8, char_dim=4, char_filters=4, char_kernel=3, hidden_size=8, num_layers=2,
                dropout=0.3, max_len=64)
    base.update(kw)
    return ModelConfig(**base)


def make(cfg: ModelConfig | None = None, seed: int = 0):
    vocabs = build_vocabs(SENTS, ["Play", "Wake", "Play"], [["O"] * len(s) for s in SENTS])
    vocabs.tags.itos[:] = TAGS  # a fixed tag set, so every BIO transition can be exercised
    vocabs.tags.stoi = {t: i for i, t in enumerate(TAGS)}
    torch.manual_seed(seed)
    cfg = cfg or tiny_config()
    model = JointModel(cfg, len(vocabs.words), len(vocabs.chars), vocabs.tags.itos, len(vocabs.intents))
    return model.eval(), vocabs


def batch(vocabs, sents, max_word_len=20):
    return collate([encode(s, vocabs, max_word_len) for s in sents], "cpu")


def test_output_shapes():
    model, vocabs = make()
    words, chars, mask = batch(vocabs, SENTS)
    assert words.shape == (3, 5) and mask.shape == (3, 5)
    intent_logits, tag_logits = model(words, chars, mask)
    assert intent_logits.shape == (3, 2)  # (B, I)
    assert tag_logits.shape == (3, 5, len(TAGS))  # (B, T, K)
    assert model.decode_tags(tag_logits, mask).shape == (3, 5)


LEVERS = [dict(char_encoder="bilstm"), dict(attention_heads=2), dict(intent_level="token"),
          dict(intent_level="token", attention_heads=4, char_encoder="bilstm", tag_decoder="softmax"),
          dict(slot_to_intent=True), dict(slot_to_intent=True, intent_level="token", intent_to_tags=False),
          dict(slot_to_intent=True, tag_decoder="softmax")]


@pytest.mark.parametrize("cfg", [
    tiny_config(),
    tiny_config(char_dim=0, num_layers=1, intent_to_tags=False),
    *[tiny_config(**kw) for kw in LEVERS],
])
def test_padding_does_not_change_a_sentence(cfg):
    model, vocabs = make(cfg)
    short = ["play", "the", "beatles"]
    longer = ["wake", "me", "up", "at", "seven", "unknownlongword", "x", "y"]  # longer words: wider char axis
    with torch.no_grad():
        alone_i, alone_t = model(*batch(vocabs, [short]))
        padded_i, padded_t = model(*batch(vocabs, [longer, short]))
    assert padded_t.shape[1] == len(longer)
    torch.testing.assert_close(padded_i[1], alone_i[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(padded_t[1, : len(short)], alone_t[0], atol=1e-5, rtol=0)


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout():
    model, vocabs = make()
    b = batch(vocabs, SENTS)
    with torch.no_grad():
        a1, _ = model(*b)
        a2, _ = model(*b)
        torch.testing.assert_close(a1, a2)
        model.train()
        torch.manual_seed(1)
        t1, _ = model(*b)
        torch.manual_seed(2)
        t2, _ = model(*b)
    assert not torch.allclose(t1, t2)


def test_bio_transitions_forbid_exactly_the_invalid_moves():
    trans, start = bio_transitions(TAGS)
    assert start.tolist() == [0, 0, NEG, 0, NEG]
    forbidden = {(p, t) for p in TAGS for t in TAGS if trans[TAGS.index(p), TAGS.index(t)] == NEG}
    assert forbidden == {("O", "I-a"), ("B-b", "I-a"), ("I-b", "I-a"), ("O", "I-b"), ("B-a", "I-b"), ("I-a", "I-b")}


def test_decode_tags_never_outputs_invalid_bio():
    model, _ = make(tiny_config(bio_constraints=True))
    gen = torch.Generator().manual_seed(0)
    b, t = 64, 12
    logits = torch.randn(b, t, len(TAGS), generator=gen) * 4
    logits[..., 2] += 3  # push I-a and I-b up so unconstrained argmax would often be invalid
    logits[..., 4] += 3
    lengths = torch.randint(1, t + 1, (b,), generator=gen)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    ids = model.decode_tags(logits, mask)
    n_invalid_argmax = 0
    for row in range(b):
        n = int(lengths[row])
        tags = [TAGS[k] for k in ids[row, :n].tolist()]
        assert bio_error(tags) is None, tags
        n_invalid_argmax += bio_error([TAGS[k] for k in logits[row, :n].argmax(-1).tolist()]) is not None
    assert n_invalid_argmax > b // 2  # the test would catch a decoder that ignored the constraints


def test_decode_tags_without_constraints_is_argmax():
    model, _ = make(tiny_config(bio_constraints=False))
    logits = torch.randn(2, 4, len(TAGS))
    mask = torch.ones(2, 4, dtype=torch.bool)
    assert torch.equal(model.decode_tags(logits, mask), logits.argmax(-1))


def test_viterbi_finds_the_best_valid_path():
    trans, start = bio_transitions(TAGS)
    gen = torch.Generator().manual_seed(3)
    scores = torch.log_softmax(torch.randn(5, 4, len(TAGS), generator=gen) * 3, -1)
    lengths = [4, 3, 1, 2, 4]
    mask = torch.arange(4)[None, :] < torch.tensor(lengths)[:, None]
    paths = viterbi(scores, mask, trans, start)
    for row, n in enumerate(lengths):
        best, best_score = None, -float("inf")
        for path in itertools.product(range(len(TAGS)), repeat=n):
            if bio_error([TAGS[k] for k in path]) is not None:
                continue
            s = sum(float(scores[row, i, k]) for i, k in enumerate(path))
            if s > best_score:
                best, best_score = list(path), s
        assert paths[row, :n].tolist() == best


# --- inference ----------------------------------------------------------------------------------


LONG = ["play", "the", "beatles", "wake", "me", "up", "at", "seven", "play", "queen", "loudly"]


def test_predict_words_window_gives_one_tag_per_word():
    model, vocabs = make(tiny_config(max_len=4, overlong="window"))
    stats = OverlongStats()
    probs, tags = predict_words(model, vocabs, [LONG, SENTS[0]], stats=stats)
    assert [len(t) for t in tags] == [len(LONG), 3]
    assert all(t in TAGS for t in tags[0])
    assert stats.windowed == 1 and stats.truncated == 0
    assert probs.shape == (2, 2)
    np.testing.assert_allclose(probs.sum(1), 1.0)
    # each window is predicted as if it were its own sentence
    pieces = [LONG[0:4], LONG[4:8], LONG[8:11]]
    _, piece_tags = predict_words(model, vocabs, pieces)
    assert tags[0] == piece_tags[0] + piece_tags[1] + piece_tags[2]
    # the intent comes from window logits averaged by window length
    with torch.no_grad():
        il, _ = model(*batch(vocabs, pieces))
    avg = (il * torch.tensor([[4.0], [4.0], [3.0]])).sum(0) / 11
    np.testing.assert_allclose(probs[0], torch.softmax(avg.double(), -1).numpy(), atol=1e-6)


def test_predict_words_truncate_warns_counts_and_tags_rest_o():
    model, vocabs = make(tiny_config(max_len=4, overlong="truncate"))
    # make every kept word a B-a so truncated positions are recognizable
    with torch.no_grad():
        model.tag_head.proj.weight.zero_()
        model.tag_head.proj.bias.copy_(torch.tensor([0.0, 5.0, 0.0, 0.0, 0.0]))
    stats = OverlongStats()
    with pytest.warns(UserWarning, match=r"1 input\(s\) longer than model.max_len=4 tokens were truncated"):
        _, tags = predict_words(model, vocabs, [LONG, SENTS[0]], stats=stats)
    assert stats.truncated == 1 and stats.windowed == 0
    assert tags[0] == ["B-a"] * 4 + ["O"] * (len(LONG) - 4)
    assert tags[1] == ["B-a"] * 3


def test_predict_words_short_input_does_not_warn():
    model, vocabs = make(tiny_config(max_len=8, overlong="truncate"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, tags = predict_words(model, vocabs, SENTS)
    assert [len(t) for t in tags] == [3, 5, 4]


def test_predict_words_batching_and_order_do_not_change_results():
    model, vocabs = make()
    probs, tags = predict_words(model, vocabs, SENTS, batch_size=256)
    probs1, tags1 = predict_words(model, vocabs, SENTS, batch_size=1)
    np.testing.assert_allclose(probs, probs1, atol=1e-6)
    assert tags == tags1


def test_predict_words_restores_train_mode_and_rejects_empty():
    model, vocabs = make()
    model.train()
    predict_words(model, vocabs, SENTS)
    assert model.training
    with pytest.raises(ValueError, match="sentence 1 has no words"):
        predict_words(model, vocabs, [["a"], []])


def test_model_config_rejects_bad_values():
    # a bundle's or checkpoint's model_config goes through the same checks as params.yaml
    with pytest.raises(ValueError, match="overlong\n  Input should be 'window' or 'truncate'"):
        ModelConfig(overlong="drop")
    with pytest.raises(ValueError, match="max_len\n  Input should be greater than or equal to 1"):
        ModelConfig(max_len=0)
    with pytest.raises(ValueError, match="char_kernel\n  Value error, must be odd"):
        ModelConfig(char_kernel=2)


def test_model_config_checks_the_encoder_options():
    with pytest.raises(ValueError, match="attention_heads 3 must divide the BiLSTM state size 2 \\* hidden_size = 16"):
        tiny_config(attention_heads=3)
    with pytest.raises(ValueError, match="char_filters over two directions: it must be even"):
        tiny_config(char_encoder="bilstm", char_filters=5)
    with pytest.raises(ValueError, match="intent_level 'token' needs sentence_head 'single'"):
        tiny_config(intent_level="token", sentence_head="multi")


def test_word_init_std_scales_the_word_embeddings_and_moves_no_other_draw():
    # the comparison of two starts is paired: the same seed gives every other weight exactly as before
    base, _ = make(tiny_config(word_dim=64), seed=3)
    small, _ = make(tiny_config(word_dim=64, word_init_std=0.1), seed=3)
    torch.testing.assert_close(small.word_emb.weight, 0.1 * base.word_emb.weight)
    assert small.word_emb.weight[0].abs().max() == 0  # <pad> stays zero
    assert 0.05 < small.word_emb.weight[1:].std() < 0.2
    for (name, p), q in zip(base.named_parameters(), small.parameters(), strict=True):
        if name != "word_emb.weight":
            assert torch.equal(p, q), name
    with pytest.raises(ValueError, match="word_init_std\n  Input should be greater than 0"):
        tiny_config(word_init_std=0)


def test_the_encoder_options_default_off_and_keep_the_checkpoint_layout():
    # Checkpoints and bundles written before these options load unchanged: same parameter names and shapes.
    model, _ = make(tiny_config())
    keys = set(model.state_dict())
    assert not any(k.startswith("attention.") for k in keys)
    assert "char_cnn.conv.weight" in keys and model.intent_head.mlp[0].in_features == 4 * 8
    token, _ = make(tiny_config(intent_level="token", attention_heads=2, char_encoder="bilstm"))
    assert {"attention.attn.in_proj_weight", "char_cnn.lstm.weight_ih_l0"} <= set(token.state_dict())
    assert token.intent_head.mlp[0].in_features == 2 * 8  # scores one token's state, not the pooled pair


def test_slot_to_intent_reads_the_tag_heads_view_of_the_states_and_keeps_the_checkpoint_layout():
    plain, vocabs = make(tiny_config())
    slot, _ = make(tiny_config(slot_to_intent=True))
    b = batch(vocabs, SENTS)
    h2 = 2 * 8
    assert set(slot.state_dict()) == set(plain.state_dict())  # no new weights: it reuses the tag head's
    assert slot.intent_head.mlp[0].in_features == 2 * (h2 + len(TAGS))  # mean and max of states + tag distribution

    @torch.no_grad()
    def intents_as_tag_weights_move(model):
        """Intent logits as they are, after the tag head's intent-reading weights move, then its state-reading ones."""
        ref = model(*b)[0]
        model.tag_head.proj.weight[:, h2:].mul_(5.0)  # the weights reading the intent distribution
        moved_intent_part = model(*b)[0]
        model.tag_head.proj.weight[:, :h2].mul_(5.0)  # the weights reading the encoder states
        return ref, moved_intent_part, model(*b)[0]

    ref, moved_intent_part, moved_state_part = intents_as_tag_weights_move(slot)
    # the slot view is scored before the intent exists: the intent-reading weights never reach the intent
    torch.testing.assert_close(moved_intent_part, ref)
    assert not torch.allclose(moved_state_part, ref)  # ...but the tag head's view of the states does
    ref, _, moved_state_part = intents_as_tag_weights_move(plain)
    torch.testing.assert_close(moved_state_part, ref)  # off: the intent never reads the tag head


def test_slot_to_intent_without_intent_to_tags_leaves_the_tag_scores_as_the_tag_head_gives_them():
    # The tag head then reads the encoder states alone, which slot_to_intent has scored already: the tag scores
    # must be the tag head's own, exactly as without slot_to_intent (same encoder and tag head weights).
    plain, vocabs = make(tiny_config(intent_to_tags=False))
    slot, _ = make(tiny_config(intent_to_tags=False, slot_to_intent=True))
    shared = {k: v for k, v in plain.state_dict().items() if not k.startswith("intent_head.")}
    slot.load_state_dict(shared, strict=False)
    plain.eval(), slot.eval()
    b = batch(vocabs, SENTS)
    with torch.no_grad():
        torch.testing.assert_close(slot(*b)[1], plain(*b)[1], rtol=0, atol=0)


TRAIN = [(["play", "the", "beatles"], "Play", ["O", "O", "B-a"]),
         (["wake", "me", "up", "at", "seven"], "Wake", ["O", "O", "O", "O", "B-b"]),
         (["play", "queen", "loudly", "now"], "Play", ["O", "B-a", "O", "O"]),
         (["wake", "me", "at", "six", "thirty"], "Wake", ["O", "O", "O", "B-b", "I-b"])]


@pytest.mark.parametrize("kw", LEVERS, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_each_encoder_option_learns_a_tiny_training_set(kw):
    model, vocabs = make(tiny_config(dropout=0.0, **kw))
    model.train()
    words, chars, mask = batch(vocabs, [w for w, _, _ in TRAIN])
    intents = torch.tensor([vocabs.intents.stoi[i] for _, i, _ in TRAIN])
    tags = torch.full(words.shape, -100)
    for r, (_, _, ts) in enumerate(TRAIN):
        tags[r, : len(ts)] = torch.tensor([TAGS.index(t) for t in ts])
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(150):
        opt.zero_grad()
        intent_logits, tag_scores = model(words, chars, mask)
        loss = model.intent_head.loss(intent_logits, intents) + model.tag_head.loss(tag_scores, tags, mask)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        intent_logits, tag_scores = model(words, chars, mask)
        decoded = model.decode_tags(tag_scores, mask)
    assert intent_logits.argmax(1).tolist() == intents.tolist()
    for r, (_, _, ts) in enumerate(TRAIN):
        assert [TAGS[k] for k in decoded[r, : len(ts)].tolist()] == ts


@pytest.mark.parametrize("lengths", [[5, 5, 5], [5, 3, 5, 1], list(range(1, 11))])
def test_run_lstm_equals_pack_lstm_unpack_with_the_same_gradients(lengths):
    """The CPU route that runs the LSTM once per sentence length (unpacked) gives the states and the
    gradients of packing (what it replaced), zero at padding; 10 lengths (over SPLIT_MAX_LENGTHS) still pack."""
    from twinhead.model import pack, run_lstm, unpack

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(6, 4, num_layers=2, batch_first=True, bidirectional=True)
    lens = torch.tensor(lengths)
    x = torch.randn(len(lengths), max(lengths), 6, requires_grad=True)
    got = run_lstm(lstm, x, lens)
    g_got = torch.autograd.grad(got.square().sum(), [x, *lstm.parameters()])
    want = unpack(lstm(pack(x, lens))[0], x.shape[1])
    g_want = torch.autograd.grad(want.square().sum(), [x, *lstm.parameters()])
    assert got.shape == want.shape == (len(lengths), max(lengths), 8)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    for row, n in enumerate(lengths):
        assert not got[row, n:].any()  # padding stays zero
