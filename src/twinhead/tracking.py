"""MLflow logging for one pipeline execution: train opens the run, evaluate and export log into it.

Where runs go: MLFLOW_TRACKING_URI when set (sqlite:///..., http://...), else a SQLite store
`mlflow.db` at the project root with artifacts in `mlartifacts/` beside it. The root is DVC_ROOT
when DVC runs the stage (also in `dvc exp run --temp/--queue`, whose working copy lives under
.dvc/tmp/exps/ and is thrown away), else the current folder.

Tracking never breaks the pipeline: if the store cannot be reached, the stage prints one warning
saying what was not logged and carries on writing its DVC outputs.

Registry aliases (set by evaluate, once the test metrics are linked to the logged model):
- `candidate`: the newest version whose test metrics reach every threshold of mlflow.candidate_min;
  a version that misses one keeps no alias, and evaluate prints why.
- `champion-<dataset>`: per dataset (the first 12 characters of its DVC md5, the same in every copy of
  the repo), the passing version with the highest mlflow.champion_metric; a tie keeps the older one.
Both are recomputed from the versions' tags and their models' metrics, so parallel workers converge.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from twinhead import fileio
from twinhead.params import Name, flatten, section

Score = Annotated[float, Field(ge=0, le=1)]
CANDIDATE_MIN = {"intent_accuracy": 0.9, "slot_f1": 0.8, "sentence_accuracy": 0.6}


@section
class MlflowConfig:
    enabled: bool = True  # false: no MLflow logging at all
    experiment: Name = "twinhead"  # MLflow experiment the runs go to
    registered_model: Name = "twinhead-joint"  # registry name of the exported model
    # test metric -> least value for the alias `candidate` (names as in metrics/eval.json)
    candidate_min: dict[Name, Score] = dataclasses.field(default_factory=lambda: dict(CANDIDATE_MIN))
    champion_metric: Name = "sentence_accuracy"  # test metric (higher is better) that picks champion-<dataset>


CANDIDATE = "candidate"
GATE_TAG = "candidate_gate"  # on a version: "passed" or "failed: <why>"
DATASET_TAG = "dataset_digest"  # on a version: the raw data's DVC md5 (or md5 of its files)
# The experiment kind MLflow 3's UI labels "Machine learning" (vs "genai_development"). MLflow 3.17's UI picks an
# experiment's first view from its global GenAI / Model training switch (default GenAI) rather than this tag:
# experiment_page() names the runs view explicitly.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_page(ui: str, experiment_id: str) -> str:
    """The URL of an experiment's training-runs table in an `mlflow ui` / `mlflow server` at `ui`."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


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
        tags["mlflow.source.git.commit"] = commit
        status = _git("status", "--porcelain", "--untracked-files=no")
        tags["git_dirty"] = str(bool(status)).lower()
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    if device:
        tags["device"] = device
    return tags


def experiment_id(client, name: str, uri: str) -> str:
    """The experiment's id, created if missing; either way tagged as custom model development."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            kwargs = {"artifact_location": artifact_location()} if uri.startswith("sqlite:") else {}
            return client.create_experiment(name, tags=EXPERIMENT_KIND, **kwargs)
        except Exception:
            exp = client.get_experiment_by_name(name)  # a parallel worker made it
            if exp is None:
                raise
    for key, value in EXPERIMENT_KIND.items():
        if key not in exp.tags:  # experiments made before this tag existed; a kind set by hand is kept
            client.set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


def pandas_dataset(frame, dataset: dict, split: str | None = None):
    """An MLflow dataset of a processed frame, named after the raw data (and the split, when it is one split
    of it: MLflow keeps one dataset per name and digest), with the raw data's digest and path as source."""
    import mlflow

    src = Path(dataset["path"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "source can be interpreted in multiple ways": both are local files
        return mlflow.data.from_pandas(frame, source=str(src.resolve()) if src.exists() else dataset["path"],
                                       name=f"{dataset['name']}-{split}" if split else dataset["name"],
                                       digest=dataset["digest"])


def run_model_id(client, run_id: str) -> str | None:
    """The id of the (last) model the run logged."""
    outputs = client.get_run(run_id).outputs
    models = outputs.model_outputs if outputs else []
    return models[-1].model_id if models else None


def gate_failures(metrics: dict[str, float], minimum: dict[str, float]) -> list[str]:
    """Why `metrics` miss the thresholds, one phrase per metric; empty when every threshold is reached."""
    out = []
    for key, least in sorted(minimum.items()):
        value = metrics.get(key)
        if value is None:
            out.append(f"{key} was not measured (measured: {', '.join(sorted(metrics))})")
        elif value < least:
            out.append(f"{key} {value:.4f} < {least:g}")
    return out


def champion_alias(digest: str) -> str:
    return "champion-" + re.sub(r"[^0-9A-Za-z]", "", digest)[:12]


def model_metrics(client, version) -> dict[str, float]:
    """The test metrics logged on a version's model (the newest value of each)."""
    model_id = getattr(version, "model_id", None) or run_model_id(client, version.run_id)
    if not model_id:
        return {}
    latest = {}
    for m in sorted(client.get_logged_model(model_id).metrics or [], key=lambda m: m.timestamp):
        latest[m.key] = m.value
    return latest


def settle_aliases(client, name: str, metric: str | None, digest: str | None) -> list[str]:
    """Point `candidate` at the newest passing version and, given a dataset digest, champion-<digest> at the
    passing version of that dataset with the highest `metric`; returns what now holds each alias."""
    versions = sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
    passing = [v for v in versions if v.tags.get(GATE_TAG) == "passed"]
    lines = []
    aliases = client.get_registered_model(name).aliases  # alias -> version
    if passing:
        newest = passing[-1].version
        if aliases.get(CANDIDATE) != newest:
            client.set_registered_model_alias(name, CANDIDATE, newest)
        lines.append(f"'{CANDIDATE}' is version {newest} of {name}")
    elif CANDIDATE in aliases:
        client.delete_registered_model_alias(name, CANDIDATE)
    if digest is None or metric is None:
        return lines
    alias = champion_alias(digest)
    best, best_value = None, None
    for v in passing:  # oldest first: a later version must be strictly better to take the title
        if v.tags.get(DATASET_TAG) != digest:
            continue
        value = model_metrics(client, v).get(metric)
        if value is not None and (best_value is None or value > best_value):
            best, best_value = v, value
    if best is None:
        lines.append(f"no passing version of {name} on this dataset: no '{alias}'")
        return lines
    if aliases.get(alias) != best.version:
        client.set_registered_model_alias(name, alias, best.version)
    lines.append(f"'{alias}' (dataset {best.tags.get('dataset_name', digest)}) is version {best.version}, "
                 f"{metric} {best_value:.4f}")
    return lines


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
            client = mlflow.MlflowClient(uri)
            exp_id = experiment_id(client, cfg.experiment, uri)
            name = os.environ.get("DVC_EXP_NAME") or None
            run = client.create_run(exp_id, run_name=name, tags={"mlflow.source.name": f"stages/{stage}.py",
                                                                 "mlflow.source.type": "LOCAL"})
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

    def join_cross_validation(self, params: dict[str, Any]) -> str | None:
        """Make this run a child of its cross-validation's parent run (created by the first fold to get
        here): the folds of one cross-validation are the runs whose flattened params differ only in
        data.cv_fold. Does nothing outside cross-validation (data.cv_folds 0). Returns the parent's id."""
        folds = params.get("data.cv_folds") or 0
        if not folds:
            return None
        rest = {k: v for k, v in sorted(params.items()) if k != "data.cv_fold"}
        group = hashlib.sha256(json.dumps(rest, sort_keys=True, default=str).encode()).hexdigest()[:16]
        name = f"cv-{Path(str(params.get('data.path', 'data'))).name}-k{folds}"

        def _join(c):
            exp_id = c.get_run(self.run_id).info.experiment_id
            from mlflow.entities import Param

            found = c.search_runs([exp_id], filter_string=f"tags.twinhead_cv_parent = '{group}'", max_results=1,
                                  order_by=["attributes.start_time ASC"])
            if found:
                parent = found[0].info.run_id
            else:
                run = c.create_run(exp_id, run_name=name, tags={"twinhead_cv_parent": group,
                                                                "twinhead_cv_folds": str(folds)})
                parent = run.info.run_id
                c.log_batch(parent, params=[Param(k, str(v)[:6000]) for k, v in rest.items()])
                c.set_terminated(parent)
            c.set_tag(self.run_id, "mlflow.parentRunId", parent)
            c.set_tag(self.run_id, "twinhead_cv_group", group)
            return parent

        return self.call(_join, "the cross-validation parent run")

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if not Path(path).exists():
            return
        self.call(lambda c: c.log_artifact(self.run_id, str(path), artifact_path), f"artifact {path}")

    def log_input(self, frame, dataset: dict, context: str, split: str | None = None) -> None:
        """The processed `frame` as a run input, named and digested as its raw data (`dataset`: preprocess's
        name, path, digest); `split` names an evaluation split apart from the training data."""

        def _log(c):
            import mlflow

            self._in_run(c, lambda: mlflow.log_input(pandas_dataset(frame, dataset, split), context=context))

        self.call(_log, f"the {context} dataset input")

    def log_model_metrics(self, metrics: dict[str, float], frame, dataset: dict, split: str) -> str | None:
        """Test metrics on the run and on the model it logged (MLflow 3 logged-model metrics, linked to the
        evaluation dataset); returns that model's id (None: the run logged no model)."""

        def _log(c):
            import mlflow

            model_id = run_model_id(c, self.run_id)
            numbers = {k: float(v) for k, v in metrics.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
            mlflow.set_tracking_uri(self.uri)
            mlflow.log_metrics(numbers, run_id=self.run_id, model_id=model_id,
                               dataset=pandas_dataset(frame, dataset, split))
            return model_id

        return self.call(_log, "the test metrics")

    def promote(self, cfg: MlflowConfig, metrics: dict[str, float], dataset: dict) -> None:
        """Gate this run's registered version and move `candidate` and `champion-<dataset>` (see the top)."""

        def _promote(c):
            mine = [v for v in c.search_model_versions(f"run_id='{self.run_id}'") if v.name == cfg.registered_model]
            if not mine:
                print(f"MLflow: no version of {cfg.registered_model} was registered by run {self.run_id}: "
                      "nothing to promote", flush=True)
                return
            version = max(mine, key=lambda v: int(v.version))
            failures = gate_failures(metrics, dict(cfg.candidate_min))
            c.set_model_version_tag(cfg.registered_model, version.version, DATASET_TAG, dataset["digest"])
            c.set_model_version_tag(cfg.registered_model, version.version, "dataset_name", dataset["name"])
            c.set_model_version_tag(cfg.registered_model, version.version, GATE_TAG,
                                    "failed: " + "; ".join(failures) if failures else "passed")
            label = f"version {version.version} of {cfg.registered_model}"
            if failures:
                print(f"MLflow: {label} not promoted to '{CANDIDATE}': {'; '.join(failures)} "
                      "(thresholds: mlflow.candidate_min)", flush=True)
            for line in settle_aliases(c, cfg.registered_model, cfg.champion_metric, dataset["digest"]):
                print(f"MLflow: {line}", flush=True)

        self.call(_promote, "the registry aliases")

    # -- plumbing --------------------------------------------------------------------------------
    def _in_run(self, client, fn):
        """fn() with this run active for MLflow's fluent API, which ends the runs it resumes: the run
        keeps the status it had (train's run stays RUNNING for export and evaluate)."""
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        status = client.get_run(self.run_id).info.status
        mlflow.start_run(run_id=self.run_id, log_system_metrics=False)
        try:
            return fn()
        finally:
            mlflow.end_run(status=status)

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
