"""What `pip install twinhead` promises: predicting from a bundle needs only the core dependencies.

The predict path runs in a subprocess where the pipeline's packages cannot be imported (as in an
environment without `twinhead[pipeline]`), and every third-party package that twinhead's own modules
import on that path must be a declared core dependency (numpy was imported but undeclared once).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.test_bundle import make_bundle
from twinhead.predictor import Predictor

ROOT = Path(__file__).resolve().parents[1]
PIPELINE_ONLY = ("dvc", "mlflow", "pandas", "pyarrow", "sklearn", "matplotlib", "ruamel", "yaml", "scipy")
TEXT = "play the beatles on spotify"

# Run before the code under test: refuse the pipeline's packages, and record (importer, module) for
# every import statement executed by a twinhead module (builtins.__import__ sees cached modules too).
PRELUDE = f"""
import builtins, importlib.abc, json, os, sys
BLOCKED = {PIPELINE_ONLY!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: not a core dependency)")
sys.meta_path.insert(0, Block())
DIRECT = set()
_import = builtins.__import__
def _record(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {{}}).get("__name__", "")
    if level == 0 and importer.partition(".")[0] == "twinhead":
        DIRECT.add(name.partition(".")[0])
    return _import(name, globals, locals, fromlist, level)
builtins.__import__ = _record
import atexit
atexit.register(lambda: open(os.environ["DIRECT_OUT"], "w").write(json.dumps(sorted(DIRECT))))
"""


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def core_dependencies() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {normalize(re.match(r"[A-Za-z0-9._-]+", dep).group()) for dep in project["dependencies"]}


def distribution_of(module: str) -> str:
    import importlib.metadata

    dists = importlib.metadata.packages_distributions().get(module)
    assert dists, f"no installed distribution provides {module}"
    return normalize(dists[0])


def assert_same_prediction(got: dict, want: dict) -> None:
    assert {**got, "probability": 0} == {**want, "probability": 0}
    assert got["probability"] == pytest.approx(want["probability"], abs=1e-6)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("pkg-bundle"))[1]


def run_without_pipeline(code: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run `code` after PRELUDE; returns the process and the third-party modules twinhead imported itself."""
    out = tmp_path / "direct.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]), "DIRECT_OUT": str(out)}
    res = subprocess.run([sys.executable, "-c", PRELUDE + code], capture_output=True, text=True, env=env,
                         timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    stdlib = set(sys.stdlib_module_names) | {"twinhead"}
    return res, [m for m in json.loads(out.read_text(encoding="utf-8")) if m not in stdlib]


def test_prediction_imports_only_core_dependencies(bundle, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text(TEXT + "\n", encoding="utf-8")
    code = ("import sys; from twinhead.cli import main\n"
            f"sys.exit(main(['predict', '--bundle', {str(bundle)!r}, '--quiet', '--input', {str(texts)!r}]))\n")
    res, direct = run_without_pipeline(code, tmp_path)
    assert_same_prediction(json.loads(res.stdout), Predictor(bundle).predict([TEXT])[0])
    # The packages the predict path uses itself; each must be declared, not merely pulled in by another.
    assert {"numpy", "torch", "spacy", "safetensors", "pydantic", "tqdm"} <= set(direct)
    undeclared = {m: distribution_of(m) for m in direct if distribution_of(m) not in core_dependencies()}
    assert not undeclared, f"imported on the predict path but not in [project] dependencies: {undeclared}"


def test_cli_help_without_pipeline_packages(tmp_path):
    code = ("import runpy, sys; sys.argv = ['twinhead', 'predict', '--help']\n"
            "runpy.run_module('twinhead', run_name='__main__')\n")
    res, _ = run_without_pipeline(code, tmp_path)
    assert res.stdout.startswith("usage: twinhead predict")
    assert "--bundle" in res.stdout


def test_pipeline_packages_are_not_core():
    assert not core_dependencies() & {"dvc", "mlflow", "pandas", "pyarrow", "scikit-learn", "matplotlib",
                                      "ruamel-yaml", "pyyaml"}


def test_python_dash_m_twinhead_is_the_cli(bundle):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-m", "twinhead", "predict", "--bundle", str(bundle), "--quiet", TEXT],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert_same_prediction(json.loads(res.stdout), Predictor(bundle).predict([TEXT])[0])
    res = subprocess.run([sys.executable, "-m", "twinhead", "--version"], capture_output=True, text=True, env=env,
                         timeout=60)
    assert (res.returncode, res.stdout.strip()) == (0, "twinhead 0.1.0")
    res = subprocess.run([sys.executable, "-m", "twinhead", "predict", "--bundle", "/nonexistent", "x"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 1 and res.stderr.startswith("error: ") and "Traceback" not in res.stderr
