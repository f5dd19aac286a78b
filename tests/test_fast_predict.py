"""The Predictor's fast path (twinhead.fast): the same predictions as the reference path, whatever the backend.

The main parity check trains a small CRF model for a few seconds on the SNIPS train split and predicts the
whole SNIPS test split as raw text with each backend: intents, tokens, tags and entity spans must be
identical, probabilities and confidences equal within PROB_TOL.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, SHARED
from tests.test_bundle import PREPROCESS, TRAIN_WORDS, make_bundle, make_model
from twinhead import fast
from twinhead.bundle import CONFIG, ONNX, write_manifest
from twinhead.errors import TwinheadError
from twinhead.heads import CRFTagHead
from twinhead.inference import collate, encode
from twinhead.model import JointModel, ModelConfig
from twinhead.predictor import Predictor
from twinhead.text import TextPipeline
from twinhead.vocab import build_vocabs

PROB_TOL = 1e-4  # the reference sums CRF marginals in float32, the fast path in float64
HAS_ORT = all(__import__("importlib").util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))
needs_ort = pytest.mark.skipif(not HAS_ORT, reason="needs onnx and onnxruntime (pip install 'twinhead[fast]')")
BACKENDS = ["torch", "onnx"] if HAS_ORT else ["torch"]


def snips_split(split: str) -> tuple[list[list[str]], list[list[str]], list[str]]:
    src = SHARED / "snips" if (SHARED / "snips").exists() else ROOT / "data" / "raw" / "snips"
    if not (src / split / "seq.in").exists():
        pytest.skip(f"no SNIPS data at {src} (dvc pull data/raw/snips.dvc)")
    read = lambda name: (src / split / name).read_text(encoding="utf-8").splitlines()  # noqa: E731
    return [s.split() for s in read("seq.in")], [s.split() for s in read("seq.out")], read("label")


def assert_same_predictions(got: list[dict], ref: list[dict]) -> None:
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert set(g) == set(r)
        for key in ("text", "intent", "tokens", "tags"):
            assert g[key] == r[key], (key, r["text"])
        assert g["probability"] == pytest.approx(r["probability"], abs=PROB_TOL)
        assert [t["intent"] for t in g["top_intents"]] == [t["intent"] for t in r["top_intents"]]
        assert [t["probability"] for t in g["top_intents"]] == pytest.approx(
            [t["probability"] for t in r["top_intents"]], abs=PROB_TOL)
        strip = lambda ents: [{k: v for k, v in e.items() if k != "confidence"} for e in ents]  # noqa: E731
        assert strip(g["entities"]) == strip(r["entities"]), r["text"]
        assert [e["confidence"] for e in g["entities"]] == pytest.approx(
            [e["confidence"] for e in r["entities"]], abs=PROB_TOL)


@pytest.fixture(scope="module")
def snips_bundle(tmp_path_factory) -> Path:
    """A small CRF model (the default architecture, smaller) trained briefly on SNIPS train, exported with
    model.onnx when onnx is installed."""
    words, tags, labels = snips_split("train")
    pipe = TextPipeline("en", lowercase=True)
    rows = []
    for toks, tg in zip(words[::32], tags[::32]):
        _, ptoks, _, ptags = pipe.from_tokens(toks, tg)
        rows.append(([t.lower() for t in ptoks], ptags))
    vocabs = build_vocabs([w for w, _ in rows], labels[::32], [t for _, t in rows])
    torch.manual_seed(0)
    cfg = ModelConfig(word_dim=32, char_dim=16, char_filters=16, hidden_size=32, num_layers=2, dropout=0.1)
    model = JointModel(cfg, len(vocabs.words), len(vocabs.chars), vocabs.tags.itos, vocabs.intents.itos)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    intent_ids = torch.tensor([vocabs.intents.index(label) for label in labels[::32]])
    model.train()
    for _epoch in range(3):
        for b in range(0, len(rows), 32):
            batch = rows[b: b + 32]
            w, c, m = collate([encode(ws, vocabs, cfg.max_word_len) for ws, _ in batch], "cpu")
            gold = torch.full(m.shape, -100)
            for i, (_, tg) in enumerate(batch):
                gold[i, : len(tg)] = torch.tensor(vocabs.tags.encode(tg))
            il, ts = model(w, c, m)
            loss = model.intent_head.loss(il, intent_ids[b: b + 32]) + model.tag_head.loss(ts, gold, m)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    tmp = tmp_path_factory.mktemp("fast")
    preprocess = {"lang": "en", "lowercase": True, "remove_stopwords": False, "removable_stopwords": []}
    from twinhead.checkpoint import save_checkpoint
    from twinhead.export import export_bundle

    save_checkpoint(tmp / "model.pt", model, vocabs, preprocess, {})
    export_bundle(tmp / "model.pt", tmp / "bundle", onnx=HAS_ORT)
    return tmp / "bundle"


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_agree_with_the_reference_on_the_snips_test_split(snips_bundle, backend):
    texts = [" ".join(toks) for toks in snips_split("test")[0]]
    ref = Predictor(snips_bundle, backend="reference").predict(texts)
    pred = Predictor(snips_bundle, backend=backend)
    assert pred.backend == backend
    got = pred.predict(texts)
    assert_same_predictions(got, ref)
    # the model learned something: the comparison is not between two constant outputs
    assert len({p["intent"] for p in ref}) > 3 and sum(len(p["entities"]) for p in ref) > 300
    # batch size and order do not matter (batches are sorted by length; one sentence alone has no padding)
    assert_same_predictions(pred.predict(texts[::-1], batch_size=7)[::-1], ref)
    assert_same_predictions([pred.predict([t])[0] for t in texts[:25]], ref[:25])


@needs_ort
def test_onnx_batches_run_side_by_side_give_exactly_the_one_worker_predictions(snips_bundle):
    texts = [" ".join(toks) for toks in snips_split("test")[0]]
    one, two = Predictor(snips_bundle, threads=1), Predictor(snips_bundle, threads=2)
    assert (one.backend, one.workers, two.backend, two.workers) == ("onnx", 1, "onnx", 2)
    got = two.predict(texts, batch_size=16)  # ~45 batches merged out of order of completion
    assert got == one.predict(texts, batch_size=16)
    assert_same_predictions(got, Predictor(snips_bundle, backend="reference").predict(texts))


@needs_ort
def test_auto_picks_onnx_when_the_bundle_has_it(snips_bundle, tmp_path):
    assert Predictor(snips_bundle).backend == "onnx"
    cfg = json.loads((snips_bundle / CONFIG).read_text(encoding="utf-8"))
    assert cfg["onnx"] == {"file": ONNX, "opset": fast.ONNX_OPSET}


@needs_ort
def test_without_onnxruntime_auto_falls_back_to_torch_with_a_warning(snips_bundle, monkeypatch):
    monkeypatch.setattr("twinhead.predictor.onnxruntime_available", lambda: False)
    with pytest.warns(UserWarning, match=r"onnxruntime is not installed .*twinhead\[fast\].*predicting with torch"):
        pred = Predictor(snips_bundle)
    assert pred.backend == "torch"
    with pytest.raises(TwinheadError, match="backend 'onnx': onnxruntime is not installed"):
        Predictor(snips_bundle, backend="onnx")


def test_a_bundle_without_model_onnx_uses_torch_silently(tmp_path, recwarn):
    _, bundle = make_bundle(tmp_path)
    assert Predictor(bundle).backend == "torch"
    assert not [w for w in recwarn if "onnx" in str(w.message).lower()]
    with pytest.raises(TwinheadError, match=f"backend 'onnx': {bundle} has no model.onnx .*export.onnx: true"):
        Predictor(bundle, backend="onnx")
    with pytest.raises(TwinheadError, match="backend must be one of auto, onnx, torch, reference, not 'gpu'"):
        Predictor(bundle, backend="gpu")


@needs_ort
def test_a_config_naming_a_missing_model_onnx_is_refused(snips_bundle, tmp_path):
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(snips_bundle, bundle)
    (bundle / ONNX).unlink()
    (bundle / "manifest.json").unlink()
    write_manifest(bundle)  # a consistent manifest, but config.json still names model.onnx
    with pytest.raises(TwinheadError, match=r"config.json: names model.onnx, which the bundle lacks"):
        Predictor(bundle)


def test_export_onnx_without_the_onnx_package_says_what_to_install(tmp_path, monkeypatch):
    import importlib.util

    from twinhead.checkpoint import save_checkpoint
    from twinhead.export import export_bundle

    model, vocabs = make_model()
    save_checkpoint(tmp_path / "m.pt", model, vocabs, PREPROCESS, {})
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    with pytest.raises(TwinheadError, match=r"export.onnx: true needs the onnx package: pip install 'twinhead\[fast"):
        export_bundle(tmp_path / "m.pt", tmp_path / "bundle", onnx=True)
    assert not (tmp_path / "bundle").exists()


TEXTS = ["Play the Beatles on Spotify now", "  wake me up at 7 am\t", "the by now", "Rüdiger's café, São Paulo",
         " ".join(["play the beatles"] * 9), "rain"]


def variant_bundle(tmp_path: Path, onnx: bool, **cfg) -> Path:
    """Random weights, the stop-word rule of test_bundle (words removed before the model reads them)."""
    from twinhead.checkpoint import save_checkpoint
    from twinhead.export import export_bundle

    intents = ["PlayMusic", "SetAlarm", "GetWeather", "PlayMusic#SetAlarm"]
    vocabs = build_vocabs(TRAIN_WORDS, intents[:3], [["O", "B-artist", "B-service"], ["O", "B-time", "I-time"],
                                                      ["O", "B-city", "O"]])
    if cfg.get("sentence_head") == "multi":
        vocabs = build_vocabs(TRAIN_WORDS + [["x"]], intents, [["O", "B-artist", "B-service"],
                                                               ["O", "B-time", "I-time"], ["O", "B-city", "O"], ["O"]])
    torch.manual_seed(3)
    mcfg = ModelConfig(**{**dict(word_dim=8, char_dim=4, char_filters=4, hidden_size=8, num_layers=2), **cfg})
    model = JointModel(mcfg, len(vocabs.words), len(vocabs.chars), vocabs.tags.itos, vocabs.intents.itos).eval()
    save_checkpoint(tmp_path / "m.pt", model, vocabs, PREPROCESS, {})
    export_bundle(tmp_path / "m.pt", tmp_path / "bundle", onnx=onnx)
    return tmp_path / "bundle"


def assert_same_token_predictions(got: list[dict], ref: list[dict]) -> None:
    for g, r in zip(got, ref, strict=True):
        assert (g["intent"], g["tokens"], g["tags"]) == (r["intent"], r["tokens"], r["tags"])
        assert g["probability"] == pytest.approx(r["probability"], abs=PROB_TOL)
        assert [p is None for p in g["tag_probabilities"]] == [p is None for p in r["tag_probabilities"]]
        assert [p or 0 for p in g["tag_probabilities"]] == pytest.approx([p or 0 for p in r["tag_probabilities"]],
                                                                         abs=PROB_TOL)


TEXTS = ["Play the Beatles on Spotify now", "  wake me up at 7 am\t", "the by now", "Rüdiger's café, São Paulo",
         " ".join(["play the beatles"] * 9), "rain"]


@pytest.mark.parametrize("cfg", [
    dict(tag_decoder="crf"),
    dict(tag_decoder="crf", max_len=4, overlong="truncate"),
    dict(tag_decoder="crf", max_len=4, overlong="window", char_dim=0),
    dict(tag_decoder="softmax"),
    dict(tag_decoder="softmax", bio_constraints=False, intent_to_tags=False),
    dict(tag_decoder="crf", sentence_head="multi", multi_threshold=0.3),
    dict(tag_decoder="crf", intent_level="token"),
    dict(tag_decoder="crf", intent_level="token", intent_to_tags=False, max_len=4, overlong="window"),
    dict(tag_decoder="crf", slot_to_intent=True),
    dict(tag_decoder="softmax", slot_to_intent=True, intent_level="token", char_dim=0),
    dict(tag_decoder="crf", slot_to_intent=True, intent_to_tags=False),
], ids=["crf", "truncate", "window-nochars", "softmax", "softmax-free", "multi", "token-intent",
        "token-intent-window", "slot-to-intent", "slot-to-intent-token", "slot-to-intent-free"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_model_variant_and_overlong_policy_predicts_as_the_reference(tmp_path, cfg, backend):
    """Random weights, stop-word removal, windows, truncation, no char CNN, both tag heads, multi-label."""
    bundle = variant_bundle(tmp_path, backend == "onnx", **cfg)
    ref, pred = Predictor(bundle, backend="reference"), Predictor(bundle, backend=backend)
    token_lists = [t.split() for t in TEXTS]
    truncating = cfg.get("overlong") == "truncate"
    for p in (ref, pred):
        with pytest.warns(UserWarning, match="truncated") if truncating else _nothing():
            p.out = p.predict(TEXTS), p.predict_tokens(token_lists)
    assert_same_predictions(pred.out[0], ref.out[0])
    assert_same_token_predictions(pred.out[1], ref.out[1])
    assert (pred.stats.windowed, pred.stats.truncated) == (ref.stats.windowed, ref.stats.truncated)
    if truncating:  # past the 4th word read (the 6th token: 'the' is a removed stop word) no probability, O
        assert pred.out[1][4]["tokens"][:6] == ["play", "the", "beatles", "play", "the", "beatles"]
        assert pred.out[1][4]["tag_probabilities"][6:] == [None] * 21
        assert pred.out[1][4]["tags"][6:] == ["O"] * 21


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_numpy_crf_decoding_equals_the_crf_module():
    """Viterbi (same float32 sums, same ties) and the decoded tags' marginals (float64 forward-backward)."""
    tags = ["O", "B-a", "I-a", "B-b", "I-b"]
    torch.manual_seed(0)
    head = CRFTagHead(4, tags)
    crf = head.crf
    with torch.no_grad():
        for p in (crf.transitions, crf.start, crf.end):
            p.normal_(0, 2)
    model = type("M", (), {"tag_head": head})()
    dec = fast.Decoder(model)
    lengths = torch.tensor([7, 1, 4, 7, 2] * 8)  # 40 rows: the matrix products go through torch
    mask = torch.arange(7)[None, :] < lengths[:, None]
    em = torch.randn(40, 7, len(tags)) * 3
    em[~mask] = 1e9  # padding values must not matter
    ids, probs = dec(em.numpy(), lengths.numpy().astype(np.int32), mask.numpy())
    ref_ids = crf.decode(em, mask)
    assert (ids == ref_ids.numpy()).all()
    with torch.no_grad():
        marg = crf.marginals(em.double(), mask).gather(2, ref_ids.unsqueeze(2)).squeeze(2)
    np.testing.assert_allclose(probs, marg.numpy(), atol=1e-9)
    # a few rows take numpy's Viterbi and plain matrix product: the same result
    ids5, probs5 = dec(em[:5].numpy(), lengths[:5].numpy().astype(np.int32), mask[:5].numpy())
    assert (ids5 == ids[:5]).all()
    np.testing.assert_allclose(probs5, probs[:5], atol=1e-12)
    # emissions hundreds apart: the scaled forward-backward underflows and the log-space one answers
    big = em * 300
    ids_big, probs_big = dec(big[:5].numpy(), lengths[:5].numpy().astype(np.int32), mask[:5].numpy())
    with torch.no_grad():
        ref_big = crf.decode(big[:5], mask[:5])
        marg_big = crf.marginals(big[:5].double(), mask[:5]).gather(2, ref_big.unsqueeze(2)).squeeze(2)
    assert (ids_big == ref_big.numpy()).all()
    np.testing.assert_allclose(probs_big, marg_big.numpy(), atol=1e-9)
    for i in range(5):  # one sentence alone, unpadded (online prediction's vector path): the same tags and probs
        n = int(lengths[i])
        one = lengths[i:i + 1].numpy().astype(np.int32), mask[i:i + 1, :n].numpy()
        ids1, probs1 = dec(em[i:i + 1, :n].numpy(), *one)
        assert (ids1[0] == ids[i, :n]).all()
        np.testing.assert_allclose(probs1[0], probs[i, :n], atol=1e-12)
        big1 = dec(big[i:i + 1, :n].numpy(), *one)
        assert (big1[0][0] == ids_big[i, :n]).all()
        np.testing.assert_allclose(big1[1][0], probs_big[i, :n], atol=1e-9)  # underflow: the log-space answer
    full = [0, 3, 5]  # all of length 7: no padding (the path of batches of one length)
    ids3, probs3 = dec(em[full].numpy(), lengths[full].numpy().astype(np.int32), mask[full].numpy())
    assert (ids3 == ids[full]).all()
    np.testing.assert_allclose(probs3, probs[full], atol=1e-12)


@pytest.mark.parametrize("kind", ["peaked", "noisy", "ties", "all allowed", "half forbidden"])
def test_maxplus_step_is_the_dense_maximum_exactly(kind, monkeypatch):
    """MaxPlus (the Viterbi step that skips BIO's forbidden moves) gives torch's (B, K, K) maximum bit for bit,
    first index on ties: peaked scores (a trained model's) take the structured path throughout, near-ties and
    exact ties fall back to the dense maximum row by row."""
    from twinhead.crf import CRF

    tags = ["O"] + [f"{p}-{t}" for t in "abcdef" for p in "BI"]
    gen = torch.Generator().manual_seed(1)
    crf = CRF(tags)
    with torch.no_grad():
        crf.transitions.copy_(torch.randn(len(tags), len(tags), generator=gen))
        trans = crf._params(torch.float32)[0]
        if kind == "ties":  # integer scores and transitions: many equal sums
            trans = torch.where(trans > -100, trans.round(), trans)
        if kind == "all allowed":
            trans = torch.randn(len(tags), len(tags), generator=gen)
        if kind == "half forbidden":  # no column with few moves in, nor with all: the dense maximum
            trans = torch.randn(len(tags), len(tags), generator=gen)
            trans[torch.rand(len(tags), len(tags), generator=gen) < 0.5] = -1e4
    b, k = 64, len(tags)
    score = {"peaked": torch.randn(b, k, generator=gen) + 30 * torch.nn.functional.one_hot(
                 torch.randint(k, (b,), generator=gen), k),
             "noisy": torch.randn(b, k, generator=gen) * 0.3,
             # half the rows with one clear best tag, half with exact ties at the top
             "ties": torch.randint(0, 2, (b, k), generator=gen).float() + 30 * torch.nn.functional.one_hot(
                 torch.randint(k, (b,), generator=gen), k) * (torch.arange(b) < b // 2)[:, None],
             "all allowed": torch.randn(b, k, generator=gen) * 3,
             "half forbidden": torch.randn(b, k, generator=gen)}[kind]
    step = fast.MaxPlus(trans.numpy())
    redone = []
    dense = step.dense_step
    monkeypatch.setattr(step, "dense_step", lambda s, cols=None: (redone.append(len(s)) if cols is None else None,
                                                                   dense(s, cols))[1])
    best, idx = step(score.numpy())
    ref_best, ref_idx = (score.unsqueeze(2) + trans).max(1)
    assert np.array_equal(best, ref_best.numpy()) and np.array_equal(idx, ref_idx.numpy())
    if kind == "peaked":
        assert redone == [] and len(step.open) == 7 and len(step.narrow) == 6 and step.structured
    elif kind == "ties":
        assert redone and b // 4 < redone[0] <= b // 2  # the tied rows, and only they, redone densely
    elif kind == "all allowed":
        assert len(step.open) == k and redone and redone[0] < b
    elif kind == "half forbidden":
        assert not step.structured and redone == [b]


def test_the_word_table_starts_afresh_when_full_and_encodes_as_the_reference():
    _, vocabs = make_model()
    table = fast.WordTable(vocabs, max_word_len=5, max_size=6)
    sents = [["play", "beatles", "zzz"], ["wake", "7", "am", "extraordinary"], ["play"]]
    for _ in range(2):  # the second pass finds the words in the table or, past max_size, rebuilds it
        words, chars, lengths, mask = table.batch(table.rows(sents))
        ref = collate([encode(ws, vocabs, 5) for ws in sents], "cpu")
        assert (words == ref[0].numpy()).all() and (mask == ref[2].numpy()).all()
        c = chars.shape[2]  # the longest word of the batch: the reference's extra columns are all padding
        assert (chars == ref[1].numpy()[:, :, :c]).all() and not ref[1].numpy()[:, :, c:].any()
        assert lengths.tolist() == [3, 4, 1]
        assert len(table.index) <= 7


def test_predict_pauses_the_garbage_collector_only_while_it_runs(tmp_path):
    import gc

    from twinhead.errors import DataError

    _, bundle = make_bundle(tmp_path)
    pred = Predictor(bundle)
    seen = []
    real = pred._word_predictions
    pred._word_predictions = lambda *a: seen.append(gc.isenabled()) or real(*a)
    assert gc.isenabled()
    pred.predict(["play the beatles"])
    assert seen == [False] and gc.isenabled()
    with pytest.raises(DataError):
        pred.predict(["play", "   "])
    assert gc.isenabled()  # restored after an error too
    gc.disable()
    try:
        pred.predict(["play"])
        assert not gc.isenabled()  # a caller's own setting is left as it was
    finally:
        gc.enable()


@pytest.mark.skipif(not HAS_ORT, reason="needs onnx and onnxruntime")
@pytest.mark.parametrize("cfg", [dict(attention_heads=2), dict(char_encoder="bilstm")],
                         ids=["attention", "char-bilstm"])
def test_encoder_options_the_onnx_graph_lacks_export_without_it_and_predict_through_torch(tmp_path, capsys, cfg):
    bundle = variant_bundle(tmp_path, True, **cfg)
    (key, value), = cfg.items()
    assert f"model.onnx not written: the ONNX graph does not cover model.{key}={value}" in capsys.readouterr().err
    assert not (bundle / "model.onnx").exists()
    auto, ref = Predictor(bundle), Predictor(bundle, backend="reference")
    assert auto.backend == "torch"
    assert_same_predictions(auto.predict(TEXTS), ref.predict(TEXTS))
    from twinhead.export import add_onnx

    with pytest.raises(TwinheadError, match=f"does not cover model.{key}={value}"):
        add_onnx(bundle, tmp_path / "with-onnx")
    assert not (tmp_path / "with-onnx").exists()


@needs_ort
def test_int8_export_runs_a_quantized_graph_and_predicts_nearly_as_the_float_model(snips_bundle, tmp_path):
    """export.quantize: int8 writes model.onnx with int8 LSTMs and matrix products (config.json says so); the
    onnx backend runs it and predicts the SNIPS test split as the float32 model does, but for a few tags (the
    README's tolerance); torch still runs the float32 weights."""
    import onnx

    from twinhead.export import ExportConfig, add_onnx

    cfg = add_onnx(snips_bundle, tmp_path / "int8", quantize="int8")
    assert cfg["onnx"]["quantized"] == "int8"
    ops = {n.op_type for n in onnx.load(tmp_path / "int8" / ONNX).graph.node}
    assert {"DynamicQuantizeLSTM", "MatMulInteger"} <= ops and "LSTM" not in ops
    texts = [" ".join(toks) for toks in snips_split("test")[0]]
    ref = Predictor(snips_bundle, backend="onnx").predict(texts)
    got = Predictor(tmp_path / "int8", backend="onnx").predict(texts)
    assert got != ref  # the quantized graph is what ran
    same_intent = np.mean([g["intent"] == r["intent"] for g, r in zip(got, ref)])
    same_tags = np.mean([g["tags"] == r["tags"] for g, r in zip(got, ref)])
    assert same_intent >= 0.99 and same_tags >= 0.98, (same_intent, same_tags)
    assert_same_predictions(Predictor(tmp_path / "int8", backend="torch").predict(texts[:50]), ref[:50])
    with pytest.raises(ValueError, match="needs onnx: true"):
        ExportConfig(onnx=False, quantize="int8")
