"""Training throughput on the processed data: seconds per batch for a few thread counts.

Usage: python benchmarks/train_speed.py [--threads 1 2] [--batches 60]
Reads data/processed and data/vocab (run `dvc repro vocab` first) and the model/train params.
"""

import argparse
import time

import torch
import yaml

from twinhead.checkpoint import build_model
from twinhead.model import ModelConfig
from twinhead.preprocess import load_split
from twinhead.train import TrainData
from twinhead.vocab import Vocabs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batches", type=int, default=60)
    args = ap.parse_args()
    with open("params.yaml", encoding="utf-8") as fh:
        p = yaml.safe_load(fh)
    mcfg = ModelConfig(**p["model"])
    vocabs = Vocabs.load("data/vocab")
    data = TrainData(load_split("data/processed", "train"), vocabs, mcfg)
    bs = p["train"]["batch_size"]
    for threads in args.threads:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        model = build_model(mcfg.to_dict(), vocabs)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        ce = torch.nn.CrossEntropyLoss(ignore_index=-100)
        batches = data.batches(bs, gen)[: args.batches]
        t0 = time.perf_counter()
        for idx in batches:
            words, chars, mask, tags, intents = data.batch(idx, "cpu", 0.0, gen)
            il, tl = model(words, chars, mask)
            loss = ce(il, intents) + ce(tl.reshape(-1, tl.shape[-1]), tags.reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        dt = time.perf_counter() - t0
        n_epoch = len(data.batches(bs, gen))
        print(f"threads={threads}: {dt / len(batches) * 1000:.1f} ms/batch (batch {bs}), "
              f"~{dt / len(batches) * n_epoch:.1f} s/epoch ({n_epoch} batches)")


if __name__ == "__main__":
    main()
