"""`twinhead ui` starts MLflow's UI on the project's store and prints a URL that opens on the training runs
(a real server and browser)."""

from __future__ import annotations

import re
import subprocess

from tests.browser import dom
from tests.conftest import env_with_venv, free_port, stop, wait_http
from twinhead.tracking import MlflowConfig, Tracker, experiment_page

RUN = "ui-check-run-7f3a"


def test_experiment_page_shows_the_training_runs(tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DVC_EXP_NAME", RUN)  # train names its run after the DVC experiment
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    t = Tracker.start(MlflowConfig(), "train")
    t.log_metrics({"slot_f1": 0.5})
    t.finish()
    exp = mlflow.MlflowClient(uri).get_experiment_by_name("twinhead")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"

    port = free_port()
    with open(tmp_path / "ui.log", "w") as log:
        # As a user runs it: from the project root, no URI given (MLFLOW_TRACKING_URI is dropped).
        proc = subprocess.Popen(["twinhead", "ui", "--port", str(port)], cwd=tmp_path, env=env_with_venv(),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_http(f"http://127.0.0.1:{port}/health", proc)
            printed = (tmp_path / "ui.log").read_text()
            url = experiment_page(f"http://127.0.0.1:{port}", exp.experiment_id)
            assert url in printed, printed
            html = dom(url, wait_ms=20000)
        finally:
            stop(proc)
    text = re.sub(r"<[^>]+>", " ", html)
    assert RUN in html, f"the runs table does not list {RUN}:\n{text[:3000]}"
    # What the GenAI traces overview shows on an experiment without traces.
    assert "No data available for the selected time range" not in text


def test_ui_without_a_store_says_what_to_run(tmp_path):
    out = subprocess.run(["twinhead", "ui", "--port", str(free_port())], cwd=tmp_path, env=env_with_venv(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "no MLflow store at" in out.stderr and "dvc repro" in out.stderr
    assert "Traceback" not in out.stderr
