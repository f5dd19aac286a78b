"""Kills, resumes and reruns: nothing half-written, the same params give the same model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import torch

from tests.conftest import env_with_venv, make_tiny_repo, run, snips_sample
from twinhead.model import ModelConfig
from twinhead.preprocess import PreprocessConfig, preprocess
from twinhead.train import TrainConfig, train
from twinhead.vocab import build_vocabs


class Killed(Exception):
    pass


def test_interrupted_training_resumes_to_the_same_result(tmp_path):
    raw = snips_sample(tmp_path / "raw", {"train": 120, "dev": 30, "test": 10})
    frames, meta, _, _ = preprocess(raw, {}, PreprocessConfig(), seed=1)
    tr, dev = frames["train"], frames["dev"]
    vocabs = build_vocabs(tr["words"], tr["intent"], tr["word_tags"])
    mcfg = ModelConfig(word_dim=12, char_dim=6, char_filters=6, hidden_size=12, num_layers=1)
    tcfg = TrainConfig(epochs=4, batch_size=16, lr=0.01, patience=0)
    full = train(tr, dev, vocabs, mcfg, tcfg, seed=7, progress=False)

    state = tmp_path / "state.pt"

    def die_after_epoch_2(row):
        if row["epoch"] == 2:
            raise Killed

    with pytest.raises(Killed):
        train(tr, dev, vocabs, mcfg, tcfg, seed=7, state_path=state, on_epoch=die_after_epoch_2, progress=False)
    assert state.exists()
    resumed = train(tr, dev, vocabs, mcfg, tcfg, seed=7, state_path=state, progress=False)
    assert resumed.resumed_from == 2
    assert resumed.best_epoch == full.best_epoch
    assert resumed.best_scores == full.best_scores
    for k, v in full.best_state.items():
        assert torch.equal(v, resumed.best_state[k]), k
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed.history] == \
        [{k: v for k, v in r.items() if k not in drop} for r in full.history]

    # A state from other params is ignored, not resumed.
    other = train(tr, dev, vocabs, mcfg, TrainConfig(epochs=1, batch_size=16, lr=0.02, patience=0), seed=7,
                  state_path=state, progress=False)
    assert other.resumed_from == 0


def weights(repo):
    from safetensors.torch import load_file

    return load_file(str(repo / "models/export/model.safetensors"))


def snapshot(repo):
    return (repo / "metrics/eval.json").read_bytes(), weights(repo)


def assert_same(a, b):
    assert a[0] == b[0], "metrics/eval.json differs"
    assert a[1].keys() == b[1].keys()
    for k in a[1]:
        assert torch.equal(a[1][k], b[1][k]), k


def kill_when(repo, env, ready, timeout=300) -> bool:
    """Start `dvc repro --force`, SIGKILL its whole process group once ready() is true."""
    proc = subprocess.Popen(["dvc", "repro", "--force"], cwd=repo, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    hit = False
    while time.time() < deadline and proc.poll() is None:
        if ready():
            hit = True
            break
        time.sleep(0.05)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return hit


@pytest.mark.e2e
def test_sigkill_at_any_point_then_repro_recovers_identically(tmp_path):
    repo = make_tiny_repo(tmp_path / "repo", {"train": {"epochs": 3}})
    env = env_with_venv(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db")
    run(["dvc", "repro"], repo, env)
    first = snapshot(repo)

    # Same params, forced rerun: bit-identical metrics and weights.
    run(["dvc", "repro", "--force"], repo, env)
    assert_same(first, snapshot(repo))

    state = repo / "models/resume/state.pt"
    points = {
        "during preprocess": lambda: any(p.name.startswith(".processed.") for p in (repo / "data").iterdir()),
        "mid-training, after an epoch's state is saved": lambda: state.exists(),
        "during export": lambda: any(p.name.startswith(".export.") for p in (repo / "models").iterdir()),
    }
    for name, ready in points.items():
        hit = kill_when(repo, env, ready)
        # Whatever the kill left behind, the next repro recovers with valid outputs.
        res = run(["dvc", "repro"], repo, env)
        assert "Traceback" not in res.stderr, name
        assert_same(first, snapshot(repo))
        json.loads((repo / "metrics/eval.json").read_text())
        if name.startswith("mid-training"):
            assert hit, "the kill point was never reached"
