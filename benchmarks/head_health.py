"""Does the joint model learn the intent as the intent-only model does? The intent head's live ReLU units, step by step.

Usage: python benchmarks/head_health.py [--processed data/processed --vocab data/vocab] [--tasks joint intent]
                                       [--epochs 2] [--seed 1] [--set SECTION.KEY=VALUE ...]
       python benchmarks/head_health.py --synthetic-intents 150 [--epochs 3]

Trains params.yaml's model with the library's own `train_step` and batches, once per `--tasks` entry (`joint`:
train.tasks [intent, tags]; `intent`: [intent] alone), and prints at a few steps of the first epoch and after
every epoch: how many of the sentence head's hidden ReLU units are alive (positive for at least one dev sentence;
a dead unit passes no gradient and may never come back), the share of (sentence, unit) pairs active (with
model.intent_level token: (token, unit) pairs, and a unit is alive if any dev token makes it positive), the dev
intent accuracy and the mean training intent loss since the last row (ln of the label count is chance).

train.hold_tags (params.yaml's 0.9 unless --set): the joint run holds the tag loss at 0.01 until the training
intent loss leaves its starting level, as `dvc repro` trains (twinhead.mtl.TagHold); the step it ends is printed.
`--set train.hold_tags=0` shows the joint model without it.

--synthetic-intents N writes a generated JSONL dataset (N intents, 40 training sentences each, one word per
intent that names it, slots whose values come from a vocabulary of their own; `--out`) and runs on that: a
many-label data set on which the intent-only model is right after one epoch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.spacy_peer import apply_sets  # noqa: E402
from twinhead.checkpoint import build_model  # noqa: E402
from twinhead.errors import TwinheadError, run_main  # noqa: E402
from twinhead.model import ModelConfig  # noqa: E402
from twinhead.mtl import prior_loss  # noqa: E402
from twinhead.params import BaseConfig, load_config  # noqa: E402
from twinhead.preprocess import PreprocessConfig, load_split, preprocess  # noqa: E402
from twinhead.train import TrainConfig, TrainData, new_state, set_determinism, train_step  # noqa: E402
from twinhead.vocab import Vocabs, build_vocabs  # noqa: E402

TASKS = {"joint": ["intent", "tags"], "intent": ["intent"]}
EARLY_STEPS = (1, 5, 10, 20, 50, 100, 200)


def synthetic(out: Path, n_intents: int, seed: int = 0) -> Path:
    """N intents: a sentence is `verbK` and three filler words, then 0-2 slots (values drawn from the slot's own
    30 words) each followed by a filler word; slot j of intent k is slot type (k + 7j) mod 80."""
    rng = random.Random(seed)
    fillers = [f"w{i}" for i in range(3000)]

    def row() -> dict:
        k = rng.randrange(n_intents)
        text = " ".join([f"verb{k}", *rng.sample(fillers, 3)])
        ents = []
        for j in range(rng.randint(0, 2)):
            s = (k + 7 * j) % 80
            value = " ".join(rng.sample(fillers[30 * s: 30 * s + 30], rng.randint(1, 3)))
            ents.append({"start": len(text) + 1, "end": len(text) + 1 + len(value), "label": f"slot_{s:02d}"})
            text += f" {value} {rng.choice(fillers)}"
        return {"text": text, "label": f"intent_{k:03d}", "entities": ents}

    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 40 * n_intents), ("dev", 4 * n_intents)):
        (out / f"{split}.jsonl").write_text("".join(json.dumps(row()) + "\n" for _ in range(n)))
    (out / "test.jsonl").write_text((out / "dev.jsonl").read_text())
    return out


def known_rows(df, vocabs: Vocabs):
    """Dev rows whose intent and tags train has (the network cannot score the others' gold)."""
    ok = [r.intent in vocabs.intents.stoi and all(t in vocabs.tags.stoi for t in r.word_tags)
          for r in df.itertuples()]
    return df[ok]


def health(model, dev_batch) -> tuple[int, float, float]:
    """Alive units, active share, dev intent accuracy."""
    seen = {}
    hook = model.intent_head.mlp[1].register_forward_hook(lambda mod, inp, out: seen.__setitem__("h", out))
    model.eval()
    with torch.no_grad():
        logits, _ = model(*dev_batch[:3])
    hook.remove()
    model.train()
    h = seen["h"]
    if h.dim() == 3:  # model.intent_level token: the head scores every token; count the real ones
        h = h[dev_batch[2]]
    active = h > 0
    acc = (logits.argmax(1) == dev_batch[4]).float().mean().item()
    return int(active.any(0).sum()), active.float().mean().item(), acc


def run(train_df, dev_df, vocabs: Vocabs, mcfg: ModelConfig, tcfg: TrainConfig, seed: int, epochs: int, name: str):
    set_determinism(seed, tcfg)
    model = build_model(mcfg.to_dict(), vocabs)
    if not isinstance(model.intent_head.mlp[1], torch.nn.ReLU):
        raise TwinheadError("this benchmark counts ReLU units: the sentence head has none")
    data = TrainData(train_df, vocabs, mcfg, model.intent_targets)
    dev = TrainData(dev_df, vocabs, mcfg, model.intent_targets)
    dev_batch = dev.batch(list(range(len(dev))), "cpu", 0.0, torch.Generator())
    state = new_state(model, tcfg, len(data.batches(tcfg.batch_size, torch.Generator().manual_seed(0))), seed,
                      intents=data.intents)  # with both tasks, train.hold_tags holds the tag loss as train() does
    hidden = model.intent_head.mlp[0].out_features
    step, losses = 0, []

    def show(when: str) -> None:
        alive, share, acc = health(model, dev_batch)
        loss = sum(losses) / len(losses) if losses else float("nan")
        print(f"{name:7s} {when:>12s} {alive:6d}/{hidden:<4d} {share:7.3f} {acc:9.4f} {loss:12.4f}", flush=True)
        losses.clear()

    show("start")
    for epoch in range(1, epochs + 1):
        for idx in data.batches(tcfg.batch_size, state.gen):
            batch = data.batch(idx, "cpu", tcfg.word_dropout, state.gen)
            stats = train_step(state, batch, tcfg)
            losses.append(stats.floats()["intent_loss"])
            step += 1
            said = state.step_hold(stats)
            if said:
                print(f"{name:7s} {said}", flush=True)
            if epoch == 1 and step in EARLY_STEPS:
                show(f"step {step}")
        show(f"epoch {epoch}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processed", default="data/processed", help="processed splits (dvc repro preprocess)")
    ap.add_argument("--vocab", default="data/vocab", help="vocabularies (dvc repro vocab)")
    ap.add_argument("--synthetic-intents", type=int, default=0, metavar="N",
                    help="generate and use a data set with N intents instead (see above)")
    ap.add_argument("--out", default="benchmarks/out/head_health", help="where --synthetic-intents writes its data")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a model or train param (a YAML value), as params.yaml would")
    args = ap.parse_args()
    p = apply_sets(load_config({"base": BaseConfig, "model": ModelConfig, "train": TrainConfig,
                                "preprocess": PreprocessConfig}), args.set)
    mcfg, base = p["model"], p["train"]
    if mcfg.sentence_head != "single":
        raise TwinheadError("this benchmark scores one intent per sentence: model.sentence_head must be single")
    if args.synthetic_intents:
        raw = synthetic(Path(args.out) / f"intents{args.synthetic_intents}", args.synthetic_intents, args.seed)
        frames, _, _, _ = preprocess(raw, None, p["preprocess"], args.seed)
        train_df, dev_df = frames["train"], frames["dev"]
        vocabs = build_vocabs(train_df["words"], train_df["intent"], train_df["word_tags"])
        where = f"{raw} (generated)"
    else:
        train_df, dev_df = load_split(args.processed, "train"), load_split(args.processed, "dev")
        vocabs = Vocabs.load(args.vocab)
        where = args.processed
    dev_df = known_rows(dev_df, vocabs)
    model = build_model(mcfg.to_dict(), vocabs)
    frequencies = prior_loss(model.intent_head, model.intent_targets(list(train_df["intent"])), base.label_smoothing)
    print(f"{where}: {len(train_df)} train, {len(dev_df)} dev sentences, {len(vocabs.intents)} intents "
          f"(chance: intent loss {math.log(len(vocabs.intents)):.3f}; the label frequencies: "
          f"{frequencies:.3f}), {len(vocabs.tags)} tags; loss rule {base.loss_rule}, train.hold_tags "
          f"{base.hold_tags}, seed {args.seed}")
    print(f"{'tasks':7s} {'when':>12s} {'alive units':>11s} {'active':>7s} {'dev acc':>9s} {'intent loss':>12s}")
    for name in args.tasks:
        run(train_df, dev_df, vocabs, mcfg, dataclasses.replace(base, tasks=TASKS[name]), args.seed, args.epochs, name)


if __name__ == "__main__":
    run_main(main)
