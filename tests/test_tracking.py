"""MLflow bookkeeping against a real SQLite store: the registry gate, the aliases, standard tags, inputs."""

from __future__ import annotations

import subprocess
import uuid

import pandas as pd
import pytest

from tests.conftest import ROOT
from twinhead.tracking import CANDIDATE, GATE_TAG, MlflowConfig, Tracker, champion_alias, gate_failures, run_tags

FRAME = pd.DataFrame({"text": ["play jazz", "rain in paris"], "intent": ["PlayMusic", "GetWeather"],
                      "words": [["play", "jazz"], ["rain", "in", "paris"]]})
SNIPS = {"name": "snips", "path": "data/raw/snips", "digest": "0123456789abcdef0123456789abcdef.dir"}
ATIS = {"name": "atis", "path": "data/raw/atis", "digest": "fedcba9876543210fedcba9876543210.dir"}
GOOD = {"intent_accuracy": 0.97, "slot_f1": 0.91, "sentence_accuracy": 0.80}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (creating its tables takes seconds); tests use their own names."""
    folder = tmp_path_factory.mktemp("mlflow")
    return folder, f"sqlite:///{folder}/mlflow.db"


@pytest.fixture
def cfg(store, monkeypatch) -> MlflowConfig:
    folder, uri = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.chdir(folder)
    tag = uuid.uuid4().hex[:8]
    return MlflowConfig(experiment=f"exp-{tag}", registered_model=f"model-{tag}")


def client(cfg_or_uri):
    import mlflow

    return mlflow.MlflowClient(cfg_or_uri)


def pipeline_run(cfg: MlflowConfig, scores: dict[str, float], dataset: dict = SNIPS) -> tuple[Tracker, str]:
    """What train, export and evaluate do to the store, with a bare logged model in place of the bundle."""
    from mlflow.entities import LoggedModelOutput

    t = Tracker.start(cfg, "train")
    assert t.active, t.reason
    c = client(t.uri)
    model = c.create_logged_model(c.get_run(t.run_id).info.experiment_id, name="model", source_run_id=t.run_id)
    c.finalize_logged_model(model.model_id, "READY")
    c.log_outputs(t.run_id, [LoggedModelOutput(model.model_id, 0)])
    if not c.search_registered_models(f"name='{cfg.registered_model}'"):
        c.create_registered_model(cfg.registered_model)
    version = c.create_model_version(cfg.registered_model, model.model_uri, run_id=t.run_id, model_id=model.model_id)
    t.log_input(FRAME, dataset, "evaluation", "test")  # evaluate
    assert t.log_model_metrics(scores, FRAME, dataset, "test") == model.model_id
    t.promote(cfg, scores, dataset)
    return t, version.version


def aliases(cfg: MlflowConfig) -> dict[str, str]:
    return dict(client(None).get_registered_model(cfg.registered_model).aliases)


def test_gate_names_every_missed_threshold():
    minimum = {"intent_accuracy": 0.9, "slot_f1": 0.8}
    assert gate_failures({"intent_accuracy": 0.95, "slot_f1": 0.8}, minimum) == []  # equal to the bar passes
    assert gate_failures({"intent_accuracy": 0.85, "slot_f1": 0.7}, minimum) == [
        "intent_accuracy 0.8500 < 0.9", "slot_f1 0.7000 < 0.8"]
    assert gate_failures({"intent_accuracy": 0.95}, minimum) == ["slot_f1 was not measured (measured: intent_accuracy)"]


def test_version_under_the_thresholds_gets_no_candidate_and_says_why(cfg, capsys):
    _, version = pipeline_run(cfg, {**GOOD, "slot_f1": 0.75})
    assert CANDIDATE not in aliases(cfg)
    out = capsys.readouterr().out
    assert f"version {version} of {cfg.registered_model} not promoted to 'candidate': slot_f1 0.7500 < 0.8" in out
    mv = client(None).get_model_version(cfg.registered_model, version)
    assert mv.tags[GATE_TAG] == "failed: slot_f1 0.7500 < 0.8"


def test_candidate_stays_on_the_last_passing_version(cfg):
    _, first = pipeline_run(cfg, GOOD)
    assert aliases(cfg)[CANDIDATE] == first
    _, second = pipeline_run(cfg, {**GOOD, "sentence_accuracy": 0.5})  # newer, but under the bar
    assert aliases(cfg)[CANDIDATE] == first != second
    _, third = pipeline_run(cfg, {**GOOD, "intent_accuracy": 0.95})
    assert aliases(cfg)[CANDIDATE] == third


def test_thresholds_come_from_params(cfg):
    strict = MlflowConfig(experiment=cfg.experiment, registered_model=cfg.registered_model,
                          candidate_min={"intent_accuracy": 0.99})
    pipeline_run(strict, GOOD)
    assert CANDIDATE not in aliases(cfg)


def test_better_version_takes_champion_worse_does_not(cfg, capsys):
    alias = champion_alias(SNIPS["digest"])
    assert alias == "champion-0123456789ab"
    _, v1 = pipeline_run(cfg, GOOD)
    assert aliases(cfg)[alias] == v1
    _, v2 = pipeline_run(cfg, {**GOOD, "sentence_accuracy": 0.85})
    assert aliases(cfg)[alias] == v2
    _, v3 = pipeline_run(cfg, {**GOOD, "sentence_accuracy": 0.82, "slot_f1": 0.99})  # worse on the declared metric
    assert aliases(cfg)[alias] == v2 and aliases(cfg)[CANDIDATE] == v3
    _, v4 = pipeline_run(cfg, {**GOOD, "sentence_accuracy": 0.85})  # a tie keeps the older champion
    assert aliases(cfg)[alias] == v2
    assert f"'{alias}' (dataset snips) is version {v2}, sentence_accuracy 0.8500" in capsys.readouterr().out


def test_champion_metric_comes_from_params(cfg):
    by_f1 = MlflowConfig(experiment=cfg.experiment, registered_model=cfg.registered_model, champion_metric="slot_f1")
    alias = champion_alias(SNIPS["digest"])
    _, v1 = pipeline_run(by_f1, GOOD)
    _, v2 = pipeline_run(by_f1, {**GOOD, "sentence_accuracy": 0.7, "slot_f1": 0.95})
    assert aliases(cfg)[alias] == v2 != v1


def test_failing_version_never_becomes_champion(cfg):
    alias = champion_alias(SNIPS["digest"])
    _, v1 = pipeline_run(cfg, GOOD)
    pipeline_run(cfg, {**GOOD, "sentence_accuracy": 0.95, "intent_accuracy": 0.5})
    assert aliases(cfg)[alias] == v1


def test_each_dataset_has_its_own_champion(cfg):
    snips, atis = champion_alias(SNIPS["digest"]), champion_alias(ATIS["digest"])
    _, s1 = pipeline_run(cfg, {**GOOD, "sentence_accuracy": 0.9})
    _, a1 = pipeline_run(cfg, {**GOOD, "sentence_accuracy": 0.7}, ATIS)  # worse than SNIPS' champion
    assert aliases(cfg)[snips] == s1 and aliases(cfg)[atis] == a1
    _, a2 = pipeline_run(cfg, {**GOOD, "sentence_accuracy": 0.75}, ATIS)
    assert aliases(cfg)[snips] == s1 and aliases(cfg)[atis] == a2


def test_test_metrics_are_linked_to_the_logged_model_and_the_test_split(cfg):
    t, version = pipeline_run(cfg, GOOD)
    c = client(t.uri)
    run = c.get_run(t.run_id)
    model_id = run.outputs.model_outputs[0].model_id
    linked = {m.key: (m.value, m.dataset_name, m.dataset_digest) for m in c.get_logged_model(model_id).metrics}
    assert linked == {k: (v, "snips-test", SNIPS["digest"]) for k, v in GOOD.items()}
    assert run.data.metrics == GOOD
    inputs = {i.dataset.name: {tag.key: tag.value for tag in i.tags} for i in run.inputs.dataset_inputs}
    assert inputs["snips-test"]["mlflow.data.context"] == "evaluation"


def test_a_version_registered_but_not_yet_evaluated_takes_no_alias(cfg, tmp_path):
    # export registers (log_pyfunc_model); only evaluate, with the test metrics, moves `candidate`
    from tests.test_bundle import make_bundle
    from twinhead.export import log_pyfunc_model

    _, v1 = pipeline_run(cfg, GOOD)
    t = Tracker.start(cfg, "train")
    bundle = make_bundle(tmp_path)[1]
    uri = log_pyfunc_model(t, bundle, cfg.registered_model, ["play jazz"], [{"intent": "PlayMusic"}])
    assert uri is not None and uri != f"models:/{cfg.registered_model}/{v1}"
    assert aliases(cfg)[CANDIDATE] == v1


def test_experiment_is_marked_custom_model_development(cfg):
    Tracker.start(cfg, "train")
    assert client(None).get_experiment_by_name(cfg.experiment).tags["mlflow.experimentKind"] == \
        "custom_model_development"


def test_existing_experiment_without_the_kind_gets_it_and_a_set_kind_is_kept(cfg):
    c = client(None)
    bare = c.create_experiment(cfg.experiment)
    genai = c.create_experiment(cfg.experiment + "-genai", tags={"mlflow.experimentKind": "genai_development"})
    Tracker.start(cfg, "train")
    Tracker.start(MlflowConfig(experiment=cfg.experiment + "-genai"), "train")
    assert c.get_experiment(bare).tags["mlflow.experimentKind"] == "custom_model_development"
    assert c.get_experiment(genai).tags["mlflow.experimentKind"] == "genai_development"


def test_runs_carry_mlflow_source_tags_and_the_training_input(cfg):
    t = Tracker.start(cfg, "train")
    t.set_tags(run_tags("cpu"))
    t.log_input(FRAME, SNIPS, "training")
    run = client(t.uri).get_run(t.run_id)
    assert run.data.tags.get("mlflow.source.name") == "stages/train.py"
    assert "git_commit" not in run.data.tags
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name == "snips" and inp.dataset.digest == SNIPS["digest"]
    assert '"num_rows": 2' in inp.dataset.profile and "data/raw/snips" in inp.dataset.source
    assert {tag.key: tag.value for tag in inp.tags} == {"mlflow.data.context": "training"}
    assert run.info.status == "RUNNING"  # train's run stays open for export and evaluate


def test_source_commit_is_the_checkout_head(cfg, monkeypatch):
    monkeypatch.chdir(ROOT)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    tags = run_tags("cpu")
    assert tags["mlflow.source.git.commit"] == head and "git_commit" not in tags


def test_cross_validation_folds_share_one_parent_run(cfg):
    """benchmarks/cv.py's folds (params equal but data.cv_fold) are children of one parent run; another k or
    another param is another cross-validation; a run outside cross-validation has no parent."""
    base = {"data.path": "data/raw/snips", "data.cv_folds": 3, "train.lr": 0.003, "base.seed": 42}
    runs = []
    for params in ({**base, "data.cv_fold": 0}, {**base, "data.cv_fold": 1}, {**base, "data.cv_fold": 2},
                   {**base, "data.cv_folds": 5, "data.cv_fold": 0}, {**base, "data.cv_fold": 0, "train.lr": 0.01},
                   {**base, "data.cv_folds": 0}):
        t = Tracker.start(cfg, "train")
        parent = t.join_cross_validation(params)
        t.finish()
        runs.append((t.run_id, parent))
    c = client(cfg_uri(cfg))
    parents = [c.get_run(r).data.tags.get("mlflow.parentRunId") for r, _ in runs]
    assert parents[:3] == [runs[0][1]] * 3 and parents[0] is not None
    assert len({parents[0], parents[3], parents[4]}) == 3 and parents[5] is None and runs[5][1] is None
    p = c.get_run(parents[0])
    assert p.info.run_name == "cv-snips-k3" and p.data.params["train.lr"] == "0.003"
    assert "data.cv_fold" not in p.data.params
    children = c.search_runs([p.info.experiment_id], f"tags.mlflow.parentRunId = '{parents[0]}'")
    assert sorted(r.info.run_id for r in children) == sorted(r for r, _ in runs[:3])


def cfg_uri(cfg: MlflowConfig) -> str:
    import os

    return os.environ["MLFLOW_TRACKING_URI"]
