"""Dataset readers: both formats, and an error naming file and line for every malformed input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from twinhead.errors import DataError, TwinheadError
from twinhead.readers import (
    SplitReport,
    detect_format,
    read_bio_split,
    read_dataset,
    read_jsonl_split,
    read_lines,
)

GOOD = {
    "seq.in": ["play the beatles", "wake me up at 7 am"],
    "seq.out": ["O B-artist I-artist", "O O O O B-time I-time"],
    "label": ["PlayMusic", "SetAlarm"],
}


def write_bio_split(folder: Path, files: dict[str, list[str]] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in (files or GOOD).items():
        (folder / name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return folder


def write_bio_dataset(root: Path, **overrides: dict[str, list[str]]) -> Path:
    for split in ("train", "dev", "test"):
        write_bio_split(root / split, overrides.get(split))
    return root


def with_line(name: str, lineno: int, value: str) -> dict[str, list[str]]:
    """GOOD with line `lineno` (1-based) of file `name` replaced."""
    files = {k: list(v) for k, v in GOOD.items()}
    files[name][lineno - 1] = value
    return files


# --- BIO folder format --------------------------------------------------------------------------


def test_bio_dataset_good(tmp_path):
    root = write_bio_dataset(tmp_path / "ds")
    assert detect_format(root) == "bio"
    data, reports = read_dataset(root)
    assert set(data) == {"train", "dev", "test"}
    ex = data["train"][1]
    assert ex.tokens == ["wake", "me", "up", "at", "7", "am"]
    assert ex.tags == ["O", "O", "O", "O", "B-time", "I-time"]
    assert ex.intent == "SetAlarm"
    assert ex.source == f"{root / 'train' / 'seq.in'}:2"
    assert ex.text is None and ex.offsets is None
    assert [e.intent for e in data["test"]] == ["PlayMusic", "SetAlarm"]
    assert all(r.skipped == [] for r in reports.values())


def test_bio_token_tag_count_mismatch_names_seq_out_and_line(tmp_path):
    folder = write_bio_split(tmp_path / "train", with_line("seq.out", 2, "O O O O B-time"))
    with pytest.raises(DataError) as exc:
        read_bio_split(folder)
    assert exc.value.path == str(folder / "seq.out")
    assert exc.value.line == 2
    assert str(exc.value) == f"{folder / 'seq.out'}:2: 6 tokens in seq.in but 5 tags"


def test_bio_invalid_sequence_names_seq_out_and_line(tmp_path):
    folder = write_bio_split(tmp_path / "train", with_line("seq.out", 1, "O I-artist I-artist"))
    with pytest.raises(DataError) as exc:
        read_bio_split(folder)
    assert str(exc.value) == (f"{folder / 'seq.out'}:1: invalid BIO sequence: 'I-artist' at token 2 "
                              "follows 'O'")


def test_bio_garbage_tag(tmp_path):
    folder = write_bio_split(tmp_path / "train", with_line("seq.out", 2, "O O O O B-time X-time"))
    with pytest.raises(DataError, match=re.escape("seq.out:2: invalid tag 'X-time' at token 6")):
        read_bio_split(folder)


def test_bio_empty_label_names_label_file(tmp_path):
    folder = write_bio_split(tmp_path / "train", with_line("label", 1, "   "))
    with pytest.raises(DataError) as exc:
        read_bio_split(folder)
    assert exc.value.path == str(folder / "label") and exc.value.line == 1
    assert "label must be one non-empty word" in str(exc.value)


def test_bio_label_with_two_words(tmp_path):
    folder = write_bio_split(tmp_path / "train", with_line("label", 2, "Set Alarm"))
    with pytest.raises(DataError, match=re.escape("label:2: label must be one non-empty word, got 'Set Alarm'")):
        read_bio_split(folder)


def test_bio_empty_sentence_names_seq_in(tmp_path):
    files = with_line("seq.in", 1, "")
    files["seq.out"][0] = ""
    folder = write_bio_split(tmp_path / "train", files)
    with pytest.raises(DataError, match=re.escape("seq.in:1: empty sentence")):
        read_bio_split(folder)


def test_bio_line_count_mismatch(tmp_path):
    files = {k: list(v) for k, v in GOOD.items()}
    files["label"].append("Extra")
    folder = write_bio_split(tmp_path / "train", files)
    with pytest.raises(DataError) as exc:
        read_bio_split(folder)
    assert exc.value.path == str(folder)
    assert "line counts differ: seq.in has 2, seq.out 2, label 3" in str(exc.value)


def test_bio_missing_split_folder(tmp_path):
    root = write_bio_dataset(tmp_path / "ds")
    for f in (root / "dev").iterdir():
        f.unlink()
    (root / "dev").rmdir()
    with pytest.raises(DataError) as exc:
        read_dataset(root)
    assert exc.value.path == str(root)
    assert "missing split 'dev'" in str(exc.value)


def test_bio_missing_file_names_it(tmp_path):
    root = write_bio_dataset(tmp_path / "ds")
    (root / "test" / "label").unlink()
    with pytest.raises(DataError, match=re.escape(f"{root / 'test' / 'label'}: file not found")):
        read_dataset(root)


def test_bio_zero_byte_file(tmp_path):
    folder = write_bio_split(tmp_path / "train")
    (folder / "seq.out").write_bytes(b"")
    with pytest.raises(DataError) as exc:
        read_bio_split(folder)
    assert str(exc.value) == f"{folder / 'seq.out'}: file is empty"


def test_bio_bom_and_crlf_are_tolerated(tmp_path):
    folder = tmp_path / "train"
    folder.mkdir()
    for name, lines in GOOD.items():
        (folder / name).write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8") + b"\r\n")
    examples, report = read_bio_split(folder)
    assert [e.tokens for e in examples] == [s.split() for s in GOOD["seq.in"]]
    assert [e.tags for e in examples] == [s.split() for s in GOOD["seq.out"]]
    assert [e.intent for e in examples] == GOOD["label"]
    for e in examples:
        for s in e.tokens + e.tags + [e.intent]:
            assert "\ufeff" not in s and "\r" not in s
    assert report.skipped == []


def test_read_lines_strips_bom_and_cr_only(tmp_path):
    p = tmp_path / "f.txt"
    p.write_bytes(b"\xef\xbb\xbfa b\r\nc\x0bd\n\n")
    # \x0b (vertical tab) is not a line break: it must not misalign line-aligned files
    assert read_lines(p) == ["a b", "c\x0bd", ""]


def test_bio_invalid_utf8_names_line(tmp_path):
    folder = write_bio_split(tmp_path / "train")
    (folder / "seq.in").write_bytes(b"play the beatles\nwake me \xff up at 7 am\n")
    with pytest.raises(DataError) as exc:
        read_bio_split(folder)
    assert exc.value.path == str(folder / "seq.in")
    assert exc.value.line == 2
    assert "invalid UTF-8 (byte 0xff)" in str(exc.value)


def test_bio_skip_counts_bad_lines(tmp_path):
    files = {
        "seq.in": ["a b", "c d", "e f", "g h", "i j"],
        "seq.out": ["O O", "O", "O I-x", "B-x I-x", "O O"],
        "label": ["A", "B", "C", "", "E"],
    }
    folder = write_bio_split(tmp_path / "train", files)
    examples, report = read_bio_split(folder, on_error="skip")
    assert isinstance(report, SplitReport)
    assert [e.intent for e in examples] == ["A", "E"]
    assert [e.source for e in examples] == [f"{folder / 'seq.in'}:1", f"{folder / 'seq.in'}:5"]
    assert len(report.skipped) == 3
    assert report.skipped[0].startswith(f"{folder / 'seq.out'}:2: 2 tokens in seq.in but 1 tags")
    assert report.skipped[1].startswith(f"{folder / 'seq.out'}:3: invalid BIO sequence")
    assert report.skipped[2].startswith(f"{folder / 'label'}:4: label must be one non-empty word")


def test_read_dataset_skip_reports_per_split(tmp_path):
    bad_dev = with_line("seq.out", 1, "O O")
    root = write_bio_dataset(tmp_path / "ds", dev=bad_dev)
    data, reports = read_dataset(root, on_error="skip")
    assert len(data["dev"]) == 1 and len(reports["dev"].skipped) == 1
    assert len(data["train"]) == 2 and reports["train"].skipped == []


def test_read_dataset_split_with_nothing_usable(tmp_path):
    bad = {"seq.in": ["a b"], "seq.out": ["O"], "label": ["A"]}
    root = write_bio_dataset(tmp_path / "ds", test=bad)
    with pytest.raises(DataError, match="split 'test' has no usable examples"):
        read_dataset(root, on_error="skip")


def test_bad_on_error_value(tmp_path):
    folder = write_bio_split(tmp_path / "train")
    with pytest.raises(TwinheadError, match="data.on_error must be 'raise' or 'skip'"):
        read_bio_split(folder, on_error="ignore")


# --- JSONL format -------------------------------------------------------------------------------


def jl(text: str, label: str = "SetAlarm", entities=None) -> str:
    return json.dumps({"text": text, "label": label, "entities": entities or []})


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


ALARM = jl("wake me up at 7 am", entities=[{"start": 14, "end": 18, "label": "time"}])


def test_jsonl_tags_from_char_spans(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [ALARM, "", jl("play  the Beatles", "PlayMusic",
                                                                 [{"start": 6, "end": 17, "label": "artist"}])])
    examples, report = read_jsonl_split(path, "en")
    assert report.skipped == []
    a, b = examples
    assert a.tokens == ["wake", "me", "up", "at", "7", "am"]
    assert a.tags == ["O", "O", "O", "O", "B-time", "I-time"]
    assert a.intent == "SetAlarm"
    assert a.text == "wake me up at 7 am"
    assert a.offsets == [0, 5, 8, 11, 14, 16]
    assert a.source == f"{path}:1"
    assert b.tokens == ["play", "the", "Beatles"]  # the double space is not a token
    assert b.tags == ["O", "B-artist", "I-artist"]
    assert b.source == f"{path}:3"  # blank line 2 is skipped but still counted


def jsonl_error(tmp_path, line: str) -> DataError:
    path = write_jsonl(tmp_path / "train.jsonl", [ALARM, line])
    with pytest.raises(DataError) as exc:
        read_jsonl_split(path, "en")
    assert exc.value.path == str(path)
    assert exc.value.line == 2
    return exc.value


def test_jsonl_span_outside_text(tmp_path):
    err = jsonl_error(tmp_path, jl("wake me", entities=[{"start": 5, "end": 12, "label": "x"}]))
    assert "entities[0]: span [5, 12) is outside the text (length 7)" in str(err)


def test_jsonl_reversed_span(tmp_path):
    err = jsonl_error(tmp_path, jl("wake me up at 7 am", entities=[{"start": 18, "end": 14, "label": "time"}]))
    assert "entities[0]: span [18, 14)" in str(err) and "empty/reversed" in str(err)


def test_jsonl_span_splitting_a_token(tmp_path):
    err = jsonl_error(tmp_path, jl("wake me up", entities=[{"start": 0, "end": 2, "label": "x"}]))
    assert "entities[0]: span [0, 2) 'wa' does not fall on token boundaries" in str(err)


def test_jsonl_overlapping_spans(tmp_path):
    ents = [{"start": 14, "end": 18, "label": "time"}, {"start": 16, "end": 18, "label": "unit"}]
    err = jsonl_error(tmp_path, jl("wake me up at 7 am", entities=ents))
    assert "entities[0] and entities[1] overlap" in str(err)


def test_jsonl_bad_json_names_line(tmp_path):
    err = jsonl_error(tmp_path, '{"text": "hi", "label": ')
    assert str(err).startswith(f"{tmp_path / 'train.jsonl'}:2: bad JSON")


def test_jsonl_non_object_line(tmp_path):
    err = jsonl_error(tmp_path, '["wake me up", "SetAlarm"]')
    assert "expected a JSON object, got list" in str(err)


def test_jsonl_missing_label(tmp_path):
    err = jsonl_error(tmp_path, json.dumps({"text": "hi there"}))
    assert "field 'label' must be one non-empty word" in str(err)


def test_jsonl_skip_counts(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [ALARM, "not json", jl("  "), ALARM])
    examples, report = read_jsonl_split(path, "en", on_error="skip")
    assert len(examples) == 2
    assert [s.split(": ")[0] for s in report.skipped] == [f"{path}:2", f"{path}:3"]


def write_jsonl_dataset(root: Path, n_train: int, dev: bool = True, test: bool = True) -> Path:
    write_jsonl(root / "train.jsonl", [jl(f"wake me up at {i} am", entities=[
        {"start": 14, "end": 14 + len(f"{i} am"), "label": "time"}]) for i in range(n_train)])
    if dev:
        write_jsonl(root / "dev.jsonl", [ALARM])
    if test:
        write_jsonl(root / "test.jsonl", [ALARM, ALARM])
    return root


def test_jsonl_dataset_with_all_splits(tmp_path):
    root = write_jsonl_dataset(tmp_path / "ds", 3)
    assert detect_format(root) == "jsonl"
    data, _ = read_dataset(root)
    assert [len(data[s]) for s in ("train", "dev", "test")] == [3, 1, 2]
    assert data["train"][2].tokens == ["wake", "me", "up", "at", "2", "am"]


def test_jsonl_missing_dev_holds_out_seeded_share_of_train(tmp_path):
    root = write_jsonl_dataset(tmp_path / "ds", 20, dev=False)
    data, reports = read_dataset(root, dev_fraction=0.25, seed=7)
    again, _ = read_dataset(root, dev_fraction=0.25, seed=7)
    other, _ = read_dataset(root, dev_fraction=0.25, seed=8)
    train_src = [e.source for e in data["train"]]
    dev_src = [e.source for e in data["dev"]]
    assert len(dev_src) == 5 and len(train_src) == 15
    assert set(train_src).isdisjoint(dev_src)
    assert set(train_src) | set(dev_src) == {f"{root / 'train.jsonl'}:{i}" for i in range(1, 21)}
    assert dev_src == [e.source for e in again["dev"]]
    assert train_src == [e.source for e in again["train"]]
    assert dev_src != [e.source for e in other["dev"]]
    assert reports["dev"].skipped == []


def test_jsonl_missing_dev_with_too_little_train(tmp_path):
    root = write_jsonl_dataset(tmp_path / "ds", 1, dev=False)
    with pytest.raises(DataError, match="too few training examples"):
        read_dataset(root)


def test_jsonl_missing_test_is_an_error(tmp_path):
    root = write_jsonl_dataset(tmp_path / "ds", 3, test=False)
    with pytest.raises(DataError) as exc:
        read_dataset(root)
    assert exc.value.path == str(root)
    assert "missing split 'test' (expected test.jsonl)" in str(exc.value)


def test_detect_format_empty_folder(tmp_path):
    with pytest.raises(DataError) as exc:
        detect_format(tmp_path)
    assert "no dataset found" in str(exc.value)
    assert "train.jsonl" in str(exc.value) and "train/seq.in" in str(exc.value)
    with pytest.raises(DataError, match="no dataset found"):
        read_dataset(tmp_path)


def test_read_dataset_missing_folder(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found"):
        read_dataset(tmp_path / "nope")


def test_read_dataset_bad_format_param(tmp_path):
    root = write_bio_dataset(tmp_path / "ds")
    with pytest.raises(TwinheadError, match="data.format must be auto, bio or jsonl"):
        read_dataset(root, fmt="csv")
