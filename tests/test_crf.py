"""CRF against brute-force enumeration of all tag paths; padding; BIO constraints; gradients; saving."""

from __future__ import annotations

import itertools

import pytest
import torch

from twinhead.crf import CRF, NEG
from twinhead.text import bio_error

BIO = ["O", "B-a", "I-a", "B-b", "I-b"]
PLAIN3 = ["x", "y", "z"]
PLAIN4 = ["p", "q", "r", "s"]


def random_crf(tags: list[str], bio: bool, seed: int, scale: float = 1.0) -> CRF:
    torch.manual_seed(seed)
    crf = CRF(tags, bio_constraints=bio)
    with torch.no_grad():
        for p in (crf.transitions, crf.start, crf.end):
            p.normal_(0.0, scale)
    return crf


def lengths_mask(lengths: list[int], t_len: int | None = None) -> torch.Tensor:
    t_len = t_len or max(lengths)
    return torch.arange(t_len)[None, :] < torch.tensor(lengths)[:, None]  # (B, T)


def valid(tags: list[str], path: tuple[int, ...]) -> bool:
    return bio_error([tags[k] for k in path]) is None


def hand_score(crf: CRF, em: torch.Tensor, path: tuple[int, ...]) -> float:
    """Learned-only score of one path (no BIO mask), summed in plain Python floats. em (T, K)."""
    tr, st, en = crf.transitions.tolist(), crf.start.tolist(), crf.end.tolist()
    s = st[path[0]] + en[path[-1]] + sum(float(em[i, k]) for i, k in enumerate(path))
    return s + sum(tr[a][b] for a, b in zip(path, path[1:]))


def brute_force(crf: CRF, em: torch.Tensor, constrained: bool):
    """log Z, best path and marginals (T, K) by enumerating every K^T path; invalid BIO paths dropped if
    constrained (their probability under the CRF should be ~0)."""
    t_len, k = em.shape
    paths, scores = [], []
    for path in itertools.product(range(k), repeat=t_len):
        if constrained and not valid(crf.tags, path):
            continue
        paths.append(path)
        scores.append(hand_score(crf, em, path))
    s = torch.tensor(scores, dtype=torch.float64)
    log_z = torch.logsumexp(s, 0)
    probs = torch.exp(s - log_z)
    marg = torch.zeros(t_len, k, dtype=torch.float64)
    for path, p in zip(paths, probs):
        marg[torch.arange(t_len), torch.tensor(path)] += p
    return float(log_z), list(paths[int(s.argmax())]), marg


CASES = [(PLAIN3, False, 4), (PLAIN4, False, 4), (BIO, False, 4), (BIO, True, 5), (PLAIN3, False, 1)]


@pytest.mark.parametrize("tags,bio,t_len", CASES)
def test_matches_brute_force_enumeration(tags, bio, t_len):
    k = len(tags)
    for seed in range(3):
        crf = random_crf(tags, bio, seed)
        gen = torch.Generator().manual_seed(100 + seed)
        em = torch.randn(1, t_len, k, generator=gen) * 2
        mask = torch.ones(1, t_len, dtype=torch.bool)
        log_z, best, marg = brute_force(crf, em[0], constrained=bio)
        with torch.no_grad():
            assert crf.log_partition(em, mask).item() == pytest.approx(log_z, abs=1e-4)
            assert crf.decode(em, mask)[0].tolist() == best
            assert torch.allclose(crf.marginals(em, mask)[0].double(), marg, atol=1e-5)
            for path in [tuple(best), tuple((seed + i) % k for i in range(t_len))]:
                if not bio or valid(tags, path):
                    got = crf.score(em, torch.tensor([path]), mask).item()
                    assert got == pytest.approx(hand_score(crf, em[0], path), abs=1e-4)


def test_score_of_an_invalid_path_carries_the_mask():
    crf = random_crf(BIO, True, 0)
    em = torch.randn(1, 3, len(BIO))
    mask = torch.ones(1, 3, dtype=torch.bool)
    path = (2, 0, 4)  # I-a at the start, then O -> I-b: two forbidden moves
    got = crf.score(em, torch.tensor([path]), mask).item()
    assert got == pytest.approx(hand_score(crf, em[0], path) + 2 * NEG, abs=1e-2)


def test_padding_gives_each_sentence_its_own_result():
    crf = random_crf(BIO, True, 1)
    gen = torch.Generator().manual_seed(7)
    lengths = [5, 3, 1, 4, 5]
    mask = lengths_mask(lengths, 6)  # one column of padding even for the longest
    em = torch.randn(len(lengths), 6, len(BIO), generator=gen) * 3
    em[~mask] = torch.tensor([float("nan"), float("inf"), -1e30, 1e30, 0.0])  # garbage must not leak
    tags = torch.randint(0, len(BIO), (len(lengths), 6), generator=gen).masked_fill(~mask, -100)
    with torch.no_grad():
        log_z, score = crf.log_partition(em, mask), crf.score(em, tags, mask)
        nll, path, marg = crf.nll(em, tags, mask, reduction="none"), crf.decode(em, mask), crf.marginals(em, mask)
        for row, n in enumerate(lengths):
            e, m, y = em[row:row + 1, :n], torch.ones(1, n, dtype=torch.bool), tags[row:row + 1, :n]
            assert torch.allclose(log_z[row], crf.log_partition(e, m)[0], atol=1e-5)
            assert torch.allclose(score[row], crf.score(e, y, m)[0], atol=1e-5)
            assert torch.allclose(nll[row], crf.nll(e, y, m, reduction="none")[0], atol=1e-5)
            assert torch.equal(path[row, :n], crf.decode(e, m)[0])
            assert torch.allclose(marg[row, :n], crf.marginals(e, m)[0], atol=1e-6)
            assert torch.allclose(marg[row, :n].sum(-1), torch.ones(n), atol=1e-5)
        assert (path[~mask] == 0).all() and (marg[~mask] == 0).all()
        assert torch.isfinite(log_z).all() and torch.isfinite(marg).all()


def test_gradients_are_finite_with_garbage_in_padding():
    crf = random_crf(BIO, True, 2)
    mask = lengths_mask([4, 2])
    em = torch.randn(2, 4, len(BIO))
    em[~mask] = float("nan")
    em.requires_grad_(True)
    tags = torch.tensor([[1, 2, 0, 3], [3, 4, -100, -100]])
    crf.nll(em, tags, mask).backward()
    assert torch.isfinite(em.grad).all() and (em.grad[~mask] == 0).all()


def test_constrained_decoding_is_always_valid_bio():
    tags = ["O", "B-a", "I-a", "B-b", "I-b", "B-c", "I-c"]
    crf = random_crf(tags, True, 3, scale=2.0)
    with torch.no_grad():
        crf.transitions[0, 2] += 8.0  # learned scores that favour the forbidden O -> I-a ...
        crf.start[4] += 8.0  # ... and starting with I-b
    gen = torch.Generator().manual_seed(4)
    b, t_len = 200, 10
    em = torch.randn(b, t_len, len(tags), generator=gen) * 4
    em[..., [2, 4, 6]] += 3.0  # push I- tags so that an unconstrained decoder would often be invalid
    lengths = torch.randint(1, t_len + 1, (b,), generator=gen)
    mask = torch.arange(t_len)[None, :] < lengths[:, None]
    free = CRF(tags, bio_constraints=False)
    free.load_state_dict(crf.state_dict())
    with torch.no_grad():
        ids, free_ids = crf.decode(em, mask), free.decode(em, mask)
    n_invalid_free = 0
    for row in range(b):
        n = int(lengths[row])
        assert bio_error([tags[k] for k in ids[row, :n].tolist()]) is None
        n_invalid_free += bio_error([tags[k] for k in free_ids[row, :n].tolist()]) is not None
    assert n_invalid_free > b // 2  # the same scores without the mask do decode invalid paths


def test_invalid_paths_have_no_probability_mass():
    crf = random_crf(BIO, True, 5, scale=2.0)
    with torch.no_grad():
        crf.transitions[0, 2] += 10.0
        crf.transitions[1, 4] += 10.0
        crf.start[2] += 10.0
    t_len, k = 4, len(BIO)
    gen = torch.Generator().manual_seed(6)
    em = torch.randn(1, t_len, k, generator=gen) * 3
    em[..., [2, 4]] += 4.0
    paths = torch.tensor(list(itertools.product(range(k), repeat=t_len)))  # (K^T, T)
    mask = torch.ones(paths.shape, dtype=torch.bool)
    with torch.no_grad():
        logp = crf.score(em.expand(len(paths), -1, -1), paths, mask) - crf.log_partition(em, mask[:1])
    probs = logp.double().exp()
    is_valid = torch.tensor([valid(BIO, tuple(p)) for p in paths.tolist()])
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert probs[~is_valid].sum().item() < 1e-6
    free = CRF(BIO, bio_constraints=False)
    free.load_state_dict(crf.state_dict())
    with torch.no_grad():
        free_logp = free.score(em.expand(len(paths), -1, -1), paths, mask) - free.log_partition(em, mask[:1])
    assert free_logp.double().exp()[~is_valid].sum().item() > 0.5  # without the mask these paths dominate


def test_nll_gradient_is_marginals_minus_gold_and_reaches_every_parameter():
    crf = random_crf(BIO, True, 8)
    mask = lengths_mask([5, 3, 4])
    em = torch.randn(3, 5, len(BIO), requires_grad=True)
    tags = torch.tensor([[1, 2, 2, 0, 3], [0, 3, 4, -100, -100], [3, 0, 1, 2, -100]])
    nll = crf.nll(em, tags, mask, reduction="none")
    assert (nll >= 0).all()
    nll.sum().backward()
    for p in (crf.transitions, crf.start, crf.end, em):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    # d nll / d emissions = posterior marginals - one-hot gold: ties log_partition to marginals.
    gold = torch.nn.functional.one_hot(tags.clamp(min=0), len(BIO)) * mask.unsqueeze(2)
    with torch.no_grad():
        expected = crf.marginals(em, mask) - gold
    assert torch.allclose(em.grad, expected, atol=1e-5)
    assert crf.bio_trans.grad is None and crf.bio_start.grad is None


def test_reductions():
    crf = random_crf(BIO, True, 9)
    mask = lengths_mask([3, 2])
    em = torch.randn(2, 3, len(BIO))
    tags = torch.tensor([[1, 2, 0], [3, 4, -100]])
    each = crf.nll(em, tags, mask, reduction="none")
    assert each.shape == (2,)
    assert torch.allclose(crf.nll(em, tags, mask), each.mean())
    assert torch.allclose(crf.nll(em, tags, mask, reduction="sum"), each.sum())
    with pytest.raises(ValueError, match="reduction"):
        crf.nll(em, tags, mask, reduction="avg")


def test_mask_is_a_fixed_buffer_and_state_dict_round_trips():
    crf = random_crf(BIO, True, 10)
    assert {n for n, _ in crf.named_parameters()} == {"transitions", "start", "end"}
    assert set(crf.state_dict()) == {"transitions", "start", "end"}
    assert crf.bio_trans[0, 2] == NEG and crf.bio_start[2] == NEG
    torch.manual_seed(123)
    fresh = CRF(BIO)
    assert fresh.transitions.abs().sum() == 0  # deterministic init: all learned scores start at zero
    fresh.load_state_dict(crf.state_dict())
    mask = lengths_mask([4, 2])
    em = torch.randn(2, 4, len(BIO))
    tags = torch.tensor([[1, 2, 0, 3], [3, 4, -100, -100]])
    with torch.no_grad():
        assert torch.equal(fresh.decode(em, mask), crf.decode(em, mask))
        assert torch.equal(fresh.nll(em, tags, mask, "none"), crf.nll(em, tags, mask, "none"))
        assert torch.equal(fresh.marginals(em, mask), crf.marginals(em, mask))


def test_sgd_fits_a_known_sequence():
    torch.manual_seed(0)
    crf = CRF(BIO)
    target = torch.tensor([[0, 1, 2, 2, 0, 3, 4]])  # O B-a I-a I-a O B-b I-b
    mask = torch.ones(target.shape, dtype=torch.bool)
    em = torch.zeros(1, 7, len(BIO), requires_grad=True)
    opt = torch.optim.SGD([em, *crf.parameters()], lr=0.5)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = crf.nll(em, target, mask)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    with torch.no_grad():
        assert torch.equal(crf.decode(em, mask), target)
        assert (crf.marginals(em, mask)[0, torch.arange(7), target[0]] > 0.8).all()


def test_half_precision_emissions_stay_finite():
    crf = random_crf(BIO, True, 11)
    mask = lengths_mask([12, 6])
    em = torch.randn(2, 12, len(BIO))
    em[..., 2] += 5.0
    with torch.no_grad():
        ref = crf.log_partition(em, mask)
        half = crf.log_partition(em.half(), mask)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    assert torch.allclose(half, ref, atol=0.05)
    # A half-precision module: an invalid gold path (8 forbidden moves) would sum past fp16's range.
    small = CRF(["O", "B-a", "I-a"]).half()
    y = torch.tensor([[2, 0] * 7 + [2]])  # I-a at the start, then O -> I-a seven times
    nll = small.nll(torch.randn(1, 15, 3).half(), y, torch.ones(1, 15, dtype=torch.bool))
    assert torch.isfinite(nll) and nll.item() > -7.9 * NEG


@pytest.mark.parametrize("mask,message", [
    (torch.tensor([[True, True], [False, False]]), "real first token"),
    (torch.tensor([[True, False], [True, True]]).flip(1), "real first token"),
    (torch.tensor([[True, True, False], [True, False, True]]), "right-padded"),
    (torch.ones(2, 3, dtype=torch.long), "bool"),
    (torch.ones(3, 2, dtype=torch.bool), "shape"),
])
def test_bad_masks_are_refused(mask, message):
    crf = CRF(BIO)
    em = torch.zeros(2, mask.shape[1] if mask.shape[0] == 2 else 2, len(BIO))
    for call in (crf.log_partition, crf.decode, crf.marginals):
        with pytest.raises(ValueError, match=message):
            call(em, mask)


def test_bad_emissions_and_tags_are_refused():
    crf = CRF(BIO)
    mask = lengths_mask([2, 1])
    with pytest.raises(ValueError, match=r"\(B, T>=1, 5\)"):
        crf.decode(torch.zeros(2, 2, 4), mask)
    em = torch.zeros(2, 2, len(BIO))
    with pytest.raises(ValueError, match=r"5 at \[0, 1\] is not a tag index"):
        crf.score(em, torch.tensor([[0, 5], [1, 7]]), mask)  # the 7 is padding: ignored
    with pytest.raises(ValueError, match=r"-100 at \[1, 0\]"):
        crf.nll(em, torch.tensor([[0, 1], [-100, -100]]), mask)
    with pytest.raises(ValueError, match="integer"):
        crf.score(em, torch.zeros(2, 2), mask)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    crf = random_crf(BIO, True, 12)
    mask = lengths_mask([6, 3, 1])
    em = torch.randn(3, 6, len(BIO))
    tags = torch.randint(0, len(BIO), (3, 6)).masked_fill(~mask, -100)
    gpu = CRF(BIO).cuda()
    gpu.load_state_dict(crf.state_dict())
    args = (em.cuda(), mask.cuda())
    with torch.no_grad():
        assert torch.equal(gpu.decode(*args).cpu(), crf.decode(em, mask))
        assert torch.allclose(gpu.marginals(*args).cpu(), crf.marginals(em, mask), atol=1e-5)
        assert torch.allclose(gpu.nll(em.cuda(), tags.cuda(), mask.cuda(), "none").cpu(),
                              crf.nll(em, tags, mask, "none"), atol=1e-4)


def logsumexp_log_partition(crf: CRF, em: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log Z by the textbook recursion (logsumexp over (B, K, K) each step), in float64: the reference."""
    trans, start, end = (p.double() for p in crf._params(torch.float64))
    em = em.double().masked_fill(~mask.unsqueeze(2), 0.0)
    alpha = em[:, 0] + start
    for t in range(1, em.shape[1]):
        nxt = torch.logsumexp(alpha.unsqueeze(2) + trans, 1) + em[:, t]
        alpha = torch.where(mask[:, t].unsqueeze(1), nxt, alpha)
    return torch.logsumexp(alpha + end, 1)


@pytest.mark.parametrize("bio", [True, False])
@pytest.mark.parametrize("scale", [1.0, 5.0, 50.0])
def test_forward_algorithm_matches_logsumexp_on_a_real_tag_set(bio, scale):
    """The matrix-product forward algorithm gives the logsumexp recursion's log Z and gradients, on SNIPS's
    73 tags, from small to huge emissions (states thousands apart: the shift and the floor at -600)."""
    tags = ["O"] + [f"{p}-t{i}" for i in range(36) for p in "BI"]
    crf = random_crf(tags, bio, 13, scale=2.0)
    gen = torch.Generator().manual_seed(14)
    lengths = torch.randint(1, 31, (64,), generator=gen).tolist()
    mask = lengths_mask(lengths, 30)
    em = (torch.randn(64, 30, len(tags), generator=gen) * scale).requires_grad_()
    log_z = crf.log_partition(em, mask)
    log_z.sum().backward()
    ref_em = em.detach().double().requires_grad_()
    ref = logsumexp_log_partition(crf, ref_em, mask)
    ref.sum().backward()
    assert log_z.dtype == torch.float32 and torch.isfinite(em.grad).all()
    # float32 rounding of numbers up to a few thousand; the logsumexp recursion in float32 is no closer
    assert (log_z.double() - ref.detach()).abs().max() <= 1e-6 * ref.detach().abs().max()
    assert torch.allclose(em.grad.double(), ref_em.grad, atol=1e-3 * max(1.0, scale / 10), rtol=0)
