"""Shared fixtures: a tiny copy of the project (git + DVC) with a small sample of SNIPS."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
BIN = Path(sys.executable).parent

TINY_PARAMS = {
    "model": {"word_dim": 16, "char_dim": 8, "char_filters": 8, "hidden_size": 16, "num_layers": 1,
              "dropout": 0.1},
    "train": {"epochs": 2, "batch_size": 16, "lr": 0.01, "patience": 0, "eval_batch_size": 64},
}


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """pytest-xdist, on the controller: tell each worker how the tests are shared (a worker's own --dist is
    reset to "no"); tests/test_properties.py compares its counts only when a worker runs the whole module."""
    node.workerinput["twinhead_dist"] = node.config.getoption("dist")


def pytest_collection_modifyitems(config, items) -> None:
    """The modules holding an end-to-end test first, in their order, each module's tests in theirs: with `make
    test`'s `--dist loadfile --no-loadscope-reorder` the slow modules start at once on the workers instead of
    last (pytest-xdist's own order puts the modules with the most tests first: the slow ones have few)."""
    slow = {item.module.__name__ for item in items if item.get_closest_marker("e2e") is not None}
    items.sort(key=lambda item: item.module.__name__ not in slow)


def snips_sample(dest: Path, n: dict[str, int] | None = None) -> Path:
    """n evenly spaced lines of each SNIPS split (the files are sorted by intent), BIO folder format."""
    n = n or {"train": 240, "dev": 40, "test": 40}
    src = SHARED / "snips"
    if not src.exists():
        src = ROOT / "data" / "raw" / "snips"
    for split, k in n.items():
        (dest / split).mkdir(parents=True, exist_ok=True)
        for name in ("seq.in", "seq.out", "label"):
            lines = (src / split / name).read_text(encoding="utf-8").splitlines()
            step = max(1, len(lines) // k)
            (dest / split / name).write_text("\n".join(lines[::step][:k]) + "\n", encoding="utf-8")
    return dest


def env_with_venv(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update({"PYTHONUNBUFFERED": "1", "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t",
                "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
                "GIT_COMMITTER_EMAIL": "t@example.com"})
    env.update(extra)
    return env


def run(cmd: list[str] | str, cwd: Path, env: dict | None = None, check: bool = True,
        timeout: float = 600) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, env=env or env_with_venv(), capture_output=True, text=True,
                         timeout=timeout, shell=isinstance(cmd, str))
    if check and res.returncode != 0:
        raise AssertionError(f"{cmd} failed ({res.returncode}):\nSTDOUT:\n{res.stdout[-4000:]}\n"
                             f"STDERR:\n{res.stderr[-4000:]}")
    return res


def set_params(repo: Path, updates: dict) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text(encoding="utf-8"))
    for section, values in updates.items():
        params.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def make_tiny_repo(dest: Path, params: dict | None = None, commit: bool = True) -> Path:
    """A git + DVC copy of the project with a small SNIPS sample at data/raw/tiny and tiny params."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "params.yaml", "pyproject.toml"):
        shutil.copy(ROOT / name, dest / name)
    for folder in ("stages", "src"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(ROOT / "data" / "vectors", dest / "data" / "vectors")  # a train dependency, in git
    (dest / "metrics").mkdir()
    (dest / "models").mkdir()
    shutil.copy(ROOT / ".gitignore", dest / ".gitignore")
    snips_sample(dest / "data" / "raw" / "tiny")
    set_params(dest, {"data": {"path": "data/raw/tiny"}, **TINY_PARAMS, **(params or {})})
    env = env_with_venv()
    run(["git", "init", "-q", "-b", "main"], dest, env)
    run(["dvc", "init", "-q"], dest, env)
    run(["dvc", "config", "core.analytics", "false"], dest, env)
    if commit:
        run(["git", "add", "-A"], dest, env)
        run(["git", "commit", "-q", "-m", "tiny project"], dest, env)
    return dest


@pytest.fixture
def tiny_repo(tmp_path: Path) -> Path:
    return make_tiny_repo(tmp_path / "repo")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    import time
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    """Stop a server started with start_new_session=True by its pid (and its process group)."""
    import signal

    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)


@pytest.fixture
def mlflow_server(tmp_path: Path):
    """A real `mlflow server` on 127.0.0.1 with a SQLite backend in a temp dir; yields its URL."""
    port = free_port()
    log = open(tmp_path / "mlflow-server.log", "w")
    proc = subprocess.Popen(
        ["mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        env=env_with_venv(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", proc)
        yield url
    finally:
        stop(proc)
        log.close()
