"""Joint training: loss = intent_weight * CE(intent) + tag_weight * CE(tags), padding masked out.

Seeded and resumable: a full training state (model, optimizer, scheduler, RNG states, epoch, best
score and weights) is written after every epoch, so a killed run started again continues where it
stopped and ends exactly where an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import AfterValidator, Field
from torch import nn

from twinhead import fileio
from twinhead.checkpoint import build_model, safe_torch_load
from twinhead.errors import TwinheadError
from twinhead.inference import collate, encode, predict_mapped
from twinhead.metrics import summary
from twinhead.model import ModelConfig
from twinhead.mtl import RULES
from twinhead.params import Fraction, NonNegFloat, NonNegInt, PosInt, section
from twinhead.vocab import Vocabs

STATE_FORMAT = "twinhead-train-state/1"
METRICS = ("intent_accuracy", "slot_f1", "sentence_accuracy")  # dev metrics logged per epoch


def _device_name(name: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", name):
        raise ValueError("must be auto, cpu, cuda, cuda:<index> or mps")
    return name


@section
class TrainConfig:
    epochs: PosInt = 15  # maximum epochs
    batch_size: PosInt = 64
    lr: Annotated[float, Field(gt=0)] = 0.003  # Adam learning rate
    weight_decay: NonNegFloat = 0.0
    scheduler: Literal["cosine", "none"] = "cosine"  # cosine: anneal to 0 over `epochs`
    grad_clip: NonNegFloat = 5.0  # max gradient norm; 0 turns clipping off
    intent_weight: NonNegFloat = 1.0  # loss weight of the intent task
    tag_weight: NonNegFloat = 1.0  # loss weight of the tagging task
    word_dropout: Fraction = 0.25  # probability of reading a word seen once in train as <unk>
    patience: NonNegInt = 5  # epochs without dev improvement before stopping; 0 never stops early
    early_stop_metric: Literal[METRICS] = "sentence_accuracy"  # the dev metric early stopping follows
    device: Annotated[str, AfterValidator(_device_name)] = "auto"  # auto: CUDA when present, else CPU
    deterministic: bool = True  # deterministic kernels (on GPU: cuDNN deterministic, see README)
    threads: NonNegInt = 0  # CPU threads for torch; 0 = torch's default
    eval_batch_size: PosInt = 256
    tasks: Annotated[list[Literal["intent", "tags"]], Field(min_length=1, max_length=2)] = \
        dataclasses.field(default_factory=lambda: ["intent", "tags"])  # one of them: a single-task model
    loss_rule: Literal[RULES] = "sum"  # how the task losses become gradients (twinhead.mtl)
    conflict_every: NonNegInt = 10  # measure task-gradient conflict on every n-th step (0: never)

    def __post_init__(self):
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks lists a task twice: {self.tasks}")
        weights = self.task_weights()
        if not any(weights.values()):
            raise ValueError("every trained task has loss weight 0: nothing to learn")
        if self.loss_rule == "uncertainty" and any(w != 1 for w in weights.values()):
            raise ValueError("loss_rule 'uncertainty' learns the task weights: intent_weight and tag_weight must be 1")

    def task_weights(self) -> dict[str, float]:
        return {t: {"intent": self.intent_weight, "tags": self.tag_weight}[t] for t in self.tasks}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TwinheadError(f"params: train.device={name!r} but CUDA is not available here")
    return torch.device(name)


def set_determinism(seed: int, tcfg: TrainConfig) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    if tcfg.deterministic:
        # cuBLAS needs this before its first use to be deterministic; cuDNN's LSTM is deterministic
        # only with cudnn.deterministic (see README, "Determinism").
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def fingerprint(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()


def code_digest() -> str:
    """sha256 of the twinhead package's sources: a state written by other code is not resumed."""
    h = hashlib.sha256()
    for f in sorted(Path(__file__).parent.glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def state_identity(mcfg: ModelConfig, tcfg: TrainConfig, seed: int, vocabs: Vocabs, train_df: pd.DataFrame,
                   dev_df: pd.DataFrame, device: torch.device) -> dict[str, str]:
    """What a saved training state must match to be resumed, part by part (so the log can say which
    part changed). Device and threads are the resolved ones: 'auto' and 'cpu' on a CPU machine agree."""
    return {
        "params": fingerprint(mcfg.to_dict(), asdict(tcfg) | {"device": None, "threads": None}, seed),
        "data": fingerprint(vocabs.to_lists(), train_df[["words", "word_tags", "intent"]].map(list).values.tolist(),
                            dev_df[["words", "tags", "intent"]].map(list).values.tolist()),
        "code": code_digest(),
        "torch version": str(torch.__version__),  # a plain str: TorchVersion does not load weights-only
        "device": str(device),
        "threads": str(torch.get_num_threads()),
    }


def _state_mismatch(saved, now: dict[str, str]) -> str:
    """Why a saved state's identity differs from this run's ('' when it matches)."""
    if not isinstance(saved, dict):
        return "it was saved by an older version of twinhead"
    diffs = [k if len(now[k]) > 32 else f"{k} ({saved.get(k)} -> {now[k]})"
             for k in now if saved.get(k) != now[k]]
    return f"it belongs to other {', '.join(diffs)}" if diffs else ""


class TrainData:
    """Encoded train split: word ids, char ids, tag ids, the sentence head's targets (label ids, or
    multi-hot rows), and which words are singletons."""

    def __init__(self, df: pd.DataFrame, vocabs: Vocabs, mcfg: ModelConfig, intent_targets: Callable):
        self.items, self.tags, intents, self.single = [], [], [], []
        self.truncated = 0
        counts = Counter(w for ws in df["words"] for w in ws)
        for ws, ts, intent in zip(df["words"], df["word_tags"], df["intent"]):
            ws, ts = list(ws), list(ts)
            if not ws:
                continue
            if len(ws) > mcfg.max_len:  # training reads the first max_len words; counted and reported
                self.truncated += 1
                ws, ts = ws[: mcfg.max_len], ts[: mcfg.max_len]
            self.items.append(encode(ws, vocabs, mcfg.max_word_len))
            self.tags.append(vocabs.tags.encode(ts))
            intents.append(intent)
            self.single.append([counts[w] == 1 for w in ws])
        self.intents = intent_targets(intents)  # (N,) or (N, L)

    def __len__(self) -> int:
        return len(self.items)

    def batches(self, batch_size: int, gen: torch.Generator, pool: int = 50) -> list[list[int]]:
        """Shuffled batches of similar lengths (less padding): sort within pools of
        pool * batch_size shuffled sentences, cut into batches, shuffle the batches."""
        order = torch.randperm(len(self.items), generator=gen).tolist()
        out = []
        step = batch_size * pool
        for p in range(0, len(order), step):
            chunk = sorted(order[p : p + step], key=lambda i: len(self.items[i][0]))
            out.extend(chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size))
        return [out[k] for k in torch.randperm(len(out), generator=gen).tolist()]

    def batch(self, idx: list[int], device, word_dropout: float, gen: torch.Generator):
        words, chars, mask = collate([self.items[i] for i in idx], "cpu")
        tags = torch.full(words.shape, -100, dtype=torch.long)  # -100: ignored by the loss (padding)
        single = torch.zeros(words.shape, dtype=torch.bool)
        for r, i in enumerate(idx):
            tags[r, : len(self.tags[i])] = torch.tensor(self.tags[i])
            single[r, : len(self.single[i])] = torch.tensor(self.single[i])
        if word_dropout > 0:
            drop = (torch.rand(words.shape, generator=gen) < word_dropout) & single
            words = words.masked_fill(drop, 1)  # 1 = <unk>
        intents = self.intents[torch.tensor(idx)]
        return (words.to(device), chars.to(device), mask.to(device), tags.to(device), intents.to(device))


def evaluate_frame(model, vocabs: Vocabs, df: pd.DataFrame, batch_size: int) -> tuple[dict, list[str], list]:
    pred_intents, _, pred_tags = predict_mapped(model, vocabs, df, batch_size)
    gold = [model.canonical_label(i) for i in df["intent"]]
    scores, _, _ = summary(gold, pred_intents, [list(t) for t in df["tags"]], pred_tags)
    return scores, pred_intents, pred_tags


@dataclass
class TrainResult:
    best_state: dict
    best_epoch: int
    best_scores: dict
    history: list[dict]
    device: str
    resumed_from: int  # epochs already done when this run started (0: fresh)
    truncated: int


def _rng_state(gen: torch.Generator) -> dict:
    st = {"torch": torch.get_rng_state(), "gen": gen.get_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(st["torch"])
    gen.set_state(st["gen"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def train(
    train_df: pd.DataFrame,
    dev_df: pd.DataFrame,
    vocabs: Vocabs,
    mcfg: ModelConfig,
    tcfg: TrainConfig,
    seed: int,
    state_path: str | Path | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train the joint model, early-stopping on a dev metric; return the best weights and the history.

    Args:
        train_df, dev_df: processed splits (columns words, word_tags, intent, tokens, tags, keep).
        vocabs: vocabularies built from train.
        mcfg, tcfg: model and training settings.
        seed: seeds weights, batch order, dropout and word dropout.
        state_path: where the per-epoch training state lives; a matching state there is resumed.
        on_epoch: called with each epoch's log row (for progress logging / MLflow).
        progress: show a progress bar per epoch.
    """
    from tqdm import tqdm

    from twinhead import failpoints

    set_determinism(seed, tcfg)
    device = resolve_device(tcfg.device)
    model = build_model(mcfg.to_dict(), vocabs).to(device)
    data = TrainData(train_df, vocabs, mcfg, model.intent_targets)
    if len(data) == 0:
        raise TwinheadError("train split has no sentences with words")
    opt = torch.optim.Adam(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    steps_per_epoch = len(data.batches(tcfg.batch_size, torch.Generator().manual_seed(0)))
    if tcfg.scheduler == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=tcfg.epochs * steps_per_epoch)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    gen = torch.Generator().manual_seed(seed)

    fp = state_identity(mcfg, tcfg, seed, vocabs, train_df, dev_df, device)  # saved as the state's "fingerprint"
    start_epoch, best_score, best_epoch, bad, history = 0, -1.0, 0, 0, []
    best_state, best_scores = None, {}
    if state_path and Path(state_path).exists():
        st = safe_torch_load(state_path)
        why = _state_mismatch(st.get("fingerprint") if st.get("format") == STATE_FORMAT else None, fp)
        if not why:
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["optimizer"])
            sched.load_state_dict(st["scheduler"])
            _set_rng_state(st["rng"], gen)
            start_epoch, best_score, best_epoch, bad = st["epoch"], st["best_score"], st["best_epoch"], st["bad"]
            history, best_state, best_scores = st["history"], st["best_state"], st["best_scores"]
            print(f"resuming from epoch {start_epoch} ({state_path}: the state saved after it; best epoch so far "
                  f"{best_epoch}, {bad} epoch(s) without improvement)", flush=True)
        else:
            print(f"ignoring {state_path}: {why}; training from scratch", flush=True)
    resumed_from = start_epoch

    for epoch in range(start_epoch + 1, tcfg.epochs + 1):
        if tcfg.patience and bad >= tcfg.patience:
            break
        t0 = time.perf_counter()
        model.train()
        batches = data.batches(tcfg.batch_size, gen)
        sums = {"loss": 0.0, "intent_loss": 0.0, "tag_loss": 0.0}
        bar = tqdm(batches, desc=f"epoch {epoch}/{tcfg.epochs}", unit="batch", disable=not progress,
                   mininterval=1.0, leave=False)
        for idx in bar:
            words, chars, mask, tags, intents = data.batch(idx, device, tcfg.word_dropout, gen)
            intent_logits, tag_logits = model(words, chars, mask)
            li = model.intent_head.loss(intent_logits, intents)
            lt = model.tag_head.loss(tag_logits, tags, mask)
            loss = tcfg.intent_weight * li + tcfg.tag_weight * lt
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if tcfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            opt.step()
            sched.step()
            failpoints.hit("train:step")
            n = len(intents)
            sums["loss"] += loss.item() * n
            sums["intent_loss"] += li.item() * n
            sums["tag_loss"] += lt.item() * n
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        bar.close()
        dev, _, _ = evaluate_frame(model, vocabs, dev_df, tcfg.eval_batch_size)
        row = {"epoch": epoch}
        row.update({f"train_{k}": v / len(data) for k, v in sums.items()})
        row.update({f"dev_{k}": dev[k] for k in METRICS})
        row["lr"] = opt.param_groups[0]["lr"]
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        score = dev[tcfg.early_stop_metric]
        if score > best_score:
            best_score, best_epoch, bad = score, epoch, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            best_scores = {f"dev_{k}": v for k, v in dev.items()}
        else:
            bad += 1
        print(f"epoch {epoch}: loss {row['train_loss']:.4f} (intent {row['train_intent_loss']:.4f}, tags "
              f"{row['train_tag_loss']:.4f}) | dev intent acc {dev['intent_accuracy']:.4f} slot F1 "
              f"{dev['slot_f1']:.4f} sentence acc {dev['sentence_accuracy']:.4f} | {row['seconds']:.1f}s"
              + (" *" if best_epoch == epoch else ""), flush=True)
        if state_path:
            st = {
                "format": STATE_FORMAT, "fingerprint": fp, "epoch": epoch,
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": _rng_state(gen),
                "best_score": best_score, "best_epoch": best_epoch, "bad": bad, "history": history,
                "best_state": best_state, "best_scores": best_scores,
            }
            with fileio.atomic_path(state_path) as tmp:
                torch.save(st, tmp)
        if on_epoch:  # after the state is saved: a kill inside the callback loses nothing
            on_epoch(row)
    return TrainResult(best_state, best_epoch, best_scores, history, str(device), resumed_from, data.truncated)
