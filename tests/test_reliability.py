"""Kills, resumes and reruns: named fail points (twinhead.failpoints) instead of racing a kill against a
timer, a resumed run that says so and ends where an uninterrupted one does, and a state that is only
resumed by the same params, data, code, torch, device and threads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

import twinhead
from tests.conftest import TINY_PARAMS, env_with_venv, make_tiny_repo, run, snips_sample
from twinhead import failpoints
from twinhead import train as train_mod
from twinhead.model import ModelConfig
from twinhead.preprocess import PreprocessConfig, preprocess
from twinhead.train import TrainConfig, state_identity, train
from twinhead.vocab import build_vocabs


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    raw = snips_sample(tmp_path_factory.mktemp("raw"), {"train": 120, "dev": 30, "test": 10})
    frames, _, _, _ = preprocess(raw, {}, PreprocessConfig(), seed=1)
    tr, dev = frames["train"], frames["dev"]
    return tr, dev, build_vocabs(tr["words"], tr["intent"], tr["word_tags"])


MCFG = ModelConfig(word_dim=12, char_dim=6, char_filters=6, hidden_size=12, num_layers=1)


def without_seconds(history: list[dict]) -> list[dict]:
    from twinhead.train import TIMING

    return [{k: v for k, v in r.items() if k not in TIMING} for r in history]


# --- fail points ------------------------------------------------------------------------------


def test_failpoint_unset_or_naming_another_point_does_nothing(monkeypatch):
    monkeypatch.delenv(failpoints.ENV, raising=False)
    failpoints.hit("train:step")
    monkeypatch.setenv(failpoints.ENV, "write:export")
    failpoints.hit("write:processed")
    failpoints.hit("train:step")
    monkeypatch.setenv(failpoints.ENV, "write:export@2")
    failpoints.hit("write:processed")  # another name does not count towards export's second hit


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(twinhead.__file__)))
    env.update(extra)
    return env


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
@pytest.mark.parametrize("spec,printed", [("p", "1\n"), ("p@3", "1\n2\n3\n")])
def test_failpoint_sigkills_at_the_nth_hit_and_logs_it_first(tmp_path, spec, printed):
    log = tmp_path / "hits.log"
    script = ("from twinhead import failpoints\n"
              "for i in range(1, 6):\n"
              "    print(i, flush=True)\n"
              "    failpoints.hit('other')\n"
              "    failpoints.hit('p')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env=child_env(TWINHEAD_FAILPOINT=spec, TWINHEAD_FAILPOINT_LOG=str(log)))
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert proc.stdout == printed
    name, pid = log.read_text().split()
    assert name == "p" and int(pid) > 0


# --- resume -----------------------------------------------------------------------------------


def test_killed_mid_epoch_resumes_and_stops_early_where_an_uninterrupted_run_does(tiny_data, tmp_path, monkeypatch,
                                                                                  capsys):
    """patience > 0: the early-stopping counter must come back with the state, or the resumed run
    trains past the epoch where the uninterrupted one stopped."""
    tr, dev, vocabs = tiny_data
    tcfg = TrainConfig(epochs=12, batch_size=16, lr=0.01, patience=2, early_stop_metric="intent_accuracy")
    hits = []
    monkeypatch.setattr(failpoints, "hit", hits.append)
    full = train(tr, dev, vocabs, MCFG, tcfg, seed=7, progress=False)
    stop = len(full.history)
    assert stop < tcfg.epochs, "the uninterrupted run must stop early for this test to mean anything"
    assert full.best_epoch == stop - tcfg.patience
    per_epoch = len(hits) // stop
    assert set(hits) == {"train:step"} and per_epoch * stop == len(hits) and per_epoch > 2  # one per step

    # Die in the middle of the last epoch, after the state of the epoch before it was saved.
    state = tmp_path / "state.pt"
    die_at = per_epoch * (stop - 1) + per_epoch // 2
    hits.clear()

    def die_mid_epoch(name):
        if name != "train:step":  # the state's own writes pass fail points too
            return
        hits.append(name)
        if len(hits) == die_at:
            raise Killed

    monkeypatch.setattr(failpoints, "hit", die_mid_epoch)
    with pytest.raises(Killed):
        train(tr, dev, vocabs, MCFG, tcfg, seed=7, state_path=state, progress=False)
    saved = torch.load(state, weights_only=True)
    assert saved["epoch"] == stop - 1 and saved["bad"] == tcfg.patience - 1 > 0  # the counter matters here

    monkeypatch.setattr(failpoints, "hit", lambda name: None)
    capsys.readouterr()
    resumed = train(tr, dev, vocabs, MCFG, tcfg, seed=7, state_path=state, progress=False)
    assert f"resuming from epoch {stop - 1} ({state}" in capsys.readouterr().out
    assert resumed.resumed_from == stop - 1
    assert len(resumed.history) == stop, "the resumed run did not stop where the uninterrupted one did"
    assert without_seconds(resumed.history) == without_seconds(full.history)
    assert (resumed.best_epoch, resumed.best_scores) == (full.best_epoch, full.best_scores)
    for k, v in full.best_state.items():
        assert torch.equal(v, resumed.best_state[k]), k


def saved_state(tiny_data, path, tcfg):
    """Train one epoch of `tcfg` with its state saved at `path`, then die."""
    tr, dev, vocabs = tiny_data

    def die(row):
        raise Killed

    with pytest.raises(Killed):
        train(tr, dev, vocabs, MCFG, tcfg, seed=7, state_path=path, on_epoch=die, progress=False)
    assert path.exists()


@pytest.mark.parametrize("change,reason", [
    ("params", "it belongs to other params"),
    ("code", "it belongs to other code"),
    ("torch", "it belongs to other torch version (" + torch.__version__ + " -> 0.0.0+edited)"),
    ("threads", "it belongs to other threads ("),
])
def test_state_is_ignored_when_params_code_torch_or_threads_changed(tiny_data, tmp_path, monkeypatch, capsys,
                                                                    change, reason):
    tr, dev, vocabs = tiny_data
    tcfg = TrainConfig(epochs=2, batch_size=16, lr=0.01, patience=1)
    state = tmp_path / "state.pt"
    saved_state(tiny_data, state, tcfg)
    if change == "params":
        tcfg = TrainConfig(epochs=2, batch_size=16, lr=0.02, patience=1)
    elif change == "code":  # as if model.py had been edited between the kill and the restart
        monkeypatch.setattr(train_mod, "code_digest", lambda: "0" * 64)
    elif change == "torch":
        monkeypatch.setattr(torch, "__version__", "0.0.0+edited")
    else:
        threads = torch.get_num_threads()
        monkeypatch.setattr(torch, "get_num_threads", lambda: threads + 1)
    capsys.readouterr()
    res = train(tr, dev, vocabs, MCFG, tcfg, seed=7, state_path=state, progress=False)
    out = capsys.readouterr().out
    assert res.resumed_from == 0 and len(res.history) == 2
    assert f"ignoring {state}: {reason}" in out and "resuming" not in out


def test_state_identity_covers_device_and_code(tiny_data):
    tr, dev, vocabs = tiny_data
    tcfg = TrainConfig()
    cpu = state_identity(MCFG, tcfg, 7, vocabs, tr, dev, torch.device("cpu"))
    gpu = state_identity(MCFG, tcfg, 7, vocabs, tr, dev, torch.device("cuda:1"))
    assert {k for k in cpu if cpu[k] != gpu[k]} == {"device"}
    assert cpu["code"] == train_mod.code_digest() and len(cpu["code"]) == 64
    assert set(cpu) == {"params", "data", "code", "torch version", "device", "threads", "processes"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="here 'auto' is CUDA, another device than 'cpu'")
def test_a_state_saved_with_device_cpu_is_resumed_with_auto_on_a_cpu_machine(tiny_data, tmp_path, capsys):
    tr, dev, vocabs = tiny_data
    state = tmp_path / "state.pt"
    saved_state(tiny_data, state, TrainConfig(epochs=2, batch_size=16, lr=0.01, patience=1, device="cpu"))
    auto = TrainConfig(epochs=2, batch_size=16, lr=0.01, patience=1, device="auto")
    capsys.readouterr()
    res = train(tr, dev, vocabs, MCFG, auto, seed=7, state_path=state, progress=False)
    assert res.resumed_from == 1 and "resuming from epoch 1" in capsys.readouterr().out


# --- end to end: SIGKILL at each fail point, then dvc repro ----------------------------------------


def weights(repo):
    from safetensors.torch import load_file

    return load_file(str(repo / "models/export/model.safetensors"))


def snapshot(repo) -> dict:
    return {"eval": (repo / "metrics/eval.json").read_bytes(), "weights": weights(repo),
            "processed": folder_bytes(repo / "data/processed")}


def folder_bytes(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def assert_same(ref: dict, now: dict, what: str) -> None:
    assert now["eval"] == ref["eval"], f"{what}: metrics/eval.json differs"
    assert now["processed"] == ref["processed"], f"{what}: data/processed differs"
    assert now["weights"].keys() == ref["weights"].keys(), what
    for k in ref["weights"]:
        assert torch.equal(now["weights"][k], ref["weights"][k]), f"{what}: exported weight {k} differs"


def leftovers(repo) -> list[str]:
    return sorted(str(p.relative_to(repo)) for d in ("data", "models", "metrics") for p in (repo / d).rglob(".*")
                  if p.name.endswith((".tmp", ".old")))


def kill_at(point: str, cmd: list[str], repo, env, log) -> subprocess.CompletedProcess:
    """Run `cmd` with TWINHEAD_FAILPOINT=point; it must die there, and only there."""
    res = run(cmd, repo, {**env, "TWINHEAD_FAILPOINT": point, "TWINHEAD_FAILPOINT_LOG": str(log)}, check=False)
    assert res.returncode != 0, f"{cmd} with fail point {point} did not fail:\n{res.stdout[-2000:]}"
    hits = [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []
    assert hits == [point.split("@")[0]], f"fail point {point} hit {hits}:\n{res.stderr[-2000:]}"
    return res


def newest_run(db):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("twinhead")
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]


@pytest.mark.e2e
def test_sigkill_at_each_fail_point_then_repro_recovers_identically(tmp_path):
    repo = make_tiny_repo(tmp_path / "repo", {"train": {**TINY_PARAMS["train"], "epochs": 3, "patience": 2}})
    db = tmp_path / "mlflow.db"
    env = env_with_venv(MLFLOW_TRACKING_URI=f"sqlite:///{db}")
    run(["dvc", "repro"], repo, env)
    ref = snapshot(repo)
    assert "resumed_from_epoch" not in newest_run(db).data.tags
    logs = iter(tmp_path / f"failpoint-{i}.log" for i in range(10))

    # A folder swap killed halfway. DVC deletes a stage's outputs before running it, so only a run outside
    # DVC replaces an existing folder: run the stage's command by hand. The output is there, and complete.
    kill_at("swap:processed", ["python", "stages/preprocess.py", "data/raw/tiny", "data/processed",
                               "metrics/data.json"], repo, env, next(logs))
    assert folder_bytes(repo / "data/processed") == ref["processed"]
    assert [p.startswith("data/.processed.") and p.endswith(".tmp") for p in leftovers(repo)] == [True]

    # Mid-epoch in epoch 2 (15 steps per epoch): the next repro resumes from the state saved after epoch 1.
    kill_at("train:step@20", ["dvc", "repro", "--force"], repo, env, next(logs))
    assert leftovers(repo) == [], "preprocess ran again: the temp the killed swap left must be gone"
    assert (repo / "models/resume/state.pt").exists()
    res = run(["dvc", "repro"], repo, env)
    assert "resuming from epoch 1 (models/resume/state.pt" in res.stdout
    assert_same(ref, snapshot(repo), "after train:step@20")
    newest = newest_run(db)
    assert newest.info.run_id == json.loads((repo / "models/mlflow_run.json").read_text())["run_id"]
    assert newest.data.tags.get("resumed_from_epoch") == "1"
    assert not (repo / "models/resume/state.pt").exists()
    assert leftovers(repo) == []

    # While preprocess and export write their output folders: the next repro gives the same outputs. The
    # export is killed in a run of that stage alone (`--single-item`): a forced run of the stages before it
    # would only redo what the lines above checked.
    for point, stage in (("write:processed", []), ("write:export", ["--single-item", "export"])):
        kill_at(point, ["dvc", "repro", "--force", *stage], repo, env, next(logs))
        run(["dvc", "repro"], repo, env)
        assert_same(ref, snapshot(repo), f"after {point}")

    # Same params, forced rerun: bit-identical outputs, and the next write of each target removed what the
    # killed writers left (a plain repro may check outputs out of DVC's cache without running the stage).
    run(["dvc", "repro", "--force"], repo, env)
    assert_same(ref, snapshot(repo), "dvc repro --force")
    assert leftovers(repo) == []
