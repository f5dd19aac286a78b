"""Training throughput: the real train_step (twinhead.train) timed per batch, per thread count and loss rule.

Usage: python benchmarks/train_speed.py [--threads 1 2] [--batches 60] [--rules sum grad_mean uncertainty pcgrad]
Reads data/processed and data/vocab (run `dvc repro vocab` first) and the model/train params.
"""

import argparse
import dataclasses
import time

import torch

from twinhead.checkpoint import build_model
from twinhead.model import ModelConfig
from twinhead.params import load_config
from twinhead.preprocess import load_split
from twinhead.train import TrainConfig, TrainData, new_state, train_step
from twinhead.vocab import Vocabs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch CPU thread counts to time")
    ap.add_argument("--batches", type=int, default=60, help="batches timed per setting")
    ap.add_argument("--rules", nargs="+", default=None, help="loss rules to time (default: params.yaml's)")
    args = ap.parse_args()
    p = load_config({"model": ModelConfig, "train": TrainConfig})
    mcfg, base = p["model"], p["train"]
    vocabs = Vocabs.load("data/vocab")
    train_df = load_split("data/processed", "train")
    print(f"{'rule':12s} {'threads':>7s} {'ms/batch':>9s} {'words/s':>9s} {'s/epoch':>8s}")
    for rule in args.rules or [base.loss_rule]:
        tcfg = dataclasses.replace(base, loss_rule=rule)
        for threads in args.threads:
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            model = build_model(mcfg.to_dict(), vocabs)
            data = TrainData(train_df, vocabs, mcfg, model.intent_targets)
            n_epoch = len(data.batches(tcfg.batch_size, torch.Generator().manual_seed(0)))
            state = new_state(model, tcfg, n_epoch, seed=0)
            model.train()
            batches = data.batches(tcfg.batch_size, state.gen)[: args.batches]
            words = 0
            t0 = time.perf_counter()
            for step, idx in enumerate(batches, start=1):
                batch = data.batch(idx, "cpu", tcfg.word_dropout, state.gen)
                words += int(batch[2].sum())
                measure = bool(tcfg.conflict_every) and step % tcfg.conflict_every == 0
                train_step(state, batch, tcfg, measure).floats()  # the epoch loop reads stats once per step too
            dt = time.perf_counter() - t0
            print(f"{rule:12s} {threads:7d} {dt / len(batches) * 1000:9.1f} {words / dt:9.0f} "
                  f"{dt / len(batches) * n_epoch:8.1f}")


if __name__ == "__main__":
    main()
