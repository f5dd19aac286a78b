"""Stages run the library of the tree they are in, and say so clearly when `python` is the wrong one."""

from __future__ import annotations

import shutil
import subprocess
import sys

from tests.conftest import ROOT


def test_a_stage_imports_the_src_of_its_own_tree(tmp_path):
    """A `dvc exp run --queue` copy must run the code it was queued with, not the installed twinhead."""
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(ROOT / "stages", tmp_path / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    init = tmp_path / "src" / "twinhead" / "__init__.py"
    init.write_text(init.read_text(encoding="utf-8") + '\nprint("twinhead from the copy", flush=True)\n',
                    encoding="utf-8")
    res = subprocess.run([sys.executable, "stages/vocab.py", "--help"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("twinhead from the copy")


def test_a_stage_run_by_a_python_without_the_environment_says_so_in_one_line(tmp_path):
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    python = bare / "bin" / "python"
    res = subprocess.run([str(python), str(ROOT / "stages" / "train.py"), "a", "b", "c", "d", "e"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith(f"error: {python} cannot import torch: it is not the project's environment")
    assert "source .venv/bin/activate" in lines[0]
