"""MLflow + DVC experiments end to end, in a temporary git + DVC repo on a small sample."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request

import pytest

from tests.conftest import env_with_venv, free_port, make_tiny_repo, run, stop, wait_http
from twinhead.tracking import champion_alias

pytestmark = pytest.mark.e2e

TEXTS = ["play the new album by the beatles on spotify", "add this song to my road trip playlist"]


def client_for(uri: str):
    import mlflow

    return mlflow.MlflowClient(uri)


def runs_by_name(client, experiment: str = "twinhead") -> dict:
    exp = client.get_experiment_by_name(experiment)
    return {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}


def predict_cli(repo, texts, env) -> list[dict]:
    out = run(["twinhead", "predict", "--bundle", "models/export", *texts], repo, env).stdout
    return [json.loads(line) for line in out.splitlines()]


@pytest.fixture(scope="module")
def exp_repo(tmp_path_factory):
    """Two `dvc exp run -S ...` in the workspace, then two queued ones run by two workers."""
    # Tiny models miss the default thresholds: let every version through the gate, so aliases move.
    repo = make_tiny_repo(tmp_path_factory.mktemp("exps") / "repo",
                          {"mlflow": {"candidate_min": {"intent_accuracy": 0.0}}})
    env = env_with_venv()
    evals = {}
    for name, hidden in (("exp-h16", 16), ("exp-h24", 24)):
        run(["dvc", "exp", "run", "-n", name, "-S", "train.epochs=1", "-S", f"model.hidden_size={hidden}"], repo, env)
        evals[name] = json.loads((repo / "metrics/eval.json").read_text())
    for name, hidden in (("q-h12", 12), ("q-h20", 20)):
        run(["dvc", "exp", "run", "--queue", "-n", name, "-S", "train.epochs=1", "-S",
             f"model.hidden_size={hidden}"], repo, env)
    run(["dvc", "queue", "start", "-j", "2"], repo, env)
    deadline = time.time() + 600
    while time.time() < deadline:
        status = run(["dvc", "queue", "status"], repo, env).stdout
        if not any(s in status for s in ("Queued", "Running")):
            break
        time.sleep(3)
    run(["dvc", "queue", "stop", "--kill"], repo, env, check=False)
    return repo, env, evals, status


def test_each_experiment_is_one_mlflow_run_matching_its_metrics(exp_repo):
    repo, env, evals, _ = exp_repo
    client = client_for(f"sqlite:///{repo}/mlflow.db")
    runs = runs_by_name(client)
    for name, hidden in (("exp-h16", 16), ("exp-h24", 24)):
        r = runs[name]
        assert r.data.params["model.hidden_size"] == str(hidden)
        assert r.data.params["train.epochs"] == "1"
        assert r.data.params["preprocess.lang"] == "en"  # upstream params are logged too
        assert r.data.tags["dvc_exp_name"] == name
        assert r.data.tags["device"] == "cpu" and "torch_version" in r.data.tags
        for k, v in evals[name].items():
            if k != "sentences":
                assert r.data.metrics[k] == pytest.approx(v), k
        hist = client.get_metric_history(r.info.run_id, "dev_slot_f1")
        assert [m.step for m in hist] == [1]
        inputs = {i.dataset.name: i for i in r.inputs.dataset_inputs}
        assert inputs["tiny"].dataset.digest == inputs["tiny-test"].dataset.digest  # the raw data's md5
        assert r.data.tags["mlflow.source.name"] == "stages/train.py"
        assert r.data.tags["mlflow.source.git.commit"] == run(["git", "rev-parse", "HEAD"], repo, env).stdout.strip()
        arts = {a.path for a in client.list_artifacts(r.info.run_id, "evaluation")}
        assert {"evaluation/eval.json", "evaluation/errors.jsonl", "evaluation/intent_confusion.png"} <= arts
        assert r.info.status == "FINISHED"


def test_dvc_exp_show_lists_params_and_metrics(exp_repo):
    repo, env, evals, _ = exp_repo
    shown = run(["dvc", "exp", "show", "--json"], repo, env).stdout
    for name in ("exp-h16", "exp-h24"):
        assert name in shown
    assert "slot_f1" in shown and "hidden_size" in shown
    diff = run(["dvc", "metrics", "diff", "exp-h16", "exp-h24", "--json"], repo, env).stdout
    assert "metrics/eval.json" in diff
    run(["dvc", "plots", "diff", "exp-h16", "exp-h24", "-o", str(repo / "plots-diff")], repo, env)
    html = (repo / "plots-diff" / "index.html").read_text()
    assert "exp-h16" in html and "exp-h24" in html


def test_parallel_queue_workers_lose_no_runs(exp_repo):
    repo, env, _, status = exp_repo
    assert "Failed" not in status, status
    runs = runs_by_name(client_for(f"sqlite:///{repo}/mlflow.db"))
    for name, hidden in (("q-h12", 12), ("q-h20", 20)):
        assert name in runs, f"queued experiment {name} has no MLflow run; queue status:\n{status}"
        assert runs[name].data.params["model.hidden_size"] == str(hidden)
        assert "slot_f1" in runs[name].data.metrics
    # Nothing landed in a throwaway copy under .dvc/tmp/exps.
    assert not list((repo / ".dvc" / "tmp").rglob("mlflow.db"))


def test_registered_model_loads_and_predicts_like_the_cli(exp_repo):
    import mlflow

    repo, env, _, _ = exp_repo
    uri = f"sqlite:///{repo}/mlflow.db"
    client = client_for(uri)
    mv = client.get_model_version_by_alias("twinhead-joint", "candidate")
    versions = client.search_model_versions("name='twinhead-joint'")
    assert int(mv.version) == max(int(v.version) for v in versions)  # all passed: the newest
    # The champion is the version with the best test sentence_accuracy (a tie keeps the older).
    digest = versions[0].tags["dataset_digest"]
    assert {v.tags["dataset_digest"] for v in versions} == {digest}
    scores = {int(v.version): client.get_run(v.run_id).data.metrics["sentence_accuracy"] for v in versions}
    best = min(scores, key=lambda v: (-scores[v], v))
    assert int(client.get_model_version_by_alias("twinhead-joint", champion_alias(digest)).version) == best
    # The workspace holds the last workspace experiment's bundle; compare with that run's version.
    last_run = runs_by_name(client)["exp-h24"]
    version = next(v for v in versions if v.run_id == last_run.info.run_id)
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/twinhead-joint/{version.version}")
    import pandas as pd

    got = model.predict(pd.DataFrame({"text": TEXTS}))
    want = predict_cli(repo, TEXTS, env)
    assert [(g["intent"], g["tags"], g["entities"]) for g in got] == \
        [(w["intent"], w["tags"], w["entities"]) for w in want]
    assert [g["probability"] for g in got] == pytest.approx([w["probability"] for w in want], abs=1e-6)


def test_mlflow_models_serve_answers_invocations(exp_repo, tmp_path):
    repo, env, _, _ = exp_repo
    uri = f"sqlite:///{repo}/mlflow.db"
    client = client_for(uri)
    version = client.get_model_version_by_alias("twinhead-joint", "candidate")
    port = free_port()
    senv = env_with_venv(MLFLOW_TRACKING_URI=uri)
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(["mlflow", "models", "serve", "-m", "models:/twinhead-joint@candidate",
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                            cwd=repo, env=senv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc)
        body = json.dumps({"dataframe_records": [{"text": t} for t in TEXTS]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            preds = json.loads(r.read())["predictions"]
    finally:
        stop(proc)
        log.close()
    assert len(preds) == 2
    import mlflow

    mlflow.set_tracking_uri(uri)
    import pandas as pd

    local = mlflow.pyfunc.load_model(f"models:/twinhead-joint/{version.version}").predict(
        pd.DataFrame({"text": TEXTS}))
    assert [(p["intent"], p["tags"]) for p in preds] == [(p["intent"], p["tags"]) for p in local]
    assert preds[0]["entities"] == local[0]["entities"]


def test_tracking_server_receives_the_run(tiny_repo, mlflow_server):
    env = env_with_venv(MLFLOW_TRACKING_URI=mlflow_server)
    out = run(["dvc", "repro"], tiny_repo, env).stdout
    client = client_for(mlflow_server)
    exp = client.get_experiment_by_name("twinhead")
    (r,) = client.search_runs([exp.experiment_id])
    ev = json.loads((tiny_repo / "metrics/eval.json").read_text())
    assert r.data.metrics["slot_f1"] == pytest.approx(ev["slot_f1"])
    assert r.data.params["model.hidden_size"] == "16"
    assert r.data.params["evaluate.split"] == "test"
    run_file = json.loads((tiny_repo / "models/mlflow_run.json").read_text())
    assert run_file["run_id"] == r.info.run_id and run_file["tracking_uri"] == mlflow_server
    # Two epochs on 240 sentences miss params.yaml's thresholds: registered, tagged, not promoted.
    (mv,) = client.search_model_versions("name='twinhead-joint'")
    assert mv.run_id == r.info.run_id and mv.tags["candidate_gate"].startswith("failed: ")
    assert "version 1 of twinhead-joint not promoted to 'candidate'" in out
    assert client.get_registered_model("twinhead-joint").aliases == {}
    assert not (tiny_repo / "mlflow.db").exists()  # MLFLOW_TRACKING_URI overrides the embedded store


def test_unreachable_store_warns_once_and_pipeline_completes(tiny_repo):
    env = env_with_venv(MLFLOW_TRACKING_URI="http://127.0.0.1:9")
    res = run(["dvc", "repro"], tiny_repo, env)
    out = res.stdout + res.stderr
    assert out.count("WARNING: MLflow") == 1
    assert "unreachable" in out and "Not logged to MLflow" in out
    assert (tiny_repo / "metrics/eval.json").exists() and (tiny_repo / "models/export/model.safetensors").exists()
    assert json.loads((tiny_repo / "models/mlflow_run.json").read_text())["run_id"] is None
