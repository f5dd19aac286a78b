"""benchmarks/learning_curve.py: the plan it queues, the train sizes it reads back, its table and its figure."""

from __future__ import annotations

import json
import subprocess

import pytest

from benchmarks import learning_curve as lc
from benchmarks import seeds
from twinhead.errors import TwinheadError


def test_plan_names_each_fraction_and_seed_and_sets_the_share():
    plans = lc.curve_plan("lc", "snips", [0.5, 0.1, 0.25], ["train.epochs=1000"], [1, 2])
    assert list(plans) == [0.1, 0.25, 0.5]  # smallest first
    assert [p.name for p in plans[0.25]] == ["lc025-snips-s1", "lc025-snips-s2"]
    assert plans[0.1][1].sets == ["train.epochs=1000", "data.train_fraction=0.1", "data.path=data/raw/snips",
                                  "base.seed=2"]
    assert lc.curve_plan("lc", "atis", [1.0], [], [3])[1.0][0].name == "lc10-atis-s3"
    for bad, message in (([0.0], r"in \(0, 1\]"), ([1.5], r"in \(0, 1\]"), ([0.5, 0.5], "at most once"),
                         ([], "at least one")):
        with pytest.raises(TwinheadError, match=message):
            lc.curve_plan("lc", "snips", bad, [], [1])
    with pytest.raises(TwinheadError, match="come from --fractions"):
        lc.curve_plan("lc", "snips", [0.5], ["data.train_fraction=0.3"], [1])
    for sets, message in ((["base.seed=4"], "come from --seeds"), (["data.path=data/raw/atis"], "dataset once"),
                          (["train.lr"], "expected key=value")):  # refused by seeds.seed_plan, as for seeds.py
        with pytest.raises(TwinheadError, match=message):
            lc.curve_plan("lc", "snips", [0.5], sets, [1])
    with pytest.raises(TwinheadError, match="becomes a git ref"):
        lc.curve_plan("-lc", "snips", [0.5], [], [1])


def row(fraction: float, runs: list[tuple[int, float, float, int, int]]) -> dict:
    """An aggregated row of (seed, dev sentence acc, test sentence acc, kept epoch, epochs run) runs."""
    done = []
    for seed, dev, test, best, ran in runs:
        values = {c: 0.9 for c in seeds.COLUMNS}
        values.update(dev_sentence_accuracy=dev, test_sentence_accuracy=test, train_minutes=2.0)
        done.append(seeds.Run(f"lc-s{seed}", seed, values, rev=f"rev{fraction}-{seed}",
                              extra={"best_epoch": best, "epochs": ran}))
    return seeds.aggregate(done, f"lc {fraction:g}", "snips")


def test_sizes_come_from_each_rows_first_run_and_the_table_averages_the_seeds():
    rows = [row(0.1, [(1, 0.68, 0.66, 50, 66), (2, 0.70, 0.68, 40, 56)]), row(1.0, [(1, 0.88, 0.885, 42, 58)])]
    asked = []
    lc.add_sizes(rows, [0.1, 1.0], lambda rev: asked.append(rev) or (1308 if rev.startswith("rev0.1") else 13084))
    assert asked == ["rev0.1-1", "rev1.0-1"]
    lines = lc.format_curve(rows).splitlines()
    assert lines[0].startswith("| fraction | train sentences | n | kept epoch | epochs run | dev sentence acc")
    assert lines[2].split(" | ")[:7] == ["| 0.1", "1,308", "2", "45.0", "61.0", "69.00 ± 1.41", "90.00 ± 0.00"]
    assert lines[3].split(" | ")[:7] == ["| 1", "13,084", "1", "42.0", "58.0", "88.00", "90.00"]
    assert lines[3].endswith("| 88.50 | 2.0 |")


def test_train_sentences_are_read_from_the_experiments_data_report():
    class FakeDvc:
        def __init__(self, text, code=0):
            self.text, self.code = text, code

        def git(self, *args, check=True):
            assert args == ("show", "abc:metrics/data.json") and not check  # a missing file is no error
            return subprocess.CompletedProcess(args, self.code, self.text, "")

    assert lc.train_sentences(FakeDvc(json.dumps({"train": {"sentences": 1308}})), "abc") == 1308
    assert lc.train_sentences(FakeDvc("not json"), "abc") is None
    assert lc.train_sentences(FakeDvc("", code=128), "abc") is None  # git: the path is not in that commit


def test_figure_draws_the_means_against_the_sizes(tmp_path, capsys):
    rows = lc.add_sizes([row(0.1, [(1, 0.68, 0.66, 50, 66), (2, 0.70, 0.68, 40, 56)]),
                         row(1.0, [(1, 0.88, 0.885, 42, 58)])], [0.1, 1.0],
                        lambda rev: 1308 if rev.startswith("rev0.1") else 13084)
    fig = lc.curve_figure(rows)
    left, right = fig.axes
    drawn = {c.get_label(): c.lines[0] for c in left.containers}  # one errorbar per test metric
    assert list(drawn) == ["test intent acc", "test slot F1", "test sentence acc"]
    assert list(drawn["test sentence acc"].get_xdata()) == [1308, 13084]
    assert list(drawn["test sentence acc"].get_ydata()) == pytest.approx([67.0, 88.5])
    assert [list(line.get_ydata()) for line in right.get_lines()] == [[45.0, 42.0], [61.0, 58.0]]
    assert left.get_xscale() == "log"
    assert [t.get_text() for t in right.get_xticklabels()] == ["1,308", "13,084"]
    saved = tmp_path / "rows.json"
    saved.write_text(json.dumps({"rows": rows}), encoding="utf-8")
    png = tmp_path / "curve.png"
    assert lc.main(["--from-json", str(saved), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "| 0.1 | 1,308 | 2 |" in out and f"figure: {png}" in out
    with pytest.raises(TwinheadError, match="nothing to draw"):
        lc.curve_figure([{**rows[0], "n": 0}])
