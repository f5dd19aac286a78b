"""k-fold cross-validation splits: each train+dev example held out exactly once, folds fixed by the seed; and a
seeded share of the train split (data.train_fraction) that keeps every label."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tests.conftest import snips_sample
from twinhead.preprocess import PreprocessConfig, preprocess
from twinhead.readers import DataConfig, Example, cross_validation_split, train_subset


def examples(n: int, split: str) -> list[Example]:
    return [Example([f"w{i}"], ["O"], "I", f"{split}:{i}") for i in range(n)]


def test_each_example_is_evaluated_once_and_dev_is_the_next_fold():
    data = {"train": examples(20, "train"), "dev": examples(3, "dev"), "test": examples(5, "test")}
    k = 4
    folds = [cross_validation_split(data, k, i, seed=7) for i in range(k)]
    pool = {ex.source for s in ("train", "dev") for ex in data[s]}
    held_out = [ex.source for f in folds for ex in f["test"]]
    assert sorted(held_out) == sorted(pool)  # every train+dev example exactly once; the real test never
    for i, f in enumerate(folds):
        parts = [{ex.source for ex in f[s]} for s in ("train", "dev", "test")]
        assert set.union(*parts) == pool and sum(map(len, parts)) == len(pool)  # a partition of the pool
        assert parts[1] == {ex.source for ex in folds[(i + 1) % k]["test"]}  # dev: the next fold
        assert len(f["test"]) in (5, 6)  # near-equal folds of 23 examples
    again = cross_validation_split(data, k, 2, seed=7)
    assert [ex.source for ex in again["test"]] == [ex.source for ex in folds[2]["test"]]
    other = cross_validation_split(data, k, 2, seed=8)
    assert [ex.source for ex in other["test"]] != [ex.source for ex in folds[2]["test"]]


@pytest.mark.parametrize("folds, fold, message", [(2, 0, "at least 3"), (5, 5, "must be below cv_folds")])
def test_fold_params_are_checked(folds, fold, message):
    with pytest.raises(ValidationError, match=message):
        DataConfig(path="x", cv_folds=folds, cv_fold=fold)


def test_preprocess_writes_the_fold_as_splits(tmp_path):
    raw = snips_sample(tmp_path / "raw", {"train": 40, "dev": 8, "test": 6})
    plain, _, _, _ = preprocess(raw, None, PreprocessConfig(), seed=1)
    cv, _, report, _ = preprocess(raw, DataConfig(path=str(raw), cv_folds=3, cv_fold=1), PreprocessConfig(), seed=1)
    assert {s: len(cv[s]) for s in cv} == {"train": 16, "dev": 16, "test": 16}  # 48 in 3 folds
    pool = set(plain["train"]["text"]) | set(plain["dev"]["text"])
    assert set(cv["test"]["text"]) <= pool and set(cv["dev"]["text"]) <= pool  # the real test split is unused
    assert report["test"]["sentences"] == 16 and report["dev"]["sentences"] == 16


def test_train_fraction_keeps_each_labels_share_and_every_label():
    train = [Example([f"w{i}"], ["O"], "big", f"train:{i}") for i in range(40)]
    train += [Example([f"v{i}"], ["O"], "small", f"train:{40 + i}") for i in range(3)]
    train += [Example(["u"], ["O"], "rare", "train:43")]
    part = train_subset(train, 0.25, seed=3)
    labels = [ex.intent for ex in part]
    assert labels.count("big") == 10 and labels.count("small") == 1 and labels.count("rare") == 1
    assert part == [ex for ex in train if ex in part]  # the original order
    assert [ex.source for ex in train_subset(train, 0.25, seed=3)] == [ex.source for ex in part]  # seeded
    assert [ex.source for ex in train_subset(train, 0.25, seed=4)] != [ex.source for ex in part]
    assert train_subset(train, 1.0, seed=3) is train
    with pytest.raises(ValidationError, match="train_fraction"):
        DataConfig(path="x", train_fraction=0)


def test_preprocess_shrinks_train_only(tmp_path):
    raw = snips_sample(tmp_path / "raw", {"train": 40, "dev": 8, "test": 6})
    plain, _, _, _ = preprocess(raw, None, PreprocessConfig(), seed=1)
    part, _, report, _ = preprocess(raw, DataConfig(path=str(raw), train_fraction=0.5), PreprocessConfig(), seed=1)
    assert 16 <= len(part["train"]) <= 24 and report["train"]["sentences"] == len(part["train"])
    assert set(part["train"]["text"]) < set(plain["train"]["text"])
    assert set(part["train"]["intent"]) == set(plain["train"]["intent"])  # every label stays
    for split in ("dev", "test"):
        assert part[split].equals(plain[split])
