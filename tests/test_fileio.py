"""Atomic writes: the previous output or the new one, never a half-written file or a stray temp."""

from __future__ import annotations

import json
import os
import stat

import pytest

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


def test_atomic_dir_recovers_from_a_leftover_old_folder(tmp_path):
    # a run killed between the two renames leaves ".bundle.old" behind; the next run must still work
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
