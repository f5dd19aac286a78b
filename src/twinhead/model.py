"""The joint model: shared embeddings + BiLSTM encoder, an intent head and a BIO tag head."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Literal

import torch
from pydantic import AfterValidator, Field
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from twinhead.params import Fraction, NonNegInt, PosInt, section

NEG = -1e4  # "forbidden" score; finite so that sums never turn into NaN


def _odd(k: int) -> int:
    if k % 2 == 0:
        raise ValueError("must be odd, so that the CNN keeps one output per character")
    return k


@section
class ModelConfig:
    word_dim: PosInt = 128  # word embedding size
    char_dim: NonNegInt = 32  # character embedding size; 0 turns the character CNN off
    char_filters: PosInt = 64  # character CNN output channels
    char_kernel: Annotated[int, Field(ge=1), AfterValidator(_odd)] = 3  # character CNN window (odd)
    max_word_len: PosInt = 20  # characters read per word
    hidden_size: PosInt = 128  # LSTM hidden size per direction
    num_layers: PosInt = 2  # stacked BiLSTM layers
    dropout: Fraction = 0.3  # dropout on embeddings, between LSTM layers and before the heads
    intent_to_tags: bool = True  # feed the predicted intent distribution to the tag head
    bio_constraints: bool = True  # decode tags with Viterbi over valid BIO transitions only
    max_len: PosInt = 64  # longest token sequence read at once
    overlong: Literal["window", "truncate"] = "window"  # longer inputs: split + merge, or warn + count

    def to_dict(self) -> dict:
        return asdict(self)


def bio_transitions(tags: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive scores (0 or NEG) for tag->tag transitions and for the first tag under BIO rules."""
    k = len(tags)
    trans = torch.zeros(k, k)
    start = torch.zeros(k)
    for j, t in enumerate(tags):
        if t.startswith("I-"):
            start[j] = NEG
            for i, p in enumerate(tags):
                if p[2:] != t[2:] or p == "O":
                    trans[i, j] = NEG
    return trans, start


def viterbi(scores: torch.Tensor, mask: torch.Tensor, trans: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Best tag path under additive transition scores. scores (B, T, K), mask (B, T) -> (B, T)."""
    b, t_len, k = scores.shape
    score = scores[:, 0] + start  # (B, K)
    ident = torch.arange(k, device=scores.device).expand(b, k)
    history = []
    for t in range(1, t_len):
        best, idx = (score.unsqueeze(2) + trans).max(1)  # (B, K)
        m = mask[:, t].unsqueeze(1)
        score = torch.where(m, best + scores[:, t], score)
        history.append(torch.where(m, idx, ident))  # padding keeps the previous tag
    last = score.argmax(1)
    path = [last]
    for idx in reversed(history):
        last = idx.gather(1, last.unsqueeze(1)).squeeze(1)
        path.append(last)
    path.reverse()
    return torch.stack(path, 1)


class CharCNN(nn.Module):
    def __init__(self, n_chars: int, dim: int, filters: int, kernel: int):
        super().__init__()
        self.emb = nn.Embedding(n_chars, dim, padding_idx=0)
        self.conv = nn.Conv1d(dim, filters, kernel, padding=kernel // 2)

    def forward(self, chars: torch.Tensor) -> torch.Tensor:
        b, t, c = chars.shape
        x = self.emb(chars.view(b * t, c)).transpose(1, 2)  # (B*T, D, C)
        x = torch.relu(self.conv(x))  # (B*T, F, C)
        x = x.masked_fill((chars.view(b * t, 1, c) == 0), 0.0)
        return x.max(2).values.view(b, t, -1)  # (B, T, F)


class JointModel(nn.Module):
    """Embeddings (+ char CNN) -> BiLSTM, shared by a pooled intent head and a per-token tag head."""

    def __init__(self, cfg: ModelConfig, n_words: int, n_chars: int, tags: list[str], n_intents: int):
        super().__init__()
        self.cfg = cfg
        self.tags = list(tags)
        h2 = 2 * cfg.hidden_size
        self.word_emb = nn.Embedding(n_words, cfg.word_dim, padding_idx=0)
        self.char_cnn = CharCNN(n_chars, cfg.char_dim, cfg.char_filters, cfg.char_kernel) if cfg.char_dim else None
        in_dim = cfg.word_dim + (cfg.char_filters if cfg.char_dim else 0)
        self.drop = nn.Dropout(cfg.dropout)
        self.lstm = nn.LSTM(in_dim, cfg.hidden_size, cfg.num_layers, batch_first=True, bidirectional=True,
                            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0)
        self.intent_head = nn.Sequential(nn.Linear(2 * h2, h2), nn.ReLU(), nn.Dropout(cfg.dropout),
                                         nn.Linear(h2, n_intents))
        self.tag_head = nn.Linear(h2 + (n_intents if cfg.intent_to_tags else 0), len(tags))
        trans, start = bio_transitions(self.tags)
        self.register_buffer("trans", trans, persistent=False)
        self.register_buffer("start", start, persistent=False)

    def forward(self, words: torch.Tensor, chars: torch.Tensor, mask: torch.Tensor):
        """words (B, T), chars (B, T, C), mask (B, T) bool -> intent logits (B, I), tag logits (B, T, K)."""
        x = self.word_emb(words)  # (B, T, E)
        if self.char_cnn is not None:
            x = torch.cat([x, self.char_cnn(chars)], -1)  # (B, T, E + F)
        x = self.drop(x)
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        h, _ = self.lstm(packed)
        h, _ = pad_packed_sequence(h, batch_first=True, total_length=words.shape[1])  # (B, T, 2H)
        h = self.drop(h)
        # Pool over real tokens only: padding positions never enter the sentence vector.
        m = mask.unsqueeze(-1)  # (B, T, 1)
        mean = (h * m).sum(1) / m.sum(1).clamp(min=1)  # (B, 2H)
        mx = h.masked_fill(~m, NEG).max(1).values  # (B, 2H)
        intent_logits = self.intent_head(torch.cat([mean, mx], -1))  # (B, I)
        if self.cfg.intent_to_tags:
            p = torch.softmax(intent_logits, -1).unsqueeze(1).expand(-1, h.shape[1], -1)  # (B, T, I)
            h = torch.cat([h, p], -1)
        tag_logits = self.tag_head(h)  # (B, T, K)
        return intent_logits, tag_logits

    def decode_tags(self, tag_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Tag ids (B, T): Viterbi over valid BIO transitions, or per-token argmax."""
        if not self.cfg.bio_constraints:
            return tag_logits.argmax(-1)
        return viterbi(torch.log_softmax(tag_logits, -1), mask, self.trans, self.start)
