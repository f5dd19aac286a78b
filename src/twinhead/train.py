"""Training: each trained head's loss (twinhead.heads), combined into gradients by a loss rule (twinhead.mtl).

A run is a TrainState (model, optimizer, schedule, loss rule, RNG, epoch, best score and weights), a
`train_step` (one batch: losses, the rule's backward, clipping, one optimizer step) and an epoch loop with
early stopping on a dev metric. Seeded and resumable: the full state is written after every epoch, so a
killed run started again continues where it stopped and ends exactly where an uninterrupted run would.

The same step serves one process or N (torchrun, train.nproc; twinhead.distributed): each rank trains on its
rows of every global batch, DDP averages the gradients, rank 0 evaluates on dev and its decision reaches all.
On CUDA the step never waits for the device: batches travel from pinned memory without blocking, the losses
are summed on the device and read once per epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import random
import re
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Literal, NamedTuple

import numpy as np
import pandas as pd
import torch
from pydantic import AfterValidator, Field
from torch import nn

from twinhead import distributed, fileio
from twinhead.checkpoint import build_model, safe_torch_load
from twinhead.distributed import GradSync, World
from twinhead.errors import TwinheadError
from twinhead.inference import collate, encode, predict_frame, predict_mapped
from twinhead.metrics import summary
from twinhead.model import JointModel, ModelConfig
from twinhead.mtl import HOLD_MAX_EPOCHS, RULES, LossRule, StepStats, TagHold, make_rule, prior_loss
from twinhead.params import Fraction, NonNegFloat, NonNegInt, PosFloat, PosInt, section
from twinhead.text import bio_to_spans
from twinhead.vectors import init_embeddings
from twinhead.vocab import Vocabs

STATE_FORMAT = "twinhead-train-state/5"
METRICS = ("intent_accuracy", "slot_f1", "sentence_accuracy")  # dev metrics logged per epoch
# the per-epoch log's wall-clock columns: the only ones that differ between two identical runs
TIMING = ("seconds", "train_sentences_per_s", "train_words_per_s")


PCGRAD_ALONE = ("loss_rule 'pcgrad' projects each task's gradient over the whole batch, which no process of a "
                "multi-process run holds: use train.nproc: 1 with it, or another train.loss_rule")


def _device_name(name: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", name):
        raise ValueError("must be auto, cpu, cuda, cuda:<index> or mps")
    return name


@section
class TrainConfig:
    epochs: PosInt = 100  # a cap: early stopping on the dev plateau ends a run (see patience)
    batch_size: PosInt = 64
    lr: PosFloat = 0.003  # Adam learning rate
    # adam: weight_decay is an L2 term added to the gradient (scaled by Adam like the loss's); adamw: the weights
    # shrink by lr * weight_decay every step, apart from the gradient (decoupled, Loshchilov & Hutter 2019)
    optimizer: Literal["adam", "adamw"] = "adam"
    weight_decay: NonNegFloat = 0.0
    # plateau: lr *= lr_decay after lr_patience epochs without dev improvement (ends with the data, not a
    # fixed epoch); cosine: anneal to 0 over `epochs`; none: constant
    scheduler: Literal["plateau", "cosine", "none"] = "plateau"
    lr_decay: Annotated[float, Field(gt=0, lt=1)] = 0.5  # plateau: the factor applied to lr
    lr_patience: NonNegInt = 4  # plateau: epochs without improvement tolerated before lr is decayed
    grad_clip: NonNegFloat = 5.0  # max gradient norm; 0 turns clipping off
    intent_weight: NonNegFloat = 1.0  # loss weight of the intent task
    tag_weight: NonNegFloat = 1.0  # loss weight of the tagging task
    word_dropout: Fraction = 0.25  # probability of reading a word seen once in train as <unk>
    label_smoothing: Fraction = 0.0  # the sentence head's targets: 1 - eps on the gold label, eps spread over all
    # > 0: R-Drop (Liang et al. 2021): each batch runs through the model twice in one pass (independent dropout),
    # each task's loss is the two copies' mean, and the intent loss adds this weight times the symmetric KL
    # divergence between the copies' intent distributions. About twice the work per step. 0: off
    rdrop: NonNegFloat = 0.0
    patience: NonNegInt = 16  # epochs without dev improvement before stopping; 0 never stops early
    early_stop_metric: Literal[METRICS] = "sentence_accuracy"  # the dev metric early stopping follows
    device: Annotated[str, AfterValidator(_device_name)] = "auto"  # auto: CUDA when present, else CPU
    deterministic: bool = True  # deterministic kernels (on GPU: cuDNN deterministic, see README)
    threads: NonNegInt = 1  # CPU threads for torch per process; 0 = torch's default (one per core)
    # CPU: float32 values below 1.2e-38 (denormals) read and written as 0; Adam's moments of rarely seen words
    # and dead units decay into them, and some CPUs compute on them several times slower (README, "CPU threads")
    flush_denormal: bool = True
    eval_batch_size: PosInt = 256
    tasks: Annotated[list[Literal["intent", "tags"]], Field(min_length=1, max_length=2)] = \
        dataclasses.field(default_factory=lambda: ["intent", "tags"])  # one of them: a single-task model
    loss_rule: Literal[RULES] = "uncertainty"  # how the task losses become gradients (twinhead.mtl)
    conflict_every: NonNegInt = 10  # measure task-gradient conflict on every n-th step (0: never)
    calibrate: bool = True  # fit the intent temperature on dev after training (twinhead.calibration)
    nproc: PosInt = 1  # training processes on this node (torchrun + DDP; see README, "Training on torchrun")
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: the forward pass under torch.autocast(bfloat16)
    # > 1: also try the mean of the weights of the best epoch and the n-1 epochs before it (checkpoint
    # averaging); kept when its dev score is at least the best epoch's. 0 or 1: off
    average_last: NonNegInt = 0
    # > 0: the joint model learns the sentence task first: the tag loss is weighted 0.01 until the training
    # intent loss falls below this share of the loss of answering train's label frequencies (at most 3 epochs;
    # twinhead.mtl.TagHold, README "Multi-task learning"). 0: off
    hold_tags: Annotated[float, Field(ge=0, le=1)] = 0.9
    # > 0: mention replacement: each labelled span of a training sentence is, with this probability and anew in
    # every epoch, read as a span of the same type drawn at random from train's (README "Results"); drawn from
    # a generator of its own. 0: off
    mention_replace: Fraction = 0.3
    # where train.mention_replace draws a span from: "type", any span of its type in train; "label", a span of
    # its type in a sentence with the same label (as written: a multi-label "a#b" and "b#a" are two), so that a
    # title never moves to a sentence of another intent; "split", drawn as "type" draws, but a sentence that took
    # a span from a sentence of another label trains the tags only (its intent loss is left out); "split_weighted",
    # as "split", with each kept sentence's intent loss weighted by 1 / its label's kept share in the epoch, so
    # that every label weighs in the intent loss as it does without replacement (a rare label loses more)
    mention_pool: Literal["type", "label", "split", "split_weighted"] = "type"

    def __post_init__(self):
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks lists a task twice: {self.tasks}")
        weights = self.task_weights()
        if not any(weights.values()):
            raise ValueError("every trained task has loss weight 0: nothing to learn")
        if self.loss_rule == "uncertainty" and any(w != 1 for w in weights.values()):
            raise ValueError("loss_rule 'uncertainty' learns the task weights: intent_weight and tag_weight must be 1")
        if self.loss_rule == "pcgrad" and self.nproc > 1:
            raise ValueError(PCGRAD_ALONE)

    def task_weights(self) -> dict[str, float]:
        return {t: {"intent": self.intent_weight, "tags": self.tag_weight}[t] for t in self.tasks}


def resolve_device(name: str, world: World | None = None) -> torch.device:
    """train.device as a torch device. Among N processes, 'auto' and 'cuda' mean this rank's own GPU
    (cuda:<local rank>); a fixed cuda:<index> would put every rank on one GPU and is refused."""
    world = world or World()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TwinheadError(f"params: train.device={name!r} but CUDA is not available here")
    if world.size > 1 and name.startswith("cuda"):
        if name != "cuda":
            raise TwinheadError(f"params.yaml: train.device is {name!r}, one GPU for all {world.size} processes; "
                                "use cuda or auto (each process takes the GPU of its local rank)")
        return torch.device("cuda", world.local_rank)
    return torch.device(name)


def set_determinism(seed: int, tcfg: TrainConfig, rank: int = 0) -> None:
    random.seed(seed)
    np.random.seed(seed)
    # Rank 0 draws what a single process draws; the others their own dropout masks (not rank 0's copies).
    torch.manual_seed(seed if rank == 0 else seed + 1_000_003 * rank)
    # Per thread, for the whole process (like the thread count): torch's worker threads started after this
    # inherit it, the ones already running do not (one thread, the default, has none).
    torch.set_flush_denormal(tcfg.flush_denormal)
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
        # calibration runs after training: switching it does not make a saved state another run's
        "params": fingerprint(mcfg.to_dict(), asdict(tcfg) | {"device": None, "threads": None, "calibrate": None},
                              seed),
        "data": fingerprint(vocabs.to_lists(), train_df[["words", "word_tags", "intent"]].map(list).values.tolist(),
                            dev_df[["words", "tags", "intent"]].map(list).values.tolist()),
        "code": code_digest(),
        "torch version": str(torch.__version__),  # a plain str: TorchVersion does not load weights-only
        "device": str(device),
        "threads": str(torch.get_num_threads()),
        "processes": str(distributed.current().size),
    }


def _state_mismatch(saved, now: dict[str, str]) -> str:
    """Why a saved state's identity differs from this run's ('' when it matches)."""
    if not isinstance(saved, dict):
        return "it was saved by an older version of twinhead"
    diffs = [k if len(now[k]) > 32 else f"{k} ({saved.get(k)} -> {now[k]})"
             for k in now if saved.get(k) != now[k]]
    return f"it belongs to other {', '.join(diffs)}" if diffs else ""


class Batch(NamedTuple):
    """One rank's rows of a training batch, on the device (lengths on the host, for the LSTM's packing)."""

    words: torch.Tensor  # (B, T)
    chars: torch.Tensor  # (B, T, C)
    mask: torch.Tensor  # (B, T) bool
    tags: torch.Tensor  # (B, T), -100 at padding
    intents: torch.Tensor  # (B,) ids or (B, L) multi-hot
    lengths: torch.Tensor | None = None  # (B,) int64 on the host
    # each task loss's factor: this rank's share of the batch times the number of ranks, so that DDP's mean
    # over ranks is the loss of the whole batch (1.0 with one process; 0 for a rank with no rows)
    scale: dict[str, float] | None = None
    # (B,) float32: each row's weight in the intent loss, a weighted mean (train.mention_pool "split": 0 or 1;
    # "split_weighted": 0 or more); None: the plain mean
    intent_weight: torch.Tensor | None = None

    def twice(self) -> Batch:
        """The rows stacked on themselves, (2B, ...): R-Drop's one pass over two copies (scale kept)."""
        return self._replace(**{f: torch.cat([v, v]) for f, v in self._asdict().items() if torch.is_tensor(v)})


class TrainData:
    """Encoded train split, a sentence as arrays (so that a batch is one copy per sentence, not a tensor per word):
    word ids (n,), char ids (n, its longest word's length) as `collate` pads them, tag ids (n,), which words are
    singletons (n,); the sentence head's targets (label ids, or multi-hot rows)."""

    def __init__(self, df: pd.DataFrame, vocabs: Vocabs, mcfg: ModelConfig, intent_targets: Callable):
        self.arrays, intents = [], []
        self.spans: list[list[tuple[int, int, str]]] = []  # each sentence's labelled spans (start, end, type)
        self.truncated = 0
        self.max_len = mcfg.max_len
        counts = Counter(w for ws in df["words"] for w in ws)
        for ws, ts, intent in zip(df["words"], df["word_tags"], df["intent"]):
            ws, ts = list(ws), list(ts)
            if not ws:
                continue
            if len(ws) > mcfg.max_len:  # training reads the first max_len words; counted and reported
                self.truncated += 1
                ws, ts = ws[: mcfg.max_len], ts[: mcfg.max_len]
            words, chars, _ = collate([encode(ws, vocabs, mcfg.max_word_len)], "cpu")  # (1, n), (1, n, C)
            self.arrays.append((words[0].numpy(), chars[0].numpy(), np.asarray(vocabs.tags.encode(ts), dtype=np.int64),
                                np.array([counts[w] == 1 for w in ws])))
            self.spans.append(bio_to_spans(ts))
            intents.append(intent)
        self.intents = intent_targets(intents)  # (N,) or (N, L)
        self.lengths = np.array([len(a[0]) for a in self.arrays], dtype=np.int64)  # words per sentence
        self.words = int(self.lengths.sum())  # words read per epoch (this epoch's, with train.mention_replace)
        # the sentences as this epoch reads them: train.mention_replace's changed ones (else none) and all lengths
        self.epoch_arrays: dict[int, tuple] = {}
        self.epoch_lengths = self.lengths
        # train.mention_pool "split"/"split_weighted": every sentence's weight in this epoch's intent loss (N,), 0
        # for those that took a span from a sentence of another label; None: every sentence counts alike
        self.epoch_intent_weight: np.ndarray | None = None
        # train.mention_replace's pools: every span of train by type, and by (type, the sentence's label as
        # written), as (sentence, start, end); a span is drawn from its own sentence's pool
        self.labels = intents
        self.label_counts = Counter(intents)  # sentences per label as written (split_weighted's n_label)
        self.mentions: dict[str | tuple[str, str], list[tuple[int, int, int]]] = {}
        for i, (spans, label) in enumerate(zip(self.spans, intents)):
            for s, e, typ in spans:
                self.mentions.setdefault(typ, []).append((i, s, e))
                self.mentions.setdefault((typ, label), []).append((i, s, e))

    def __len__(self) -> int:
        return len(self.arrays)

    def batches(self, batch_size: int, gen: torch.Generator, pool: int = 50) -> list[list[int]]:
        """Shuffled batches of similar lengths (less padding): sort within pools of
        pool * batch_size shuffled sentences, cut into batches, shuffle the batches."""
        order = torch.randperm(len(self), generator=gen).tolist()
        out = []
        step = batch_size * pool
        for p in range(0, len(order), step):
            chunk = sorted(order[p : p + step], key=lambda i: self.epoch_lengths[i])
            out.extend(chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size))
        return [out[k] for k in torch.randperm(len(out), generator=gen).tolist()]

    def draw_mentions(self, p: float, gen: torch.Generator, pool: str = "type") -> None:
        """train.mention_replace, before an epoch's batches: this epoch's sentences, each span replaced with
        probability p (`replaced`). The batches are then cut by the new lengths, so a batch still holds few
        lengths (the CPU's LSTM runs once per length: mixed lengths would cost up to 1.7 times the time)."""
        crossed: set[int] | None = set() if pool in ("split", "split_weighted") else None  # looked for by these only
        self.epoch_arrays = self.replaced(range(len(self)), p, gen, pool, crossed)
        self.epoch_intent_weight = None
        if crossed is not None:
            w = np.ones(len(self), dtype=np.float32)
            w[sorted(crossed)] = 0
            if pool == "split_weighted":  # n_label / kept_label for a kept sentence: each label's weight is n_label
                n = self.label_counts
                kept = n - Counter(self.labels[i] for i in crossed)
                w *= np.array([n[lab] / kept[lab] if kept[lab] else 0.0 for lab in self.labels], dtype=np.float32)
            self.epoch_intent_weight = w
        self.epoch_lengths = self.lengths.copy()
        for i, a in self.epoch_arrays.items():
            self.epoch_lengths[i] = len(a[0])
        self.words = int(self.epoch_lengths.sum())

    def replaced(self, idx, p: float, gen: torch.Generator, pool: str = "type",
                 crossed: set[int] | None = None) -> dict[int, tuple]:
        """train.mention_replace: for the sentences `idx`, each span replaced with probability p by a span of its
        type drawn from train (the same words, characters, tags and singleton flags as where it was drawn), from
        a sentence of the same label too if `pool` is "label" (train.mention_pool; the "split" pools draw as "type");
        {sentence: its arrays} for the sentences that changed, and into `crossed` those of them that took a span
        from a sentence of another label. Two draws per span, whatever the outcome, from a generator every rank
        seeds alike; a sentence that would outgrow model.max_len keeps its words."""
        spans = [(i, s, e, typ) for i in idx for s, e, typ in self.spans[i]]
        if not spans:
            return {}
        hit, pick = torch.rand((2, len(spans)), generator=gen).tolist()
        swap: dict[int, list[tuple[int, int, int, int, int]]] = {}  # sentence -> (start, end, from, start, end)
        for (i, s, e, typ), h, k in zip(spans, hit, pick):
            if h < p:
                spans_of = self.mentions[(typ, self.labels[i]) if pool == "label" else typ]
                swap.setdefault(i, []).append((s, e, *spans_of[min(int(k * len(spans_of)), len(spans_of) - 1)]))
        out = {}
        for i, subs in swap.items():
            pieces, at = [], 0  # (sentence, start, end): the sentence's own words and the spans put in
            for s, e, j, s2, e2 in subs:  # in the sentence's order
                pieces += [(i, at, s), (j, s2, e2)]
                at = e
            pieces.append((i, at, len(self.arrays[i][0])))
            n = sum(e - s for _, s, e in pieces)
            if n > self.max_len:
                continue
            w, tg = np.empty(n, np.int64), np.empty(n, np.int64)
            ch = np.zeros((n, max(self.arrays[j][1].shape[1] for j, _, _ in pieces)), np.int64)
            sg = np.empty(n, bool)
            at = 0
            for j, s, e in pieces:  # filled in place: 4-5 times faster than padding and joining the pieces
                a, k = self.arrays[j], e - s
                w[at : at + k], tg[at : at + k], sg[at : at + k] = a[0][s:e], a[2][s:e], a[3][s:e]
                ch[at : at + k, : a[1].shape[1]] = a[1][s:e]
                at += k
            out[i] = (w, ch, tg, sg)
            if crossed is not None and any(self.labels[j] != self.labels[i] for j, _, _ in pieces):
                crossed.add(i)
        return out

    def batch(self, idx: list[int], device, word_dropout: float, gen: torch.Generator,
              world: World | None = None) -> Batch:
        """This rank's rows of the batch `idx` (all of them with one process) on `device`, as this epoch
        reads them (`draw_mentions`)."""
        world = world or World()
        device = torch.device(device)
        arrays = [self.epoch_arrays.get(i) or self.arrays[i] for i in idx]
        lens = self.epoch_lengths[idx].tolist()
        # Drawn for the whole batch on every rank: the draws of one process, and the generator (which orders
        # the next batches) stays in step on all ranks.
        draws = torch.rand((len(idx), max(lens)), generator=gen) if word_dropout > 0 else None
        rows = distributed.shard_rows(len(idx), world)
        scale = None
        weight = None if self.epoch_intent_weight is None else self.epoch_intent_weight[idx]
        if world.size > 1:
            n_words = sum(lens[r] for r in rows)
            if weight is None:
                scale = {"intent": world.size * len(rows) / len(idx)}
            else:  # this rank's share of the batch's intent weight: its intent loss is the mean over its rows
                total = float(weight.sum())
                scale = {"intent": world.size * float(weight[rows].sum()) / total if total > 0 else 0.0}
            scale["tags"] = world.size * n_words / sum(lens)
            rows = rows or [0]  # no rows left for this rank: it still takes part, with a weight of 0
        mine = [idx[r] for r in rows]
        # collate's tensors (words (B, T), chars (B, T, C), mask (B, T)), from the arrays built once
        n = np.array([lens[r] for r in rows], dtype=np.int64)
        t, c = int(n.max()), max(arrays[r][1].shape[1] for r in rows)
        words = np.zeros((len(mine), t), dtype=np.int64)
        chars = np.zeros((len(mine), t, c), dtype=np.int64)
        tags = np.full((len(mine), t), -100, dtype=np.int64)  # -100: ignored by the loss (padding)
        single = np.zeros((len(mine), t), dtype=bool)
        for r, row in enumerate(rows):
            w, ch, tg, sg = arrays[row]
            words[r, : len(w)], tags[r, : len(w)], single[r, : len(w)] = w, tg, sg
            chars[r, : len(w), : ch.shape[1]] = ch
        words, chars, tags = torch.from_numpy(words), torch.from_numpy(chars), torch.from_numpy(tags)
        mask = torch.from_numpy(np.arange(t) < n[:, None])
        if draws is not None:
            drop = (draws[rows, :t] < word_dropout) & torch.from_numpy(single)
            words = words.masked_fill(drop, 1)  # 1 = <unk>
        intents = self.intents[torch.tensor(mine)]
        lengths = torch.from_numpy(n)
        tensors = {"words": words, "chars": chars, "mask": mask, "tags": tags, "intents": intents}
        if weight is not None:
            tensors["intent_weight"] = torch.from_numpy(weight[rows])
        for k, t in tensors.items():  # CUDA: pinned, so the copies return at once and overlap the step before
            tensors[k] = t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)
        return Batch(**tensors, lengths=lengths, scale=scale)


class TaskLosses(nn.Module):
    """The trained tasks' losses on a batch. This is what DDP wraps: it holds every trained parameter (the
    model's and the loss rule's learned task weights), so that one step serves one process or N."""

    def __init__(self, model: JointModel, rule: LossRule, tasks: list[str], label_smoothing: float = 0.0,
                 rdrop: float = 0.0):
        super().__init__()
        self.model, self.rule, self.tasks = model, rule, list(tasks)
        self.label_smoothing, self.rdrop = label_smoothing, rdrop

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        model = self.model
        twice = self.rdrop > 0 and model.training  # R-Drop: the batch twice, each copy its own dropout draws
        rows = batch.twice() if twice else batch  # a loss's mean over both copies' rows: the copies' losses' mean
        intent_logits, tag_scores = model(rows.words, rows.chars, rows.mask, rows.lengths)
        losses = {}
        if "intent" in self.tasks:
            head = model.intent_head
            losses["intent"] = head.loss(intent_logits, rows.intents, self.label_smoothing, rows.intent_weight)
            if twice:
                losses["intent"] = losses["intent"] + self.rdrop * head.divergence(*intent_logits.chunk(2),
                                                                                   batch.intent_weight)
        if "tags" in self.tasks:
            losses["tags"] = model.tag_head.loss(tag_scores, rows.tags, rows.mask)
        if batch.scale is not None:
            losses = {t: v * batch.scale[t] for t, v in losses.items()}
        return losses


def evaluate_frame(model, vocabs: Vocabs, df: pd.DataFrame, batch_size: int) -> tuple[dict, list[str], list]:
    pred_intents, _, pred_tags = predict_mapped(model, vocabs, df, batch_size)
    gold = [model.canonical_label(i) for i in df["intent"]]
    scores, _, _ = summary(gold, pred_intents, [list(t) for t in df["tags"]], pred_tags)
    return scores, pred_intents, pred_tags


def fit_calibration(model: JointModel, vocabs: Vocabs, dev_df: pd.DataFrame, batch_size: int) -> dict:
    """The intent temperature fitted on the dev split (minimum NLL), with dev's ECE before and after.

    Returns the checkpoint's "calibration" record: temperature, fitted_on ("dev", or None when nothing was
    fitted: a multi-label head, or no dev sentence with a label seen in train), the dev sentences used and
    dev_intent_ece / dev_intent_ece_uncalibrated. Dev sentences whose intent never occurs in train are left
    out: no temperature can give them probability.
    """
    from twinhead.calibration import expected_calibration_error, fit_temperature, softmax

    none = {"temperature": 1.0, "fitted_on": None}
    if model.intent_head.multi_label:
        return none
    index = {lab: k for k, lab in enumerate(vocabs.intents.itos)}
    known = dev_df[dev_df["intent"].isin(index)]
    if not len(known):
        return none
    logits = predict_frame(model, vocabs, known, batch_size).logits  # (N, L)
    labels = np.array([index[i] for i in known["intent"]])
    t = fit_temperature(logits, labels)
    right = logits.argmax(1) == labels  # the same at every temperature

    def ece(temperature: float) -> float:
        return expected_calibration_error(softmax(logits, temperature).max(1), right)

    return {"temperature": t, "fitted_on": "dev", "dev_sentences": int(len(known)),
            "dev_intent_ece": ece(t), "dev_intent_ece_uncalibrated": ece(1.0)}


def selection_score(dev: dict, metric: str) -> tuple[float, float]:
    """The early-stopping score: the chosen dev metric, ties broken by the mean of the dev metrics (so that
    while sentence accuracy is still 0 on small or hard data, progress on the tasks still counts)."""
    return (dev[metric], sum(dev[k] for k in METRICS) / len(METRICS))


@dataclass
class TrainResult:
    best_state: dict
    best_epoch: int
    best_scores: dict
    history: list[dict]
    device: str
    resumed_from: int  # epochs already done when this run started (0: fresh)
    truncated: int
    model_config: ModelConfig  # as trained (intent_to_tags is off when the intent task is not trained)
    rule_state: dict  # the loss rule's learned state at the end (uncertainty: the task log-variances)
    vectors: dict | None = None  # model.vectors' coverage of the vocabulary (Coverage.to_dict), None when off
    # train.average_last: the epochs averaged, their dev scores, the best epoch's, and whether the mean was kept
    average: dict | None = None


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


@dataclass
class TrainState:
    """Everything a run needs to continue exactly where it stopped; saved after every epoch."""

    model: JointModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler  # per step, or per epoch when ReduceLROnPlateau
    rule: LossRule  # how the task losses become gradients; holds learned task weights (uncertainty)
    gen: torch.Generator  # batch order, word dropout, pcgrad's order
    sync: GradSync  # the losses module (DDP-wrapped among N processes) and how gradients reach every rank
    epoch: int = 0  # epochs done
    best_score: tuple[float, float] = (-1.0, -1.0)  # selection_score of the best epoch
    best_epoch: int = 0
    bad: int = 0  # epochs since the dev score last improved
    history: list[dict] = field(default_factory=list)
    best_state: dict | None = None
    best_scores: dict = field(default_factory=dict)
    recent: list[dict] = field(default_factory=list)  # train.average_last: the last epochs' weights, oldest first
    best_window: list[dict] = field(default_factory=list)  # ...as they were at the best epoch
    hold: TagHold | None = None  # train.hold_tags: the tag loss held until the intent loss moves (None: off)
    mention_gen: torch.Generator | None = None  # train.mention_replace's draws (None: off)

    def step_hold(self, stats: StepStats) -> str | None:
        """Count a training step's intent loss towards train.hold_tags' hold: the line saying the hold ended,
        at the step it ends, else None. Among N processes a window's mean is taken over all ranks, so every
        rank lifts it at the same step; one host read per window, and none once it has ended."""
        if self.hold is None:
            return None
        world = self.sync.world
        return self.hold.step(stats.task_losses["intent"], lambda t: distributed.all_sum(t, world) / world.size)

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch, "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "rule": {k: v.detach().cpu() for k, v in self.rule.state_dict().items()}, "rng": _rng_state(self.gen),
            "best_score": self.best_score, "best_epoch": self.best_epoch, "bad": self.bad, "history": self.history,
            "best_state": self.best_state, "best_scores": self.best_scores,
            "recent": self.recent, "best_window": self.best_window,
            "hold": self.hold.state_dict() if self.hold else None,
            "mention_rng": self.mention_gen.get_state() if self.mention_gen else None,
        }

    def load_state_dict(self, st: dict) -> None:
        self.model.load_state_dict(st["model"])
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self.rule.load_state_dict(st["rule"])
        _set_rng_state(st["rng"], self.gen)
        self.epoch, self.best_score = st["epoch"], st["best_score"]
        self.best_epoch, self.bad = st["best_epoch"], st["bad"]
        self.history, self.best_state, self.best_scores = st["history"], st["best_state"], st["best_scores"]
        self.recent, self.best_window = st["recent"], st["best_window"]
        if self.hold and st["hold"]:
            self.hold.load_state_dict(st["hold"])
        if self.mention_gen is not None and st.get("mention_rng") is not None:
            self.mention_gen.set_state(st["mention_rng"])


def new_state(model: JointModel, tcfg: TrainConfig, steps_per_epoch: int, seed: int,
              world: World | None = None, intents: torch.Tensor | None = None) -> TrainState:
    """Fresh optimizer (Adam or AdamW; the rule's learned weights without weight decay), schedule, rule and RNG; among
    N processes the losses module is wrapped in DDP (which gives every rank rank 0's weights). With `intents`,
    the sentence head's training targets (TrainData.intents), train.hold_tags holds the tag loss (`tag_hold`)."""
    world = world or World()
    if world.size > 1 and tcfg.loss_rule == "pcgrad":
        raise TwinheadError(f"params.yaml: train.loss_rule: {PCGRAD_ALONE} ({world.size} processes here)")
    gen = torch.Generator().manual_seed(seed)
    rule = make_rule(tcfg.loss_rule, tcfg.tasks, tcfg.task_weights(), gen).to(next(model.parameters()).device)
    # grad_mean writes .grad itself (autograd.grad per task); sum and uncertainty are one backward, which
    # DDP's hooks reduce. One task: every rule is one backward, and the other head gets no gradient.
    sync = GradSync(TaskLosses(model, rule, tcfg.tasks, tcfg.label_smoothing, tcfg.rdrop), world,
                    rule_writes_grads=tcfg.loss_rule == "grad_mean" and len(tcfg.tasks) > 1,
                    find_unused=len(tcfg.tasks) == 1)
    groups = [{"params": list(model.parameters())}]
    if list(rule.parameters()):
        groups.append({"params": list(rule.parameters()), "weight_decay": 0.0})
    # fused: one kernel for all parameters instead of a loop over them (-0.8 CPU s per epoch of the development
    # set on the CPU, benchmarks/spacy_peer.py --profile)
    fused = next(model.parameters()).device.type in ("cpu", "cuda")
    opt_class = torch.optim.AdamW if tcfg.optimizer == "adamw" else torch.optim.Adam
    opt = opt_class(groups, lr=tcfg.lr, weight_decay=tcfg.weight_decay, fused=fused)
    if tcfg.scheduler == "plateau":  # stepped once per epoch on the dev metric (threshold 0: any gain counts)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=tcfg.lr_decay,
                                                           patience=tcfg.lr_patience, threshold=0.0)
    elif tcfg.scheduler == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=tcfg.epochs * steps_per_epoch)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    hold = tag_hold(model, rule, tcfg, intents, steps_per_epoch) if intents is not None else None
    # its own stream, not the seed's next one (which another seed's run would share as its gen)
    mention_gen = torch.Generator().manual_seed(seed * 1_000_003 + 7) if tcfg.mention_replace > 0 else None
    return TrainState(model, opt, sched, rule, gen, sync, hold=hold, mention_gen=mention_gen)


def tag_hold(model: JointModel, rule: LossRule, tcfg: TrainConfig, intents: torch.Tensor,
             steps_per_epoch: int) -> TagHold | None:
    """train.hold_tags' hold on the tag loss, or None where it has nothing to do: off, a single-task run, a
    task weighted 0, or one sentence label (its loss starts at 0: there is nothing to learn first)."""
    if not (tcfg.hold_tags and set(tcfg.tasks) == {"intent", "tags"} and tcfg.intent_weight and tcfg.tag_weight):
        return None
    level = tcfg.hold_tags * prior_loss(model.intent_head, intents, tcfg.label_smoothing)
    return TagHold(rule, level, HOLD_MAX_EPOCHS * steps_per_epoch) if level > 0 else None


@functools.cache
def cpu_bf16_lstm() -> bool:
    """Whether this CPU runs an LSTM under bfloat16 autocast: oneDNN builds that kernel only where the CPU has
    bfloat16 instructions (AVX-512 BF16, AMX); on others (AVX2) it raises "could not create a primitive
    descriptor for the LSTM forward propagation primitive". Probed once, on a 1-word LSTM."""
    lstm = nn.LSTM(2, 2, batch_first=True)
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            lstm(torch.zeros(1, 1, 2))
    except RuntimeError:
        return False
    return True


@functools.cache
def _warn_no_bf16_lstm() -> None:
    warnings.warn("train.precision=bf16: this CPU has no bfloat16 LSTM kernel (oneDNN needs AVX-512 BF16 or "
                  "AMX); the LSTM runs in float32, the other layers in bfloat16", stacklevel=4)


@contextlib.contextmanager
def _without_onednn():
    """oneDNN off for the block: torch's own CPU kernels run (its LSTM computes in float32 under autocast)."""
    was = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = was


def autocast(device: torch.device, precision: str):
    """The forward pass's precision: bf16 runs it under torch.autocast (CPU and CUDA); fp32 changes nothing.
    On a CPU without bfloat16 instructions oneDNN cannot run the LSTM in bf16: the forward then runs without
    oneDNN, so the LSTM computes in float32 and the rest (linear layers, CNN) in bfloat16, with a warning."""
    if precision != "bf16":
        return contextlib.nullcontext()
    if device.type == "cpu" and not cpu_bf16_lstm():
        _warn_no_bf16_lstm()
        stack = contextlib.ExitStack()
        stack.enter_context(_without_onednn())
        stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
        return stack
    return torch.autocast(device.type, dtype=torch.bfloat16)


def train_step(state: TrainState, batch: Batch, tcfg: TrainConfig, measure_conflict: bool = False) -> StepStats:
    """One optimizer step on one batch (this rank's rows of it): each trained head's loss, the loss rule's
    gradients (averaged over the ranks), clipping. Nothing here waits for the device.

    Returns the rule's StepStats (detached tensors: reading them is the only host-device sync)."""
    model = state.model
    if not isinstance(batch, Batch):  # a plain (words, chars, mask, tags, intents) tuple
        batch = Batch(*batch)
    with state.sync.context():
        with autocast(batch.words.device, tcfg.precision):
            losses = state.sync.net(batch)
        state.optimizer.zero_grad(set_to_none=True)
        heads = {t: ps for t, ps in model.head_parameters().items() if t in losses}
        stats = state.rule.backward(losses, model.parameters(), heads, measure_conflict)
    state.sync.finish()
    if tcfg.grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
    state.optimizer.step()
    if not isinstance(state.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        state.scheduler.step()
    return stats


def run_epoch(state: TrainState, data: TrainData, tcfg: TrainConfig, device, progress: bool = True) -> dict:
    """One pass over the shuffled train batches; returns the epoch's mean losses, effective task weights
    and mean gradient cosine between the tasks (on every `conflict_every`-th step) as train_* floats, and
    the training speed (train_sentences_per_s, train_words_per_s: all ranks together).

    Among N processes the sums are added over the ranks once, at the end: the losses are those of the whole
    batches, as with one process; the gradient cosine is the mean of the ranks' (each on its own rows)."""
    from tqdm import tqdm

    from twinhead import failpoints

    world = state.sync.world
    t0 = time.perf_counter()
    state.model.train()
    sums: dict[str, torch.Tensor | float] = {}
    cosines = []
    if state.mention_gen is not None:
        data.draw_mentions(tcfg.mention_replace, state.mention_gen, tcfg.mention_pool)
    batches = data.batches(tcfg.batch_size, state.gen)
    bar = tqdm(batches, desc=f"epoch {state.epoch + 1}/{tcfg.epochs}", unit="batch",
               disable=not (progress and world.main), mininterval=1.0, leave=False)
    for step, idx in enumerate(bar, start=1):
        measure = bool(tcfg.conflict_every) and step % tcfg.conflict_every == 0 and len(tcfg.tasks) > 1
        stats = train_step(state, data.batch(idx, device, tcfg.word_dropout, state.gen, world), tcfg, measure)
        failpoints.hit("train:step")
        said = state.step_hold(stats)
        if said and world.main:
            bar.write(f"epoch {state.epoch + 1}, {said}")
        # a rank's stats are its share of the batch's, times the number of ranks (Batch.scale)
        n = len(idx) if world.size == 1 else len(idx) / world.size
        parts = {"loss": stats.loss, **{f"{t}_loss": v for t, v in stats.task_losses.items()},
                 **{f"{t}_weight": v for t, v in stats.weights.items()}}
        for k, v in parts.items():  # tensors stay on the device: no sync per step
            sums[k] = sums.get(k, 0.0) + (v.detach() if isinstance(v, torch.Tensor) else v) * n
        if stats.cosine is not None:
            cosines.append(stats.cosine.detach())
    bar.close()
    keys = list(sums)
    vals = [sums[k] for k in keys] + ([torch.stack(cosines).mean()] if cosines else [])
    if world.size == 1:
        read = [float(v) for v in vals]
    else:  # one all-reduce for all of them (on the device: NCCL reduces CUDA tensors only)
        packed = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).reshape(()) for v in vals])
        read = (distributed.all_sum(packed, world) / torch.tensor([1.0] * len(keys) + [world.size] * bool(cosines),
                                                                  dtype=torch.float64, device=device)).tolist()
    row = {f"train_{k}": v / len(data) for k, v in zip(keys, read)}
    row["train_grad_cosine"] = read[-1] if cosines else None  # None: not measured
    seconds = time.perf_counter() - t0  # after the read above, which waits for the device to finish
    row["train_sentences_per_s"] = len(data) / seconds
    row["train_words_per_s"] = data.words / seconds
    return row


def _rank_rng() -> dict:
    """This process's own RNG (dropout): the CPU one and, on CUDA, its GPU's."""
    st = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def _set_rank_rng(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


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
    """Train the model on `tcfg.tasks`, early-stopping on a dev metric; return the best weights and the history.

    Inside an initialised process group (torchrun; twinhead.distributed.process_group) every rank calls this
    with the same arguments: each trains on its rows of every batch; rank 0 alone evaluates on dev, prints,
    writes the state and calls `on_epoch`; every rank returns the same result.

    Args:
        train_df, dev_df: processed splits (columns words, word_tags, intent, tokens, tags, keep).
        vocabs: vocabularies built from train.
        mcfg, tcfg: model and training settings.
        seed: seeds weights, batch order, dropout and word dropout.
        state_path: where the per-epoch training state lives; a matching state there is resumed.
        on_epoch: called with each epoch's log row (for progress logging / MLflow).
        progress: show a progress bar per epoch.
    """
    world = distributed.current()
    say = print if world.main else (lambda *a, **k: None)
    set_determinism(seed, tcfg, world.rank)
    device = resolve_device(tcfg.device, world)
    if "intent" not in tcfg.tasks and mcfg.intent_to_tags:
        # An untrained intent head would feed noise to the tagger.
        say("model.intent_to_tags is off: the intent task is not trained (train.tasks)", flush=True)
        mcfg = dataclasses.replace(mcfg, intent_to_tags=False)
    model = build_model(mcfg.to_dict(), vocabs).to(device)
    vectors = None
    if mcfg.vectors:
        vectors = init_embeddings(model.word_emb, vocabs.words.itos, mcfg.vectors)
        say(f"model.vectors: {vectors.found} of {vectors.vocab_words} vocabulary words ({vectors.coverage:.1%}) "
            f"start from {mcfg.vectors}" + (f", {vectors.found_lowercased} of them by their lowercased form"
                                            if vectors.found_lowercased else ""), flush=True)
    data = TrainData(train_df, vocabs, mcfg, model.intent_targets)
    if len(data) == 0:
        raise TwinheadError("train split has no sentences with words")
    steps_per_epoch = len(data.batches(tcfg.batch_size, torch.Generator().manual_seed(0)))
    state = new_state(model, tcfg, steps_per_epoch, seed, world, intents=data.intents)

    fp = state_identity(mcfg, tcfg, seed, vocabs, train_df, dev_df, device)  # saved as the state's "fingerprint"
    saved = None
    if world.main and state_path and Path(state_path).exists():
        st = safe_torch_load(state_path)
        why = _state_mismatch(st.get("fingerprint") if st.get("format") == STATE_FORMAT else None, fp)
        if not why:
            saved = st
        else:
            print(f"ignoring {state_path}: {why}; training from scratch", flush=True)
    saved = distributed.broadcast(saved, world)  # rank 0 reads the state; every rank resumes from it
    if saved is not None:
        state.load_state_dict(saved)
        if world.size > 1 and not world.main:
            _set_rank_rng(saved["rank_rng"][world.rank])
        say(f"resuming from epoch {state.epoch} ({state_path}: the state saved after it; best epoch so far "
            f"{state.best_epoch}, {state.bad} epoch(s) without improvement)", flush=True)
    resumed_from = state.epoch

    while state.epoch < tcfg.epochs and not (tcfg.patience and state.bad >= tcfg.patience):
        t0 = time.perf_counter()
        row = {"epoch": state.epoch + 1, **run_epoch(state, data, tcfg, device, progress)}
        state.epoch += 1
        dev = evaluate_frame(model, vocabs, dev_df, tcfg.eval_batch_size)[0] if world.main else None
        # Rank 0's dev scores decide for all: early stopping and the plateau schedule's lr stay in step.
        dev = distributed.broadcast(dev, world)
        row.update({f"dev_{k}": dev[k] for k in METRICS})
        row["lr"] = state.optimizer.param_groups[0]["lr"]
        row["seconds"] = time.perf_counter() - t0
        state.history.append(row)
        score = selection_score(dev, tcfg.early_stop_metric)
        if isinstance(state.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            state.scheduler.step(score[0])  # the lr of the next epoch; row["lr"] is this epoch's
        improved = score > state.best_score
        if tcfg.average_last > 1 or improved:  # a copy of this epoch's weights only when one is kept
            weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if tcfg.average_last > 1:
            state.recent = [*state.recent, weights][-tcfg.average_last:]
        if improved:
            state.best_score, state.best_epoch, state.bad = score, state.epoch, 0
            state.best_state, state.best_window = weights, list(state.recent)
            state.best_scores = {f"dev_{k}": v for k, v in dev.items()}
        else:
            state.bad += 1
        losses = ", ".join(f"{t} {row[f'train_{t}_loss']:.4f}" for t in tcfg.tasks)
        cos = row["train_grad_cosine"]
        conflict = f" | grad cos {cos:+.2f}" if cos is not None else ""
        say(f"epoch {state.epoch}: loss {row['train_loss']:.4f} ({losses}){conflict} | dev intent acc "
            f"{dev['intent_accuracy']:.4f} slot F1 {dev['slot_f1']:.4f} sentence acc {dev['sentence_accuracy']:.4f}"
            f" | {row['train_sentences_per_s']:.0f} sentences/s | {row['seconds']:.1f}s"
            + (" *" if state.best_epoch == state.epoch else ""), flush=True)
        ranks_rng = distributed.gather(_rank_rng(), world) if world.size > 1 else None
        if state_path and world.main:
            extra = {"rank_rng": ranks_rng} if ranks_rng else {}
            with fileio.atomic_path(state_path) as tmp:
                torch.save({"format": STATE_FORMAT, "fingerprint": fp, **state.state_dict(), **extra}, tmp)
        if on_epoch and world.main:  # after the state is saved: a kill inside the callback loses nothing
            on_epoch(row)
    if world.main and tcfg.patience and state.bad < tcfg.patience and state.epoch >= tcfg.epochs > resumed_from:
        warnings.warn(f"train.epochs={tcfg.epochs} ended training {state.bad} epoch(s) after the best dev epoch "
                      f"{state.best_epoch}, before early stopping would have (train.patience={tcfg.patience}): "
                      "dev may still improve; raise train.epochs", stacklevel=2)
    average = None
    if len(state.best_window) > 1:
        average = try_average(state, model, vocabs, dev_df, tcfg, world)
        say(f"mean of the weights of epochs {average['epochs'][0]}-{average['epochs'][-1]}: dev "
            + ", ".join(f"{k[4:]} {v:.4f}" for k, v in average["dev_scores"].items() if k[4:] in METRICS)
            + (": kept" if average["kept"] else f": not kept, epoch {state.best_epoch} is better"), flush=True)
    return TrainResult(state.best_state, state.best_epoch, state.best_scores, state.history, str(device),
                       resumed_from, data.truncated, mcfg,
                       {k: v.detach().cpu() for k, v in state.rule.state_dict().items()},
                       vectors.to_dict() if vectors else None, average)


def average_weights(states: list[dict]) -> dict:
    """The element-wise mean of state dicts (floating tensors); other tensors come from the last one."""
    return {k: torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point() else v
            for k, v in states[-1].items()}


def try_average(state: TrainState, model: JointModel, vocabs: Vocabs, dev_df: pd.DataFrame, tcfg: TrainConfig,
                world: World) -> dict:
    """Checkpoint averaging (train.average_last): the mean of the best epoch's weights and those of the
    epochs before it, scored on dev; it replaces the best epoch's (state.best_state, best_scores) when its
    selection score is at least as high. Rank 0 decides; every rank ends with the same state."""
    first = state.best_epoch - len(state.best_window) + 1
    mean = average_weights(state.best_window)
    dev = None
    if world.main:
        model.load_state_dict(mean)
        dev = evaluate_frame(model, vocabs, dev_df, tcfg.eval_batch_size)[0]
    dev = distributed.broadcast(dev, world)
    kept = selection_score(dev, tcfg.early_stop_metric) >= state.best_score
    out = {"epochs": list(range(first, state.best_epoch + 1)), "dev_scores": {f"dev_{k}": v for k, v in dev.items()},
           "best_epoch_dev_scores": state.best_scores, "kept": kept}
    if kept:
        state.best_state, state.best_scores = mean, out["dev_scores"]
    return out
