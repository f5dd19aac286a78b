"""benchmarks/head_health.py: the generated many-label data set, the live-unit count, and a run of the script."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from benchmarks import head_health
from tests.conftest import ROOT, env_with_venv
from twinhead.checkpoint import build_model
from twinhead.model import ModelConfig
from twinhead.preprocess import PreprocessConfig, preprocess
from twinhead.train import TrainData
from twinhead.vocab import build_vocabs

MCFG = ModelConfig(word_dim=8, char_dim=0, hidden_size=8, num_layers=1, dropout=0.0)


def test_synthetic_data_has_n_intents_named_by_one_word_and_slots_on_their_values(tmp_path):
    raw = head_health.synthetic(tmp_path / "d", 6, seed=2)
    rows = [json.loads(x) for x in (raw / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 240 and len({r["label"] for r in rows}) == 6
    for r in rows:
        k = int(r["label"].split("_")[1])
        assert r["text"].split()[0] == f"verb{k}"
        for j, e in enumerate(r["entities"]):
            s = (k + 7 * j) % 80
            assert e["label"] == f"slot_{s:02d}"
            value = r["text"][e["start"]: e["end"]].split()
            assert value and all(30 * s <= int(w[1:]) < 30 * s + 30 for w in value)
    frames, _, report, _ = preprocess(raw, None, PreprocessConfig(), seed=2)
    assert report["train"]["skipped_lines"] == 0 and report["dev"]["sentences"] == 24


def dev_batch_and_model(tmp_path):
    raw = head_health.synthetic(tmp_path / "d", 3)
    frames, _, _, _ = preprocess(raw, None, PreprocessConfig(), seed=0)
    tr = frames["train"]
    vocabs = build_vocabs(tr["words"], tr["intent"], tr["word_tags"])
    torch.manual_seed(0)
    model = build_model(MCFG.to_dict(), vocabs)
    dev = TrainData(frames["dev"], vocabs, MCFG, model.intent_targets)
    return dev.batch(list(range(len(dev))), "cpu", 0.0, torch.Generator()), model


def test_health_counts_a_unit_alive_when_any_dev_sentence_makes_it_positive(tmp_path):
    batch, model = dev_batch_and_model(tmp_path)
    first = model.intent_head.mlp[0]
    with torch.no_grad():
        first.weight.zero_()
        first.bias.fill_(-1.0)
        first.bias[:3] = 1.0  # three units on for every sentence, the rest off for all
    alive, share, acc = head_health.health(model, batch)
    assert alive == 3 and share == 3 / first.out_features
    # A fourth unit on for some sentences only: alive, and active in fewer than all (sentence, unit) pairs.
    seen = {}
    model.intent_head.mlp[0].register_forward_hook(lambda mod, inp, out: seen.__setitem__("x", inp[0]))
    head_health.health(model, batch)
    pooled = seen["x"]
    some = pooled[:, 0] > pooled[:, 0].median()
    assert 0 < int(some.sum()) < len(pooled)
    with torch.no_grad():
        first.weight[3, 0] = 1.0
        first.bias[3] = -float(pooled[:, 0].median())
    alive, share, _ = head_health.health(model, batch)
    assert alive == 4 and share == (3 * len(pooled) + int(some.sum())) / (len(pooled) * first.out_features)
    # With every unit dead the head answers one label for every sentence: the accuracy is that label's share.
    with torch.no_grad():
        first.bias.fill_(-1.0)
    alive, share, acc = head_health.health(model, batch)
    only = model.intent_head.mlp[-1].bias.argmax()
    assert (alive, share) == (0, 0.0) and acc == (batch[4] == only).float().mean().item()
    assert model.training  # health() scores in eval mode and hands the model back in training mode


def run_tiny(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """The script on 4 generated intents (160 training sentences, 10 batches), one epoch of a small model."""
    cmd = [sys.executable, "benchmarks/head_health.py", "--synthetic-intents", "4", "--epochs", "1",
           "--out", str(tmp_path), "--set", "model.hidden_size=8", "--set", "model.word_dim=8",
           "--set", "model.char_dim=0", "--set", "model.num_layers=1", "--set", "train.batch_size=16", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env_with_venv(), capture_output=True, text=True, timeout=300)


def test_the_script_prints_both_runs_step_by_step(tmp_path):
    out = run_tiny(tmp_path)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith(("joint", "intent "))]
    # start, steps 1, 5 and 10 of the 10 batches, the end of epoch 1; for each of the two runs
    assert [r[0] for r in rows] == ["joint"] * 5 + ["intent"] * 5
    assert [" ".join(r[1:-4]) for r in rows[:5]] == ["start", "step 1", "step 5", "step 10", "epoch 1"]
    for r in rows:
        alive, hidden = map(int, r[-4].split("/"))
        assert 0 <= alive <= hidden == 16 and 0 <= float(r[-2]) <= 1


def test_the_joint_run_holds_the_tag_loss_as_training_does_and_says_when_it_ends(tmp_path):
    """train.hold_tags (on in params.yaml): the joint run's hold ends at a comparison (every 10 steps) or at
    its cap of 3 epochs (30 steps here), said once; the intent-only run has nothing to hold; 0 turns it off."""
    out = run_tiny(tmp_path, "--epochs", "3")
    assert out.returncode == 0, out.stderr
    def ends(stdout: str) -> list[list[str]]:
        return [line.split() for line in stdout.splitlines() if "at full weight" in line]

    said = ends(out.stdout)
    assert len(said) == 1 and said[0][:2] == ["joint", "step"] and said[0][2] in ("10:", "20:", "30:")
    assert "the 'tags' task trains at full weight from here on (train.hold_tags)" in out.stdout
    out = run_tiny(tmp_path, "--tasks", "joint", "--set", "train.hold_tags=0")
    assert out.returncode == 0, out.stderr
    assert ends(out.stdout) == [] and "train.hold_tags 0.0" in out.stdout
