"""MLflow logging for one pipeline execution: train opens the run, evaluate and export log into it.

Where runs go: MLFLOW_TRACKING_URI when set (sqlite:///..., http://...), else a SQLite store
`mlflow.db` at the project root with artifacts in `mlartifacts/` beside it. The root is DVC_ROOT
when DVC runs the stage (also in `dvc exp run --temp/--queue`, whose working copy lives under
.dvc/tmp/exps/ and is thrown away), else the current folder.

Tracking never breaks the pipeline: if the store cannot be reached, the stage prints one warning
saying what was not logged and carries on writing its DVC outputs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any

from twinhead import fileio
from twinhead.params import Name, flatten, section


@section
class MlflowConfig:
    enabled: bool = True  # false: no MLflow logging at all
    experiment: Name = "twinhead"  # MLflow experiment the runs go to
    registered_model: Name = "twinhead-joint"  # registry name of the exported model


RETRIES = 8  # SQLite allows one writer at a time: parallel queue workers retry "database is locked"


def project_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def default_tracking_uri(root: Path | None = None) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{(root or project_root()) / 'mlflow.db'}"


def artifact_location(root: Path | None = None) -> str:
    return ((root or project_root()) / "mlartifacts").as_uri()


def _git(*args: str) -> str | None:
    for cwd in (os.getcwd(), os.environ.get("DVC_ROOT")):
        if not cwd:
            continue
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0:
            return out.stdout.strip()
    return None


def run_tags(device: str | None = None) -> dict[str, str]:
    import spacy
    import torch

    tags = {"torch_version": torch.__version__, "spacy_version": spacy.__version__,
            "python_version": sys.version.split()[0]}
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags["git_commit"] = commit
        status = _git("status", "--porcelain", "--untracked-files=no")
        tags["git_dirty"] = str(bool(status)).lower()
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    if device:
        tags["device"] = device
    return tags


class Tracker:
    """A handle on one MLflow run that turns every failure into a single warning and a no-op."""

    def __init__(self, uri: str | None, run_id: str | None, reason: str | None = None):
        self.uri = uri
        self.run_id = run_id
        self.reason = reason  # why tracking is off, if it is
        self._warned = False

    @property
    def active(self) -> bool:
        return self.run_id is not None

    # -- lifecycle -------------------------------------------------------------------------------
    @classmethod
    def start(cls, cfg: MlflowConfig, stage: str) -> Tracker:
        """Open a new run in the experiment cfg['experiment'] (train stage)."""
        if not cfg.enabled:
            return cls(None, None, "disabled by params (mlflow.enabled: false)")
        uri = default_tracking_uri()
        t = cls(uri, None)
        problem = t._probe()
        if problem:
            t._warn(problem, "nothing of this run (params, metrics, artifacts, model)")
            return t

        def _start():
            import mlflow

            mlflow.set_tracking_uri(uri)
            exp = mlflow.get_experiment_by_name(cfg.experiment)
            if exp is None:
                try:
                    kwargs = {"artifact_location": artifact_location()} if uri.startswith("sqlite:") else {}
                    exp_id = mlflow.create_experiment(cfg.experiment, **kwargs)
                except Exception:
                    exp = mlflow.get_experiment_by_name(cfg.experiment)  # a parallel worker made it
                    if exp is None:
                        raise
                    exp_id = exp.experiment_id
            else:
                exp_id = exp.experiment_id
            client = mlflow.MlflowClient(uri)
            name = os.environ.get("DVC_EXP_NAME") or None
            run = client.create_run(exp_id, run_name=name, tags={"mlflow.source.name": stage})
            return run.info.run_id

        t.run_id = t._retry(_start, "nothing of this run (params, metrics, artifacts, model)")
        return t

    @classmethod
    def resume(cls, run_file: str | Path) -> Tracker:
        """The run opened by train, as recorded in its run file (evaluate and export)."""
        try:
            info = fileio.read_json(run_file)
        except (OSError, ValueError):
            return cls(None, None, f"no readable run file at {run_file}")
        if not info.get("run_id"):
            return cls(None, None, info.get("reason") or "train did not log to MLflow")
        return cls(info["tracking_uri"], info["run_id"])

    def write_run_file(self, path: str | Path) -> None:
        fileio.write_json(path, {"tracking_uri": self.uri, "run_id": self.run_id, "reason": self.reason})

    def finish(self, status: str = "FINISHED") -> None:
        self.call(lambda c: c.set_terminated(self.run_id, status), "the run's end status")

    # -- logging ---------------------------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        flat = {k: ("null" if v is None else v) for k, v in flatten(params).items()}

        def _log(c):
            from mlflow.entities import Param

            have = c.get_run(self.run_id).data.params
            new = {k: str(v) for k, v in flat.items() if k not in have}
            changed = {k: v for k, v in flat.items() if k in have and have[k] != str(v)[:6000]}
            items = [Param(k, v[:6000]) for k, v in new.items()]
            for b in range(0, len(items), 100):
                c.log_batch(self.run_id, params=items[b : b + 100])
            if changed:  # MLflow params are immutable: a re-run stage records its new values as tags
                c.set_tag(self.run_id, "params_changed_on_rerun", ", ".join(sorted(changed)))
                for k, v in changed.items():
                    c.set_tag(self.run_id, f"param.{k}", str(v))

        self.call(_log, "params")

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        def _log(c):
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool)]
            c.log_batch(self.run_id, metrics=items)

        self.call(_log, "metrics")

    def set_tags(self, tags: dict[str, str]) -> None:
        def _log(c):
            from mlflow.entities import RunTag

            c.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

        self.call(_log, "tags")

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if not Path(path).exists():
            return
        self.call(lambda c: c.log_artifact(self.run_id, str(path), artifact_path), f"artifact {path}")

    def log_dataset(self, name: str, source: str, digest: str, context: str = "training") -> None:
        def _log(c):
            from mlflow.data.dataset_source_registry import resolve_dataset_source
            from mlflow.data.meta_dataset import MetaDataset
            from mlflow.entities import DatasetInput, InputTag

            src = Path(source)
            uri = src.resolve().as_uri() if src.exists() else source
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = MetaDataset(resolve_dataset_source(uri), name=name, digest=digest)
            c.log_inputs(self.run_id, [DatasetInput(ds._to_mlflow_entity(),
                                                    [InputTag("mlflow.data.context", context)])])

        self.call(_log, "the dataset input")

    # -- plumbing --------------------------------------------------------------------------------
    def _probe(self) -> str | None:
        """Why the store cannot be used, checked quickly before anything is logged; None if fine."""
        uri = self.uri or ""
        if uri.startswith(("http://", "https://")):
            try:
                with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as r:
                    r.read()
            except Exception as e:  # noqa: BLE001 - any failure means "unreachable"
                return f"tracking server {uri} is unreachable ({e})"
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        elif uri.startswith("sqlite:///"):
            folder = Path(uri[len("sqlite:///"):]).parent
            if not folder.is_dir() or not os.access(folder, os.W_OK):
                return f"tracking store {uri}: folder {folder} is missing or not writable"
        return None

    def _warn(self, problem: str, what: str) -> None:
        if self._warned:
            return
        self._warned = True
        self.reason = problem
        print(f"WARNING: MLflow: {problem}. Not logged to MLflow: {what}, nor anything after it in this "
              "pipeline run. Training and the DVC outputs are not affected.", file=sys.stderr, flush=True)

    def _retry(self, fn, what: str):
        delay = 0.2
        for attempt in range(RETRIES):
            try:
                return fn()
            except Exception as e:  # noqa: BLE001 - tracking must never stop the pipeline
                msg = str(e)
                locked = "locked" in msg or "database is locked" in msg or "UNIQUE constraint" in msg
                if attempt == RETRIES - 1 or not locked:
                    first = msg.strip().splitlines()[0][:300] if msg.strip() else type(e).__name__
                    self._warn(f"could not log to {self.uri} ({type(e).__name__}: {first})", what)
                    self.run_id = None
                    return None
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        return None

    def call(self, fn, what: str):
        """fn(MlflowClient) with retries; on failure one warning, and tracking stops."""
        if not self.active:
            return None

        def _call():
            import mlflow

            return fn(mlflow.MlflowClient(self.uri))

        return self._retry(_call, what)
