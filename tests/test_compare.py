"""benchmarks/compare.py: two configurations paired seed by seed, from the files benchmarks/seeds.py writes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks import compare
from tests.conftest import ROOT
from twinhead.errors import TwinheadError


def row(dataset: str, dev_sentence: dict[int, float | None], config: str = "c") -> dict:
    """A row as seeds.py --json writes it (only what compare reads is filled in)."""
    runs = [{"name": f"{config}-{dataset}-s{s}", "seed": s,
             "values": None if v is None else {"dev_sentence_accuracy": v, "test_intent_accuracy": 0.9}}
            for s, v in dev_sentence.items()]
    return {"config": config, "dataset": dataset, "runs": runs}


def write(tmp_path, name: str, *rows: dict) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"rows": list(rows)}))
    return str(path)


def test_runs_pair_by_dataset_and_seed_and_an_unpaired_seed_is_named():
    base = compare.runs_by_seed([row("snips", {1: 0.88, 2: 0.87, 3: 0.89}), row("atis", {1: 0.92, 2: 0.93})],
                                "dev_sentence_accuracy", "base.json")
    new = compare.runs_by_seed([row("atis", {2: 0.935, 1: 0.92}), row("snips", {1: 0.89, 2: 0.87, 4: 0.9})],
                               "dev_sentence_accuracy", "new.json")
    snips, atis = compare.pair(base, new)
    assert (snips.dataset, snips.seeds) == ("snips", [1, 2])
    assert snips.diffs == pytest.approx([1.0, 0.0])  # points
    assert snips.unpaired == ["base seed 3", "new seed 4"]
    assert (atis.seeds, atis.unpaired) == ([1, 2], [])
    assert atis.diffs == pytest.approx([0.0, 0.5])


def test_only_the_seeds_asked_for_are_compared():
    base = {"snips": {1: 88.0, 2: 87.0, 3: 89.0, 4: 90.0}}
    new = {"snips": {1: 89.0, 2: 88.0, 3: 88.0, 4: 80.0, 5: 95.0}}
    (p,) = compare.pair(base, new, seeds=[1, 2, 3])
    assert p.seeds == [1, 2, 3] and p.unpaired == []
    assert compare.tally(p.diffs) == (2, 0, 1)


def test_a_failed_run_is_unpaired_not_a_zero():
    base = compare.runs_by_seed([row("snips", {1: 0.88, 2: 0.87})], "dev_sentence_accuracy", "b")
    new = compare.runs_by_seed([row("snips", {1: 0.89, 2: None})], "dev_sentence_accuracy", "n")
    (p,) = compare.pair(base, new)
    assert p.seeds == [1] and p.unpaired == ["base seed 2"]


def test_equal_scores_are_level_despite_float_noise():
    assert compare.tally([0.43, -0.2, 1e-9, -1e-9, 0.0]) == (1, 3, 1)


@pytest.mark.parametrize("ahead, behind, p", [(5, 0, 0.0625), (0, 5, 0.0625), (3, 3, 1.0), (0, 0, 1.0),
                                              (9, 1, 22 / 1024), (4, 1, 0.375)])
def test_sign_test_is_two_sided_over_the_pairs_that_are_not_level(ahead, behind, p):
    assert compare.sign_test(ahead, behind) == pytest.approx(p)


def test_the_pooled_line_is_the_mean_of_the_dataset_means():
    pairs = compare.pair({"snips": {1: 88.0, 2: 89.0}, "atis": {1: 92.0, 2: 93.0, 3: 94.0}},
                         {"snips": {1: 89.0, 2: 90.0}, "atis": {1: 92.0, 2: 92.0, 3: 94.0}})
    text = compare.report(pairs, "dev_sentence_accuracy", "base", "new")
    assert "snips: s1 +1.00, s2 +1.00" in text
    assert "atis: s1 0.00, s2 -1.00, s3 0.00" in text
    assert "mean 92.67 against 93.00 (-0.33) over 3 seeds; ahead 0, level 2, behind 1 (sign test p = 1)" in text
    # (88.5 + 93.0) / 2 = 90.75 against (89.5 + 92.67) / 2 = 91.08: each dataset weighs the same
    assert "over 2 datasets (mean of the dataset means): 91.08 against 90.75 (+0.33); pairs ahead 2, level 2, " \
           "behind 1" in text


def test_other_datasets_on_the_two_sides_is_one_clear_error():
    with pytest.raises(TwinheadError, match=r"other datasets: base \['atis', 'snips'\], new \['snips'\]"):
        compare.pair({"snips": {1: 1.0}, "atis": {1: 1.0}}, {"snips": {1: 1.0}})
    with pytest.raises(TwinheadError, match=r"snips: no seed both sides ran"):
        compare.pair({"snips": {1: 1.0}}, {"snips": {2: 1.0}})


def test_one_dataset_in_two_files_of_a_side_names_the_file(tmp_path):
    a = write(tmp_path, "a", row("snips", {1: 0.88}))
    b = write(tmp_path, "b", row("snips", {1: 0.89}))
    with pytest.raises(TwinheadError, match=r"b\.json: dataset 'snips' is in another file"):
        compare.load([a, b], "dev_sentence_accuracy")


def test_the_script_prints_the_comparison_and_rejects_a_file_that_is_not_a_result(tmp_path):
    base = write(tmp_path, "base-snips", row("snips", {1: 0.88, 2: 0.87, 3: 0.89}))
    new = write(tmp_path, "new-snips", row("snips", {1: 0.89, 2: 0.88, 3: 0.90}))
    done = subprocess.run([sys.executable, "benchmarks/compare.py", "--base", base, "--new", new],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "dev_sentence_accuracy, new (new-snips) minus base (base-snips)" in done.stdout
    assert "snips: s1 +1.00, s2 +1.00, s3 +1.00" in done.stdout
    assert "ahead 3, level 0, behind 0 (sign test p = 0.25)" in done.stdout
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    done = subprocess.run([sys.executable, "benchmarks/compare.py", "--base", str(bad), "--new", new],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode != 0
    assert "bad.json: not a --json output of the benchmarks" in done.stderr
    assert "Traceback" not in done.stderr


def test_spread_against_seed_noise_and_anova_by_hand():
    # means 2, 3, 4 (std 1.0); each group's seed variance 1, so noise alone gives means of 3 seeds sqrt(1/3);
    # F = (3 * 2 / 2) / 1 = 3 on (2, 6) degrees of freedom, whose tail is (1 + 2 * 3 / 6) ** -3 = 0.125
    st = compare.spread_stats({"a": [1.0, 2.0, 3.0], "b": [2.0, 3.0, 4.0], "c": [3.0, 4.0, 5.0]})
    assert st["means_std"] == pytest.approx(1.0)
    assert st["noise_std"] == pytest.approx((1 / 3) ** 0.5)
    assert (st["f"], st["p"]) == pytest.approx((3.0, 0.125))


def spread_files(tmp_path, dev: dict[str, list[float]], test: dict[str, list[float]]) -> list[str]:
    files = []
    for config in dev:
        runs = [{"seed": s + 1, "values": {"dev_intent_accuracy": d, "test_intent_accuracy": t}}
                for s, (d, t) in enumerate(zip(dev[config], test[config]))]
        files.append(write(tmp_path, config, {"config": f"{config}-snips", "dataset": "snips", "runs": runs}))
    return files


def test_spread_says_when_a_better_dev_configuration_is_worse_on_test(tmp_path):
    files = spread_files(tmp_path, {"a": [0.97, 0.98, 0.99], "b": [0.98, 0.99, 1.0], "c": [0.99, 1.0, 1.0]},
                         {"a": [0.99, 0.98, 0.97], "b": [0.97, 0.96, 0.98], "c": [0.95, 0.96, 0.94]})
    text = compare.spread_report(compare.spreads(files, ["intent_accuracy"], seeds=None))
    assert "snips, intent_accuracy (mean over seeds, in points): a 98.00 / 98.00, b 99.00 / 97.00, " \
           "c 99.67 / 95.00  (dev / test)" in text
    # centred means: dev (-8, 1, 7) / 9, test (4, 1, -5) / 3: r = -66 / sqrt(114 * 42) = -0.954
    assert "dev and test means across the 3 configurations: correlation -0.95" in text
    # only seeds 1-2: each configuration's mean changes
    assert "a 97.50 / 98.50" in compare.spread_report(compare.spreads(files, ["intent_accuracy"], seeds=[1, 2]))


def test_spread_needs_three_configurations_of_two_seeds(tmp_path):
    files = spread_files(tmp_path, {"a": [0.9, 0.91], "b": [0.92, 0.93]}, {"a": [0.9, 0.91], "b": [0.92, 0.93]})
    with pytest.raises(TwinheadError, match=r"snips: --spread needs 3 or more configurations"):
        compare.spreads(files, ["intent_accuracy"], seeds=None)
    files += spread_files(tmp_path, {"c": [0.9, 0.91]}, {"c": [0.9, 0.91]})
    with pytest.raises(TwinheadError, match=r"too few seeds: \['a', 'b', 'c'\]"):
        compare.spreads(files, ["intent_accuracy"], seeds=[1])


def test_spread_plot_draws_each_configuration_at_its_dev_and_test_means(tmp_path):
    files = spread_files(tmp_path, {"a": [0.97, 0.98, 0.99], "b": [0.98, 0.99, 1.0], "c": [0.99, 1.0, 1.0]},
                         {"a": [0.99, 0.98, 0.97], "b": [0.97, 0.96, 0.98], "c": [0.95, 0.96, 0.94]})
    (sp,) = compare.spreads(files, ["intent_accuracy"], seeds=None)
    fig = compare.spread_figure([sp])
    (ax,) = fig.axes
    points = ax.collections[-1].get_offsets()  # the scatter, drawn over the error bars, the baseline (a) last
    assert points.ravel().tolist() == pytest.approx([99.0, 97.0, 99 + 2 / 3, 95.0, 98.0, 98.0])
    assert [t.get_text() for t in ax.texts] == ["a", "b", "c"]
    assert ax.texts[0].get_color() == "tab:red"  # the first file: the baseline
    assert ax.get_title() == "snips intent accuracy: r = -0.95"
    png = tmp_path / "spread.png"
    done = subprocess.run([sys.executable, "benchmarks/compare.py", "--spread", *files, "--metric",
                           "dev_intent_accuracy", "--plot", str(png)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"figure: {png}" in done.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    done = subprocess.run([sys.executable, "benchmarks/compare.py", "--base", files[0], "--new", files[1],
                           "--plot", str(tmp_path / "no.png")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode != 0 and "--plot draws --spread's configurations" in done.stderr
    assert not (tmp_path / "no.png").exists()
