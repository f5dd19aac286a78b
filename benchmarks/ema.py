"""Exponential moving averages (EMA) of the weights, measured inside one ordinary training run.

Usage (from the project root, with the project's environment):
    python benchmarks/ema.py --data data/raw/atis --seed 1 --decays 0.99 0.995 0.998 \
        --json benchmarks/results/ema-atis-s1.json

One run of twinhead.train.train with params.yaml (plus --set changes), exactly as the train stage runs it:
the same batches, dropout draws, early stopping and learning-rate schedule, all decided by the trained weights.
Beside them, each --decays d keeps a shadow copy of the weights, moved after every optimizer step by
shadow <- d * shadow + (1 - d) * weights, starting from the weights after the first step (with d capped at
1 - 1/n over the first n steps: the plain mean of the steps so far, so the start does not linger). After every
epoch the trained weights and every shadow are scored on dev and test. Each one is then judged as train.py
would judge it: its best epoch is the one with the best dev selection score (train.early_stop_metric, ties to
the earlier epoch), and the test scores reported are that epoch's. Test never chooses anything.

The shadows take no random draws and change nothing the run does, so "EMA minus trained" is a paired
difference: the same run, the same seed. Scoring the shadows adds the extra evaluations to each epoch.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import twinhead  # noqa: E402, F401, I001  (sets OpenMP's wait policy before torch starts)
import torch  # noqa: E402

import twinhead.train as tr  # noqa: E402
from spacy_peer import apply_sets, load_frames  # noqa: E402
from twinhead import fileio  # noqa: E402
from twinhead.errors import run_main  # noqa: E402
from twinhead.model import ModelConfig  # noqa: E402
from twinhead.params import BaseConfig, load_config  # noqa: E402
from twinhead.preprocess import PreprocessConfig  # noqa: E402
from twinhead.train import METRICS, TrainConfig  # noqa: E402
from twinhead.vocab import VocabConfig, build_vocabs  # noqa: E402

class Shadows:
    """The EMA copies of a model's weights, one per decay, updated after each optimizer step."""

    def __init__(self, decays: list[float]):
        self.decays = decays
        self.models: dict[float, torch.nn.Module] = {}
        self.steps = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        if not self.models:
            self.models = {d: copy.deepcopy(model).eval() for d in self.decays}
        self.steps += 1
        cap = 1.0 - 1.0 / self.steps  # the plain mean of the steps so far until it is older than 1 / (1 - d)
        live = [p.detach() for p in model.state_dict().values()]
        for d, shadow in self.models.items():
            mine = list(shadow.state_dict().values())
            floats = [(s, w) for s, w in zip(mine, live) if s.is_floating_point()]
            torch._foreach_lerp_([s for s, _ in floats], [w for _, w in floats], 1.0 - min(d, cap))
            for s, w in zip(mine, live):
                if not s.is_floating_point():
                    s.copy_(w)


def best_of(rows: list[dict], name: str, metric: str) -> dict:
    """The epoch train.py would keep for `name`: the best dev selection score, ties to the earlier epoch."""
    best, best_score = None, None
    for r in rows:
        score = tr.selection_score({k: r[f"{name}_dev_{k}"] for k in METRICS}, metric)
        if best_score is None or score > best_score:
            best, best_score = r, score
    return {"epoch": best["epoch"], **{f"dev_{k}": best[f"{name}_dev_{k}"] for k in METRICS},
            **{f"test_{k}": best[f"{name}_test_{k}"] for k in METRICS}}


def run(data: Path, params: dict, decays: list[float]) -> dict:
    frames = load_frames(data, params)
    train_df, dev_df, test_df = frames["train"], frames["dev"], frames["test"]
    vocabs = build_vocabs(train_df["words"], train_df["intent"], train_df["word_tags"],
                          min_freq=params["vocab"].min_freq)
    tcfg = params["train"]
    shadows = Shadows(decays)
    seen: dict[str, torch.nn.Module] = {}
    step = tr.train_step

    def tracked_step(state, batch, tcfg_, measure=False):
        stats = step(state, batch, tcfg_, measure)
        seen["model"] = state.model
        shadows.update(state.model)
        return stats

    rows: list[dict] = []

    def on_epoch(row: dict) -> None:
        out = {"epoch": row["epoch"], **{f"trained_dev_{k}": row[f"dev_{k}"] for k in METRICS}}
        t = time.perf_counter()
        test = tr.evaluate_frame(seen["model"], vocabs, test_df, tcfg.eval_batch_size)[0]
        out.update({f"trained_test_{k}": test[k] for k in METRICS})
        for d, m in shadows.models.items():
            for split, df in (("dev", dev_df), ("test", test_df)):
                s = tr.evaluate_frame(m, vocabs, df, tcfg.eval_batch_size)[0]
                out.update({f"ema{d}_{split}_{k}": s[k] for k in METRICS})
        out["scoring_seconds"] = time.perf_counter() - t
        rows.append(out)
        print("  dev sentence acc: trained {:.4f} | ".format(out["trained_dev_sentence_accuracy"])
              + " | ".join(f"ema {d} {out[f'ema{d}_dev_sentence_accuracy']:.4f}" for d in decays), flush=True)

    tr.train_step = tracked_step
    try:
        t0 = time.time()
        res = tr.train(train_df, dev_df, vocabs, params["model"], tcfg, params["base"].seed, on_epoch=on_epoch,
                       progress=False)
        seconds = time.time() - t0
    finally:
        tr.train_step = step
    names = ["trained"] + [f"ema{d}" for d in decays]
    best = {n: best_of(rows, n, tcfg.early_stop_metric) for n in names}
    assert best["trained"]["epoch"] == res.best_epoch, (best["trained"]["epoch"], res.best_epoch)
    return {"command": " ".join(shlex.quote(a) for a in sys.argv), "data": str(data),
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t0)), "load_after": os.getloadavg(),
            "seed": params["base"].seed, "decays": decays, "train": dataclasses.asdict(tcfg),
            "epochs_run": len(rows), "seconds": seconds, "best": best, "epochs": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/raw/snips", help="BIO dataset folder (default data/raw/snips)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--seed", type=int, required=True, help="base.seed for this run")
    ap.add_argument("--decays", type=float, nargs="+", default=[0.99, 0.995, 0.998], help="EMA decays per step")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--json", help="write the per-epoch scores and each one's best epoch here")
    args = ap.parse_args(argv)
    if not all(0 < d < 1 for d in args.decays):
        ap.error(f"--decays: each must be between 0 and 1 (exclusive), got {args.decays}")
    params = apply_sets(load_config({"base": BaseConfig, "preprocess": PreprocessConfig, "vocab": VocabConfig,
                                     "model": ModelConfig, "train": TrainConfig}, args.params),
                        [*args.set, f"base.seed={args.seed}"])
    res = run(Path(args.data), params, args.decays)
    for name, b in res["best"].items():
        print(f"{name:>10}: best dev epoch {b['epoch']:>3} | dev "
              + " / ".join(f"{100 * b[f'dev_{k}']:.2f}" for k in METRICS) + " | test "
              + " / ".join(f"{100 * b[f'test_{k}']:.2f}" for k in METRICS))
    if args.json:
        fileio.write_json(args.json, res)
    return 0


if __name__ == "__main__":
    run_main(main)
