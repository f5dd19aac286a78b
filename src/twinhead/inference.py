"""Batched prediction over word sequences, with the overlong-input policy. No training code here."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from twinhead.calibration import softmax
from twinhead.model import JointModel
from twinhead.vocab import Vocabs


def encode(words: list[str], vocabs: Vocabs, max_word_len: int) -> tuple[list[int], list[list[int]]]:
    """Word ids and per-word char ids (each word's first max_word_len characters)."""
    return vocabs.words.encode(words), [vocabs.chars.encode(w[:max_word_len]) or [1] for w in words]


def collate(items: list[tuple[list[int], list[list[int]]]], device) -> tuple[torch.Tensor, ...]:
    """Right-pad a batch: words (B, T), chars (B, T, C), mask (B, T)."""
    b = len(items)
    t = max(len(w) for w, _ in items)
    c = max(len(cs) for _, chars in items for cs in chars)
    words = torch.zeros(b, t, dtype=torch.long)
    chars = torch.zeros(b, t, c, dtype=torch.long)
    for i, (w, ch) in enumerate(items):
        words[i, : len(w)] = torch.tensor(w)
        for j, cs in enumerate(ch):
            chars[i, j, : len(cs)] = torch.tensor(cs)
    mask = words != 0
    for i, (w, _) in enumerate(items):
        mask[i, : len(w)] = True  # <pad> never appears in real input, but be exact anyway
    return words.to(device), chars.to(device), mask.to(device)


def windows(n: int, max_len: int) -> list[tuple[int, int]]:
    return [(s, min(s + max_len, n)) for s in range(0, n, max_len)]


class OverlongStats:
    def __init__(self):
        self.truncated = 0  # sentences cut to max_len (policy 'truncate')
        self.windowed = 0  # sentences split into windows (policy 'window')


def split_pieces(sentences: list[list[str]], cfg, stats: OverlongStats) -> tuple[list[tuple[int, int, int]], int]:
    """What the model reads, by the overlong policy: (sentence index, start, end) pieces, and how many sentences
    of this call were truncated (`stats` keeps the running totals)."""
    pieces, truncated = [], 0
    for i, ws in enumerate(sentences):
        if not ws:
            raise ValueError(f"sentence {i} has no words")
        if len(ws) > cfg.max_len:
            if cfg.overlong == "truncate":
                truncated += 1
                stats.truncated += 1
                pieces.append((i, 0, cfg.max_len))
                continue
            stats.windowed += 1
        pieces.extend((i, s, e) for s, e in windows(len(ws), cfg.max_len))
    return pieces, truncated


@dataclass
class WordPredictions:
    """What the model says about a list of word sequences, before any label decision."""

    logits: np.ndarray  # (N, L) sentence-head logits; a windowed input's are averaged by window length
    tags: list[list[str]]  # the decoded tag of every word
    # the probability of each decoded tag (softmax, or the CRF's marginal); None past a truncated input's
    # max_len and when not asked for
    tag_probs: list[list[float | None]] | None


@torch.no_grad()
def predict_logits(
    model: JointModel,
    vocabs: Vocabs,
    sentences: list[list[str]],
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
    stats: OverlongStats | None = None,
    tag_probs: bool = False,
) -> WordPredictions:
    """Sentence logits, decoded tags and (tag_probs) each decoded tag's probability, for non-empty word lists.

    Inputs longer than model.cfg.max_len follow model.cfg.overlong: 'window' predicts on consecutive
    windows and merges them (tags concatenated, intent logits averaged by window length);
    'truncate' reads the first max_len words, tags the rest O and counts it with a warning.
    """
    cfg = model.cfg
    stats = stats if stats is not None else OverlongStats()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    pieces, truncated = split_pieces(sentences, cfg, stats)
    # Sort by length so batches hold similar lengths (less padding); results go back by index.
    order = sorted(range(len(pieces)), key=lambda k: pieces[k][2] - pieces[k][1])
    n_int = model.intent_head.n_labels
    logit_sum = np.zeros((len(sentences), n_int), dtype=np.float64)
    weight = np.zeros(len(sentences))
    tags: list[list[str]] = [["O"] * len(ws) for ws in sentences]
    probs: list[list[float | None]] | None = [[None] * len(ws) for ws in sentences] if tag_probs else None
    for b in range(0, len(order), batch_size):
        batch = [pieces[k] for k in order[b : b + batch_size]]
        items = [encode(sentences[i][s:e], vocabs, cfg.max_word_len) for i, s, e in batch]
        words, chars, mask = collate(items, device)
        intent_logits, tag_logits = model(words, chars, mask)
        ids_t = model.decode_tags(tag_logits, mask)  # (B, T)
        ids = ids_t.cpu().numpy()
        if probs is not None:
            # (B, T): the probability of the decoded tag at each position
            chosen = model.tag_head.token_probs(tag_logits, mask).gather(2, ids_t.unsqueeze(2)).squeeze(2)
            chosen = chosen.double().cpu().numpy()
        il = intent_logits.double().cpu().numpy()
        for row, (i, s, e) in enumerate(batch):
            logit_sum[i] += il[row] * (e - s)
            weight[i] += e - s
            tags[i][s:e] = [model.tags[k] for k in ids[row, : e - s]]
            if probs is not None:
                probs[i][s:e] = [float(p) for p in chosen[row, : e - s]]
        if progress:
            progress(len(batch))
    if truncated:
        warnings.warn(f"{truncated} input(s) longer than model.max_len={cfg.max_len} tokens were "
                      "truncated; the rest of each is tagged O (policy model.overlong=truncate)", stacklevel=2)
    if was_training:
        model.train()
    return WordPredictions(logit_sum / weight[:, None], tags, probs)


def intent_probs(model: JointModel, logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The sentence head's probabilities (N, L) from its logits: softmax(logits / temperature), or a sigmoid
    per label (multi-label, never scaled: see twinhead.calibration)."""
    if model.intent_head.multi_label:
        return model.intent_head.probs(torch.from_numpy(np.asarray(logits, dtype=np.float64))).numpy()
    # the head's softmax, in numpy: a torch call costs more than the work for one sentence
    return softmax(logits, temperature)


def predict_words(
    model: JointModel,
    vocabs: Vocabs,
    sentences: list[list[str]],
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
    stats: OverlongStats | None = None,
) -> tuple[np.ndarray, list[list[str]]]:
    """Sentence-label probabilities (N, L) (uncalibrated) and tag strings for each sentence (see predict_logits)."""
    out = predict_logits(model, vocabs, sentences, batch_size, progress, stats)
    return intent_probs(model, out.logits), out.tags


def top_labels(model: JointModel, vocabs: Vocabs, probs: np.ndarray, k: int) -> list[list[dict]]:
    """The k most probable labels of each sentence, most probable first: [{"intent", "probability"}].

    Single-label: the softmax probabilities (they sum to 1 over all labels). Multi-label: the label atoms
    by their own sigmoid probabilities (each in [0, 1]; they need not sum to 1).
    """
    if k < 1:
        raise ValueError(f"top_k must be at least 1, not {k}")
    labels = model.sentence_labels if model.sentence_labels is not None else vocabs.intents.itos
    probs = np.asarray(probs)
    best = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # one sort for all rows; ties keep label order
    top_p = np.take_along_axis(probs, best, 1).tolist()
    return [[{"intent": labels[j], "probability": p} for j, p in zip(js, ps)] for js, ps in zip(best.tolist(), top_p)]


def sentence_labels(model: JointModel, vocabs: Vocabs, probs: np.ndarray) -> list[str]:
    """The predicted label of each sentence from the sentence head's probabilities."""
    if model.sentence_labels is None:  # a model built from the number of intents only
        return [vocabs.intents.itos[k] for k in probs.argmax(1)]
    return model.intents_from_probs(probs)


def map_back_probs(n: int, kept: list[int], kept_probs: list[float | None]) -> list[float | None]:
    """Decoded-tag probabilities on every original token: None where a token was removed (tagged O by rule)."""
    full: list[float | None] = [None] * n
    for i, p in zip(kept, kept_probs):
        full[i] = p
    return full


def span_confidences(tags: list[str], tag_probs: list[float | None]) -> list[tuple[int, int, str, float]]:
    """(start, end_exclusive, type, confidence) token spans: an entity's confidence is the product of the
    probabilities of its tokens' decoded tags (softmax per token, or the CRF's marginals)."""
    from twinhead.text import bio_to_spans

    return [(s, e, t, math.prod(tag_probs[s:e])) for s, e, t in bio_to_spans(tags)]


@dataclass
class FramePredictions:
    """Predictions on a processed split, on every original token."""

    intents: list[str]
    logits: np.ndarray  # (N, L) sentence-head logits
    probs: np.ndarray  # (N, L) sentence-head probabilities at the given temperature
    tags: list[list[str]]
    tag_probs: list[list[float | None]] | None  # see WordPredictions; None where a stop word was removed


def predict_frame(model: JointModel, vocabs: Vocabs, df, batch_size: int = 256, progress=None,
                  stats: OverlongStats | None = None, temperature: float = 1.0,
                  tag_probs: bool = False) -> FramePredictions:
    """Predict a processed split (columns words, keep, tokens); tags come back on every original token.

    Removed stop words get O (keep_positions never empties a non-empty sentence).
    """
    from twinhead.text import map_back

    sentences = [list(w) for w in df["words"]]
    out = predict_logits(model, vocabs, sentences, batch_size, progress, stats, tag_probs)
    probs = intent_probs(model, out.logits, temperature)
    intents = sentence_labels(model, vocabs, probs)
    rows = list(zip(df["tokens"], df["keep"]))
    full = [map_back(len(toks), list(keep), t) for (toks, keep), t in zip(rows, out.tags)]
    full_probs = None
    if out.tag_probs is not None:
        full_probs = [map_back_probs(len(toks), list(keep), p) for (toks, keep), p in zip(rows, out.tag_probs)]
    return FramePredictions(intents, out.logits, probs, full, full_probs)


def predict_mapped(model: JointModel, vocabs: Vocabs, df, batch_size: int = 256, progress=None,
                   stats: OverlongStats | None = None) -> tuple[list[str], np.ndarray, list[list[str]]]:
    """Labels, uncalibrated probabilities (N, L) and tags on every original token of a processed split."""
    out = predict_frame(model, vocabs, df, batch_size, progress, stats)
    return out.intents, out.probs, out.tags
