"""Training throughput: the real train_step (twinhead.train) timed per batch, per thread count and loss rule.

Usage: python benchmarks/train_speed.py [--threads 1 2] [--batches 60] [--rules sum grad_mean uncertainty pcgrad]
                                       [--lstm-routes split packed] [--batch-sizes 32 64 128]
                                       [--flush-denormal on off] [--rdrop 0 1] [--state models/resume/state.pt]
       python benchmarks/train_speed.py --denormal-multiply
Reads data/processed and data/vocab (run `dvc repro vocab` first) and the model/train params. `build ms` is the
part of a batch spent making its tensors (TrainData.batch); `mixed` counts the timed batches holding sentences of
more than one length. --lstm-routes: `split` is the library's route on the CPU (a batch of a few lengths runs
the LSTM once per length, unpacked), `packed` forces one packed call per batch (the route before). --batch-sizes:
sentences per batch (default: train.batch_size); a torchrun process trains on 1/N of each batch, so the time of
a batch of B/N in one process is what N processes pay per step before they average their gradients. --state:
start from a run's weights and Adam moments instead of fresh ones (denormal floats build up in the moments as
training goes on; --flush-denormal on off times both ways). --rdrop: train.rdrop weights to time (R-Drop runs each
batch twice in one pass; 0 is off).
"""

import argparse
import dataclasses
import itertools
import time

import torch

import twinhead.model as model_module
from twinhead.checkpoint import build_model, safe_torch_load
from twinhead.errors import run_main
from twinhead.model import ModelConfig
from twinhead.params import load_config
from twinhead.preprocess import load_split
from twinhead.train import TrainConfig, TrainData, new_state, train_step
from twinhead.vocab import Vocabs


def denormal_multiply(n: int = 10**6, reps: int = 30) -> None:
    """ms for x * 0.9 over n float32s, best of reps, one thread: denormal (1e-39) and normal (1e-3) inputs."""
    torch.set_num_threads(1)
    print(f"{'input':>9s} {'flush':>5s} {'ms':>7s}")
    for name, value in (("denormal", 1e-39), ("normal", 1e-3)):
        x = torch.full((n,), value)
        for flush in (False, True):
            torch.set_flush_denormal(flush)
            best = min(_timed(torch.mul, x, 0.9) for _ in range(reps))
            print(f"{name:>9s} {'on' if flush else 'off':>5s} {best * 1000:7.3f}")
    torch.set_flush_denormal(False)


def _timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch CPU thread counts to time")
    ap.add_argument("--batches", type=int, default=60, help="batches timed per setting")
    ap.add_argument("--rules", nargs="+", default=None, help="loss rules to time (default: params.yaml's)")
    ap.add_argument("--lstm-routes", nargs="+", default=["split"], choices=["split", "packed"],
                    help="how a batch of mixed lengths runs the LSTM on the CPU")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                    help="sentences per batch to time (default: params.yaml's train.batch_size)")
    ap.add_argument("--flush-denormal", nargs="+", default=None, choices=["on", "off"],
                    help="float32 denormals computed as zero or not (default: params.yaml's train.flush_denormal)")
    ap.add_argument("--rdrop", type=float, nargs="+", default=None,
                    help="train.rdrop weights to time (default: params.yaml's; 0: off)")
    ap.add_argument("--state", default=None,
                    help="start from the weights and optimizer moments of a training state the train stage saved "
                         "(models/resume/state.pt, left by a killed run) instead of fresh ones")
    ap.add_argument("--denormal-multiply", action="store_true",
                    help="only time a float32 multiply over 1e6 denormal and normal numbers, flush off and on: "
                         "whether this CPU is slow on denormals at all")
    args = ap.parse_args()
    if args.denormal_multiply:
        return denormal_multiply()
    p = load_config({"model": ModelConfig, "train": TrainConfig})
    mcfg, base = p["model"], p["train"]
    vocabs = Vocabs.load("data/vocab")
    train_df = load_split("data/processed", "train")
    saved = safe_torch_load(args.state) if args.state else None
    flushes = [f == "on" for f in args.flush_denormal] if args.flush_denormal else [base.flush_denormal]
    print(f"{'rule':12s} {'route':>6s} {'threads':>7s} {'batch':>5s} {'flush':>5s} {'ms/batch':>9s} {'build ms':>8s} "
          f"{'mixed':>5s} {'words/s':>9s} {'s/epoch':>8s} {'rdrop':>5s}")
    split_max = model_module.SPLIT_MAX_LENGTHS
    rdrops = args.rdrop if args.rdrop is not None else [base.rdrop]
    for rule, route, threads, size, flush, rdrop in itertools.product(
            args.rules or [base.loss_rule], args.lstm_routes, args.threads, args.batch_sizes or [base.batch_size],
            flushes, rdrops):
        tcfg = dataclasses.replace(base, loss_rule=rule, batch_size=size, rdrop=rdrop)
        model_module.SPLIT_MAX_LENGTHS = split_max if route == "split" else 0
        torch.set_flush_denormal(flush)  # as training does (twinhead.train.set_determinism)
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        model = build_model(mcfg.to_dict(), vocabs)
        data = TrainData(train_df, vocabs, mcfg, model.intent_targets)
        n_epoch = len(data.batches(tcfg.batch_size, torch.Generator().manual_seed(0)))
        state = new_state(model, tcfg, n_epoch, seed=0)
        # The state's params must be these (the same shapes). Not state.load_state_dict: that also restores the
        # run's batch RNG, and each row should time the same batches as the fresh ones.
        if saved is not None:
            model.load_state_dict(saved["model"])
            state.optimizer.load_state_dict(saved["optimizer"])
            state.rule.load_state_dict(saved["rule"])
        model.train()
        batches = data.batches(tcfg.batch_size, state.gen)[: args.batches]
        words, build = 0, 0.0
        mixed = sum(len(set(data.lengths[idx].tolist())) > 1 for idx in batches)
        t0 = time.perf_counter()
        for step, idx in enumerate(batches, start=1):
            tb = time.perf_counter()
            batch = data.batch(idx, "cpu", tcfg.word_dropout, state.gen)
            build += time.perf_counter() - tb
            words += int(batch[2].sum())
            measure = bool(tcfg.conflict_every) and step % tcfg.conflict_every == 0
            train_step(state, batch, tcfg, measure).floats()  # the epoch loop reads stats once per step too
        dt = time.perf_counter() - t0
        print(f"{rule:12s} {route:>6s} {threads:7d} {size:5d} {'on' if flush else 'off':>5s} "
              f"{dt / len(batches) * 1000:9.1f} {build / len(batches) * 1000:8.2f} {mixed:5d} {words / dt:9.0f} "
              f"{dt / len(batches) * n_epoch:8.1f} {rdrop:5g}")
    model_module.SPLIT_MAX_LENGTHS = split_max


if __name__ == "__main__":
    run_main(main)
