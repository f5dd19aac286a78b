"""Atomic writes: the previous output or the new one, never a half-written file or a stray temp."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys

import pytest

import twinhead
from twinhead import fileio


def names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_text_creates_parents_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a" / "b" / "out.txt"
    fileio.write_text(path, "héllo\n")
    assert path.read_bytes() == "héllo\n".encode()
    assert names(path.parent) == ["out.txt"]


def test_write_replaces_old_content(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old content that is longer than the new one\n", encoding="utf-8")
    fileio.write_text(path, "new\n")
    assert path.read_text(encoding="utf-8") == "new\n"
    assert names(tmp_path) == ["out.txt"]


def test_write_json_content(tmp_path):
    path = tmp_path / "m.json"
    fileio.write_json(path, {"f1": 0.5, "name": "café"})
    text = path.read_text(encoding="utf-8")
    assert text == '{\n  "f1": 0.5,\n  "name": "café"\n}\n'  # readable, not \u-escaped
    assert fileio.read_json(path) == {"f1": 0.5, "name": "café"}
    fileio.write_json(path, [1, 2], indent=None)
    assert path.read_text(encoding="utf-8") == "[1, 2]\n"
    assert names(tmp_path) == ["m.json"]


def test_write_jsonl_counts_rows(tmp_path):
    path = tmp_path / "p.jsonl"
    n = fileio.write_jsonl(path, ({"i": i} for i in range(3)))
    assert n == 3
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == [{"i": 0}, {"i": 1},
                                                                                             {"i": 2}]
    assert names(tmp_path) == ["p.jsonl"]


def test_exception_inside_atomic_path_keeps_previous_file(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"previous")
    with pytest.raises(RuntimeError, match="killed"):
        with fileio.atomic_path(path) as tmp:
            assert tmp.parent == tmp_path and tmp != path
            tmp.write_bytes(b"half-writ")
            raise RuntimeError("killed")
    assert path.read_bytes() == b"previous"
    assert names(tmp_path) == ["model.pt"]


def test_exception_inside_write_jsonl_keeps_previous_file(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"old": true}\n', encoding="utf-8")

    def rows():
        yield {"new": 1}
        raise ValueError("bad row")

    with pytest.raises(ValueError, match="bad row"):
        fileio.write_jsonl(path, rows())
    assert path.read_text(encoding="utf-8") == '{"old": true}\n'
    assert names(tmp_path) == ["p.jsonl"]


def test_exception_without_previous_file_leaves_nothing(tmp_path):
    with pytest.raises(KeyError):
        with fileio.atomic_path(tmp_path / "x.json") as tmp:
            tmp.write_text("partial", encoding="utf-8")
            raise KeyError("boom")
    assert names(tmp_path) == []


def test_atomic_dir_replaces_a_directory(tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "stale.bin").write_bytes(b"old")
    (out / "config.json").write_text("old", encoding="utf-8")
    with fileio.atomic_dir(out) as tmp:
        assert tmp.parent == tmp_path and tmp != out
        (tmp / "config.json").write_text("new", encoding="utf-8")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "w.bin").write_bytes(b"w")
    assert names(out) == ["config.json", "sub"]  # the stale file is gone, not merged
    assert (out / "config.json").read_text(encoding="utf-8") == "new"
    assert (out / "sub" / "w.bin").read_bytes() == b"w"
    assert names(tmp_path) == ["bundle"]  # no temp or .old folder left


def test_atomic_dir_creates_new_directory(tmp_path):
    out = tmp_path / "deep" / "vocab"
    with fileio.atomic_dir(out) as tmp:
        (tmp / "words.json").write_text("[]", encoding="utf-8")
    assert names(out) == ["words.json"]
    assert names(out.parent) == ["vocab"]


def test_exception_inside_atomic_dir_keeps_previous_directory(tmp_path):
    out = tmp_path / "processed"
    out.mkdir()
    (out / "train.parquet").write_bytes(b"previous")
    with pytest.raises(RuntimeError):
        with fileio.atomic_dir(out) as tmp:
            (tmp / "train.parquet").write_bytes(b"partial")
            raise RuntimeError("killed")
    assert names(out) == ["train.parquet"]
    assert (out / "train.parquet").read_bytes() == b"previous"
    assert names(tmp_path) == ["processed"]


def test_atomic_dir_removes_a_leftover_old_folder_of_an_older_version(tmp_path):
    # before pids were in temp names, a kill between the two renames left ".bundle.old" behind
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "a").write_text("current", encoding="utf-8")
    leftover = tmp_path / ".bundle.old"
    leftover.mkdir()
    (leftover / "a").write_text("older", encoding="utf-8")
    with fileio.atomic_dir(out) as tmp:
        (tmp / "a").write_text("new", encoding="utf-8")
    assert (out / "a").read_text(encoding="utf-8") == "new"
    assert names(tmp_path) == ["bundle"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_atomic_outputs_get_normal_permissions(tmp_path):
    old_umask = os.umask(0o022)
    try:
        fileio.write_text(tmp_path / "f.txt", "x")
        with fileio.atomic_dir(tmp_path / "d") as tmp:
            (tmp / "g.txt").write_text("y", encoding="utf-8")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


# --- killed writers (SIGKILL at a named fail point, in a child process) ----------------------------

WRITE_DIR = """
import sys
from pathlib import Path
from twinhead import fileio
if sys.argv[2] == "fallback":
    fileio._exchange = lambda a, b: False  # as on a system without renameat2
with fileio.atomic_dir(Path(sys.argv[1])) as tmp:
    (tmp / "a").write_text("new", encoding="utf-8")
    (tmp / "b").write_text("new b", encoding="utf-8")
"""


def killed_writer(tmp_path, point: str, script: str, *args: str) -> int:
    """Run `script` in a child that SIGKILLs itself at fail point `point`; returns the child's pid."""
    log = tmp_path.parent / f"{tmp_path.name}-failpoint.log"
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(twinhead.__file__)),
               TWINHEAD_FAILPOINT=point, TWINHEAD_FAILPOINT_LOG=str(log))
    proc = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    name, pid = log.read_text().split()
    assert name == point
    return int(pid)


def make_bundle(tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "a").write_text("old", encoding="utf-8")
    return out


needs_sigkill = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")


@needs_sigkill
def test_killed_before_the_rename_keeps_the_previous_file_and_the_next_write_cleans_up(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("previous", encoding="utf-8")
    script = "import sys; from twinhead import fileio; fileio.write_text(sys.argv[1], 'new')"
    pid = killed_writer(tmp_path, "write:out.txt", script, str(path))
    assert path.read_text(encoding="utf-8") == "previous"
    (left,) = [n for n in names(tmp_path) if n != "out.txt"]
    assert left.startswith(f".out.txt.{pid}.") and left.endswith(".tmp")
    assert (tmp_path / left).read_text(encoding="utf-8") == "new"  # complete, fsynced, not yet in place
    fileio.write_text(path, "next")
    assert names(tmp_path) == ["out.txt"] and path.read_text(encoding="utf-8") == "next"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux's")
def test_exchange_swaps_two_folders_atomically(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("in a", encoding="utf-8")
    (b / "y").write_text("in b", encoding="utf-8")
    assert fileio._exchange(a, b) is True
    assert names(a) == ["y"] and names(b) == ["x"]


@needs_sigkill
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux's")
def test_killed_mid_swap_with_the_exchange_leaves_the_new_folder_in_place(tmp_path):
    out = make_bundle(tmp_path)
    pid = killed_writer(tmp_path, "swap:bundle", WRITE_DIR, str(out), "exchange")
    assert names(out) == ["a", "b"] and (out / "a").read_text(encoding="utf-8") == "new"
    (left,) = [n for n in names(tmp_path) if n != "bundle"]
    assert left.startswith(f".bundle.{pid}.") and left.endswith(".tmp")
    assert names(tmp_path / left) == ["a"]  # the previous folder, under the temp name
    with pytest.raises(RuntimeError), fileio.atomic_dir(out):  # the next write, even a failed one, tidies
        raise RuntimeError("failed")
    assert names(tmp_path) == ["bundle"] and (out / "a").read_text(encoding="utf-8") == "new"


@needs_sigkill
def test_killed_between_the_two_renames_the_next_write_restores_the_previous_folder(tmp_path):
    out = make_bundle(tmp_path)
    pid = killed_writer(tmp_path, "swap:bundle", WRITE_DIR, str(out), "fallback")
    assert not out.exists()  # the moment the exchange avoids
    assert f".bundle.{pid}.old" in names(tmp_path)
    with pytest.raises(RuntimeError), fileio.atomic_dir(out) as tmp:
        (tmp / "a").write_text("half", encoding="utf-8")
        raise RuntimeError("failed")
    assert names(tmp_path) == ["bundle"]
    assert names(out) == ["a"] and (out / "a").read_text(encoding="utf-8") == "old"


def test_fallback_swap_without_exchange_replaces_the_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio, "_exchange", lambda a, b: False)
    out = make_bundle(tmp_path)
    with fileio.atomic_dir(out) as tmp:
        (tmp / "c").write_text("new", encoding="utf-8")
    assert names(out) == ["c"] and names(tmp_path) == ["bundle"]


def test_fallback_swap_failing_after_moving_the_old_folder_puts_it_back(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio, "_exchange", lambda a, b: False)
    out = make_bundle(tmp_path)
    real_replace = os.replace

    def replace(src, dst):
        if str(src).endswith(".tmp"):
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="disk full"), fileio.atomic_dir(out) as tmp:
        (tmp / "c").write_text("new", encoding="utf-8")
    assert names(out) == ["a"] and names(tmp_path) == ["bundle"]


@pytest.mark.skipif(os.name != "posix", reason="pid probing")
def test_temps_of_a_live_writer_are_left_alone_and_removed_once_it_is_gone(tmp_path):
    other = subprocess.Popen(["sleep", "60"])
    try:
        mine = tmp_path / f".out.txt.{other.pid}.0123abcd.tmp"
        mine.write_text("being written", encoding="utf-8")
        fileio.write_text(tmp_path / "out.txt", "x")
        assert mine.exists(), "a concurrent writer's temp was removed"
    finally:
        other.kill()
        other.wait()
    other_target = tmp_path / f".out.txt.1.{other.pid}.0123abcd.tmp"  # "out.txt.1"'s, by the same dead writer
    other_target.write_text("", encoding="utf-8")
    fileio.write_text(tmp_path / "out.txt", "y")
    assert names(tmp_path) == [other_target.name, "out.txt"]  # only out.txt's own leftovers go
