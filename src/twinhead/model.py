"""The joint model: shared embeddings + BiLSTM encoder, an intent head and a BIO tag head."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Literal

import torch
from pydantic import AfterValidator, Field
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from twinhead.crf import NEG
from twinhead.heads import TAG_HEADS, SentenceHead
from twinhead.params import Fraction, Name, NonNegInt, PosFloat, PosInt, section


def _odd(k: int) -> int:
    if k % 2 == 0:
        raise ValueError("must be odd, so that the CNN keeps one output per character")
    return k


@section
class ModelConfig:
    word_dim: PosInt = 128  # word embedding size
    # std of the word embeddings' random start: PyTorch's N(0, 1) scaled by it, so no other random draw moves
    word_init_std: PosFloat = 1.0
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
    sentence_head: Literal["single", "multi"] = "single"  # multi: labels like a#b are label sets (sigmoid)
    label_sep: Name = "#"  # what joins the labels of a multi-label sentence
    multi_threshold: Annotated[float, Field(gt=0, lt=1)] = 0.5  # multi: labels at or over this probability
    tag_decoder: Literal["softmax", "crf"] = "crf"  # crf: a linear-chain CRF with learned transitions
    # word2vec/GloVe/fastText text file (under data/vectors/, a DVC dependency of train) to start the word
    # embeddings from; its dimension must be word_dim. "": random start
    vectors: str = ""
    char_encoder: Literal["cnn", "bilstm"] = "cnn"  # bilstm: a BiLSTM over each word's characters
    attention_heads: NonNegInt = 0  # > 0: a self-attention layer over the BiLSTM states (residual + norm)
    # token: intent scored at every token, the sentence's distribution is the tokens' mean, and the tag head
    # reads each token's own intent distribution (Stack-Propagation, Qin et al. 2019); sentence: mean+max pooling
    intent_level: Literal["sentence", "token"] = "sentence"
    # slot-to-intent (the other direction of intent_to_tags; Slot-Gated / Co-Interactive, Goo et al. 2018, Qin et
    # al. 2021): the sentence head also reads the tag head's distribution over tags at each token, scored from the
    # encoder states alone (without the intent input), pooled by mean and max (token level: each token's own)
    slot_to_intent: bool = False

    def __post_init__(self):
        if self.char_encoder == "bilstm" and self.char_dim and self.char_filters % 2:
            raise ValueError("char_encoder 'bilstm' splits char_filters over two directions: it must be even")
        if self.attention_heads and (2 * self.hidden_size) % self.attention_heads:
            raise ValueError(f"attention_heads {self.attention_heads} must divide the BiLSTM state size "
                             f"2 * hidden_size = {2 * self.hidden_size}")
        if self.intent_level == "token" and self.sentence_head == "multi":
            raise ValueError("intent_level 'token' needs sentence_head 'single'")

    def to_dict(self) -> dict:
        return asdict(self)


def pack(x: torch.Tensor, lengths: torch.Tensor) -> PackedSequence:
    """pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False), the same ops, except that the
    sort order reaches the device by a non-blocking copy from pinned memory: the plain `.to(device)` inside
    pack_padded_sequence waits for the device to finish its queued work (a host-device sync per batch)."""
    lengths, order = torch.sort(lengths, descending=True)  # on the host
    if x.is_cuda:
        order = order.pin_memory().to(x.device, non_blocking=True)
    else:
        order = order.to(x.device)
    packed = pack_padded_sequence(x.index_select(0, order), lengths, batch_first=True, enforce_sorted=True)
    return PackedSequence(packed.data, packed.batch_sizes, order, None)  # the order undone by `unpack`


# A CPU batch with at most this many distinct sentence lengths runs the LSTM once per length, unpacked (oneDNN's
# kernel), rather than once packed: PyTorch runs a packed batch of mixed lengths step by step in its own CPU
# kernel, 1.5-2 times slower (`benchmarks/train_speed.py --lstm-routes packed split` times both).
SPLIT_MAX_LENGTHS = 8


def run_lstm(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """A batch_first bidirectional LSTM's states (B, T, 2H) over x (B, T, D), each sentence read up to its length
    (lengths (B,) on the host), zero at padding: what pack, lstm, unpack give, by the fastest route there."""
    t = x.shape[1]
    sizes = lengths.unique().tolist()
    if sizes == [t]:  # no padding: packing would change nothing but the time
        return lstm(x)[0]
    if x.device.type != "cpu" or len(sizes) > SPLIT_MAX_LENGTHS:  # cuDNN packs well; many lengths: one call
        return unpack(lstm(pack(x, lengths))[0], t)
    out = None
    for n in sizes:
        rows = (lengths == n).nonzero().squeeze(1)
        h = lstm(x.index_select(0, rows)[:, :n])[0]  # (b, n, 2H), in autocast's dtype when it is on
        out = h.new_zeros(x.shape[0], t, h.shape[-1]) if out is None else out
        out = out.index_copy(0, rows, nn.functional.pad(h, (0, 0, 0, t - n)))
    return out


def unpack(h: PackedSequence, total_length: int) -> torch.Tensor:
    """pad_packed_sequence(h, batch_first=True, total_length=...)[0], the same ops, without the copy of the
    order back to the host that it makes for the lengths it also returns (a sync per batch on CUDA)."""
    padded, _ = pad_packed_sequence(PackedSequence(h.data, h.batch_sizes), batch_first=True,
                                    total_length=total_length)
    return padded.index_select(0, h.unsorted_indices)  # (B, T, 2H) in the input's order


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


class CharBiLSTM(nn.Module):
    """Each word's characters read by a BiLSTM; the word's vector is both directions' last states."""

    def __init__(self, n_chars: int, dim: int, filters: int):
        super().__init__()
        self.emb = nn.Embedding(n_chars, dim, padding_idx=0)
        self.lstm = nn.LSTM(dim, filters // 2, batch_first=True, bidirectional=True)

    def forward(self, chars: torch.Tensor) -> torch.Tensor:
        b, t, c = chars.shape
        flat = chars.view(b * t, c)
        lengths = (flat != 0).sum(1)
        out = torch.zeros(b * t, self.lstm.hidden_size * 2, device=chars.device)
        real = lengths.nonzero().squeeze(1)  # padding words (no characters) stay zero
        if len(real):
            packed = pack_padded_sequence(self.emb(flat[real]), lengths[real].cpu(), batch_first=True,
                                          enforce_sorted=False)
            _, (h, _) = self.lstm(packed)  # h: (2, N, F/2)
            out = out.index_copy(0, real, torch.cat([h[0], h[1]], -1))
        return out.view(b, t, -1)  # (B, T, F)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the real tokens, added to its input and layer-normalised."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        a, _ = self.attn(h, h, h, key_padding_mask=~mask, need_weights=False)  # (B, T, D)
        return self.norm(h + a).masked_fill(~mask.unsqueeze(-1), 0.0)


def label_atoms(labels: list[str], sep: str) -> list[str]:
    """The single labels that multi-label sentence labels like 'a#b' are made of, sorted."""
    return sorted({a for lab in labels for a in lab.split(sep) if a})


class JointModel(nn.Module):
    """Embeddings (+ char CNN or BiLSTM) -> BiLSTM (+ self-attention): the shared encoder, read by a
    sentence head on mean+max pooling (or at every token, intent_level 'token') and a tag head per token.
    The heads own their losses and decoding (twinhead.heads).

    `intents` is the intent vocabulary (its size is enough for single-label models). With
    sentence_head 'multi', the outputs are the label atoms of those intents (`a#b` -> a, b).
    """

    def __init__(self, cfg: ModelConfig, n_words: int, n_chars: int, tags: list[str], intents: int | list[str]):
        super().__init__()
        self.cfg = cfg
        self.tags = list(tags)
        self.intent_labels = list(intents) if not isinstance(intents, int) else None
        if cfg.sentence_head == "multi":
            if self.intent_labels is None:
                raise ValueError("a multi-label sentence head needs the intent labels, not only their number")
            self.sentence_labels = label_atoms(self.intent_labels, cfg.label_sep)
        else:
            self.sentence_labels = self.intent_labels
        n_out = len(self.sentence_labels) if self.sentence_labels is not None else intents
        h2 = 2 * cfg.hidden_size
        self.word_emb = nn.Embedding(n_words, cfg.word_dim, padding_idx=0)
        if cfg.word_init_std != 1.0:
            with torch.no_grad():
                self.word_emb.weight.mul_(cfg.word_init_std)
        if not cfg.char_dim:
            self.char_cnn = None
        elif cfg.char_encoder == "bilstm":
            self.char_cnn = CharBiLSTM(n_chars, cfg.char_dim, cfg.char_filters)
        else:
            self.char_cnn = CharCNN(n_chars, cfg.char_dim, cfg.char_filters, cfg.char_kernel)
        in_dim = cfg.word_dim + (cfg.char_filters if cfg.char_dim else 0)
        self.drop = nn.Dropout(cfg.dropout)
        self.lstm = nn.LSTM(in_dim, cfg.hidden_size, cfg.num_layers, batch_first=True, bidirectional=True,
                            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0)
        self.attention = SelfAttention(h2, cfg.attention_heads, cfg.dropout) if cfg.attention_heads else None
        # token level: the same MLP scores every token's state instead of the pooled (mean, max) vector;
        # slot_to_intent adds the tag distribution (K) to each state, so (mean, max) of it to the pooled vector
        per_token = h2 + (len(self.tags) if cfg.slot_to_intent else 0)
        self.intent_head = SentenceHead(per_token if cfg.intent_level == "token" else 2 * per_token, h2, n_out,
                                        cfg.dropout, cfg.sentence_head == "multi", cfg.multi_threshold)
        tag_in = h2 + (n_out if cfg.intent_to_tags else 0)
        self.tag_head = TAG_HEADS[cfg.tag_decoder](tag_in, self.tags, cfg.bio_constraints)

    def shared_parameters(self) -> list[nn.Parameter]:
        """The encoder's parameters: what both tasks update (the loss rules treat them apart)."""
        heads = {id(p) for p in [*self.intent_head.parameters(), *self.tag_head.parameters()]}
        return [p for p in self.parameters() if id(p) not in heads]

    def head_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {"intent": list(self.intent_head.parameters()), "tags": list(self.tag_head.parameters())}

    def forward(self, words: torch.Tensor, chars: torch.Tensor, mask: torch.Tensor,
                lengths: torch.Tensor | None = None):
        """words (B, T), chars (B, T, C), mask (B, T) bool -> sentence logits (B, L), tag scores (B, T, K).

        lengths: the sentence lengths (B,) on the host, when the caller has them (training does): the packing
        then needs nothing back from the device."""
        x = self.word_emb(words)  # (B, T, E)
        if self.char_cnn is not None:
            x = torch.cat([x, self.char_cnn(chars)], -1)  # (B, T, E + F)
        x = self.drop(x)
        if lengths is None:
            lengths = mask.sum(1).clamp(min=1).cpu()
        h = run_lstm(self.lstm, x, lengths)  # (B, T, 2H)
        if self.attention is not None:
            h = self.attention(h, mask)
        h = self.drop(h)
        # Pool over real tokens only: padding positions never enter the sentence vector.
        m = mask.unsqueeze(-1)  # (B, T, 1)
        own = self.slot_scores(h) if self.cfg.slot_to_intent else None  # the tag head's scores from h alone
        s = torch.cat([h, torch.softmax(own, -1)], -1) if own is not None else h  # what the intent reads
        if self.cfg.intent_level == "token":
            p = torch.softmax(self.intent_head(s), -1) * m  # (B, T, L), zero at padding
            # The sentence's distribution is the tokens' mean; its log is a logit whose softmax gives it back.
            intent_logits = torch.log((p.sum(1) / m.sum(1).clamp(min=1)).clamp(min=1e-12))  # (B, L)
        else:
            mean = (s * m).sum(1) / m.sum(1).clamp(min=1)  # (B, 2H [+ K])
            mx = s.masked_fill(~m, NEG).max(1).values  # (B, 2H [+ K])
            intent_logits = self.intent_head(torch.cat([mean, mx], -1))  # (B, L)
            if self.cfg.intent_to_tags:
                p = self.intent_head.probs(intent_logits).unsqueeze(1).expand(-1, h.shape[1], -1)  # (B, T, L)
        if self.cfg.intent_to_tags:
            tag_scores = self.tag_head(torch.cat([h, p], -1))  # (B, T, K)
        else:  # the tag head reads h alone: slot_to_intent's scores are already its output
            tag_scores = own if own is not None else self.tag_head(h)
        return intent_logits, tag_scores

    def slot_scores(self, h: torch.Tensor) -> torch.Tensor:
        """slot_to_intent's input before its softmax: the tag head's scores at each token (B, T, K) from the
        encoder states alone (the part of its weights that reads them, without the intent input)."""
        proj = self.tag_head.proj
        return nn.functional.linear(h, proj.weight[:, : h.shape[-1]], proj.bias)

    def decode_tags(self, tag_scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Tag ids (B, T), by the tag head's decoder."""
        return self.tag_head.decode(tag_scores, mask)

    def intent_targets(self, intents: list[str]) -> torch.Tensor:
        """Training targets of the sentence head: ids (B,), or multi-hot rows (B, L) over label atoms."""
        if not self.intent_head.multi_label:
            return torch.tensor([self.intent_labels.index(i) for i in intents])
        index = {a: k for k, a in enumerate(self.sentence_labels)}
        target = torch.zeros(len(intents), len(self.sentence_labels))
        for r, lab in enumerate(intents):
            for a in lab.split(self.cfg.label_sep):
                if a in index:
                    target[r, index[a]] = 1.0
        return target

    def canonical_label(self, label: str) -> str:
        """A gold label as the model would predict it: multi-label sets sorted (`b#a` -> `a#b`)."""
        if not self.intent_head.multi_label:
            return label
        return self.cfg.label_sep.join(sorted({a for a in label.split(self.cfg.label_sep) if a}))

    def intents_from_probs(self, probs) -> list[str]:
        """The predicted label of each sentence (multi-label: its atoms joined by label_sep, sorted)."""
        labels = self.sentence_labels or [str(k) for k in range(self.intent_head.n_labels)]
        return [self.cfg.label_sep.join(labels[k] for k in ks) for ks in self.intent_head.decide(probs)]
