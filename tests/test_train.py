"""The training step and loop: loss rules on the real model, single-task training, learned rule state."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tests.conftest import snips_sample
from twinhead.model import JointModel, ModelConfig
from twinhead.preprocess import PreprocessConfig, preprocess
from twinhead.text import bio_to_spans
from twinhead.train import (
    TrainConfig,
    TrainData,
    average_weights,
    evaluate_frame,
    new_state,
    selection_score,
    train,
    train_step,
)
from twinhead.vocab import build_vocabs

MCFG = ModelConfig(word_dim=12, char_dim=6, char_filters=6, hidden_size=12, num_layers=1, dropout=0.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    raw = snips_sample(tmp_path_factory.mktemp("raw"), {"train": 120, "dev": 30, "test": 10})
    frames, _, _, _ = preprocess(raw, None, PreprocessConfig(), seed=1)
    tr, dev = frames["train"], frames["dev"]
    return tr, dev, build_vocabs(tr["words"], tr["intent"], tr["word_tags"])


def one_batch(data, model, n=16):
    tr, _, vocabs = data
    td = TrainData(tr, vocabs, MCFG, model.intent_targets)
    return td.batch(list(range(n)), "cpu", 0.0, torch.Generator().manual_seed(0))


def grads_of(loss, params):
    gs = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]


@pytest.mark.filterwarnings(r"ignore:Seems like `optimizer.step\(\)` has been overridden")
@pytest.mark.parametrize("rule", ["sum", "grad_mean"])
def test_train_step_gives_the_rules_gradients_on_the_joint_model(data, rule):
    """grad_mean (the design's rule): the shared encoder gets the mean of the two task gradients, each
    head exactly its own task's gradient; sum: the gradient of the sum (the tag loss reaches the intent
    head through intent_to_tags)."""
    _, _, vocabs = data
    torch.manual_seed(0)
    model = JointModel(MCFG, len(vocabs.words), len(vocabs.chars), vocabs.tags.itos, vocabs.intents.itos)
    tcfg = TrainConfig(loss_rule=rule, grad_clip=0.0, lr=0.01)
    batch = one_batch(data, model)
    state = new_state(model, tcfg, steps_per_epoch=1, seed=0)
    state.optimizer.step = lambda: None  # keep the weights: the gradients are what is checked

    words, chars, mask, tags, intents = batch[:5]
    intent_logits, tag_scores = model(words, chars, mask)
    li, lt = model.intent_head.loss(intent_logits, intents), model.tag_head.loss(tag_scores, tags, mask)
    shared, intent_p, tag_p = model.shared_parameters(), model.head_parameters()["intent"], \
        model.head_parameters()["tags"]
    gi_s, gt_s = grads_of(li, shared), grads_of(lt, shared)
    gi_i, gt_i = grads_of(li, intent_p), grads_of(lt, intent_p)
    gt_t = grads_of(lt, tag_p)

    stats = train_step(state, batch, tcfg, measure_conflict=True)
    half = 0.5 if rule == "grad_mean" else 1.0
    for p, a, b in zip(shared, gi_s, gt_s):
        assert torch.allclose(p.grad, half * (a + b), atol=1e-6)
    cross = 0.0 if rule == "grad_mean" else 1.0
    assert any(g.abs().sum() > 1e-6 for g in gt_i)  # the tag loss does reach the intent head...
    for p, a, b in zip(intent_p, gi_i, gt_i):
        assert torch.allclose(p.grad, a + cross * b, atol=1e-6)  # ...and grad_mean keeps it out
    for p, g in zip(tag_p, gt_t):
        assert torch.allclose(p.grad, g, atol=1e-6)
    flat_i, flat_t = torch.cat([g.flatten() for g in gi_s]), torch.cat([g.flatten() for g in gt_s])
    cos = torch.nn.functional.cosine_similarity(flat_i, flat_t, dim=0)
    assert stats.floats()["grad_cosine"] == pytest.approx(cos.item(), abs=1e-5)


def test_training_logs_conflict_and_weights_per_epoch(data):
    tr, dev, vocabs = data
    res = train(tr, dev, vocabs, MCFG, TrainConfig(epochs=2, batch_size=16, lr=0.01, conflict_every=2,
                                                   loss_rule="pcgrad", hold_tags=0, mention_replace=0.0),
                seed=1, progress=False)
    words = sum(min(len(w), MCFG.max_len) for w in tr["words"] if len(w))  # train as it is: mention_replace 0
    for row in res.history:
        # the speed of the epoch's training pass (not its dev evaluation): every train sentence once
        assert row["train_words_per_s"] / row["train_sentences_per_s"] == pytest.approx(words / len(tr))
        assert row["train_sentences_per_s"] * row["seconds"] >= len(tr)
        assert -1.0 <= row["train_grad_cosine"] <= 1.0
        assert row["train_intent_weight"] == 1.0 and row["train_tags_weight"] == 1.0
        assert row["train_loss"] == pytest.approx(row["train_intent_loss"] + row["train_tags_loss"], rel=1e-5)
    never = train(tr, dev, vocabs, MCFG, TrainConfig(epochs=1, batch_size=16, conflict_every=0), seed=1,
                  progress=False)
    assert never.history[0]["train_grad_cosine"] is None


class Killed(Exception):
    pass


def train_killed_after(epoch: int, data, tcfg: TrainConfig, seed: int, state) -> None:
    """Train with a state file until a callback kills the run after `epoch` (the state is saved before it)."""
    tr, dev, vocabs = data

    def die(row):
        if row["epoch"] == epoch:
            raise Killed

    with pytest.raises(Killed):
        train(tr, dev, vocabs, MCFG, tcfg, seed=seed, state_path=state, on_epoch=die, progress=False)


def test_uncertainty_weights_are_learned_saved_and_resumed(data, tmp_path):
    tr, dev, vocabs = data
    tcfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, loss_rule="uncertainty", patience=0)
    full = train(tr, dev, vocabs, MCFG, tcfg, seed=2, progress=False)
    log_vars = full.rule_state["log_vars"]
    assert log_vars.shape == (2,) and log_vars.abs().min() > 1e-3  # learned, not left at 0
    w = [r["train_intent_weight"] for r in full.history]
    assert w[0] != w[-1]  # the effective weight exp(-s) moves during training

    state = tmp_path / "state.pt"
    train_killed_after(1, data, tcfg, 2, state)
    saved = torch.load(state, weights_only=True)
    assert not torch.equal(saved["rule"]["log_vars"], torch.zeros(2))
    resumed = train(tr, dev, vocabs, MCFG, tcfg, seed=2, state_path=state, progress=False)
    assert resumed.resumed_from == 1
    assert torch.equal(resumed.rule_state["log_vars"], log_vars)  # restored, then trained on identically
    for k, v in full.best_state.items():
        assert torch.equal(v, resumed.best_state[k]), k


def test_the_tag_hold_is_logged_ends_once_and_resumes_where_it_was(data, tmp_path, capsys):
    """train.hold_tags: the tag loss weighted 0.01 until the intent loss moves (here the level is never reached,
    so the hold runs its cap of 3 epochs, 8 steps each), said once, logged as the epoch's mean tag weight, and
    a run killed in the middle of the hold resumes it exactly; 0 turns it off."""
    tr, dev, vocabs = data
    tcfg = TrainConfig(epochs=4, batch_size=16, lr=0.01, loss_rule="sum", patience=0, hold_tags=0.001)
    full = train(tr, dev, vocabs, MCFG, tcfg, seed=3, progress=False)
    out = capsys.readouterr().out
    assert out.count("train.hold_tags") == 1 and "epoch 3, step 24: training intent loss still" in out
    assert [r["train_tags_weight"] for r in full.history] == pytest.approx([0.01, 0.01, 0.01, 1.0])

    state = tmp_path / "state.pt"
    train_killed_after(1, data, tcfg, 3, state)
    assert torch.load(state, weights_only=True)["hold"]["steps"] == 8
    resumed = train(tr, dev, vocabs, MCFG, tcfg, seed=3, state_path=state, progress=False)
    assert resumed.resumed_from == 1
    for k, v in full.best_state.items():
        assert torch.equal(v, resumed.best_state[k]), k

    capsys.readouterr()
    off = train(tr, dev, vocabs, MCFG, dataclasses.replace(tcfg, hold_tags=0.0), seed=3, progress=False)
    assert "train.hold_tags" not in capsys.readouterr().out
    assert [r["train_tags_weight"] for r in off.history] == [1.0] * 4
    single = train(tr, dev, vocabs, MCFG, dataclasses.replace(tcfg, tasks=["tags"], epochs=1), seed=3,
                   progress=False)
    assert [r["train_tags_weight"] for r in single.history] == [1.0]  # nothing to learn first


def test_single_task_training_leaves_the_other_head_alone(data, capsys):
    tr, dev, vocabs = data
    res = train(tr, dev, vocabs, MCFG, TrainConfig(epochs=2, batch_size=16, lr=0.01, tasks=["tags"]), seed=4,
                progress=False)
    assert "intent_to_tags is off" in capsys.readouterr().out
    assert res.model_config.intent_to_tags is False
    torch.manual_seed(4)
    fresh = JointModel(res.model_config, len(vocabs.words), len(vocabs.chars), vocabs.tags.itos, vocabs.intents.itos)
    for k, v in fresh.state_dict().items():
        if k.startswith("intent_head."):
            assert torch.equal(v, res.best_state[k]), f"{k} changed though the intent task was not trained"
        elif k.startswith("tag_head.proj"):
            assert not torch.equal(v, res.best_state[k])
    assert "train_intent_loss" not in res.history[0] and res.history[0]["train_grad_cosine"] is None


def test_early_stopping_breaks_ties_by_the_other_dev_metrics():
    from twinhead.train import selection_score

    flat = {"intent_accuracy": 0.2, "slot_f1": 0.0, "sentence_accuracy": 0.0}
    better = {"intent_accuracy": 0.7, "slot_f1": 0.3, "sentence_accuracy": 0.0}
    assert selection_score(better, "sentence_accuracy") > selection_score(flat, "sentence_accuracy")
    # the chosen metric always comes first, however much the others move
    one_more = {"intent_accuracy": 0.0, "slot_f1": 0.0, "sentence_accuracy": 0.001}
    assert selection_score(one_more, "sentence_accuracy") > selection_score(better, "sentence_accuracy")


def test_plateau_schedule_decays_lr_only_after_the_dev_metric_stalls(data):
    """The default schedule ends with the data, not at a fixed epoch: lr stays put while the dev metric
    improves and is multiplied by lr_decay once it has not improved for more than lr_patience epochs."""
    tr, dev, vocabs = data
    tcfg = TrainConfig(epochs=14, batch_size=16, lr=0.05, patience=0, scheduler="plateau", lr_decay=0.5,
                       lr_patience=1, early_stop_metric="intent_accuracy")
    hist = train(tr, dev, vocabs, MCFG, tcfg, seed=5, progress=False).history
    lrs = [r["lr"] for r in hist]
    best, bad, expected = float("-inf"), 0, [tcfg.lr]
    for r in hist[:-1]:  # replay the rule on the logged dev metric: the lr each next epoch must have
        m = r["dev_intent_accuracy"]
        best, bad = (m, 0) if m > best else (best, bad + 1)
        nxt = expected[-1]
        if bad > tcfg.lr_patience:
            nxt, bad = nxt * tcfg.lr_decay, 0
        expected.append(nxt)
    assert lrs == pytest.approx(expected)
    assert min(lrs) < tcfg.lr, "the run must stall at least once for this test to mean anything"


def test_bf16_runs_the_training_forward_in_bfloat16_and_still_learns(data):
    """train.precision bf16: torch.autocast on the CPU too (this test), so the code path a GPU takes runs here.
    The weights stay float32; dev evaluation stays float32 (what the exported bundle computes)."""
    tr, dev, vocabs = data
    tcfg = TrainConfig(epochs=3, batch_size=16, lr=0.01, patience=0, precision="bf16")
    seen: dict[bool, set] = {True: set(), False: set()}  # module.training -> dtypes of the Linear layers' outputs

    def record(module, args, out):
        if isinstance(module, torch.nn.Linear):
            seen[module.training].add(out.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        bf16 = train(tr, dev, vocabs, MCFG, tcfg, seed=6, progress=False)
    finally:
        handle.remove()
    assert seen == {True: {torch.bfloat16}, False: {torch.float32}}
    assert all(v.dtype in (torch.float32, torch.int64) for v in bf16.best_state.values())
    fp32 = train(tr, dev, vocabs, MCFG, dataclasses.replace(tcfg, precision="fp32"), seed=6, progress=False)
    first, last = bf16.history[0], bf16.history[-1]
    assert last["train_loss"] < 0.8 * first["train_loss"]
    # the same run, rounded differently: close to fp32's losses, not equal to them
    assert first["train_loss"] != fp32.history[0]["train_loss"]
    assert first["train_loss"] == pytest.approx(fp32.history[0]["train_loss"], rel=0.02)


def test_bf16_on_a_cpu_without_a_bf16_lstm_runs_the_lstm_in_float32_and_warns(data, monkeypatch):
    """On a CPU without bfloat16 instructions (AVX2) oneDNN cannot build a bf16 LSTM and training crashed deep
    inside torch. Now the forward runs without oneDNN there: the LSTM in float32, the linear layers in bfloat16,
    one warning naming the param, and oneDNN is back on after each step. Forced here with the probe patched,
    so it runs on any CPU."""
    import twinhead.train as train_mod

    monkeypatch.setattr(train_mod, "cpu_bf16_lstm", lambda: False)
    train_mod._warn_no_bf16_lstm.cache_clear()
    tr, dev, vocabs = data
    seen: dict[type, set] = {torch.nn.LSTM: set(), torch.nn.Linear: set()}
    onednn_inside: set[bool] = set()

    def record(module, args, out):
        if module.training and type(module) in seen:
            seen[type(module)].add((out[0] if isinstance(out, tuple) else out).dtype)
            onednn_inside.add(torch.backends.mkldnn.enabled)

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        with pytest.warns(UserWarning, match="train.precision=bf16: this CPU has no bfloat16 LSTM kernel"):
            out = train(tr, dev, vocabs, MCFG, TrainConfig(epochs=2, batch_size=16, lr=0.01, patience=0,
                                                           precision="bf16"), seed=6, progress=False)
    finally:
        handle.remove()
        train_mod._warn_no_bf16_lstm.cache_clear()
    assert seen == {torch.nn.LSTM: {torch.float32}, torch.nn.Linear: {torch.bfloat16}}
    assert onednn_inside == {False} and torch.backends.mkldnn.enabled
    assert out.history[-1]["train_loss"] < out.history[0]["train_loss"]


def test_average_weights_is_the_elementwise_mean_and_keeps_integer_tensors():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(5)}
    mean = average_weights([a, b])
    assert torch.equal(mean["w"], torch.tensor([2.0, 4.0])) and torch.equal(mean["n"], torch.tensor(5))


def test_checkpoint_averaging_scores_the_mean_on_dev_and_keeps_it_only_if_not_worse(data):
    """train.average_last=3: the mean of the best epoch's weights and the two before it is scored on dev
    (the scores reported are those of the weights returned), and replaces the best epoch's weights exactly
    when its selection score is at least theirs. Off, there is no record and the best epoch is returned."""
    tr, dev, vocabs = data
    base = dict(epochs=6, batch_size=16, lr=0.02, patience=0, scheduler="none")
    off = train(tr, dev, vocabs, MCFG, TrainConfig(**base), seed=3, progress=False)
    on = train(tr, dev, vocabs, MCFG, TrainConfig(**base, average_last=3), seed=3, progress=False)
    assert off.average is None
    avg = on.average
    assert on.best_epoch == off.best_epoch >= 3  # averaging changes nothing before the end
    assert avg["epochs"] == [off.best_epoch - 2, off.best_epoch - 1, off.best_epoch]
    assert avg["best_epoch_dev_scores"] == off.best_scores
    model = JointModel(on.model_config, len(vocabs.words), len(vocabs.chars), vocabs.tags.itos, vocabs.intents.itos)
    model.load_state_dict(on.best_state)
    scores = {f"dev_{k}": v for k, v in evaluate_frame(model, vocabs, dev, 256)[0].items()}
    kept = selection_score({k[4:]: v for k, v in avg["dev_scores"].items()}, "sentence_accuracy") >= \
        selection_score({k[4:]: v for k, v in off.best_scores.items()}, "sentence_accuracy")
    assert avg["kept"] == kept
    if kept:
        assert scores == avg["dev_scores"] == on.best_scores
        assert any(not torch.equal(v, off.best_state[k]) for k, v in on.best_state.items())
    else:
        assert on.best_scores == off.best_scores
        assert all(torch.equal(v, off.best_state[k]) for k, v in on.best_state.items())


def test_checkpoint_averaging_resumes_with_the_epochs_it_had(data, tmp_path):
    """A run killed after epoch 4 and resumed averages the same epochs' weights as an uninterrupted run."""
    tr, dev, vocabs = data
    tcfg = TrainConfig(epochs=6, batch_size=16, lr=0.02, patience=0, scheduler="none", average_last=4)
    full = train(tr, dev, vocabs, MCFG, tcfg, seed=5, progress=False)

    state = tmp_path / "state.pt"
    train_killed_after(4, data, tcfg, 5, state)
    resumed = train(tr, dev, vocabs, MCFG, tcfg, seed=5, state_path=state, progress=False)
    assert resumed.resumed_from == 4
    assert resumed.average == full.average
    for k, v in full.best_state.items():
        assert torch.equal(v, resumed.best_state[k]), k


def test_a_batch_holds_collates_tensors_and_the_tags_padded_with_the_ignore_index(data):
    """TrainData builds a batch from per-sentence arrays: the words, chars and mask `collate` gives for the
    same sentences (what prediction reads), the tags padded with -100, the lengths on the host."""
    from twinhead.inference import collate, encode

    tr, _, vocabs = data
    model = JointModel(MCFG, len(vocabs.words), len(vocabs.chars), vocabs.tags.itos, vocabs.intents.itos)
    td = TrainData(tr, vocabs, MCFG, model.intent_targets)
    items = [encode(list(ws), vocabs, MCFG.max_word_len) for ws in tr["words"]]  # the sample: no empty or overlong
    tags = [vocabs.tags.encode(list(ts)) for ts in tr["word_tags"]]
    assert len(td) == len(items) and td.words == sum(map(len, tags))
    idx = sorted(range(len(td)), key=lambda i: -len(tags[i]))[:3] + [0, 5, 7]  # mixed lengths
    batch = td.batch(idx, "cpu", 0.0, torch.Generator().manual_seed(0))
    words, chars, mask = collate([items[i] for i in idx], "cpu")
    assert torch.equal(batch.words, words) and torch.equal(batch.chars, chars) and torch.equal(batch.mask, mask)
    assert batch.lengths.tolist() == [len(tags[i]) for i in idx]
    for r, i in enumerate(idx):
        assert batch.tags[r].tolist() == tags[i] + [-100] * (words.shape[1] - len(tags[i]))


def test_flush_denormal_makes_training_compute_denormals_as_zero_and_off_restores_them(data):
    tr, dev, vocabs = data
    probes = []

    def probe(row):  # a float32 denormal times one: 0 under flush-to-zero, itself otherwise
        probes.append((torch.tensor([1e-39]) * 1.0).item())

    for flush in (True, False):
        train(tr, dev, vocabs, MCFG, TrainConfig(epochs=1, batch_size=16, flush_denormal=flush), seed=1,
              on_epoch=probe, progress=False)
    assert probes[0] == 0.0
    assert probes[1] == pytest.approx(1e-39, rel=1e-3)  # and the process's default is back


def test_mention_replacement_reads_spans_as_other_spans_of_their_type_and_leaves_the_rest(data):
    """train.mention_replace: each replaced span is a span of its type as it is in train (words, characters,
    tags, singleton flags), the words around it are the sentence's own, the epoch's batches are cut by the new
    lengths, and p = 0 reads train as it is."""
    from twinhead.text import bio_to_spans

    tr, _, vocabs = data
    model = JointModel(MCFG, len(vocabs.words), len(vocabs.chars), vocabs.tags.itos, vocabs.intents.itos)
    td = TrainData(tr, vocabs, MCFG, model.intent_targets)
    idx = list(range(len(td)))
    plain = td.batch(idx, "cpu", 0.0, torch.Generator())
    plain_batches = td.batches(16, torch.Generator().manual_seed(3))
    td.draw_mentions(1.0, torch.Generator().manual_seed(4))
    batch = td.batch(idx, "cpu", 0.0, torch.Generator())
    pool = {}  # type -> the spans of train as (words, tags)
    for i, (w, _, tg, _) in enumerate(td.arrays):
        for s, e, typ in td.spans[i]:
            pool.setdefault(typ, set()).add((tuple(w[s:e]), tuple(tg[s:e])))

    def gaps(ws, spans):  # the words before, between and after the spans
        cuts = [0, *(k for s, e, _ in spans for k in (s, e)), len(ws)]
        return [list(ws[a:b]) for a, b in zip(cuts[::2], cuts[1::2])]

    changed = 0
    for r, i in enumerate(idx):
        n = int(batch.lengths[r])
        assert n == td.epoch_lengths[i]
        tags = [vocabs.tags.itos[t] for t in batch.tags[r, :n].tolist()]
        words = batch.words[r, :n].tolist()
        new, old = bio_to_spans(tags), td.spans[i]
        assert [t for _, _, t in new] == [t for _, _, t in old]  # every span kept its type and place in order
        assert gaps(words, new) == gaps(td.arrays[i][0].tolist(), old)
        for s, e, typ in new:
            assert (tuple(words[s:e]), tuple(batch.tags[r, s:e].tolist())) in pool[typ]
        for k in range(n):  # each word's characters travel with it
            if words[k] > 1:
                spelt = "".join(vocabs.chars.itos[c] for c in batch.chars[r, k].tolist() if c > 0)
                assert spelt == vocabs.words.itos[words[k]][: MCFG.max_word_len]
        changed += words != plain.words[r, : len(td.arrays[i][0])].tolist() or n != len(td.arrays[i][0])
    assert changed > len(idx) // 2 and td.words == int(batch.lengths.sum())
    # cut from one pool (120 sentences) sorted by the new lengths: the batches' length ranges do not overlap
    ranges = sorted((min(td.epoch_lengths[b]), max(td.epoch_lengths[b])) for b in td.batches(16, torch.Generator()))
    assert all(hi <= lo for (_, hi), (lo, _) in zip(ranges, ranges[1:]))
    td.draw_mentions(0.0, torch.Generator().manual_seed(4))
    assert torch.equal(td.batch(idx, "cpu", 0.0, torch.Generator()).words, plain.words)
    assert td.batches(16, torch.Generator().manual_seed(3)) == plain_batches


def span_homes(data):
    """The sample's TrainData, vocabularies, each sentence's label, where each span of train is ((type, words,
    tags) -> the labels of the sentences it is in), and a model of the sample's sizes."""
    tr, _, vocabs = data
    model = JointModel(MCFG, len(vocabs.words), len(vocabs.chars), vocabs.tags.itos, vocabs.intents.itos)
    td = TrainData(tr, vocabs, MCFG, model.intent_targets)
    labels = [i for ws, i in zip(tr["words"], tr["intent"]) if len(ws)]
    where = {}
    for i, (w, _, tg, _) in enumerate(td.arrays):
        for s, e, typ in td.spans[i]:
            where.setdefault((typ, tuple(w[s:e]), tuple(tg[s:e])), set()).add(labels[i])
    return td, vocabs, labels, where, model


def test_mention_pool_label_draws_spans_from_sentences_of_the_same_label(data):
    """train.mention_pool "label": a replaced span comes from a sentence of the same intent (so a title never
    moves to a sentence of another intent); "type" draws across intents, which the sample's shared types show."""
    td, vocabs, labels, where, model = span_homes(data)
    crossed = {}
    for pool in ("label", "type"):
        td.draw_mentions(1.0, torch.Generator().manual_seed(4), pool)
        assert td.epoch_arrays  # spans were replaced
        crossed[pool] = 0
        for i, (w, _, tg, _) in td.epoch_arrays.items():
            new = bio_to_spans([vocabs.tags.itos[t] for t in tg])
            assert [t for _, _, t in new] == [t for _, _, t in td.spans[i]]
            for s, e, typ in new:
                crossed[pool] += labels[i] not in where[(typ, tuple(w[s:e]), tuple(tg[s:e]))]
    assert crossed["label"] == 0 and crossed["type"] > 0


def test_mention_pool_split_draws_as_type_and_leaves_crossed_sentences_out_of_the_intent_loss(data):
    """train.mention_pool "split": the same replacements as "type" from the same draws; a sentence that took a
    span from a sentence of another label is marked, its intent loss left out (its tags still train), and
    every other sentence's intent loss counts as before. "split_weighted" gives each label back its weight."""
    td, vocabs, labels, where, model = span_homes(data)
    td.draw_mentions(1.0, torch.Generator().manual_seed(4), "type")
    assert td.epoch_intent_weight is None  # "type": every intent loss counts
    typed = {i: [a.tolist() for a in arrays] for i, arrays in td.epoch_arrays.items()}
    td.draw_mentions(1.0, torch.Generator().manual_seed(4), "split")
    assert {i: [a.tolist() for a in arrays] for i, arrays in td.epoch_arrays.items()} == typed
    crossed = set(np.flatnonzero(td.epoch_intent_weight == 0).tolist())  # the left-out sentences
    assert crossed and crossed < set(td.epoch_arrays)  # some sentences, all of them changed ones
    for i, (w, _, tg, _) in td.epoch_arrays.items():
        homes = [where[(typ, tuple(w[s:e]), tuple(tg[s:e]))]
                 for s, e, typ in bio_to_spans([vocabs.tags.itos[t] for t in tg])]
        if any(labels[i] not in h for h in homes):  # a span found only in other labels' sentences
            assert i in crossed
        if all(h == {labels[i]} for h in homes):  # every span found only in its own label's sentences
            assert i not in crossed
    idx = list(range(len(td)))
    batch = td.batch(idx, "cpu", 0.0, torch.Generator())
    assert batch.intent_weight.tolist() == [float(i not in crossed) for i in idx]
    logits = torch.randn(len(idx), len(vocabs.intents.itos))
    head = model.intent_head
    loss = head.loss(logits, batch.intents, 0.1, batch.intent_weight)
    kept = batch.intent_weight > 0
    assert torch.allclose(loss, head.loss(logits[kept], batch.intents[kept], 0.1))  # the mean over kept rows
    other = batch.intents.clone()
    other[~kept] = (other[~kept] + 1) % logits.shape[1]  # another target for every left-out row
    assert torch.equal(head.loss(logits, other, 0.1, batch.intent_weight), loss)
    assert torch.allclose(head.loss(logits, batch.intents, 0.1, torch.ones(len(idx))),
                          head.loss(logits, batch.intents, 0.1))

    # "split_weighted": the same draws and left-out sentences; a kept sentence weighs n / kept of its label, so
    # that each label's sentences together weigh as many as it has (a label that lost more weighs more each)
    td.draw_mentions(1.0, torch.Generator().manual_seed(4), "split_weighted")
    assert set(np.flatnonzero(td.epoch_intent_weight == 0).tolist()) == crossed
    w = td.batch(idx, "cpu", 0.0, torch.Generator()).intent_weight
    for lab in set(labels):
        rows = [i for i in idx if labels[i] == lab]
        n_kept = sum(i not in crossed for i in rows)
        assert all(w[i] == 0 for i in rows if i in crossed)
        assert sum(float(w[i]) for i in rows) == pytest.approx(len(rows) if n_kept else 0)
        assert all(float(w[i]) == pytest.approx(len(rows) / n_kept) for i in rows if i not in crossed)
    assert len({round(float(x), 4) for x in w if x > 0}) > 1  # labels lost different shares here


def test_mention_replacement_trains_differently_and_resumes_exactly(data, tmp_path):
    tr, dev, vocabs = data
    tcfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, patience=0, mention_replace=0.5)
    full = train(tr, dev, vocabs, MCFG, tcfg, seed=2, progress=False)
    plain = train(tr, dev, vocabs, MCFG, dataclasses.replace(tcfg, mention_replace=0.0), seed=2, progress=False)
    assert full.history[0]["train_loss"] != plain.history[0]["train_loss"]
    state = tmp_path / "state.pt"
    train_killed_after(1, data, tcfg, 2, state)
    resumed = train(tr, dev, vocabs, MCFG, tcfg, seed=2, state_path=state, progress=False)
    assert resumed.resumed_from == 1
    for k, v in full.best_state.items():  # the replacement draws went on where they stopped
        assert torch.equal(v, resumed.best_state[k]), k


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_weight_decay_of_adam_is_l2_and_of_adamw_a_shrink_apart_from_the_gradient(data, optimizer):
    """train.optimizer: with adamw, a word the batch does not hold (no gradient) shrinks by exactly lr *
    weight_decay of itself in a step; with adam, weight_decay is an L2 gradient that Adam scales, so the same row
    moves by about lr, whatever its size. The uncertainty rule's log-variances are never decayed."""
    _, _, vocabs = data
    torch.manual_seed(0)
    model = JointModel(MCFG, len(vocabs.words), len(vocabs.chars), vocabs.tags.itos, vocabs.intents.itos)
    tcfg = TrainConfig(optimizer=optimizer, weight_decay=0.1, lr=0.01, grad_clip=0.0, hold_tags=0.0)
    batch = one_batch(data, model, n=4)
    seen = set(batch[0].unique().tolist())
    unseen = next(i for i in range(1, len(vocabs.words)) if i not in seen)
    before = model.word_emb.weight[unseen].detach().clone()
    state = new_state(model, tcfg, steps_per_epoch=1, seed=0)
    assert type(state.optimizer) is (torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam)
    rule_before = [p.detach().clone() for p in state.rule.parameters()]
    assert rule_before  # the uncertainty rule learns its log-variances
    train_step(state, batch, tcfg)
    after = model.word_emb.weight[unseen].detach()
    if optimizer == "adamw":
        assert torch.allclose(after, before * (1 - 0.01 * 0.1), rtol=1e-6, atol=1e-7)
    else:
        assert torch.allclose((before - after).abs(), torch.full_like(before, 0.01), rtol=1e-3)
        assert torch.equal(torch.sign(before - after), torch.sign(before))
    for p, b in zip(state.rule.parameters(), rule_before):
        g = p.grad
        assert g is not None
        # Adam's first step moves a weight by lr * sign(its gradient): the decay adds nothing to it
        assert torch.allclose(b - p.detach(), 0.01 * torch.sign(g), atol=1e-6)


def test_rdrop_runs_the_batch_twice_and_adds_the_intent_divergence(data):
    """train.rdrop (R-Drop): in training, one pass over the batch twice (each copy its own dropout draws);
    each task's loss is the two copies' mean and the intent loss adds rdrop times the symmetric KL between the
    copies' intent distributions. Without dropout both copies agree: the plain losses. Off in eval mode."""
    from twinhead.mtl import make_rule
    from twinhead.train import TaskLosses

    tr, _, vocabs = data
    n = (len(vocabs.words), len(vocabs.chars), vocabs.tags.itos, vocabs.intents.itos)
    still = JointModel(MCFG, *n)  # dropout 0
    batch = one_batch(data, still)
    rule = make_rule("sum", ["intent", "tags"], {"intent": 1.0, "tags": 1.0})
    plain = TaskLosses(still, rule, ["intent", "tags"])(batch)
    twice = TaskLosses(still, rule, ["intent", "tags"], rdrop=1.0)(batch)
    for t in plain:
        torch.testing.assert_close(twice[t], plain[t])

    torch.manual_seed(0)
    model = JointModel(dataclasses.replace(MCFG, dropout=0.3), *n)
    losses = TaskLosses(model, rule, ["intent", "tags"], rdrop=2.0)
    torch.manual_seed(5)
    got = losses(batch)
    torch.manual_seed(5)  # the same dropout draws, by hand
    ins = [torch.cat([x, x]) for x in (batch.words, batch.chars, batch.mask, batch.lengths)]
    logits, scores = model(*ins)
    a, b = logits.chunk(2)
    head = model.intent_head
    kl = head.divergence(a, b)
    assert kl.item() > 1e-4  # the copies' dropout differs
    want = (head.loss(a, batch.intents) + head.loss(b, batch.intents)) / 2 + 2.0 * kl
    torch.testing.assert_close(got["intent"], want)
    sa, sb = scores.chunk(2)
    torch.testing.assert_close(got["tags"], (model.tag_head.loss(sa, batch.tags, batch.mask)
                                             + model.tag_head.loss(sb, batch.tags, batch.mask)) / 2)
    # rows weighted in the intent loss (train.mention_pool split): both copies' loss and the divergence
    # weigh each row as the plain loss does; a row of weight 0 counts in neither
    weight = torch.rand(len(batch.intents), generator=torch.Generator().manual_seed(1)).round()
    assert 0 < weight.sum() < len(weight)
    torch.manual_seed(5)
    got = losses(batch._replace(intent_weight=weight))
    want = ((head.loss(a, batch.intents, weight=weight) + head.loss(b, batch.intents, weight=weight)) / 2
            + 2.0 * head.divergence(a, b, weight))
    torch.testing.assert_close(got["intent"], want)
    assert not torch.isclose(want, (head.loss(a, batch.intents) + head.loss(b, batch.intents)) / 2 + 2.0 * kl)
    model.eval()
    torch.testing.assert_close(losses(batch)["intent"], TaskLosses(model, rule, ["intent", "tags"])(batch)["intent"])


def test_rdrop_trains_and_is_refused_below_zero(data):
    tr, dev, vocabs = data
    tcfg = TrainConfig(epochs=1, batch_size=16, lr=0.01, patience=0, mention_replace=0.0, hold_tags=0)
    mcfg = dataclasses.replace(MCFG, dropout=0.3)
    plain = train(tr, dev, vocabs, mcfg, tcfg, seed=3, progress=False)
    rd = train(tr, dev, vocabs, mcfg, dataclasses.replace(tcfg, rdrop=1.0), seed=3, progress=False)
    assert rd.history[0]["train_loss"] != plain.history[0]["train_loss"]
    assert np.isfinite(rd.history[0]["train_loss"])
    with pytest.raises(ValueError, match="rdrop"):
        TrainConfig(rdrop=-0.5)


def test_a_run_the_epoch_cap_ends_before_early_stopping_warns(data):
    """train.epochs is a cap: when it, not the dev plateau (train.patience), ends a run, the user is told that
    dev may still improve. Early stopping, or patience 0 (train for exactly train.epochs), warns nothing."""
    import warnings

    tr, dev, vocabs = data
    tcfg = TrainConfig(epochs=2, batch_size=16, lr=0.01, patience=16, mention_replace=0.0, hold_tags=0)
    with pytest.warns(UserWarning, match=r"train.epochs=2 ended training \d epoch\(s\) after the best dev epoch "
                                         r"\d, before early stopping .*train.patience=16.*raise train.epochs"):
        train(tr, dev, vocabs, MCFG, tcfg, seed=3, progress=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="train.epochs=")
        train(tr, dev, vocabs, MCFG, dataclasses.replace(tcfg, patience=0), seed=3, progress=False)
        stopped = train(tr, dev, vocabs, MCFG, dataclasses.replace(tcfg, epochs=60, patience=1, lr=0.05), seed=3,
                        progress=False)
    assert len(stopped.history) < 60  # the plateau ended it
