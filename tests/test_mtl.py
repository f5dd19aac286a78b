"""Multi-task loss rules: gradients checked against independent autograd calls and hand-computed cases."""

from __future__ import annotations

import copy
import io
import itertools
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from twinhead.errors import TwinheadError
from twinhead.heads import SentenceHead
from twinhead.mtl import RULES, TagHold, make_rule, prior_loss

TASKS = ["a", "b"]
WEIGHTS = {"a": 0.7, "b": 1.3}


class Toy(nn.Module):
    """A shared encoder feeding two heads; head B also reads head A's softmax (like intent_to_tags)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.enc = nn.Linear(4, 6)
        self.head_a = nn.Linear(6, 3)
        self.head_b = nn.Linear(6 + 3, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.enc(x))  # (B, 6)
        a = self.head_a(h)  # (B, 3)
        b = self.head_b(torch.cat([h, torch.softmax(a, -1)], -1))  # (B, 2)
        return a, b

    def heads(self) -> dict[str, list[nn.Parameter]]:
        return {"a": list(self.head_a.parameters()), "b": list(self.head_b.parameters())}


def data(n: int = 16, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x, torch.randint(0, 3, (n,), generator=g), torch.randint(0, 2, (n,), generator=g)


def losses(model: Toy, batch) -> dict[str, torch.Tensor]:
    x, ya, yb = batch
    a, b = model(x)
    return {"a": F.cross_entropy(a, ya), "b": F.cross_entropy(b, yb)}


def task_grad(model: Toy, batch, task: str, params: list[nn.Parameter], w: float = 1.0) -> list[torch.Tensor]:
    """grad of w * L_task alone, from its own forward pass (independent of any rule)."""
    out = torch.autograd.grad(w * losses(model, batch)[task], params, allow_unused=True)
    return [g if g is not None else torch.zeros_like(p) for g, p in zip(out, params)]


def grads(params) -> list[torch.Tensor]:
    return [p.grad.clone() for p in params]


def close(xs, ys, tol: float = 1e-6) -> bool:
    return all(torch.allclose(x, y, atol=tol, rtol=0) for x, y in zip(xs, ys, strict=True))


def flat(xs) -> torch.Tensor:
    return torch.cat([x.reshape(-1) for x in xs])


def run_rule(name: str, model: Toy, batch, weights=WEIGHTS, measure: bool = False, generator=None):
    rule = make_rule(name, list(weights), weights, generator)
    model.zero_grad(set_to_none=True)
    heads = {t: ps for t, ps in model.heads().items() if t in weights}
    stats = rule.backward(losses_for(model, batch, weights), list(model.parameters()), heads, measure_conflict=measure)
    return rule, stats


def losses_for(model: Toy, batch, weights) -> dict[str, torch.Tensor]:
    return {t: v for t, v in losses(model, batch).items() if t in weights}


def test_sum_is_exactly_the_plain_weighted_backward():
    batch = data()
    ref = Toy()
    ls = losses(ref, batch)
    (WEIGHTS["a"] * ls["a"] + WEIGHTS["b"] * ls["b"]).backward()
    for measure in (False, True):
        model = Toy()
        _, stats = run_rule("sum", model, batch, measure=measure)
        for p, q in zip(model.parameters(), ref.parameters()):
            assert torch.equal(p.grad, q.grad)
        assert stats.floats()["loss"] == pytest.approx(WEIGHTS["a"] * ls["a"].item() + WEIGHTS["b"] * ls["b"].item())


def test_grad_mean_routes_shared_mean_and_own_head_gradients():
    batch = data()
    model = Toy()
    enc = list(model.enc.parameters())
    ha, hb = model.heads()["a"], model.heads()["b"]
    ga = task_grad(model, batch, "a", enc, WEIGHTS["a"])
    gb = task_grad(model, batch, "b", enc, WEIGHTS["b"])
    head_a_alone = task_grad(model, batch, "a", ha, WEIGHTS["a"])
    head_b_alone = task_grad(model, batch, "b", hb, WEIGHTS["b"])

    _, stats = run_rule("grad_mean", model, batch)
    assert close(grads(enc), [(x + y) / 2 for x, y in zip(ga, gb)])
    assert close(grads(ha), head_a_alone)
    assert close(grads(hb), head_b_alone)
    assert stats.floats()["a_weight"] == pytest.approx(WEIGHTS["a"] / 2)

    # Under sum, head A also receives L_b's gradient through head B's softmax input: that cross term is
    # what grad_mean removes.
    summed = Toy()
    run_rule("sum", summed, batch)
    cross = flat(grads(summed.head_a.parameters())) - flat(head_a_alone)
    assert cross.abs().max() > 1e-3
    assert close(grads(summed.head_a.parameters()),
                 [x + y for x, y in zip(head_a_alone, task_grad(model, batch, "b", ha, WEIGHTS["b"]))])


def test_grad_mean_treats_ungrouped_parameters_as_shared():
    batch = data()
    model = Toy()
    hb = list(model.head_b.parameters())
    gb = task_grad(model, batch, "b", hb, WEIGHTS["b"])  # L_a does not reach head B
    rule = make_rule("grad_mean", TASKS, WEIGHTS)
    rule.backward(losses(model, batch), list(model.parameters()), {"a": list(model.head_a.parameters())})
    assert close(grads(hb), [g / 2 for g in gb])


def test_rules_leave_unreached_parameters_without_gradient_and_accumulate():
    batch = data()
    model = Toy()
    unused = nn.Parameter(torch.ones(3))
    for name in RULES:
        model.zero_grad(set_to_none=True)
        rule = make_rule(name, TASKS, {"a": 1.0, "b": 1.0}, torch.Generator().manual_seed(0))
        rule.backward(losses(model, batch), [*model.parameters(), unused], model.heads())
        once = grads(model.parameters())
        rule.backward(losses(model, batch), [*model.parameters(), unused], model.heads())
        assert unused.grad is None, name  # as after a plain backward: Adam neither moves nor decays it
        assert close(grads(model.parameters()), [2 * g for g in once]), name


class Linear2(nn.Module):
    """Hand-built gradients: L_t = c_t . theta, so grad_theta(L_t) = c_t exactly."""

    def __init__(self, dim: int):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(dim))

    def losses(self, cs: dict[str, list[float]]) -> dict[str, torch.Tensor]:
        return {t: torch.tensor(c) @ self.theta for t, c in cs.items()}


@pytest.mark.parametrize("weights, expected", [
    # g_a=(1,0), g_b=(-1,1), dot -1: g_a -> (1,0) - (-1/2)(-1,1) = (.5,.5); g_b -> (-1,1) - (-1/1)(1,0) = (0,1)
    ({"a": 1.0, "b": 1.0}, [0.5, 1.5]),
    # g_a=(2,0): g_a -> (2,0) - (-2/2)(-1,1) = (1,1); g_b -> (-1,1) - (-2/4)(2,0) = (0,1)
    ({"a": 2.0, "b": 1.0}, [1.0, 2.0]),
])
def test_pcgrad_projects_conflicting_gradients_by_hand(weights, expected):
    m = Linear2(2)
    rule = make_rule("pcgrad", TASKS, weights)
    rule.backward(m.losses({"a": [1.0, 0.0], "b": [-1.0, 1.0]}), [m.theta], {})
    assert m.theta.grad.tolist() == pytest.approx(expected, abs=1e-6)


def test_pcgrad_leaves_agreeing_gradients_as_the_sum():
    cs = {"a": [1.0, 0.0, 2.0], "b": [1.0, 1.0, 0.5]}  # dot 2 > 0: no conflict, nothing projected
    m, ref = Linear2(3), Linear2(3)
    make_rule("pcgrad", TASKS, WEIGHTS).backward(m.losses(cs), [m.theta], {})
    make_rule("sum", TASKS, WEIGHTS).backward(ref.losses(cs), [ref.theta], {})
    assert torch.allclose(m.theta.grad, ref.theta.grad, atol=1e-6, rtol=0)
    assert m.theta.grad.tolist() == pytest.approx([0.7 + 1.3, 1.3, 1.4 + 0.65])


def test_pcgrad_heads_get_their_own_gradient():
    batch = data()
    model = Toy()
    ha, hb = model.heads()["a"], model.heads()["b"]
    alone_a, alone_b = task_grad(model, batch, "a", ha, WEIGHTS["a"]), task_grad(model, batch, "b", hb, WEIGHTS["b"])
    run_rule("pcgrad", model, batch)
    assert close(grads(ha), alone_a) and close(grads(hb), alone_b)


def reference_pcgrad(gs: list[list[float]], orders: list[list[int]]) -> list[float]:
    """Algorithm 1 of Yu et al. in plain Python, for an explicit projection order per task."""
    def dot(u, v):
        return sum(x * y for x, y in zip(u, v))

    total = [0.0] * len(gs[0])
    for i, order in enumerate(orders):
        g = list(gs[i])
        for j in order:
            d = dot(g, gs[j])
            if d < 0:
                g = [x - d / dot(gs[j], gs[j]) * y for x, y in zip(g, gs[j])]
        total = [s + x for s, x in zip(total, g)]
    return total


def test_pcgrad_order_is_seeded_reproducible_and_random():
    gs = [[1.0, 0.2, 0.0], [-0.6, 1.0, 0.3], [-0.5, -0.9, 0.4]]  # every pair conflicts
    cs = dict(zip("xyz", gs))
    choices = [[[1, 2], [2, 1]], [[0, 2], [2, 0]], [[0, 1], [1, 0]]]
    candidates = [reference_pcgrad(gs, list(o)) for o in itertools.product(*choices)]

    def step(gen: torch.Generator) -> list[float]:
        m = Linear2(3)
        make_rule("pcgrad", list(cs), {t: 1.0 for t in cs}, gen).backward(m.losses(cs), [m.theta], {})
        return m.theta.grad.tolist()

    results = []
    for seed in range(12):
        torch.manual_seed(100 + seed)  # the global RNG must play no part
        a = step(torch.Generator().manual_seed(seed))
        torch.manual_seed(999)
        assert step(torch.Generator().manual_seed(seed)) == a
        assert any(a == pytest.approx(c, abs=1e-6) for c in candidates)
        results.append(tuple(round(x, 5) for x in a))
    assert len(set(results)) > 1  # the order is drawn, and it matters here

    gen = torch.Generator().manual_seed(3)
    step(gen)
    saved = gen.get_state()  # a resumed run restores the generator and draws the same next order
    nxt = step(gen)
    gen.set_state(saved)
    assert step(gen) == nxt


def test_pcgrad_with_two_tasks_does_not_consume_the_generator():
    gen = torch.Generator().manual_seed(5)
    before = gen.get_state()
    model = Toy()
    run_rule("pcgrad", model, data(), generator=gen)
    assert torch.equal(gen.get_state(), before)


def test_uncertainty_objective_gradients_and_weights():
    batch = data()
    model = Toy()
    rule = make_rule("uncertainty", TASKS, {"a": 1.0, "b": 1.0})
    s = torch.tensor([0.3, -0.5])
    rule.load_state_dict({"log_vars": s})
    assert [p is rule.log_vars for p in rule.parameters()] == [True]

    ls = losses(model, batch)
    la, lb = ls["a"].item(), ls["b"].item()
    stats = rule.backward(ls, list(model.parameters()), model.heads()).floats()
    want = math.exp(-0.3) * la + 0.3 + math.exp(0.5) * lb - 0.5
    assert stats["loss"] == pytest.approx(want, rel=1e-6)
    assert rule.log_vars.grad.tolist() == pytest.approx([-math.exp(-0.3) * la + 1, -math.exp(0.5) * lb + 1], rel=1e-5)
    assert stats["a_weight"] == pytest.approx(math.exp(-0.3)) and stats["b_weight"] == pytest.approx(math.exp(0.5))

    ref = Toy()
    lr = losses(ref, batch)
    (math.exp(-0.3) * lr["a"] + math.exp(0.5) * lr["b"]).backward()
    assert close(grads(model.parameters()), grads(ref.parameters()))


def test_uncertainty_log_variances_survive_a_checkpoint_round_trip():
    rule = make_rule("uncertainty", TASKS, {"a": 1.0, "b": 1.0})
    assert rule.log_vars.tolist() == [0.0, 0.0]
    with torch.no_grad():
        rule.log_vars.copy_(torch.tensor([0.25, -1.5]))
    buf = io.BytesIO()
    torch.save({"loss_rule": rule.state_dict()}, buf)
    buf.seek(0)
    fresh = make_rule("uncertainty", TASKS, {"a": 1.0, "b": 1.0})
    fresh.load_state_dict(torch.load(buf, weights_only=True)["loss_rule"])
    assert fresh.log_vars.tolist() == [0.25, -1.5]


@pytest.mark.parametrize("name", RULES)
def test_cosine_matches_per_task_gradients(name):
    batch = data()
    model = Toy()
    enc = list(model.enc.parameters())
    ga, gb = flat(task_grad(model, batch, "a", enc)), flat(task_grad(model, batch, "b", enc))
    want = (ga @ gb / (ga.norm() * gb.norm())).item()
    weights = {"a": 1.0, "b": 1.0} if name == "uncertainty" else WEIGHTS
    gen = torch.Generator().manual_seed(0)
    _, measured = run_rule(name, model, batch, weights, measure=True, generator=gen)
    assert measured.floats()["grad_cosine"] == pytest.approx(want, abs=1e-6)
    _, plain = run_rule(name, Toy(), batch, weights, generator=gen)
    assert plain.cosine is None and "grad_cosine" not in plain.floats()


@pytest.mark.parametrize("name", RULES)
def test_one_task_is_a_plain_backward(name):
    batch = data()
    w = {"a": 1.0} if name == "uncertainty" else {"a": 0.6}
    ref = Toy()
    (w["a"] * losses(ref, batch)["a"]).backward()
    model = Toy()
    rule, stats = run_rule(name, model, batch, w, measure=True)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert (p.grad is None and q.grad is None) or torch.equal(p.grad, q.grad)
    assert stats.cosine is None and list(rule.parameters()) == []
    assert stats.floats()["a_weight"] == w["a"]


@pytest.mark.parametrize("name", RULES)
def test_optimizer_steps_reduce_the_loss(name):
    batch = data(n=64, seed=7)
    model = Toy(seed=3)
    weights = {"a": 1.0, "b": 1.0}
    rule = make_rule(name, TASKS, weights, torch.Generator().manual_seed(0))
    opt = torch.optim.Adam([*model.parameters(), *rule.parameters()], lr=0.05)
    history = []
    for _ in range(30):
        opt.zero_grad(set_to_none=True)
        history.append(rule.backward(losses(model, batch), list(model.parameters()), model.heads()).floats())
        opt.step()
    first, last = history[0], history[-1]
    assert last["loss"] < first["loss"] - 0.3
    assert last["a_loss"] < 0.9 * first["a_loss"] and last["b_loss"] < 0.8 * first["b_loss"]


def test_bad_configuration_is_one_clear_error():
    with pytest.raises(TwinheadError, match="unknown loss rule 'mean'.*sum, grad_mean, uncertainty, pcgrad"):
        make_rule("mean", TASKS, WEIGHTS)
    with pytest.raises(TwinheadError, match="weights are given for"):
        make_rule("sum", TASKS, {"a": 1.0})
    with pytest.raises(TwinheadError, match="finite and >= 0"):
        make_rule("sum", TASKS, {"a": 1.0, "b": -1.0})
    with pytest.raises(TwinheadError, match="fixed weights must be 1"):
        make_rule("uncertainty", TASKS, WEIGHTS)
    with pytest.raises(ValueError, match="needs a torch.Generator"):
        make_rule("pcgrad", ["x", "y", "z"], {"x": 1.0, "y": 1.0, "z": 1.0})


def test_misuse_by_the_caller_is_refused():
    model = Toy()
    rule = make_rule("grad_mean", TASKS, WEIGHTS)
    with pytest.raises(ValueError, match="losses are for"):
        rule.backward({"a": losses(model, data())["a"]}, list(model.parameters()), model.heads())
    both = copy.copy(model.heads())
    both["b"] = both["b"] + both["a"][:1]
    with pytest.raises(ValueError, match="in both"):
        rule.backward(losses(model, data()), list(model.parameters()), both)


@pytest.mark.parametrize("name", RULES)
def test_a_held_task_is_multiplied_by_its_factor_in_every_rule(name):
    """rule.hold["b"] = 0.01 gives exactly the gradients of the same rule with b's loss times 0.01, and the
    reported weight of b is its weight times 0.01; lifting the hold gives the rule's own gradients back."""
    batch = data()
    weights = {"a": 1.0, "b": 1.0} if name == "uncertainty" else WEIGHTS
    held = Toy()
    rule = make_rule(name, TASKS, weights, torch.Generator().manual_seed(0))
    rule.hold["b"] = 0.01
    ls = losses(held, batch)
    stats = rule.backward(ls, list(held.parameters()), held.heads()).floats()

    ref = Toy()
    ref_rule = make_rule(name, TASKS, weights, torch.Generator().manual_seed(0))
    lr = losses(ref, batch)
    ref_stats = ref_rule.backward({"a": lr["a"], "b": 0.01 * lr["b"]}, list(ref.parameters()), ref.heads()).floats()
    assert close(grads(held.parameters()), grads(ref.parameters()))
    assert stats["b_loss"] == pytest.approx(ls["b"].item())  # the loss itself, not the held one
    assert stats["b_weight"] == pytest.approx(0.01 * ref_stats["b_weight"])
    assert stats["a_weight"] == pytest.approx(ref_stats["a_weight"])

    rule.hold.clear()
    again, plain = Toy(), Toy()
    rule.backward(losses(again, batch), list(again.parameters()), again.heads())
    make_rule(name, TASKS, weights, torch.Generator().manual_seed(0)).backward(
        losses(plain, batch), list(plain.parameters()), plain.heads())
    assert close(grads(again.parameters()), grads(plain.parameters()))


def test_prior_loss_is_the_loss_of_answering_the_label_frequencies():
    head = SentenceHead(4, 8, 3, 0.0)
    balanced = torch.tensor([0, 1, 2] * 20)
    assert prior_loss(head, balanced) == pytest.approx(math.log(3), rel=1e-6)
    skewed = torch.tensor([0] * 8 + [1] + [2])  # frequencies 0.8, 0.1, 0.1: their entropy
    entropy = -(0.8 * math.log(0.8) + 2 * 0.1 * math.log(0.1))
    assert prior_loss(head, skewed, chunk=3) == pytest.approx(entropy, rel=1e-6)
    assert prior_loss(head, torch.zeros(5, dtype=torch.long)) == pytest.approx(0.0, abs=1e-6)  # one label
    # label smoothing: the head's own smoothed loss of the constant frequency logits
    logits = torch.log(torch.tensor([0.8, 0.1, 0.1])).expand(10, -1)
    assert prior_loss(head, skewed, smoothing=0.1) == pytest.approx(
        F.cross_entropy(logits, skewed, label_smoothing=0.1).item(), rel=1e-6)
    multi = SentenceHead(4, 8, 2, 0.0, multi_label=True)
    rows = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])  # label frequencies 0.75, 0.25
    want = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))  # each label's binary entropy is the same here
    assert prior_loss(multi, rows) == pytest.approx(want, rel=1e-5)


def feed(hold: TagHold, values) -> list[tuple[int, str]]:
    out = []
    for v in values:
        said = hold.step(torch.tensor(float(v)))
        if said:
            out.append((hold.steps, said))
    return out


def test_tag_hold_ends_when_a_window_mean_falls_below_the_level():
    rule = make_rule("sum", ["intent", "tags"], {"intent": 1.0, "tags": 1.0})
    hold = TagHold(rule, level=1.0, max_steps=1000, window=4)
    assert rule.effective_weights() == {"intent": 1.0, "tags": 0.01}
    # windows of 4: mean 2.0, then 1.0 (not below), then 0.75: the hold ends at step 12, not at step 9 where one
    # value first drops
    said = feed(hold, [2, 2, 2, 2, 1, 1, 1, 1, 0.5, 1, 1, 0.5, 0.1, 0.1])
    assert [s for s, _ in said] == [12] and "0.7500 < 1.0000" in said[0][1]
    assert hold.done and rule.effective_weights() == {"intent": 1.0, "tags": 1.0}
    assert hold.step(torch.tensor(0.0)) is None and hold.steps == 12  # ended for good: nothing counted


def test_tag_hold_ends_after_max_steps_and_resumes_mid_window():
    rule = make_rule("uncertainty", ["intent", "tags"], {"intent": 1.0, "tags": 1.0})
    hold = TagHold(rule, level=1.0, max_steps=7, window=4)
    assert feed(hold, [3, 3, 3, 3, 3]) == []
    saved = hold.state_dict()  # mid-window: one value counted since the last comparison
    rule2 = make_rule("uncertainty", ["intent", "tags"], {"intent": 1.0, "tags": 1.0})
    resumed = TagHold(rule2, level=1.0, max_steps=7, window=4)
    resumed.load_state_dict(saved)
    for h in (hold, resumed):
        said = feed(h, [3, 3])
        assert [s for s, _ in said] == [7] and "still 3.0000" in said[0][1] and "after 7 steps" in said[0][1]
        assert h.rule.hold == {}
    ended = TagHold(make_rule("sum", ["intent", "tags"], {"intent": 1.0, "tags": 1.0}), 1.0, 7)
    ended.load_state_dict(hold.state_dict())
    assert ended.done and ended.rule.hold == {}


def test_tag_hold_compares_the_mean_over_all_ranks():
    """Among N processes each rank counts its own intent loss; `reduce` sums over the ranks, and every rank
    takes the same decision (here two ranks whose losses average 0.9 < 1, though one alone is 1.4)."""
    rule = make_rule("sum", ["intent", "tags"], {"intent": 1.0, "tags": 1.0})
    hold = TagHold(rule, level=1.0, max_steps=100, window=2)
    other_rank = torch.tensor([0.4])
    said = [hold.step(torch.tensor(1.4), lambda t: (t + 2 * other_rank) / 2) for _ in range(2)]
    assert said[0] is None and "0.9000 < 1.0000" in said[1]
