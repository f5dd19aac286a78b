"""Two configurations, seed by seed: the paired differences behind "ahead in 5 of 5" in the README.

Usage (from the project root, on files benchmarks/seeds.py wrote with --json):
    .venv/bin/python benchmarks/compare.py \\
        --base benchmarks/results/mr03-snips-5seeds.json benchmarks/results/mr03-atis-5seeds.json \\
        --new benchmarks/results/aw1-snips-5seeds.json benchmarks/results/aw1-atis-5seeds.json
    ... --seeds 1 2 3                      # only these seeds (e.g. seeds 1-3 of a five-seed file)
    ... --metric test_intent_accuracy      # another column (default: dev sentence accuracy, the selection metric)

Runs are paired by dataset and seed: a seed one side lacks is left out and named. For each dataset: each seed's
new-minus-base difference in points, the two means over the paired seeds, and how many seeds the new
configuration is ahead, level or behind in, with a two-sided sign test over the seeds that are not level (with
five seeds, all five ahead gives p = 0.0625: seeds are few, so this says how little a run of wins proves).
The last line pools every dataset: the mean of the dataset means (the README's "over both") and the pairs.
Select on dev columns; test columns are for reporting.

    .venv/bin/python benchmarks/compare.py --spread benchmarks/results/{mr03,mps,aw1}-{snips,atis}-5seeds.json \
        --seeds 1 2 3

--spread asks whether several configurations differ at all, per dataset and metric (dev and test): each one's
mean over the seeds; how far apart the means are (their std) against how far apart seed noise alone puts means of
that many seeds (the pooled seed std over the square root of the seeds); a one-way ANOVA over the runs (scipy's
f_oneway; p is the chance of means this far apart if every configuration were the same); and the correlation of
the dev and the test means across configurations: whether a configuration that is better on dev is better on test.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean  # the mean seeds.py's tables use

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, only benchmarks/ is on the path

from benchmarks.seeds import COLUMNS, METRICS, read_json  # noqa: E402
from twinhead.errors import TwinheadError, run_main  # noqa: E402

LEVEL = 1e-4  # points: dev scores are logged to 6 decimals, so equal counts of right sentences read as level


@dataclass
class Paired:
    """One dataset's seeds that both configurations ran: base and new value per seed, in points."""

    dataset: str
    seeds: list[int]
    base: list[float]
    new: list[float]
    unpaired: list[str]  # "base seed 6" for a seed the other side lacks

    @property
    def diffs(self) -> list[float]:
        return [n - b for b, n in zip(self.base, self.new)]


def runs_by_seed(rows: list[dict], metric: str, source: str) -> dict[str, dict[int, float]]:
    """{dataset: {seed: value in points}} over the rows of seeds.py --json files; a dataset twice is an error."""
    out: dict[str, dict[int, float]] = {}
    for row in rows:
        ds = row["dataset"]
        if ds in out:
            raise TwinheadError(f"{source}: dataset {ds!r} appears in two rows; give one file per dataset and side")
        out[ds] = {}
        for run in row["runs"]:
            value = (run.get("values") or {}).get(metric)
            if value is not None:
                out[ds][int(run["seed"])] = 100.0 * value if metric != "train_minutes" else value
    return out


def pair(base: dict[str, dict[int, float]], new: dict[str, dict[int, float]],
         seeds: list[int] | None = None) -> list[Paired]:
    """Each dataset both sides hold, its seeds in order; a dataset only one side holds is an error."""
    if set(base) != set(new):
        raise TwinheadError(f"the two sides hold other datasets: base {sorted(base)}, new {sorted(new)}")
    out = []
    for ds in base:  # the order of the --base files
        b, n = base[ds], new[ds]
        wanted = sorted(set(b) | set(n)) if seeds is None else seeds
        both = [s for s in wanted if s in b and s in n]
        unpaired = [f"{side} seed {s}" for s in wanted for side, other, mine in (("base", n, b), ("new", b, n))
                    if s in mine and s not in other]
        unpaired += [f"seed {s} (in neither)" for s in wanted if s not in b and s not in n]
        if not both:
            raise TwinheadError(f"{ds}: no seed both sides ran (base {sorted(b)}, new {sorted(n)})")
        out.append(Paired(ds, both, [b[s] for s in both], [n[s] for s in both], unpaired))
    return out


def tally(diffs: list[float]) -> tuple[int, int, int]:
    """(ahead, level, behind) of new against base."""
    ahead = sum(d > LEVEL for d in diffs)
    behind = sum(d < -LEVEL for d in diffs)
    return ahead, len(diffs) - ahead - behind, behind


def sign_test(ahead: int, behind: int) -> float:
    """Two-sided sign test over the pairs that are not level: the chance of a split at least this uneven if
    ahead and behind were equally likely (1.0 when there is nothing to test)."""
    n = ahead + behind
    if n == 0:
        return 1.0
    k = min(ahead, behind)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def signed(d: float) -> str:
    """A difference in points as +0.43 / -0.80, and 0.00 when it rounds to nothing (never -0.00)."""
    return "0.00" if abs(d) < 0.005 else f"{d:+.2f}"


def report(pairs: list[Paired], metric: str, base_name: str, new_name: str) -> str:
    """The comparison as text: one block per dataset, then the pooled line."""
    lines = [f"{metric}, new ({new_name}) minus base ({base_name}), in points"]
    all_diffs: list[float] = []
    for p in pairs:
        ahead, level, behind = tally(p.diffs)
        all_diffs += p.diffs
        per_seed = ", ".join(f"s{s} {signed(d)}" for s, d in zip(p.seeds, p.diffs))
        lines.append(f"{p.dataset}: {per_seed}")
        lines.append(f"  mean {fmean(p.new):.2f} against {fmean(p.base):.2f} ({signed(fmean(p.diffs))}) over "
                     f"{len(p.seeds)} seeds; ahead {ahead}, level {level}, behind {behind} "
                     f"(sign test p = {sign_test(ahead, behind):.3g})")
        if p.unpaired:
            lines.append(f"  left out, unpaired: {', '.join(p.unpaired)}")
    if len(pairs) > 1:
        ahead, level, behind = tally(all_diffs)
        new_mean = fmean([fmean(p.new) for p in pairs])
        base_mean = fmean([fmean(p.base) for p in pairs])
        lines.append(f"over {len(pairs)} datasets (mean of the dataset means): {new_mean:.2f} against "
                     f"{base_mean:.2f} ({signed(new_mean - base_mean)}); pairs ahead {ahead}, level {level}, "
                     f"behind {behind} (sign test p = {sign_test(ahead, behind):.3g})")
    return "\n".join(lines)


def spread_groups(files: dict[str, list[dict]], metric: str,
                  seeds: list[int] | None) -> dict[str, dict[str, list[float]]]:
    """{dataset: {configuration: its runs' values in points}} over the files' rows, the seeds asked for only."""
    out: dict[str, dict[str, list[float]]] = {}
    for path, rows in files.items():
        for row in rows:
            runs = runs_by_seed([row], metric, path)[row["dataset"]]
            values = [v for s, v in sorted(runs.items()) if seeds is None or s in seeds]
            groups = out.setdefault(row["dataset"], {})
            name = row["config"].removesuffix(f"-{row['dataset']}")
            if name in groups:
                raise TwinheadError(f"{path}: configuration {name!r} on {row['dataset']} is in another file as well")
            if values:
                groups[name] = values
    return out


def spread_stats(groups: dict[str, list[float]]) -> dict[str, float]:
    """Means' std, the std seed noise alone gives means of that many seeds, and the one-way ANOVA's F and p."""
    from scipy.stats import f_oneway  # scikit-learn's dependency; only this mode needs it

    means = [fmean(v) for v in groups.values()]
    n = fmean([len(v) for v in groups.values()])
    within = fmean([statistics.variance(v) for v in groups.values()])  # pooled seed variance (equal weights)
    anova = f_oneway(*groups.values())
    return {"means_std": statistics.stdev(means), "noise_std": math.sqrt(within / n),
            "f": float(anova.statistic), "p": float(anova.pvalue)}


@dataclass
class Spread:
    """One dataset and metric of --spread: each configuration's dev and test mean over its seeds, in points."""

    dataset: str
    metric: str
    configs: list[str]
    dev: list[float]
    test: list[float]
    stats: dict[str, dict[str, float]]  # "dev" / "test": spread_stats
    correlation: float  # of the dev and the test means across the configurations


def spreads(paths: list[str], metrics: list[str], seeds: list[int] | None) -> list[Spread]:
    """Per metric and dataset, the configurations both splits hold, their means and whether they differ."""
    out = []
    files = {path: read_json(path, "rows") for path in paths}  # each file read once, whatever the metrics
    for name in metrics:
        dev, test = (spread_groups(files, f"{split}_{name}", seeds) for split in ("dev", "test"))
        for ds, dgroups in dev.items():
            tgroups = test.get(ds, {})
            configs = [c for c in dgroups if c in tgroups]
            too_few = [c for c in configs if min(len(dgroups[c]), len(tgroups[c])) < 2]
            if too_few or len(configs) < 3:
                raise TwinheadError(f"{ds}: --spread needs 3 or more configurations of 2 or more seeds each "
                                    f"(too few seeds: {too_few or 'none'}; configurations: {configs})")
            dmeans, tmeans = ([fmean(g[c]) for c in configs] for g in (dgroups, tgroups))
            stats = {split: spread_stats({c: g[c] for c in configs})
                     for split, g in (("dev", dgroups), ("test", tgroups))}
            out.append(Spread(ds, name, configs, dmeans, tmeans, stats, statistics.correlation(dmeans, tmeans)))
    return out


def spread_report(found: list[Spread]) -> str:
    """Per dataset: the configurations' dev and test means, then whether they differ and whether dev agrees."""
    lines = []
    for sp in found:
        lines.append(f"{sp.dataset}, {sp.metric} (mean over seeds, in points): " + ", ".join(
            f"{c} {d:.2f} / {t:.2f}" for c, d, t in zip(sp.configs, sp.dev, sp.test)) + "  (dev / test)")
        for split in ("dev", "test"):
            st = sp.stats[split]
            lines.append(f"  {split}: means' std {st['means_std']:.2f} against {st['noise_std']:.2f} from seed "
                         f"noise alone; one-way ANOVA F {st['f']:.2f}, p = {st['p']:.3g}")
        lines.append(f"  dev and test means across the {len(sp.configs)} configurations: correlation "
                     f"{sp.correlation:+.2f}")
    return "\n".join(lines)


def spread_figure(found: list[Spread]):
    """A panel per dataset (rows) and metric (columns): each configuration's test mean against its dev mean,
    named (the first configuration, the baseline, in red; those at the same point under one label), with the
    std seed noise alone gives such a mean as error bars."""
    from twinhead.plots import pyplot

    plt = pyplot()
    datasets = list(dict.fromkeys(sp.dataset for sp in found))
    metrics = list(dict.fromkeys(sp.metric for sp in found))
    fig, axes = plt.subplots(len(datasets), len(metrics), figsize=(4.2 * len(metrics), 3.8 * len(datasets)),
                             squeeze=False)
    for sp in found:
        ax = axes[datasets.index(sp.dataset)][metrics.index(sp.metric)]
        colours = ["tab:blue"] * (len(sp.configs) - 1) + ["tab:red"]  # the baseline last: drawn on top
        ax.errorbar(sp.dev, sp.test, xerr=sp.stats["dev"]["noise_std"], yerr=sp.stats["test"]["noise_std"],
                    fmt="none", ecolor="0.8", elinewidth=0.8, zorder=1)
        ax.scatter(sp.dev[1:] + sp.dev[:1], sp.test[1:] + sp.test[:1], c=colours, s=18, zorder=2)
        at: dict[tuple[float, float], list[str]] = {}  # configurations at the same point share one label
        for c, d, t in zip(sp.configs, sp.dev, sp.test):
            at.setdefault((round(d, 2), round(t, 2)), []).append(c)
        for (d, t), names in at.items():
            ax.annotate(", ".join(names), (d, t), fontsize=7, xytext=(3, 2), textcoords="offset points",
                        color="tab:red" if sp.configs[0] in names else "black")
        title = sp.metric.replace("_", " ").replace("f1", "F1")
        ax.set_title(f"{sp.dataset} {title}: r = {sp.correlation:+.2f}", fontsize=9)
        ax.set_xlabel("dev mean (%)", fontsize=8)
        ax.set_ylabel("test mean (%)", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle("each configuration's mean over its seeds; bars: seed noise of such a mean", fontsize=9)
    fig.tight_layout()
    return fig


def load(paths: list[str], metric: str) -> dict[str, dict[int, float]]:
    merged: dict[str, dict[int, float]] = {}
    for path in paths:
        for ds, runs in runs_by_seed(read_json(path, "rows"), metric, path).items():
            if ds in merged:
                raise TwinheadError(f"{path}: dataset {ds!r} is in another file of the same side as well")
            merged[ds] = runs
    return merged


def side_name(paths: list[str]) -> str:
    return ", ".join(p.rsplit("/", 1)[-1].removesuffix(".json") for p in paths)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", nargs="+", help="seeds.py --json files of the baseline, one a dataset")
    ap.add_argument("--new", nargs="+", help="the same for the configuration compared")
    ap.add_argument("--spread", nargs="+", metavar="FILE", help="seeds.py --json files of 3 or more configurations "
                    "(instead of --base and --new): do they differ at all, and does dev agree with test")
    ap.add_argument("--metric", action="append", choices=COLUMNS,
                    help="a column of seeds.py's table (repeatable; default dev_sentence_accuracy; with --spread: "
                         "intent_accuracy, slot_f1 or sentence_accuracy, default all three)")
    ap.add_argument("--seeds", type=int, nargs="+", help="only these seeds (default: every seed both sides ran)")
    ap.add_argument("--plot", metavar="PNG", help="with --spread: also draw each configuration's test mean against "
                    "its dev mean, a panel per dataset and metric, into this PNG")
    args = ap.parse_args(argv)
    if args.spread:
        if args.base or args.new:
            ap.error("--spread compares its own files: leave out --base and --new")
        names = [m.removeprefix("dev_").removeprefix("test_") for m in args.metric or []]
        if bad := [m for m in names if m not in METRICS]:
            ap.error(f"--spread reads intent_accuracy, slot_f1 or sentence_accuracy, not {', '.join(bad)}")
        found = spreads(args.spread, list(dict.fromkeys(names)) or list(METRICS), args.seeds)
        print(spread_report(found))
        if args.plot:
            from twinhead.plots import save_png

            save_png(spread_figure(found), args.plot)
            print(f"figure: {args.plot}")
        return 0
    if args.plot:
        ap.error("--plot draws --spread's configurations: give --spread")
    if not (args.base and args.new):
        ap.error("--base and --new are both required (or --spread)")
    blocks = []
    for metric in args.metric or ["dev_sentence_accuracy"]:
        pairs = pair(load(args.base, metric), load(args.new, metric), args.seeds)
        blocks.append(report(pairs, metric, side_name(args.base), side_name(args.new)))
    print("\n\n".join(blocks))
    return 0


if __name__ == "__main__":
    run_main(main)
