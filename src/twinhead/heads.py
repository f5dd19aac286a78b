"""The two task heads. Each owns its loss, its probabilities and its decoding, so the model, training,
evaluation, export and the bundle loader all call the same methods, and another head is a new class.

Sentence heads read a pooled sentence vector: `single` (softmax over labels, cross-entropy) or `multi`
(a sigmoid per label atom, binary cross-entropy; a sentence's labels are those over the threshold, or the
most likely one when none is). Tag heads read the encoder's per-token states: `softmax` (per-token
cross-entropy, Viterbi over valid BIO moves at decoding) or `crf` (a linear-chain CRF: learned
transitions, sentence-level likelihood, Viterbi and marginals).
"""

from __future__ import annotations

import torch
from torch import nn

from twinhead.crf import CRF, NEG, bio_mask

IGNORE = -100  # tag id of padding (and of anything the loss must not see)


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


class SentenceHead(nn.Module):
    """Pooled vector -> one score per label; single-label (softmax) or multi-label (sigmoid)."""

    def __init__(self, in_dim: int, hidden: int, n_labels: int, dropout: float, multi_label: bool = False,
                 threshold: float = 0.5):
        super().__init__()
        self.multi_label = multi_label
        self.threshold = threshold
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_labels))

    @property
    def n_labels(self) -> int:
        return self.mlp[-1].out_features

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.mlp(pooled)  # (B, L)

    def loss(self, logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.0,
             weight: torch.Tensor | None = None) -> torch.Tensor:
        """target: label ids (B,) for single-label, multi-hot (B, L) floats for multi-label. smoothing (label
        smoothing, eps): single-label, the target is 1 - eps on the gold label plus eps / L on every label;
        multi-label, each label's 0/1 target moves eps / 2 towards 1/2. weight (B,): the rows' weighted mean (0
        if every weight is 0); None: the plain mean."""
        reduction = "mean" if weight is None else "none"
        if self.multi_label:
            loss = nn.functional.binary_cross_entropy_with_logits(
                logits, target * (1 - smoothing) + smoothing / 2, reduction=reduction)
            loss = loss if weight is None else loss.mean(-1)
        else:
            loss = nn.functional.cross_entropy(logits, target, label_smoothing=smoothing, reduction=reduction)
        if weight is None:
            return loss
        return (loss * weight).sum() / weight.sum().clamp(min=1e-12)

    def divergence(self, a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """R-Drop's consistency term: the symmetric KL divergence, (KL(p_a || p_b) + KL(p_b || p_a)) / 2, between
        the distributions two passes' logits a and b (B, L) give (softmax; multi-label, a Bernoulli per label,
        averaged over labels), a mean over rows, weighted as `loss` weights them."""
        if self.multi_label:
            la = torch.stack([nn.functional.logsigmoid(-a), nn.functional.logsigmoid(a)], -1)  # (B, L, 2)
            lb = torch.stack([nn.functional.logsigmoid(-b), nn.functional.logsigmoid(b)], -1)
        else:
            la, lb = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
        kl = ((la.exp() - lb.exp()) * (la - lb)).sum(-1) / 2  # (B,) or (B, L): the two KLs' mean
        if self.multi_label:
            kl = kl.mean(-1)
        if weight is None:
            return kl.mean()
        return (kl * weight).sum() / weight.sum().clamp(min=1e-12)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, -1)  # (B, L)

    def decide(self, probs) -> list[list[int]]:
        """Label ids per sentence: the argmax, or (multi-label) every label over the threshold, or the
        argmax when none is. Works on tensors and numpy arrays (B, L)."""
        out = []
        for row in probs:
            best = int(row.argmax())
            if self.multi_label:
                chosen = [k for k in range(len(row)) if float(row[k]) >= self.threshold]
                out.append(chosen or [best])
            else:
                out.append([best])
        return out


class SoftmaxTagHead(nn.Module):
    """Per-token scores, per-token cross-entropy; decoded by Viterbi over valid BIO moves (or argmax)."""

    def __init__(self, in_dim: int, tags: list[str], bio_constraints: bool = True):
        super().__init__()
        self.tags = list(tags)
        self.bio_constraints = bio_constraints
        self.proj = nn.Linear(in_dim, len(tags))
        trans, start = bio_mask(self.tags)
        self.register_buffer("trans", trans, persistent=False)
        self.register_buffer("start", start, persistent=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(h)  # (B, T, K)

    def loss(self, scores: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over real tokens; tags (B, T) hold IGNORE at padding."""
        return nn.functional.cross_entropy(scores.reshape(-1, scores.shape[-1]), tags.reshape(-1),
                                           ignore_index=IGNORE)

    def decode(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Tag ids (B, T)."""
        if not self.bio_constraints:
            return scores.argmax(-1)
        return viterbi(torch.log_softmax(scores, -1), mask, self.trans, self.start)

    def token_probs(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-token tag probabilities (B, T, K)."""
        return torch.softmax(scores, -1)


class CRFTagHead(SoftmaxTagHead):
    """Per-token emissions scored by a linear-chain CRF: sentence likelihood, Viterbi, marginals."""

    def __init__(self, in_dim: int, tags: list[str], bio_constraints: bool = True):
        super().__init__(in_dim, tags, bio_constraints)
        self.crf = CRF(self.tags, bio_constraints)

    def loss(self, scores: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Per token, like the softmax head, so that loss weights and learning rates carry over.
        return self.crf.nll(scores, tags, mask, reduction="sum") / mask.sum().clamp(min=1)

    def decode(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.crf.decode(scores, mask)

    def token_probs(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.crf.marginals(scores, mask)


TAG_HEADS = {"softmax": SoftmaxTagHead, "crf": CRFTagHead}

__all__ = ["IGNORE", "NEG", "CRFTagHead", "SentenceHead", "SoftmaxTagHead", "TAG_HEADS", "viterbi"]
