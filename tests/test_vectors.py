"""Pretrained word vectors: the file formats, the checks, the embedding start, and a self-contained bundle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import snips_sample
from tests.test_bundle import PREPROCESS
from twinhead.checkpoint import build_model, save_checkpoint
from twinhead.errors import DataError
from twinhead.export import export_bundle
from twinhead.model import ModelConfig
from twinhead.predictor import Predictor
from twinhead.preprocess import PreprocessConfig, preprocess
from twinhead.train import TrainConfig, train
from twinhead.vectors import init_embeddings, read_vectors
from twinhead.vocab import build_vocabs


def write_vectors(path, rows: dict[str, list[float]], header: bool) -> None:
    dim = len(next(iter(rows.values())))
    lines = [f"{len(rows)} {dim}"] if header else []
    lines += [" ".join([w, *(f"{x:.6f}" for x in v)]) for w, v in rows.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


ROWS = {"paris": [0.5, -1.0, 2.0], "Beatles": [1.0, 1.0, 1.0], "beatles": [9.0, 9.0, 9.0], "rain": [0.0, 0.25, -3.0]}


@pytest.mark.parametrize("header", [True, False], ids=["word2vec-fasttext", "glove"])
def test_both_file_layouts_give_the_wanted_words(tmp_path, header):
    f = tmp_path / "v.txt"
    write_vectors(f, ROWS, header)
    found, via_lower, n = read_vectors(f, 3, {"paris", "rain", "spotify"})
    assert n == 4 and set(found) == {"paris", "rain"} and via_lower == set()
    np.testing.assert_allclose(found["rain"], [0.0, 0.25, -3.0])


def test_casing_falls_back_to_the_lowercased_form_both_ways(tmp_path):
    f = tmp_path / "v.txt"
    write_vectors(f, {"Paris": [1.0, 2.0, 3.0], "beatles": [4.0, 5.0, 6.0], "Beatles": [7.0, 8.0, 9.0]}, header=False)
    found, via_lower, _ = read_vectors(f, 3, {"paris", "BEATLES", "Beatles"})
    np.testing.assert_allclose(found["paris"], [1.0, 2.0, 3.0])  # a cased file, a lowercased vocabulary
    np.testing.assert_allclose(found["BEATLES"], [4.0, 5.0, 6.0])  # the first form in the file wins
    np.testing.assert_allclose(found["Beatles"], [7.0, 8.0, 9.0])  # its own form, when the file has it
    assert via_lower == {"paris", "BEATLES"}


@pytest.mark.parametrize("text, where, message", [
    ("2 4\nparis 1 2 3 4\n", ":1:", "the header says dimension 4, but model.word_dim is 3"),
    ("paris 1 2 3\nrain 1 2\n", ":2:", "expected a word and 3 numbers (model.word_dim), found 2 values"),
    ("paris 1 2 3\nrain 1 x 2\n", ":2:", "the vector of 'rain' holds a value that is not a number"),
    ("\n", ": ", "no vectors in the file"),
])
def test_a_bad_file_is_one_error_naming_file_and_line(tmp_path, text, where, message):
    f = tmp_path / "v.txt"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_vectors(f, 3, {"paris", "rain"})
    assert str(e.value).startswith(f"{f}{where}") and message in str(e.value)


def test_a_missing_file_says_where_vectors_go(tmp_path):
    with pytest.raises(DataError, match=r"model\.vectors: no such file \(put it under data/vectors/"):
        read_vectors(tmp_path / "nope.txt", 3, {"a"})


def test_init_sets_the_covered_rows_and_leaves_the_rest(tmp_path):
    f = tmp_path / "v.txt"
    write_vectors(f, ROWS, header=True)
    itos = ["<pad>", "<unk>", "paris", "play", "rain"]
    emb = torch.nn.Embedding(len(itos), 3, padding_idx=0)
    before = emb.weight.detach().clone()
    cov = init_embeddings(emb, itos, f)
    w = emb.weight.detach()
    torch.testing.assert_close(w[2], torch.tensor([0.5, -1.0, 2.0]))
    torch.testing.assert_close(w[4], torch.tensor([0.0, 0.25, -3.0]))
    for row in (0, 1, 3):  # <pad>, <unk> and a word the file lacks keep their start
        torch.testing.assert_close(w[row], before[row])
    assert (cov.vocab_words, cov.found, cov.file_words, cov.dim) == (3, 2, 4, 3)
    assert cov.to_dict()["coverage"] == pytest.approx(2 / 3)


def test_training_starts_from_the_vectors_and_the_bundle_does_not_need_them(tmp_path, capsys):
    raw = snips_sample(tmp_path / "raw", {"train": 60, "dev": 20, "test": 5})
    frames, _, _, _ = preprocess(raw, None, PreprocessConfig(), seed=1)
    tr, dev = frames["train"], frames["dev"]
    vocabs = build_vocabs(tr["words"], tr["intent"], tr["word_tags"])
    rng = np.random.default_rng(0)
    words = vocabs.words.itos[2:12]  # ten vocabulary words, written cased: the vocabulary is lowercased
    f = tmp_path / "vectors.txt"
    write_vectors(f, {w.capitalize(): list(rng.normal(size=8)) for w in words} | {"unrelated": [0.0] * 8},
                  header=False)
    mcfg = ModelConfig(word_dim=8, char_dim=4, char_filters=4, hidden_size=8, num_layers=1, vectors=str(f))
    tcfg = TrainConfig(epochs=1, batch_size=16, lr=1e-9, patience=0)  # lr ~ 0: the weights stay at their start
    res = train(tr, dev, vocabs, mcfg, tcfg, seed=1, progress=False)
    out = capsys.readouterr().out
    n_words = len(vocabs.words.itos) - 2
    assert f"model.vectors: 10 of {n_words} vocabulary words" in out and "10 of them by their lowercased form" in out
    assert res.vectors["found"] == 10 and res.vectors["coverage"] == pytest.approx(10 / n_words)
    table = res.best_state["word_emb.weight"]
    from_file, _, _ = read_vectors(f, 8, set(words))
    for i, w in enumerate(words, 2):
        torch.testing.assert_close(table[i], torch.from_numpy(from_file[w]), atol=1e-5, rtol=0)

    model = build_model(res.model_config.to_dict(), vocabs)
    model.load_state_dict(res.best_state)
    save_checkpoint(tmp_path / "model.pt", model, vocabs, PREPROCESS, {"best_epoch": 1, "dev_scores": {}})
    export_bundle(tmp_path / "model.pt", tmp_path / "bundle")
    f.unlink()  # the bundle holds the trained table; the vectors file is not needed to predict
    pred = Predictor(tmp_path / "bundle").predict(["play some music"])
    assert pred[0]["intent"] in vocabs.intents.itos
