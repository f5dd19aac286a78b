"""Ablations: named groups of configurations, each on SNIPS and ATIS over seeds, as DVC experiments.

Usage (from the project root, with the project's environment):
    .venv/bin/python benchmarks/ablation.py --group tasks [--datasets snips atis] [--seeds 1 2 3] [--json out.json]
    .venv/bin/python benchmarks/ablation.py --group stopwords loss_rules heads --no-run   # only collect
    .venv/bin/python benchmarks/ablation.py --from-json out.json      # the tables again, e.g. for the README

Groups: tasks (joint / intent-only / tags-only), stopwords (keep all / drop but keep those seen in
entities / drop all), loss_rules (sum / grad_mean / uncertainty / pcgrad), heads (softmax / crf tags),
schedule (plateau, the default, whose runs are heads' softmax ones / the 15-epoch cosine it replaced),
encoder (the defaults, whose runs are average's base ones / a character BiLSTM / self-attention over the BiLSTM
states / token-level intent, each alone), average (the defaults / checkpoint averaging over the best epoch
and the 4 before it), sizes (the defaults, again average's base runs / word and hidden sizes halved / doubled),
word_dropout (the defaults' 0.25, average's base runs / 0 / 0.5), label_smoothing (the defaults, run again on
today's code / intent label smoothing 0.1), sentence_head (the defaults' softmax, label_smoothing's base runs / a
sigmoid per label atom), dropout (the defaults' 0.3, label_smoothing's base runs / 0.2 / 0.5), slot_to_intent (the
defaults, label_smoothing's base runs / the intent head reading the tag head's distribution per token), patience
(the defaults then, 8 and 2, label_smoothing's base runs / patience and lr_patience doubled, the defaults since),
lr (the defaults' 0.003, patience's patient runs / 0.0015 / 0.006), interaction (the defaults, patience's patient
runs / token-level intent and slot-to-intent together).
Each configuration sets every param the group varies, so a row is what its name says whatever
params.yaml holds; one exception, slot_to_intent's off, sets nothing, because the runs it reuses were made before
the param existed (their recorded params lack it): a new seed of it follows params.yaml. The groups before
patience do not set train.patience or train.lr_patience (their runs used the defaults of their day, 8 and 2 since
the plateau schedule): a new seed of any of them follows params.yaml's 16 and 4. Experiments are named
GROUP-CONFIG-DATASET-s<seed>; all are queued seed by seed (a full one-seed table exists after the first third)
and run by one worker (benchmarks/seeds.py).

Per group: a table of dev (selection) and test metrics, mean ± std over seeds, and the configuration
that is best on dev averaged over the datasets; test is shown beside it, never used to choose. For
`tasks`: each single-task model early-stops on its own task's dev metric (intent accuracy, slot F1),
the joint one on sentence accuracy (the default), and the table says, per task and dataset, whether
sharing helps: joint minus single-task on that task's dev metric, against the larger seed std.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, only benchmarks/ is on the path

from benchmarks import seeds  # noqa: E402
from twinhead.errors import run_main  # noqa: E402


@dataclass(frozen=True)
class Config:
    name: str
    sets: tuple[str, ...]
    runs_as: str | None = None  # GROUP-CONFIG of another group's identical runs: shared, run once


GROUPS: dict[str, tuple[Config, ...]] = {
    "tasks": (
        Config("joint", ("train.tasks=[intent, tags]", "train.early_stop_metric=sentence_accuracy")),
        Config("intent-only", ("train.tasks=[intent]", "train.early_stop_metric=intent_accuracy")),
        Config("tags-only", ("train.tasks=[tags]", "train.early_stop_metric=slot_f1")),
    ),
    "stopwords": (
        Config("keep-all", ("preprocess.remove_stopwords=false",)),
        Config("drop-keep-entity", ("preprocess.remove_stopwords=true", "preprocess.keep_entity_stopwords=true")),
        Config("drop-all", ("preprocess.remove_stopwords=true", "preprocess.keep_entity_stopwords=false")),
    ),
    "loss_rules": tuple(Config(r, (f"train.loss_rule={r}",)) for r in ("sum", "grad_mean", "uncertainty", "pcgrad")),
    "heads": (Config("softmax", ("model.tag_decoder=softmax",)), Config("crf", ("model.tag_decoder=crf",))),
    # the default (plateau: ends on the dev plateau) against the fixed 15-epoch cosine schedule it replaced
    "schedule": (
        Config("plateau", ("train.scheduler=plateau", "train.epochs=100", "train.patience=8", "train.lr_decay=0.5",
                           "train.lr_patience=2", "model.tag_decoder=softmax"), runs_as="heads-softmax"),
        Config("cosine-15", ("train.scheduler=cosine", "train.epochs=15", "train.patience=5",
                             "model.tag_decoder=softmax")),
    ),
    # encoder options from the literature (issue "quality"), one at a time on the defaults (CRF tags); the base
    # runs are the average group's (today's code; the heads-crf ones predate the speed changes)
    "encoder": tuple(Config(name, (*sets, "model.tag_decoder=crf"), runs_as="average-base" if name == "base" else None)
                     for name, sets in (
        ("base", ("model.char_encoder=cnn", "model.attention_heads=0", "model.intent_level=sentence")),
        ("char-bilstm", ("model.char_encoder=bilstm", "model.attention_heads=0", "model.intent_level=sentence")),
        ("attention-4", ("model.char_encoder=cnn", "model.attention_heads=4", "model.intent_level=sentence")),
        ("token-intent", ("model.char_encoder=cnn", "model.attention_heads=0", "model.intent_level=token")),
    )),
    # checkpoint averaging (issue "quality"): the defaults, and the mean of the best epoch's weights and the 4
    # before it, kept when not worse on dev (each averaged run also records its best single epoch's dev scores)
    "average": (
        Config("base", ("train.average_last=0", "model.char_encoder=cnn", "model.attention_heads=0",
                        "model.intent_level=sentence", "model.tag_decoder=crf")),
        Config("avg-5", ("train.average_last=5", "model.char_encoder=cnn", "model.attention_heads=0",
                         "model.intent_level=sentence", "model.tag_decoder=crf")),
    ),
    # embedding and hidden sizes (issue "quality"): the defaults (128 / 128 per direction, the average group's base
    # runs), half and twice both
    "sizes": (
        Config("base", ("model.word_dim=128", "model.hidden_size=128"), runs_as="average-base"),
        Config("small", ("model.word_dim=64", "model.hidden_size=64")),
        Config("large", ("model.word_dim=256", "model.hidden_size=256")),
    ),
    # word dropout (issue "quality"): words seen once in train read as <unk> with this probability; 0.25 is the default
    "word_dropout": (
        Config("base", ("train.word_dropout=0.25",), runs_as="average-base"),
        Config("wd-0", ("train.word_dropout=0.0",)),
        Config("wd-0.5", ("train.word_dropout=0.5",)),
    ),
    # label smoothing of the intent targets (0.1, the usual value), against the defaults run again: the base runs are
    # the code after the LSTM-route and batch-building speed changes (the same model, other float rounding)
    "label_smoothing": (
        Config("base", ("train.label_smoothing=0.0",)),
        Config("ls-0.1", ("train.label_smoothing=0.1",)),
    ),
    # the sentence head (issue "quality"): a softmax over the label strings (the defaults; label_smoothing's base
    # runs) against a sigmoid per label atom, which reads a#b as the set {a, b} (ATIS has 15 such test sentences)
    "sentence_head": (
        Config("single", ("model.sentence_head=single",), runs_as="label_smoothing-base"),
        Config("multi", ("model.sentence_head=multi",)),
    ),
    # dropout on the embeddings, between the LSTM layers and in the heads (issue "quality"): 0.3 is the default
    # (label_smoothing's base runs)
    "dropout": (
        Config("base", ("model.dropout=0.3",), runs_as="label_smoothing-base"),
        Config("do-0.2", ("model.dropout=0.2",)),
        Config("do-0.5", ("model.dropout=0.5",)),
    ),
    # slot-to-intent (issue "quality": Slot-Gated / Co-Interactive's other direction): the sentence head also reads
    # the tag head's distribution over tags at each token, pooled; off is the default (label_smoothing's base runs,
    # made before the param existed, so they set nothing: off is the forward pass they ran)
    "slot_to_intent": (
        Config("off", (), runs_as="label_smoothing-base"),
        Config("on", ("model.slot_to_intent=true",)),
    ),
    # how long a run waits on the dev plateau (issue "quality": train to convergence): the defaults then (stop after
    # 8 epochs without gain, halve the learning rate after 2; label_smoothing's base runs) against twice as patient,
    # the defaults since
    "patience": (
        Config("base", ("train.patience=8", "train.lr_patience=2"), runs_as="label_smoothing-base"),
        Config("patient", ("train.patience=16", "train.lr_patience=4")),
    ),
    # Adam's starting learning rate (issue "quality": the learning-rate schedule), halved and doubled around the
    # defaults' 0.003 (patience's patient runs, the defaults since; patience is set so a row stays what it says)
    "lr": (
        Config("base", ("train.lr=0.003", "train.patience=16", "train.lr_patience=4"), runs_as="patience-patient"),
        Config("lr-0.0015", ("train.lr=0.0015", "train.patience=16", "train.lr_patience=4")),
        Config("lr-0.006", ("train.lr=0.006", "train.patience=16", "train.lr_patience=4")),
    ),
    # both directions of intent-slot interaction at once (issue "quality": the Co-Interactive Transformer's idea
    # without its transformer), each measured alone before: token-level intent fed to the tagger and slot-to-intent,
    # against the defaults (patience's patient runs)
    "interaction": (
        Config("base", ("model.intent_level=sentence", "model.slot_to_intent=false", "train.patience=16",
                        "train.lr_patience=4"), runs_as="patience-patient"),
        Config("both", ("model.intent_level=token", "model.slot_to_intent=true", "train.patience=16",
                        "train.lr_patience=4")),
    ),
}
SELECT_ON = "dev_sentence_accuracy"  # the headline dev metric (train.early_stop_metric's default)
# task -> (its single-task configuration, the metric it is judged on)
SHARING = {"intent": ("intent-only", "intent_accuracy"), "tags": ("tags-only", "slot_f1")}


def plans_for(group: str, datasets: list[str], seed_list: list[int]) -> dict[tuple[str, str], list[seeds.Planned]]:
    """(configuration, dataset) -> its seeds' experiments, in table order."""
    plans = {}
    for dataset in datasets:
        label = seeds.dataset_label(dataset)
        for cfg in GROUPS[group]:
            plans[(cfg.name, label)] = seeds.seed_plan(f"{cfg.runs_as or f'{group}-{cfg.name}'}-{label}",
                                                       list(cfg.sets), seed_list,
                                                       seeds.dataset_path(dataset), cfg.name, label)
    return plans


def select_on_dev(rows: list[dict], column: str = SELECT_ON) -> dict[str, Any] | None:
    """The configuration with the best mean of `column` (dev) over the datasets. Only configurations
    with a value on every dataset take part; None if none has."""
    datasets = sorted({r["dataset"] for r in rows})
    scores = {}
    for config in dict.fromkeys(r["config"] for r in rows):
        means = [r["metrics"][column]["mean"] for r in rows if r["config"] == config]
        if len(means) == len(datasets) and None not in means:
            scores[config] = sum(means) / len(means)
    if not scores:
        return None
    best = max(scores, key=scores.__getitem__)
    return {"column": column, "datasets": datasets, "best": best, "scores": scores}


def _row(rows: list[dict], config: str, dataset: str) -> dict | None:
    return next((r for r in rows if r["config"] == config and r["dataset"] == dataset), None)


def _diff(a: dict | None, b: dict | None) -> float | None:
    return None if a is None or b is None or a["mean"] is None or b["mean"] is None else a["mean"] - b["mean"]


def sharing(rows: list[dict], joint: str = "joint") -> list[dict[str, Any]]:
    """Per task and dataset: joint minus single-task on the task's own metric, dev and test, and the
    verdict on dev: a gain or loss only when the difference exceeds the larger of the two seed stds."""
    out = []
    for task, (single, metric) in SHARING.items():
        for dataset in dict.fromkeys(r["dataset"] for r in rows):
            j, s = _row(rows, joint, dataset), _row(rows, single, dataset)
            dev = [x["metrics"][f"dev_{metric}"] if x else None for x in (j, s)]
            test = [x["metrics"][f"test_{metric}"] if x else None for x in (j, s)]
            d = _diff(*dev)
            stds = [x["std"] for x in dev if x is not None and x["std"] is not None]
            std = max(stds) if len(stds) == 2 else None
            if d is None:
                verdict = "missing runs"
            elif std is None:
                verdict = "no seed std (n<2)"
            elif d > std:
                verdict = "gains from sharing"
            elif d < -std:
                verdict = "loses from sharing"
            else:
                verdict = "within seed std"
            out.append({"task": task, "dataset": dataset, "metric": metric, "single": single,
                        "joint_dev": dev[0], "single_dev": dev[1], "diff_dev": d, "std": std,
                        "exceeds_std": None if d is None or std is None else abs(d) > std, "verdict": verdict,
                        "joint_test": test[0], "single_test": test[1], "diff_test": _diff(*test)})
    return out


def _pp(x: float | None) -> str:
    return "—" if x is None else f"{x * 100:+.2f}"


def _cell(m: dict | None) -> str:
    return "—" if m is None else seeds.format_cell(m["mean"], m["std"])


def format_sharing(items: list[dict]) -> str:
    head = ["task", "dataset", "metric", "joint dev", "single dev", "Δ dev", "seed std", "verdict (dev)",
            "joint test", "single test", "Δ test"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for it in items:
        std = "—" if it["std"] is None else f"{it['std'] * 100:.2f}"
        lines.append("| " + " | ".join([
            it["task"], it["dataset"], seeds.LABELS[it["metric"]], _cell(it["joint_dev"]), _cell(it["single_dev"]),
            _pp(it["diff_dev"]), std, it["verdict"], _cell(it["joint_test"]), _cell(it["single_test"]),
            _pp(it["diff_test"])]) + " |")
    return "\n".join(lines)


def format_selection(sel: dict | None) -> str:
    if sel is None:
        return "Best on dev: no configuration has results on every dataset."
    label = seeds.column_label(sel["column"])
    others = ", ".join(f"{c} {v * 100:.2f}" for c, v in sel["scores"].items() if c != sel["best"])
    return (f"Best on dev ({label}, mean over {', '.join(sel['datasets'])}): {sel['best']} "
            f"{sel['scores'][sel['best']] * 100:.2f}" + (f" (others: {others})" if others else ""))


def report(group: str, rows: list[dict]) -> tuple[str, dict[str, Any]]:
    """The printed section of one group and its JSON."""
    parts = [f"## {group}", "", seeds.format_table(rows), ""]
    result: dict[str, Any] = {"rows": rows}
    if group == "tasks":
        result["sharing"] = sharing(rows)
        parts += ["Sharing: joint minus single-task on the task's own metric (dev decides, test beside)", "",
                  format_sharing(result["sharing"]), ""]
    else:
        result["selection"] = select_on_dev(rows)
        parts += [format_selection(result["selection"]), ""]
    failures = seeds.format_failures(rows)
    if failures:
        parts += [failures, ""]
    return "\n".join(parts), result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--group", nargs="+", choices=sorted(GROUPS), help="required unless --from-json")
    ap.add_argument("--datasets", nargs="+", default=["snips", "atis"], help="snips, atis or dataset folders")
    seeds.add_run_options(ap, "also write every group's rows, selection and comparison here",
                          "only print the tables of a file --json wrote (no DVC)")
    args = ap.parse_args(argv)
    if args.from_json:
        by_group = {g: r["rows"] for g, r in seeds.read_json(args.from_json, "groups").items()}
    elif not args.group:
        ap.error("--group is required (or --from-json)")
    else:
        per_group = {g: plans_for(g, args.datasets, args.seeds) for g in args.group}
        plans = {(g, *k): v for g, ps in per_group.items() for k, v in ps.items()}
        rows = seeds.run_and_collect(plans, not args.no_run, args.force, args.poll, args.all_commits)
        by_group = {g: [r for k, r in zip(plans, rows, strict=True) if k[0] == g] for g in args.group}
    out, failed = {}, False
    for g, group_rows in by_group.items():
        text, out[g] = report(g, group_rows)
        failed = failed or any(r["failed"] for r in out[g]["rows"])
        print(text)
    if args.json:
        seeds.write_json(args.json, {"groups": out})
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
