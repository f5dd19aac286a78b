"""k-fold cross-validation of the whole pipeline, as DVC experiments: mean ± std over the folds.

Usage (from the project root, with the project's environment):
    .venv/bin/python benchmarks/cv.py --dataset snips --folds 5 [--set train.loss_rule=sum] [--name cv]
    .venv/bin/python benchmarks/cv.py --dataset snips --folds 5 --no-run    # only collect
    .venv/bin/python benchmarks/cv.py --from-json cv.json                    # the table again

Fold i is one `dvc exp run --queue -n NAME-DATASET-k<K>-f<i> -S data.cv_folds=K -S data.cv_fold=i`: the
pipeline pools the dataset's train and dev splits, deals them into K seeded folds (data.cv_folds), trains
on K-2 of them, early-stops on the next fold and evaluates on fold i; the dataset's own test split is
not used. Each example is evaluated exactly once over the K runs. The "test" columns are the held-out
folds' scores (this is how Rasa users compare NLU models: `rasa test nlu --cross-validation`); every fold
is a run in MLflow, grouped under one parent run (tracking.py). Runs one at a time (benchmarks/seeds.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, only benchmarks/ is on the path

from benchmarks import seeds  # noqa: E402
from twinhead.errors import TwinheadError, run_main  # noqa: E402


def fold_plan(name: str, dataset: str, folds: int, sets: list[str], seed: int) -> list[seeds.Planned]:
    """One Planned per fold, named NAME-DATASET-k<K>-f<i>, every fold with the same seed (the same folds)."""
    if folds < 3:
        raise TwinheadError(f"--folds {folds}: at least 3 (one fold evaluated, one dev, the rest train)")
    label = seeds.dataset_label(dataset)
    keys = {s.partition("=")[0] for s in seeds.check_sets(sets)}
    if keys & {"data.cv_folds", "data.cv_fold", "data.path", "base.seed"}:
        raise TwinheadError("--set: data.cv_folds, data.cv_fold, data.path and base.seed come from "
                            "--folds, the fold, --dataset and --seed")
    seeds.check_name(name)
    return [seeds.Planned(f"{name}-{label}-k{folds}-f{i}", i,
                          [*sets, f"data.path={seeds.dataset_path(dataset)}", f"data.cv_folds={folds}",
                           f"data.cv_fold={i}", f"base.seed={seed}"], f"{name} ({folds}-fold)", label)
            for i in range(folds)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", help="snips, atis or a dataset folder (required unless --from-json)")
    ap.add_argument("--folds", type=int, default=5, help="k (default 5)")
    ap.add_argument("--name", default="cv", help="experiments are named NAME-DATASET-k<K>-f<fold> (default cv)")
    ap.add_argument("--seed", type=int, default=42, help="base.seed of every fold: deals the folds, seeds training")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a param, as `dvc exp run -S`")
    seeds.add_run_options(ap, "also write the row here", "only print the table of a file --json wrote (no DVC)")
    args = ap.parse_args(argv)
    if args.from_json:
        rows = seeds.read_json(args.from_json, "rows")
    elif not args.dataset:
        ap.error("--dataset is required (or --from-json)")
    else:
        plan = fold_plan(args.name, args.dataset, args.folds, args.set, args.seed)
        rows = seeds.run_and_collect({(plan[0].config, plan[0].dataset): plan}, not args.no_run, args.force,
                                     args.poll, args.all_commits)
    print("n: folds; dev: the fold early stopping watched; test: the held-out fold (mean ± std over folds)")
    print(seeds.format_table(rows))
    failures = seeds.format_failures(rows)
    if failures:
        print(failures)
    if args.json:
        seeds.write_json(args.json, {"rows": rows})
    return 1 if failures else 0


if __name__ == "__main__":
    run_main(main)
