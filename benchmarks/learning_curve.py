"""A learning curve of the whole pipeline, as DVC experiments: scores and epochs against the size of train.

Usage (from the project root, with the project's environment):
    .venv/bin/python benchmarks/learning_curve.py --dataset snips --fractions 0.1 0.25 0.5 1 --seeds 1 2 \
        --set train.epochs=1000 --plot curve.png --json curve.json
    .venv/bin/python benchmarks/learning_curve.py ... --no-run                 # only collect
    .venv/bin/python benchmarks/learning_curve.py --from-json curve.json --plot curve.png   # table and figure again

Each fraction and seed is one `dvc exp run --queue -n NAME<fraction digits>-DATASET-s<seed> -S
data.train_fraction=F` (lc025-snips-s1 for 0.25): the preprocess stage keeps that seeded share of each
label's train sentences (at least one each), dev and test stay whole, so every point is scored on the same
sentences. The table gives each fraction's train sentences (metrics/data.json), the epochs early stopping
kept and ran (are runs on less data converging before train.epochs, the cap?), the dev and test scores as
mean ± std over the seeds and the training minutes; the figure draws the test scores against the train
sentences, and the epochs beside them. Runs one at a time (benchmarks/seeds.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, only benchmarks/ is on the path

from benchmarks import seeds  # noqa: E402
from twinhead.errors import TwinheadError, run_main  # noqa: E402

DATA_FILE = "metrics/data.json"  # the preprocess stage's report: sentences per split
SHOWN = ("test_intent_accuracy", "test_slot_f1", "test_sentence_accuracy")


def fraction_tag(fraction: float) -> str:
    """0.25 -> '025', 1 -> '10': the fraction's digits, for experiment names."""
    return str(float(fraction)).replace(".", "")


def curve_plan(name: str, dataset: str, fractions: list[float], sets: list[str], seed_list: list[int]
               ) -> dict[float, list[seeds.Planned]]:
    """Per fraction, one Planned per seed, named NAME<digits>-DATASET-s<seed>."""
    if not fractions:
        raise TwinheadError("--fractions: give at least one")
    for f in fractions:
        if not 0 < f <= 1:
            raise TwinheadError(f"--fractions {f}: each must be in (0, 1] (a share of the train split)")
    if len(set(fractions)) != len(fractions):
        raise TwinheadError(f"--fractions {' '.join(map(str, fractions))}: each at most once")
    # seed_plan checks the name and the sets, and refuses base.seed and data.path among them
    if "data.train_fraction" in {s.partition("=")[0].lstrip("+") for s in sets}:
        raise TwinheadError("--set data.train_fraction=...: the fractions come from --fractions")
    label = seeds.dataset_label(dataset)
    return {f: seeds.seed_plan(f"{name}{fraction_tag(f)}-{label}",
                               [*sets, f"data.train_fraction={f}"], seed_list, seeds.dataset_path(dataset),
                               f"{name} {f:g}", label)
            for f in sorted(fractions)}


def train_sentences(dvc: seeds.Dvc, rev: str) -> int | None:
    """The train split's sentences in one experiment's metrics/data.json (None if it has none)."""
    shown = dvc.git("show", f"{rev}:{DATA_FILE}", check=False)  # a run without the report: no size, no stop
    try:
        return int(json.loads(shown.stdout)["train"]["sentences"])
    except (ValueError, KeyError, TypeError):
        return None


def add_sizes(rows: list[dict], fractions: list[float], size_of) -> list[dict]:
    """Each row with its fraction and its train sentences (`size_of(rev)` of its first run; every seed
    keeps the same count, round(fraction * n) of each label)."""
    for row, f in zip(rows, fractions):
        row["fraction"] = f
        row["train_sentences"] = size_of(row["runs"][0]["rev"]) if row["runs"] else None
    return rows


def epoch_stats(row: dict) -> tuple[float | None, float | None]:
    """Mean kept epoch and mean epochs run over a row's seeds."""
    best = seeds.mean_std([r["best_epoch"] for r in row["runs"] if r.get("best_epoch") is not None])[0]
    ran = seeds.mean_std([r["epochs"] for r in row["runs"] if r.get("epochs") is not None])[0]
    return best, ran


def format_curve(rows: list[dict]) -> str:
    """Markdown table: one row per fraction, mean ± std over its seeds."""
    cols = ("dev_sentence_accuracy", *SHOWN)
    head = ["fraction", "train sentences", "n", "kept epoch", "epochs run", *(seeds.column_label(c) for c in cols),
            "train min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        best, ran = epoch_stats(row)
        cells = [f"{row['fraction']:g}", "—" if row.get("train_sentences") is None else f"{row['train_sentences']:,}",
                 seeds.format_n(row), "—" if best is None else f"{best:.1f}", "—" if ran is None else f"{ran:.1f}"]
        cells += [seeds.format_cell(row["metrics"][c]["mean"], row["metrics"][c]["std"]) for c in cols]
        m = row["metrics"]["train_minutes"]
        cells.append(seeds.format_cell(m["mean"], m["std"], 1.0, 1))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curve_figure(rows: list[dict], title: str = ""):
    """Left: the test scores (%) against the train sentences (log scale), bars one std over the seeds; right:
    the epochs early stopping kept and ran."""
    from twinhead.plots import pyplot

    plt = pyplot()
    rows = [r for r in rows if r["n"] and r.get("train_sentences")]
    if not rows:
        raise TwinheadError("no fraction has a finished run: nothing to draw")
    xs = [r["train_sentences"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    for col in SHOWN:
        means = [100 * r["metrics"][col]["mean"] for r in rows]
        stds = [100 * (r["metrics"][col]["std"] or 0.0) for r in rows]
        left.errorbar(xs, means, yerr=stds, marker="o", ms=4, capsize=2, label=seeds.column_label(col))
    left.set_xscale("log")
    left.set_xlabel("train sentences", fontsize=8)
    left.set_ylabel("test score (%)", fontsize=8)
    left.legend(fontsize=7)
    kept, ran = zip(*(epoch_stats(r) for r in rows))
    right.plot(xs, kept, marker="o", ms=4, label="kept epoch (best on dev)")
    right.plot(xs, ran, marker="s", ms=4, label="epochs run")
    right.set_xscale("log")
    right.set_xlabel("train sentences", fontsize=8)
    right.set_ylabel("epochs", fontsize=8)
    right.legend(fontsize=7)
    for ax in (left, right):
        ax.minorticks_off()
        ax.set_xticks(xs, [f"{x:,}" for x in xs])  # the sizes measured, as numbers
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title or "learning curve: mean over seeds", fontsize=9)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", help="snips, atis or a dataset folder (required unless --from-json)")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0],
                    help="shares of the train split (default 0.1 0.25 0.5 1)")
    ap.add_argument("--name", default="lc", help="experiments are named NAME<fraction digits>-DATASET-s<seed>")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a param, as `dvc exp run -S`")
    ap.add_argument("--plot", metavar="PNG", help="also draw the curve here")
    seeds.add_run_options(ap, "also write the rows here", "only print the table of a file --json wrote (no DVC)")
    args = ap.parse_args(argv)
    if args.from_json:
        rows = seeds.read_json(args.from_json, "rows")
        label = rows[0]["dataset"] if rows else ""
    elif not args.dataset:
        ap.error("--dataset is required (or --from-json)")
    else:
        plans = curve_plan(args.name, args.dataset, args.fractions, args.set, args.seeds)
        rows = seeds.run_and_collect(plans, not args.no_run, args.force, args.poll, args.all_commits)
        dvc = seeds.Dvc(".")
        rows = add_sizes(rows, list(plans), lambda rev: train_sentences(dvc, rev))
        label = seeds.dataset_label(args.dataset)
    print(f"{label}: each fraction's mean ± std over its seeds; kept epoch: best on dev; test never selects")
    print(format_curve(rows))
    failures = seeds.format_failures(rows)
    if failures:
        print(failures)
    if args.json:
        seeds.write_json(args.json, {"rows": rows})
    if args.plot:
        from twinhead.plots import save_png

        save_png(curve_figure(rows, f"{label}: learning curve, mean over seeds"), args.plot)
        print(f"figure: {args.plot}")
    return 1 if failures else 0


if __name__ == "__main__":
    run_main(main)
