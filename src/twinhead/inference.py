"""Batched prediction over word sequences, with the overlong-input policy. No training code here."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch

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


@torch.no_grad()
def predict_words(
    model: JointModel,
    vocabs: Vocabs,
    sentences: list[list[str]],
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
    stats: OverlongStats | None = None,
) -> tuple[np.ndarray, list[list[str]]]:
    """Sentence-label probabilities (N, L) and tag strings for each sentence (non-empty word lists).

    Inputs longer than model.cfg.max_len follow model.cfg.overlong: 'window' predicts on consecutive
    windows and merges them (tags concatenated, intent logits averaged by window length);
    'truncate' reads the first max_len words, tags the rest O and counts it with a warning.
    """
    cfg = model.cfg
    stats = stats if stats is not None else OverlongStats()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    pieces = []  # (sentence index, start, end)
    truncated = 0  # in this call; `stats` keeps the running totals
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
    # Sort by length so batches hold similar lengths (less padding); results go back by index.
    order = sorted(range(len(pieces)), key=lambda k: pieces[k][2] - pieces[k][1])
    n_int = model.intent_head.n_labels
    logit_sum = np.zeros((len(sentences), n_int), dtype=np.float64)
    weight = np.zeros(len(sentences))
    tags: list[list[str]] = [["O"] * len(ws) for ws in sentences]
    for b in range(0, len(order), batch_size):
        batch = [pieces[k] for k in order[b : b + batch_size]]
        items = [encode(sentences[i][s:e], vocabs, cfg.max_word_len) for i, s, e in batch]
        words, chars, mask = collate(items, device)
        intent_logits, tag_logits = model(words, chars, mask)
        ids = model.decode_tags(tag_logits, mask).cpu().numpy()
        il = intent_logits.double().cpu().numpy()
        for row, (i, s, e) in enumerate(batch):
            logit_sum[i] += il[row] * (e - s)
            weight[i] += e - s
            tags[i][s:e] = [model.tags[k] for k in ids[row, : e - s]]
        if progress:
            progress(len(batch))
    if truncated:
        warnings.warn(f"{truncated} input(s) longer than model.max_len={cfg.max_len} tokens were "
                      "truncated; the rest of each is tagged O (policy model.overlong=truncate)", stacklevel=2)
    logits = torch.from_numpy(logit_sum / weight[:, None])
    probs = model.intent_head.probs(logits).numpy()  # softmax, or a sigmoid per label (multi-label)
    if was_training:
        model.train()
    return probs, tags


def sentence_labels(model: JointModel, vocabs: Vocabs, probs: np.ndarray) -> list[str]:
    """The predicted label of each sentence from the sentence head's probabilities."""
    if model.sentence_labels is None:  # a model built from the number of intents only
        return [vocabs.intents.itos[k] for k in probs.argmax(1)]
    return model.intents_from_probs(probs)


def predict_mapped(model: JointModel, vocabs: Vocabs, df, batch_size: int = 256, progress=None,
                   stats: OverlongStats | None = None) -> tuple[list[str], np.ndarray, list[list[str]]]:
    """Predict a processed split (columns words, keep, tokens); tags come back on every original token.

    Removed stop words get O (keep_positions never empties a non-empty sentence).
    """
    from twinhead.text import map_back

    sentences = [list(w) for w in df["words"]]
    probs, tags = predict_words(model, vocabs, sentences, batch_size, progress, stats)
    intents = sentence_labels(model, vocabs, probs)
    full = [map_back(len(toks), list(keep), t) for toks, keep, t in zip(df["tokens"], df["keep"], tags)]
    return intents, probs, full
