"""A linear-chain CRF over tag sequences: learned transitions, optional hard BIO constraints.

All methods take emissions (B, T, K) and a bool mask (B, T) of real tokens, right-padded (every sentence
has at least one token). Padded positions never influence the results for the real tokens, whatever
values the emissions or tags hold there.

This module imports nothing from the rest of twinhead, so that model.py can import it.
"""

from __future__ import annotations

import torch
from torch import nn

NEG = -1e4  # "forbidden" score, the same value as model.NEG; finite so that sums never turn into NaN


def bio_mask(tags: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive scores (0 or NEG) for tag->tag moves (K, K) and for the first tag (K,) under strict BIO.

    I-x may only follow B-x or I-x, and may not start a sentence (the rules of text.bio_error and
    model.bio_transitions).
    """
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


class CRF(nn.Module):
    """Linear-chain CRF: score(y) = start[y0] + sum_t emissions[t, y_t] + sum_t trans[y_t-1, y_t] + end[y_last].

    Learned: transitions (K, K) [from i to j], start (K,), end (K,), all zero at init. With bio_constraints,
    a fixed NEG mask is added to the invalid moves; it is a non-persistent buffer, so it is neither learned
    nor saved, and it is rebuilt from `tags` when the module is constructed.
    """

    def __init__(self, tags: list[str], bio_constraints: bool = True):
        super().__init__()
        if not tags:
            raise ValueError("CRF needs at least one tag")
        self.tags = list(tags)
        self.bio_constraints = bio_constraints
        k = len(self.tags)
        self.transitions = nn.Parameter(torch.zeros(k, k))
        self.start = nn.Parameter(torch.zeros(k))
        self.end = nn.Parameter(torch.zeros(k))
        trans, start = bio_mask(self.tags) if bio_constraints else (torch.zeros(k, k), torch.zeros(k))
        self.register_buffer("bio_trans", trans, persistent=False)
        self.register_buffer("bio_start", start, persistent=False)

    def extra_repr(self) -> str:
        return f"num_tags={len(self.tags)}, bio_constraints={self.bio_constraints}"

    # --- public API ------------------------------------------------------------------------------

    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log Z per sentence: logsumexp of the scores of all tag paths. -> (B,)"""
        em = self._check(emissions, mask)
        return self._log_z(self._alphas(em, mask))

    def score(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Score of the given tag paths (B, T); tags at padded positions are ignored (e.g. -100). -> (B,)"""
        return self._score(self._check(emissions, mask, tags), tags, mask)

    def nll(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor,
            reduction: str = "mean") -> torch.Tensor:
        """Negative log-likelihood of the tag paths: log Z - score. reduction: 'mean', 'sum' or 'none'."""
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")
        em = self._check(emissions, mask, tags)
        out = self._log_z(self._alphas(em, mask)) - self._score(em, tags, mask)  # (B,)
        if reduction == "mean":
            return out.mean()
        return out.sum() if reduction == "sum" else out

    def decode(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Viterbi best path per sentence. -> (B, T) long; padded positions hold 0."""
        em = self._check(emissions, mask)
        b, t_len, k = em.shape
        trans, start, end = self._params(em.dtype)
        score = em[:, 0] + start  # (B, K)
        ident = torch.arange(k, device=em.device).expand(b, k)
        history = []
        for t in range(1, t_len):
            best, idx = (score.unsqueeze(2) + trans).max(1)  # (B, K): best previous tag for each tag
            m = mask[:, t].unsqueeze(1)  # (B, 1)
            score = torch.where(m, best + em[:, t], score)
            history.append(torch.where(m, idx, ident))  # padding: the tag carries over unchanged
        last = (score + end).argmax(1)  # (B,)
        path = [last]
        for idx in reversed(history):
            last = idx.gather(1, last.unsqueeze(1)).squeeze(1)
            path.append(last)
        path.reverse()
        return torch.stack(path, 1).masked_fill(~mask, 0)  # (B, T)

    def marginals(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """P(y_t = k | sentence) by forward-backward. -> (B, T, K); rows sum to 1, padded rows are 0."""
        em = self._check(emissions, mask)
        alphas = self._alphas(em, mask, exact=True)  # (B, T, K)
        betas = self._betas(em, mask)  # (B, T, K)
        post = torch.exp(alphas + betas - self._log_z(alphas)[:, None, None])
        return post.masked_fill(~mask.unsqueeze(2), 0.0)

    # --- internals -------------------------------------------------------------------------------

    def _params(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Transitions (K, K) and start (K,) with the BIO mask added, end (K,), all in `dtype`."""
        return ((self.transitions + self.bio_trans).to(dtype), (self.start + self.bio_start).to(dtype),
                self.end.to(dtype))

    def _score(self, em: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = tags.long().masked_fill(~mask, 0)  # (B, T), any valid index at padding
        trans, start, end = self._params(em.dtype)
        emit = em.gather(2, y.unsqueeze(2)).squeeze(2)  # (B, T), already 0 at padding
        moves = torch.where(mask[:, 1:], trans[y[:, :-1], y[:, 1:]], 0.0)  # (B, T-1)
        last = y.gather(1, (mask.sum(1) - 1).unsqueeze(1)).squeeze(1)  # (B,)
        return start[y[:, 0]] + emit.sum(1) + moves.sum(1) + end[last]

    def _log_z(self, alphas: torch.Tensor) -> torch.Tensor:
        """(B, T, K) forward scores -> (B,); padding copies alpha forward, so the last column is the last real."""
        return torch.logsumexp(alphas[:, -1] + self._params(alphas.dtype)[2], 1)

    def _alphas(self, em: torch.Tensor, mask: torch.Tensor, exact: bool = False) -> torch.Tensor:
        """Forward scores: log-sum of all prefixes ending in tag k at t. (B, T, K); padding repeats the last.

        Each step is one matrix product, exp(alpha - max) @ exp(transitions), in float64: the values of a
        logsumexp over (B, K, K) to float32 precision, at 1/17 of its CPU time with the backward (41.7 -> 2.5
        ms for 64 sentences and 73 tags; it was a fifth of a training step, benchmarks/spacy_peer.py
        --profile). Forbidden moves (NEG) become exact zeros; states over 600 below the best (NEG starts) are
        lifted to 600 below, where their share is under e^-600, so that no sum is ever 0 and no log -inf.
        That lift is wrong where the only allowed way into a state comes from one that far below (emissions
        hundreds apart, never seen in training): `exact` (marginals, off the training path) takes the
        logsumexp recursion over (B, K, K) instead.
        """
        trans, start, _ = self._params(em.dtype)
        wide = torch.promote_types(em.dtype, torch.float64)
        exp_trans = trans.to(wide).exp()  # (K, K)

        def step(alpha: torch.Tensor) -> torch.Tensor:  # (B, K) -> log-sum over the previous tag, (B, K)
            if exact:
                return torch.logsumexp(alpha.unsqueeze(2) + trans, 1)
            top = alpha.max(1, keepdim=True).values.detach()  # (B, 1); the shift cancels out of the gradient
            probs = (alpha - top).to(wide).clamp(min=-600.0).exp()  # (B, K)
            return (probs @ exp_trans).log().to(em.dtype) + top

        alpha = em[:, 0] + start  # (B, K)
        out = [alpha]
        for t in range(1, em.shape[1]):
            alpha = torch.where(mask[:, t].unsqueeze(1), step(alpha) + em[:, t], alpha)
            out.append(alpha)
        return torch.stack(out, 1)

    def _betas(self, em: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Backward scores: log-sum of all suffixes after tag k at t, end included. (B, T, K)"""
        trans, _, end = self._params(em.dtype)
        end = end.expand(em.shape[0], -1)  # (B, K)
        beta = end
        out = [beta]
        for t in range(em.shape[1] - 2, -1, -1):
            nxt = torch.logsumexp(trans + (em[:, t + 1] + beta).unsqueeze(1), 2)  # (B, K)
            # Right padding: t+1 padded means t is the sentence's last token (or padding itself).
            beta = torch.where(mask[:, t + 1].unsqueeze(1), nxt, end)
            out.append(beta)
        out.reverse()
        return torch.stack(out, 1)

    def _check(self, emissions: torch.Tensor, mask: torch.Tensor, tags: torch.Tensor | None = None) -> torch.Tensor:
        """Validate shapes and the padding layout; return emissions in the working dtype, padding zeroed."""
        k = len(self.tags)
        if emissions.dim() != 3 or emissions.shape[2] != k or emissions.shape[1] == 0:
            raise ValueError(f"CRF emissions must be (B, T>=1, {k}), got {tuple(emissions.shape)}")
        if mask.shape != emissions.shape[:2] or mask.dtype != torch.bool:
            raise ValueError(f"CRF mask must be a bool tensor of shape {tuple(emissions.shape[:2])}, "
                             f"got {mask.dtype} {tuple(mask.shape)}")
        if tags is not None and (tags.shape != mask.shape or tags.is_floating_point()):
            raise ValueError(f"CRF tags must be an integer tensor of shape {tuple(mask.shape)}, "
                             f"got {tags.dtype} {tuple(tags.shape)}")
        no_first = ~mask[:, 0]
        holes = mask[:, 1:] & ~mask[:, :-1]
        bad_tags = ((tags < 0) | (tags >= k)) & mask if tags is not None else None
        # One host sync for all checks together; the diagnosis below runs only on failure. On an accelerator
        # the check stays on the device (no sync in the training step): a failure is a device-side assert.
        flags = [no_first.any(), holes.any()] + ([bad_tags.any()] if bad_tags is not None else [])
        bad = torch.stack(flags).any()
        if bad.device.type != "cpu":
            torch._assert_async(~bad, "CRF: invalid mask or tags (see CRF._check; rerun on the CPU to diagnose)")
        elif bool(bad):
            if no_first.any():
                raise ValueError("CRF mask: every sentence needs a real first token (mask[:, 0] must be all True)")
            if holes.any():
                raise ValueError("CRF mask must be right-padded: a real token follows a padded one")
            row, col = bad_tags.nonzero()[0].tolist()
            raise ValueError(f"CRF tags: {int(tags[row, col])} at [{row}, {col}] is not a tag index in 0..{k - 1}")
        # At least float32, whatever the emissions or the module are in: a few NEG in one sum overflow fp16.
        dtype = torch.promote_types(torch.promote_types(emissions.dtype, self.transitions.dtype), torch.float32)
        emissions = emissions.to(dtype)
        # Zero padded emissions so that non-finite values there cannot reach the results or the gradients.
        return emissions.masked_fill(~mask.unsqueeze(2), 0.0)
