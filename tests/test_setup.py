"""`make setup` picks a python that pyproject.toml's requires-python accepts, or says in one line why not.

Fake pythons on PATH report a version (what the Makefile asks them), so these run without installing any.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("python3", "python3.11", "python3.12", "python3.13", "python3.14")

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def fake_python(folder: Path, name: str, version: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\necho {version}\n", encoding="utf-8")
    path.chmod(0o755)
    return path


def make(target: str, fakes: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "PYTHON", "VENV", "PYTHON_CANDIDATES")}
    env["PATH"] = f"{fakes}{os.pathsep}{env['PATH']}"  # the fakes shadow every real python3.X
    return subprocess.run(["make", "-s", "-C", str(ROOT), target, *args], capture_output=True, text=True,
                          env=env, timeout=60)


def error_lines(res: subprocess.CompletedProcess) -> list[str]:
    return [line for line in res.stderr.splitlines() if not line.startswith("make")]


def test_only_old_pythons_is_one_clear_line(tmp_path):
    for name in NAMES:
        fake_python(tmp_path, name, "3.10")
    res = make("python", tmp_path)
    assert res.returncode != 0 and res.stdout == ""
    assert error_lines(res) == [
        "error: twinhead needs Python >=3.11 (requires-python, pyproject.toml) but python3 is 3.10, "
        "python3.11 is 3.10, python3.12 is 3.10, python3.13 is 3.10, python3.14 is 3.10: install one, "
        "or pass PYTHON=/path/to/python3.X"]


def test_setup_stops_before_creating_the_venv(tmp_path):
    fakes = tmp_path / "bin"
    for name in NAMES:
        fake_python(fakes, name, "3.9")
    venv = tmp_path / "venv"
    res = make("setup", fakes, f"VENV={venv}")
    assert res.returncode != 0
    assert len(error_lines(res)) == 1 and "needs Python >=3.11" in error_lines(res)[0]
    assert "python3 is 3.9" in error_lines(res)[0]
    assert not venv.exists()


def test_python3_first_when_new_enough(tmp_path):
    fake_python(tmp_path, "python3", "3.13")
    fake_python(tmp_path, "python3.11", "3.11")
    res = make("python", tmp_path)
    assert (res.returncode, res.stdout) == (0, "python3\n")


def test_newer_python_taken_when_python3_is_too_old(tmp_path):
    fake_python(tmp_path, "python3", "3.10")
    for name, version in (("python3.11", "3.9"), ("python3.12", "3.12"), ("python3.13", "3.13")):
        fake_python(tmp_path, name, version)
    res = make("python", tmp_path)
    assert (res.returncode, res.stdout) == (0, "python3.12\n")


def test_python_variable_overrides(tmp_path):
    fake_python(tmp_path, "python3", "3.12")
    old = fake_python(tmp_path / "other", "py", "3.8")
    res = make("python", tmp_path, f"PYTHON={old}")
    assert res.returncode != 0
    assert error_lines(res) == [f"error: twinhead needs Python >=3.11 (requires-python, pyproject.toml) but "
                                f"{old} is 3.8: install one, or pass PYTHON=/path/to/python3.X"]
    new = fake_python(tmp_path / "other", "py13", "3.13")
    res = make("python", tmp_path, f"PYTHON={new}")
    assert (res.returncode, res.stdout) == (0, f"{new}\n")
