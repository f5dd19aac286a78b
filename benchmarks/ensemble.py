"""Seed ensembles, scored offline from trained experiments (issue "quality"): what k models of one
configuration, trained with k seeds and averaged at prediction, score against one of them.

Usage (from the project root, with the project's environment):
    .venv/bin/python benchmarks/ensemble.py --runs label_smoothing-base average-base --datasets snips atis \
        --sizes 1 3 5 [--max-subsets 60] [--json out.json]
    .venv/bin/python benchmarks/ensemble.py --from-json out.json      # the table again

Members: every experiment named RUN-DATASET-s<seed> (the names benchmarks/ablation.py and seeds.py give) for
each RUN given; with several RUNs they must be one configuration (the script refuses members whose model
config or label sets differ). Each member's checkpoint and the processed dev and test splits are read at the
experiment's commit from the DVC cache (`dvc.api`), so the experiments must exist in this repository
(`dvc exp list --all-commits`).

Combination: the intent is the argmax of the members' mean sentence-head probabilities (softmax, or sigmoid
for a multi-label head); the tags are the first member's tag decoder (CRF Viterbi, or the softmax head's BIO
Viterbi) run on the members' mean emission scores, with every tag-head parameter (the CRF's transition,
start and end scores) averaged too. For each size k: every k-subset of the members, or --max-subsets of them
drawn with a fixed seed, scored on dev and test; mean ± std over the subsets (subsets share members, so the
std is not that of independent ensembles). Each member is first scored alone through the same code, and must
get the test scores its own evaluate stage wrote (metrics/eval.json). Training time of an ensemble: the sum of
its members' training minutes (from their train logs: one after another on one core). Prediction costs k
forward passes.
"""

from __future__ import annotations

import argparse
import copy
import io
import itertools
import json
import random
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, only benchmarks/ is on the path

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from benchmarks import seeds  # noqa: E402
from twinhead.checkpoint import load_checkpoint  # noqa: E402
from twinhead.errors import TwinheadError, run_main  # noqa: E402
from twinhead.inference import collate, encode, intent_probs, sentence_labels  # noqa: E402
from twinhead.metrics import summary  # noqa: E402
from twinhead.model import JointModel  # noqa: E402
from twinhead.text import map_back  # noqa: E402
from twinhead.vocab import Vocabs  # noqa: E402

SPLITS = ("dev", "test")
METRICS = ("intent_accuracy", "slot_f1", "sentence_accuracy")


@dataclass(frozen=True)
class Member:
    name: str  # the experiment's name
    seed: int
    rev: str  # its commit


@dataclass
class Outputs:
    """What one model says about a split, before any decision."""

    probs: np.ndarray  # (N, L) sentence-head probabilities at temperature 1
    scores: np.ndarray  # (N, T, K) emission scores, zero past each sentence's end
    mask: np.ndarray  # (N, T) bool: real words


def find_members(refs: str, run: str, dataset: str) -> list[Member]:
    """`git for-each-ref refs/exps --format='%(objectname) %(creatordate:unix) %(refname)'` output -> the
    experiments named RUN-DATASET-s<seed>, by seed; of a name that appears twice (re-queued), the newest."""
    prefix = f"{run}-{dataset}-s"
    newest: dict[str, tuple[int, str]] = {}
    for line in refs.splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue
        rev, when, ref = parts
        name = ref.rsplit("/", 1)[-1]
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            if name not in newest or int(when) > newest[name][0]:
                newest[name] = (int(when), rev)
    return sorted((Member(n, int(n[len(prefix):]), rev) for n, (_, rev) in newest.items()), key=lambda m: m.seed)


def subsets(n: int, k: int, most: int, seed: int = 0) -> list[tuple[int, ...]]:
    """Every k-subset of range(n) in order, or `most` distinct ones drawn with a fixed seed when there are more."""
    if not 1 <= k <= n:
        raise TwinheadError(f"--sizes: an ensemble of {k} needs at least {k} members; there are {n}")
    every = list(itertools.combinations(range(n), k))
    if len(every) <= most:
        return every
    return sorted(random.Random(seed).sample(every, most))


@torch.no_grad()
def model_outputs(model: JointModel, vocabs: Vocabs, sentences: list[list[str]], batch_size: int = 256) -> Outputs:
    """Sentence-head probabilities and tag emission scores of every sentence (whole sentences only)."""
    long = [i for i, ws in enumerate(sentences) if len(ws) > model.cfg.max_len]
    if long:
        raise TwinheadError(f"sentence {long[0]} has {len(sentences[long[0]])} words, more than the model's "
                            f"max_len {model.cfg.max_len}: ensemble.py scores whole sentences only")
    model.eval()
    n, t_max, k = len(sentences), max(len(ws) for ws in sentences), len(model.tags)
    probs = np.zeros((n, model.intent_head.n_labels))
    scores = np.zeros((n, t_max, k), dtype=np.float32)
    mask = np.zeros((n, t_max), dtype=bool)
    order = sorted(range(n), key=lambda i: len(sentences[i]))  # similar lengths in a batch
    for b in range(0, n, batch_size):
        rows = order[b : b + batch_size]
        words, chars, m = collate([encode(sentences[i], vocabs, model.cfg.max_word_len) for i in rows], "cpu")
        intent_logits, tag_scores = model(words, chars, m)
        probs[rows] = intent_probs(model, intent_logits.double().numpy())
        t = m.shape[1]
        scores[rows, :t] = tag_scores.float().masked_fill(~m.unsqueeze(2), 0.0).numpy()
        mask[rows, :t] = m.numpy()
    return Outputs(probs, scores, mask)


def check_same_labels(models: list[JointModel], names: list[str]) -> None:
    """Members must share their label sets and model config: a mean over other label orders means nothing."""
    first = models[0]
    for model, name in zip(models[1:], names[1:]):
        for what, a, b in (("tags", first.tags, model.tags), ("intents", first.sentence_labels, model.sentence_labels),
                           ("model config", first.cfg, model.cfg)):
            if a != b:
                raise TwinheadError(f"{name}: its {what} differ from {names[0]}'s: not one configuration")


def ensemble_head(models: list[JointModel]) -> torch.nn.Module:
    """The first member's tag head with every parameter the mean of the members' (the CRF's transitions,
    start and end scores; the projection is not used in decoding)."""
    head = copy.deepcopy(models[0].tag_head)
    with torch.no_grad():
        for name, p in head.named_parameters():
            p.copy_(torch.stack([dict(m.tag_head.named_parameters())[name] for m in models]).mean(0))
    return head.eval()


@torch.no_grad()
def combine(models: list[JointModel], vocabs: Vocabs, outputs: list[Outputs],
            batch_size: int = 256) -> tuple[list[str], list[list[str]]]:
    """The ensemble's label and tags (on the words it read) of every sentence."""
    probs = np.mean([o.probs for o in outputs], axis=0)
    scores = torch.from_numpy(np.mean([o.scores for o in outputs], axis=0))
    mask = torch.from_numpy(outputs[0].mask)
    head = ensemble_head(models)
    tags: list[list[str]] = []
    for b in range(0, len(probs), batch_size):
        m = mask[b : b + batch_size]
        ids = head.decode(scores[b : b + batch_size], m).numpy()
        tags.extend([models[0].tags[j] for j in row[: int(n)]] for row, n in zip(ids, m.sum(1)))
    return sentence_labels(models[0], vocabs, probs), tags


def score(model: JointModel, df: pd.DataFrame, intents: list[str], tags: list[list[str]]) -> dict[str, float]:
    """intent accuracy, slot F1 and sentence accuracy on every original token (removed words are O)."""
    full = [map_back(len(toks), list(keep), t) for toks, keep, t in zip(df["tokens"], df["keep"], tags)]
    gold = [model.canonical_label(i) for i in df["intent"]]
    head = summary(gold, intents, [list(t) for t in df["tags"]], full)[0]
    return {m: head[m] for m in METRICS}


# --- reading the experiments --------------------------------------------------------------------------------


def _read_at(rev: str, path: str) -> bytes:
    import dvc.api

    try:
        with dvc.api.open(path, rev=rev, mode="rb") as f:
            return f.read()
    except Exception as e:  # noqa: BLE001 - dvc raises many types for a missing rev, path or cache entry
        raise TwinheadError(f"{path} at {rev[:7]}: not readable ({type(e).__name__}: {e})") from None


def load_member(member: Member) -> tuple[JointModel, Vocabs, float | None]:
    """The member's model and vocabularies from its checkpoint, and its training minutes (its train log)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoint.pt"
        path.write_bytes(_read_at(member.rev, "models/checkpoint.pt"))
        model, vocabs, _ = load_checkpoint(path)
    log = _git("show", f"{member.rev}:{seeds.LOG_FILE}")
    minutes = seeds.dev_from_log(log, where=f"{member.name}:{seeds.LOG_FILE}")["train_minutes"]
    return model, vocabs, minutes


def load_split(rev: str, split: str) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(_read_at(rev, f"data/processed/{split}.parquet")))


def member_eval(member: Member) -> dict[str, float]:
    """The test scores the experiment's evaluate stage wrote (metrics/eval.json, committed with it)."""
    return json.loads(_git("show", f"{member.rev}:metrics/eval.json"))


def agrees(got: dict[str, float], evaluated: dict[str, float]) -> bool:
    return all(abs(got[m] - evaluated[m]) < 1e-9 for m in METRICS)


def _git(*args: str) -> str:
    res = subprocess.run(["git", *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise TwinheadError(f"`git {' '.join(args)}` failed: {res.stderr.strip()}")
    return res.stdout


def same_frames(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    cols = ["words", "tags", "intent"]
    return len(a) == len(b) and all(list(map(list, a[c])) == list(map(list, b[c])) if c != "intent"
                                    else list(a[c]) == list(b[c]) for c in cols)


def evaluate_dataset(members: list[Member], sizes: list[int], most: int,
                     dataset: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per ensemble size: mean ± std of dev and test metrics over the subsets, and training minutes;
    and how the members' own test intent errors overlap (shared_errors)."""
    loaded = [load_member(m) for m in members]
    models, minutes = [x[0] for x in loaded], [x[2] for x in loaded]
    check_same_labels(models, [m.name for m in members])
    frames = {s: load_split(members[0].rev, s) for s in SPLITS}
    outputs: dict[str, list[Outputs]] = {s: [] for s in SPLITS}
    for member, (model, vocabs, _) in zip(members, loaded):
        for s in SPLITS:
            if member is not members[0] and not same_frames(frames[s], load_split(member.rev, s)):
                raise TwinheadError(f"{member.name}: its {s} split differs from {members[0].name}'s")
            outputs[s].append(model_outputs(model, vocabs, [list(w) for w in frames[s]["words"]]))
        print(f"  {member.name}: read", file=sys.stderr)
    alone = [combine([model], vocabs, [out]) for (model, vocabs, _), out in zip(loaded, outputs["test"])]
    mismatched = [m.name for m, model, pred in zip(members, models, alone)
                  if not agrees(score(model, frames["test"], *pred), member_eval(m))]
    if mismatched:  # the combination code scores one model as its own evaluate stage did, or nothing it says counts
        raise TwinheadError(f"{', '.join(mismatched)}: scored alone here, not what its metrics/eval.json says")
    rows = []
    for k in sizes:
        picks = subsets(len(members), k, most)
        values: dict[str, list[float]] = {}
        for pick in picks:
            chosen = [models[i] for i in pick]
            for s in SPLITS:
                intents, tags = combine(chosen, loaded[pick[0]][1], [outputs[s][i] for i in pick])
                for m, v in score(models[0], frames[s], intents, tags).items():
                    values.setdefault(f"{s}_{m}", []).append(v)
            mins = [minutes[i] for i in pick]
            values.setdefault("train_minutes", []).append(sum(mins) if None not in mins else float("nan"))
        stats = {c: dict(zip(("mean", "std"), seeds.mean_std(v))) for c, v in values.items()}
        rows.append({"dataset": dataset, "k": k, "subsets": len(picks), "members": [m.name for m in members],
                     "metrics": stats})
        print(f"  k={k}: {len(picks)} subsets", file=sys.stderr)
    return rows, shared_errors(models[0], frames["test"], alone)


def shared_errors(model: JointModel, df: pd.DataFrame, preds: list[tuple[list[str], list[list[str]]]]) -> dict:
    """How the members' intent errors overlap: each member's count, and the sentences wrong in at least half of
    them (which no average of them is likely to get right), in all of them, in any."""
    gold = [model.canonical_label(i) for i in df["intent"]]
    wrong = np.array([[g != p for g, p in zip(gold, intents)] for intents, _ in preds])
    votes = wrong.sum(0)
    return {"per_member": wrong.sum(1).tolist(), "half_or_more": int((2 * votes >= len(preds)).sum()),
            "all": int(wrong.all(0).sum()), "any": int(wrong.any(0).sum()), "sentences": len(gold)}


def format_errors(errors: dict[str, dict]) -> str:
    """A line per dataset from shared_errors' counts."""
    return "\n".join(f"{dataset} test intent errors of the {len(e['per_member'])} members alone: "
                     f"{min(e['per_member'])}-{max(e['per_member'])} each; wrong in half of them or more: "
                     f"{e['half_or_more']}, in all: {e['all']}, in any: {e['any']} (of {e['sentences']} sentences)"
                     for dataset, e in errors.items())


def format_table(rows: list[dict]) -> str:
    head = ["dataset", "models (k)", "subsets", "dev intent / slot F1 / sentence", "test intent / slot F1 / sentence",
            "train min (sum)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        m = r["metrics"]
        cells = [r["dataset"], str(r["k"]), str(r["subsets"])]
        for s in SPLITS:
            cells.append(" / ".join(seeds.format_cell(m[f"{s}_{x}"]["mean"], m[f"{s}_{x}"]["std"]) for x in METRICS))
        cells.append(seeds.format_cell(m["train_minutes"]["mean"], m["train_minutes"]["std"], 1.0, 1))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", help="experiment name prefixes (GROUP-CONFIG), one configuration")
    ap.add_argument("--datasets", nargs="+", default=["snips", "atis"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--max-subsets", type=int, default=60, help="at most this many subsets per size")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--from-json", help="print the table of an earlier --json output")
    args = ap.parse_args(argv)
    if args.from_json:
        print(format_table(seeds.read_json(args.from_json, "rows")) + "\n\n"
              + format_errors(seeds.read_json(args.from_json, "test_intent_errors")))
        return 0
    if not args.runs:
        ap.error("--runs is required (or --from-json)")
    refs = _git("for-each-ref", "refs/exps", "--format=%(objectname) %(creatordate:unix) %(refname)")
    torch.set_num_threads(1)
    rows, errors = [], {}
    for dataset in args.datasets:
        label = seeds.dataset_label(dataset)
        members = [m for run in args.runs for m in find_members(refs, run, label)]
        if not members:
            raise TwinheadError(f"no experiment named {' or '.join(f'{r}-{label}-s<seed>' for r in args.runs)} "
                                "in refs/exps (dvc exp list --all-commits)")
        print(f"{label}: {len(members)} members", file=sys.stderr)
        dataset_rows, errors[label] = evaluate_dataset(members, args.sizes, args.max_subsets, label)
        rows.extend(dataset_rows)
    if args.json:
        seeds.write_json(args.json, {"runs": args.runs, "rows": rows, "test_intent_errors": errors})
    print(format_table(rows) + "\n\n" + format_errors(errors))
    return 0


if __name__ == "__main__":
    run_main(main)
