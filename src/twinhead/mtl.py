"""Multi-task loss rules: how the task losses become gradients on shared and head parameters.

A rule is picked by name (`make_rule`) and replaces the training step's `loss.backward()`:

    rule = make_rule("grad_mean", ["intent", "tag"], {"intent": 1.0, "tag": 1.0}).to(device)
    opt.zero_grad(set_to_none=True)
    stats = rule.backward({"intent": li, "tag": lt}, list(model.parameters()),
                          {"intent": list(model.intent_head.parameters()), "tag": list(model.tag_head.parameters())})
    clip_grad_norm_(...); opt.step()
    log = stats.floats()  # the only host-device sync

Rules (w_t: the fixed task weights, L_t: the task losses, T: the number of tasks):
- `sum`: one backward of sum_t w_t L_t (the behaviour before rules existed).
- `grad_mean`: shared parameters get the mean over tasks of grad(w_t L_t); each head gets only its own
  task's grad(w_t L_t). In twinhead the tag head reads the intent head's softmax, so L_tag has a gradient
  w.r.t. the intent head's parameters; that cross term does NOT reach the intent head (it is trained by
  L_intent alone). The tag loss still flows *through* the intent head into the encoder: that path is part of
  the tag task's gradient w.r.t. the shared parameters, so it enters their mean.
- `uncertainty`: Kendall, Gal & Cipolla (CVPR 2018) homoscedastic weighting with learned log-variances s_t
  (init 0): L = sum_t exp(-s_t) L_t + s_t, one backward. With s = log sigma^2 the paper's regression term
  1/(2 sigma^2) L + log sigma is 1/2 (exp(-s) L + s): the common 1/2 only rescales the objective (the
  learning rate), so it is dropped. Its classification approximation, 1/sigma^2 L + log sigma =
  exp(-s) L + s/2, differs only in the regulariser's factor; one form for every task keeps the weights
  comparable (both twinhead tasks are cross-entropy) and is the form common implementations use. Setting
  d/ds_t = 0 gives exp(-s_t) = 1 / L_t: the rule drives each task's weighted loss towards 1. The fixed
  weights must all be 1: a fixed w_t would only move that equilibrium to exp(-s_t) = 1 / (w_t L_t), where
  it cancels, so it would mislead without changing the learned weighting.
- `pcgrad`: Yu et al. (NeurIPS 2020) gradient surgery on the shared parameters: with g_t = grad(w_t L_t)
  flattened over them, each g_i is projected, for the other tasks j in a random order, onto the normal
  plane of g_j whenever g_i . g_j < 0 (against the original g_j, as in the paper's Algorithm 1); the shared
  gradient is the sum of the projected g_i. Heads get their own task's gradient, as under grad_mean.

Parameter groups: `heads` maps a task to the parameters that task alone should train; every other parameter
in `params` is shared. A parameter the caller forgot to put in a head is therefore shared and gets the mean
(grad_mean) or the surgery sum (pcgrad) instead of being silently left without a gradient. A parameter that
no task's loss reaches keeps `.grad` untouched (None after zero_grad(set_to_none=True)), exactly as after a
plain backward, so Adam neither moves nor decays it. The rule's own parameters (the log-variances) never
count as shared even when the caller lists them in `params`.

Gradients accumulate, like `.backward()`: each rule adds to whatever `.grad` holds (None counts as zero), so
the caller zeroes grads before the step, and calling a rule on several micro-batches sums their gradients
(for pcgrad that is the sum of per-micro-batch surgeries, not surgery on the summed gradients).

With one task every rule is a plain backward of w L: there is nothing to average, project or balance (a
single learned variance would only rescale the learning rate), so `uncertainty` then has no parameters.

Holding a task (`LossRule.hold`, task -> factor): its loss is multiplied by the factor on top of its weight, in
every rule, and the weights `StepStats` reports are the products. `TagHold` sets and lifts it (train.hold_tags).

No host-device sync happens inside `backward`: `StepStats` holds detached tensors, and `StepStats.floats()`
turns them into Python floats with a single transfer. The pcgrad order is drawn from a CPU torch.Generator
the caller owns (twinhead's training generator, already saved in the training state, so a resumed run
draws the same orders); with two tasks there is nothing to order and the generator is not touched.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from twinhead.errors import TwinheadError

RULES = ("sum", "grad_mean", "uncertainty", "pcgrad")
HOLD_WEIGHT = 0.01  # train.hold_tags: the tag loss's factor while it is held
HOLD_WINDOW = 10  # ...the steps whose mean training intent loss is compared with the level
HOLD_MAX_EPOCHS = 3  # ...and the longest hold, in epochs

Grads = list[Tensor | None]  # one entry per parameter; None: the loss does not reach it


@dataclass
class StepStats:
    """What one rule step did, as detached tensors (no sync); `floats()` reads them all at once.

    loss: sum_t w_t L_t under sum, grad_mean and pcgrad (the last two follow no single objective; this
    keeps runs under the three comparable); the objective sum_t exp(-s_t) L_t + s_t under uncertainty (it
    can be negative).
    task_losses: each task's unweighted loss.
    weights: each task's effective weight: w_t (sum, pcgrad), w_t / T on the shared parameters (grad_mean;
    heads get w_t), exp(-s_t) (uncertainty).
    cosine: the cosine between the tasks' weighted gradients on the shared parameters; with more than two
    tasks the smallest pairwise one (the worst conflict); 0 where a task's gradient is zero; None when not
    measured or with one task.
    """

    loss: Tensor
    task_losses: dict[str, Tensor]
    weights: dict[str, Tensor | float]
    cosine: Tensor | None = None

    def floats(self) -> dict[str, float]:
        """{'loss', '<task>_loss', '<task>_weight', 'grad_cosine' (when measured)} as Python floats."""
        keys = ["loss"] + [f"{t}_loss" for t in self.task_losses] + [f"{t}_weight" for t in self.weights]
        vals = [self.loss, *self.task_losses.values(), *self.weights.values()]
        if self.cosine is not None:
            keys.append("grad_cosine")
            vals.append(self.cosine)
        dev = self.loss.device  # a rule left on the CPU next to a CUDA model still reads in one go
        tensors = [v.detach().float().reshape(()).to(dev) for v in vals if isinstance(v, Tensor)]
        read = iter(torch.stack(tensors).tolist() if tensors else [])  # one transfer for everything
        return {k: next(read) if isinstance(v, Tensor) else float(v) for k, v in zip(keys, vals)}


class LossRule(nn.Module):
    """Turns the task losses into gradients on the parameters; an nn.Module so that learned rule state
    (uncertainty's log-variances) follows `.to(device)`, `parameters()` and `state_dict()`."""

    name = ""

    def __init__(self, tasks: list[str], weights: dict[str, float]):
        super().__init__()
        self.tasks = list(tasks)
        self.weights = {t: float(weights[t]) for t in self.tasks}
        self.hold: dict[str, float] = {}  # task -> factor on its loss while held (TagHold); empty: none held

    def factor(self, t: str) -> float:
        """Task `t`'s hold factor: 1 unless TagHold holds it."""
        return self.hold.get(t, 1.0)

    def _held(self, t: str, loss: Tensor) -> Tensor:
        return loss * self.hold[t] if t in self.hold else loss  # no multiply by 1: the graph of no hold

    def effective_weights(self) -> dict[str, float]:
        """The fixed weights times the hold factors: what each task's loss is multiplied by."""
        return {t: w * self.factor(t) for t, w in self.weights.items()}

    def backward(self, losses: dict[str, Tensor], params: Iterable[nn.Parameter],
                 heads: dict[str, list[nn.Parameter]] | None = None, measure_conflict: bool = False) -> StepStats:
        """Leave this rule's gradient in `.grad` of every parameter (added to what is there).

        Args:
            losses: each task's scalar loss, keyed by task name (exactly the rule's tasks).
            params: every trainable parameter of the model (model.parameters()); those not claimed by a head
                are shared.
            heads: task -> the parameters only that task trains (a task may have none).
            measure_conflict: also compute `StepStats.cosine`; under sum and uncertainty this costs one
                extra backward per task (grad_mean and pcgrad have the per-task gradients anyway).

        Returns:
            StepStats of detached tensors; `.floats()` reads them (one host-device sync).
        """
        self._check_losses(losses)
        shared, own = self._split(params, heads or {})
        if len(self.tasks) == 1:
            return self._single(losses)
        return self._backward(losses, shared, own, measure_conflict)

    def _backward(self, losses: dict[str, Tensor], shared: list[nn.Parameter],
                  own: dict[str, list[nn.Parameter]], measure_conflict: bool) -> StepStats:
        raise NotImplementedError

    def _single(self, losses: dict[str, Tensor]) -> StepStats:
        (t,) = self.tasks
        total = self.weights[t] * losses[t]
        total.backward()
        return StepStats(total.detach(), {t: losses[t].detach()}, {t: self.weights[t]})

    def _check_losses(self, losses: dict[str, Tensor]) -> None:
        if set(losses) != set(self.tasks):
            raise ValueError(f"loss rule {self.name!r}: losses are for {sorted(losses)}, the rule's tasks are "
                             f"{self.tasks}")
        for t in self.tasks:
            if losses[t].dim() != 0:
                raise ValueError(f"loss rule {self.name!r}: the {t!r} loss must be a scalar, "
                                 f"got shape {tuple(losses[t].shape)}")

    def _split(self, params: Iterable[nn.Parameter],
               heads: dict[str, list[nn.Parameter]]) -> tuple[list[nn.Parameter], dict[str, list[nn.Parameter]]]:
        """(shared parameters, task -> head parameters), trainable ones only, each parameter once."""
        unknown = sorted(set(heads) - set(self.tasks))
        if unknown:
            raise ValueError(f"loss rule {self.name!r}: heads for unknown task(s) {unknown}; tasks are {self.tasks}")
        claimed: dict[int, str] = {}
        own: dict[str, list[nn.Parameter]] = {}
        for t in self.tasks:
            own[t] = []
            for p in heads.get(t, []):
                if id(p) in claimed and claimed[id(p)] != t:
                    raise ValueError(f"loss rule {self.name!r}: a parameter is in both the {claimed[id(p)]!r} "
                                     f"and the {t!r} head")
                if p.requires_grad and id(p) not in claimed:
                    own[t].append(p)
                claimed[id(p)] = t
        mine = {id(p) for p in self.parameters()}
        shared, seen = [], set()
        for p in params:
            if p.requires_grad and id(p) not in claimed and id(p) not in mine and id(p) not in seen:
                shared.append(p)
                seen.add(id(p))
        return shared, own

    def _weighted(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        return {t: self.weights[t] * self._held(t, losses[t]) for t in self.tasks}

    def _stats(self, losses: dict[str, Tensor], total: Tensor, weights: dict[str, Tensor | float],
               shared_grads: list[Grads] | None) -> StepStats:
        with torch.no_grad():
            cosine = _min_cosine(shared_grads) if shared_grads is not None else None
        return StepStats(total.detach(), {t: losses[t].detach() for t in self.tasks}, weights, cosine)


def _task_grads(weighted: dict[str, Tensor], tasks: list[str], inputs: dict[str, list[nn.Parameter]],
                keep_graph: bool) -> dict[str, Grads]:
    """grad(weighted[t]) w.r.t. inputs[t], one autograd pass per task; the graph is freed after the last
    one unless keep_graph (a backward still follows)."""
    out = {}
    for k, t in enumerate(tasks):
        retain = keep_graph or k < len(tasks) - 1
        # autograd.grad refuses an empty input list: a task with nothing to train simply has no gradients
        out[t] = list(torch.autograd.grad(weighted[t], inputs[t], retain_graph=retain, allow_unused=True)
                      if inputs[t] else [])
    return out


def _add_grad(p: nn.Parameter, g: Tensor | None) -> None:
    if g is None:
        return
    if p.grad is None:
        p.grad = g.detach()
    else:
        p.grad.add_(g)


def _min_cosine(grads: list[Grads]) -> Tensor | None:
    """Smallest pairwise cosine between per-task gradients (each a list over the same parameters)."""
    flat = _flatten(grads)  # (T, N)
    if flat is None:
        return None
    norms = flat.norm(dim=1)  # (T,)
    dots = flat @ flat.T  # (T, T)
    denom = norms[:, None] * norms[None, :]
    # A zero gradient has no direction: it neither agrees nor conflicts, so its cosine reads 0.
    cos = torch.where(denom > 0, dots / denom.clamp_min(torch.finfo(flat.dtype).tiny), torch.zeros_like(dots))
    i, j = torch.triu_indices(len(grads), len(grads), offset=1, device=flat.device)
    return cos[i, j].min()


def _flatten(grads: list[Grads]) -> Tensor | None:
    """Per-task gradient lists -> (T, N) over the parameters some task reaches (zeros for the others);
    None when no task reaches any of them."""
    pieces = []
    for col in zip(*grads):  # one parameter, one entry per task
        ref = next((g for g in col if g is not None), None)
        if ref is not None:
            pieces.append(torch.stack([(g if g is not None else torch.zeros_like(ref)).reshape(-1) for g in col]))
    return torch.cat(pieces, 1) if pieces else None


class SumRule(LossRule):
    """L = sum_t w_t L_t, one backward: gradients identical to (w_1 L_1 + w_2 L_2).backward()."""

    name = "sum"

    def _backward(self, losses, shared, own, measure_conflict):
        weighted = self._weighted(losses)
        grads = None
        if measure_conflict:
            grads = list(_task_grads(weighted, self.tasks, {t: shared for t in self.tasks}, True).values())
        total = sum(weighted[t] for t in self.tasks)
        total.backward()
        return self._stats(losses, total, self.effective_weights(), grads)


class GradMeanRule(LossRule):
    """Shared parameters: mean over tasks of grad(w_t L_t); each head: its own task's gradient only."""

    name = "grad_mean"

    def _backward(self, losses, shared, own, measure_conflict):
        weighted = self._weighted(losses)
        g = _task_grads(weighted, self.tasks, {t: shared + own[t] for t in self.tasks}, False)
        n_shared, n_tasks = len(shared), len(self.tasks)
        with torch.no_grad():
            for k, p in enumerate(shared):
                parts = [g[t][k] for t in self.tasks if g[t][k] is not None]
                _add_grad(p, sum(parts) / n_tasks if parts else None)  # tasks not reaching p add zero
            for t in self.tasks:
                for p, gp in zip(own[t], g[t][n_shared:]):
                    _add_grad(p, gp)
        grads = [g[t][:n_shared] for t in self.tasks] if measure_conflict else None
        total = sum(weighted[t].detach() for t in self.tasks)
        return self._stats(losses, total, {t: w / n_tasks for t, w in self.effective_weights().items()}, grads)


class PCGradRule(LossRule):
    """Gradient surgery on the shared parameters (sum of projected task gradients); heads: own gradient."""

    name = "pcgrad"

    def __init__(self, tasks: list[str], weights: dict[str, float], generator: torch.Generator | None):
        super().__init__(tasks, weights)
        self.generator = generator

    def _orders(self) -> list[list[int]]:
        """For each task i, the other tasks in the order i is projected against them."""
        n = len(self.tasks)
        orders = []
        for i in range(n):
            others = [j for j in range(n) if j != i]
            if len(others) > 1:  # a single other task has only one order: leave the generator alone
                others = [others[k] for k in torch.randperm(len(others), generator=self.generator).tolist()]
            orders.append(others)
        return orders

    def _backward(self, losses, shared, own, measure_conflict):
        weighted = self._weighted(losses)
        g = _task_grads(weighted, self.tasks, {t: shared + own[t] for t in self.tasks}, False)
        n_shared = len(shared)
        shared_grads = [g[t][:n_shared] for t in self.tasks]
        with torch.no_grad():
            flat = _flatten(shared_grads)  # (T, N) over the shared parameters some task reaches
            if flat is not None:
                flat = project_conflicts(flat, self._orders()).sum(0)  # (N,)
                reached = [any(sg[k] is not None for sg in shared_grads) for k in range(n_shared)]
                offset = 0
                for p, hit in zip(shared, reached):
                    if hit:
                        _add_grad(p, flat[offset: offset + p.numel()].view_as(p))
                        offset += p.numel()
            for t in self.tasks:
                for p, gp in zip(own[t], g[t][n_shared:]):
                    _add_grad(p, gp)
        total = sum(weighted[t].detach() for t in self.tasks)
        return self._stats(losses, total, self.effective_weights(), shared_grads if measure_conflict else None)


def project_conflicts(grads: Tensor, orders: list[list[int]]) -> Tensor:
    """PCGrad's projection: grads (T, N) -> projected (T, N).

    Row i is projected, for j in orders[i], onto the normal plane of the original grads[j] whenever their
    dot product is negative. Branch-free (no host sync): the coefficient is min(dot, 0) / |g_j|^2.
    """
    sq = (grads * grads).sum(1)  # (T,)
    safe = torch.where(sq > 0, sq, torch.ones_like(sq))  # a zero g_j never has a negative dot product
    out = []
    for i, order in enumerate(orders):
        gi = grads[i].clone()  # (N,)
        for j in order:
            coef = (gi @ grads[j]).clamp(max=0) / safe[j]
            gi = gi - coef * grads[j]
        out.append(gi)
    return torch.stack(out)


class UncertaintyRule(LossRule):
    """L = sum_t exp(-s_t) L_t + s_t with learned log-variances s (one per task, init 0), one backward."""

    name = "uncertainty"

    def __init__(self, tasks: list[str], weights: dict[str, float]):
        super().__init__(tasks, weights)
        if len(self.tasks) > 1:  # one task: a plain backward, nothing to learn
            self.log_vars = nn.Parameter(torch.zeros(len(self.tasks)))  # (T,) in task order

    def _backward(self, losses, shared, own, measure_conflict):
        scale = torch.exp(-self.log_vars)  # (T,)
        weighted = {t: scale[k] * self._held(t, losses[t]) for k, t in enumerate(self.tasks)}
        grads = None
        if measure_conflict:
            grads = list(_task_grads(weighted, self.tasks, {t: shared for t in self.tasks}, True).values())
        total = sum(weighted[t] + self.log_vars[k] for k, t in enumerate(self.tasks))
        total.backward()
        held = {t: scale[k].detach() * self.factor(t) for k, t in enumerate(self.tasks)}
        return self._stats(losses, total, held, grads)


def make_rule(name: str, tasks: list[str], weights: dict[str, float],
              generator: torch.Generator | None = None) -> LossRule:
    """The loss rule `name` (one of RULES) for `tasks` with fixed loss weights `weights` (task -> w >= 0).

    generator: a CPU torch.Generator for pcgrad's random projection order (needed with three or more tasks);
    the caller seeds it and keeps its state in the training state so that a resumed run draws the same orders.
    """
    if name not in RULES:
        raise TwinheadError(f"unknown loss rule {name!r}: choose one of {', '.join(RULES)}")
    if not tasks or len(set(tasks)) != len(tasks):
        raise TwinheadError(f"loss rule {name!r}: tasks must be distinct and at least one, got {list(tasks)}")
    if set(weights) != set(tasks):
        raise TwinheadError(f"loss rule {name!r}: weights are given for {sorted(weights)}, "
                            f"the tasks are {sorted(tasks)}")
    bad = {t: w for t, w in weights.items() if not (math.isfinite(w) and w >= 0)}
    if bad:
        raise TwinheadError(f"loss rule {name!r}: weights must be finite and >= 0, got {bad}")
    if name == "sum":
        return SumRule(tasks, weights)
    if name == "grad_mean":
        return GradMeanRule(tasks, weights)
    if name == "uncertainty":
        fixed = {t: w for t, w in weights.items() if w != 1}
        if fixed:
            raise TwinheadError(f"loss rule 'uncertainty' learns the task weights; the fixed weights must be 1, "
                                f"got {fixed}")
        return UncertaintyRule(tasks, weights)
    if len(tasks) > 2 and generator is None:
        raise ValueError("loss rule 'pcgrad' with three or more tasks needs a torch.Generator for its order")
    return PCGradRule(tasks, weights, generator)


def prior_loss(head: nn.Module, targets: Tensor, smoothing: float = 0.0, chunk: int = 4096) -> float:
    """The sentence head's training loss if it answered every sentence with train's label frequencies: where
    the intent loss sits before the model reads anything from the text (ln L for L balanced labels; less
    when a few labels dominate). `head` is a twinhead SentenceHead (its own loss, label smoothing included);
    targets: its training targets, label ids (N,) or multi-hot rows (N, L)."""
    with torch.no_grad():
        if head.multi_label:
            p = targets.float().mean(0).clamp(1e-6, 1 - 1e-6)
            logits = torch.log(p) - torch.log1p(-p)
        else:
            freq = torch.bincount(targets, minlength=head.n_labels).float() / len(targets)
            logits = torch.log(freq.clamp_min(1e-12))
        total = 0.0
        for start in range(0, len(targets), chunk):  # exact, without an (N, L) matrix
            part = targets[start: start + chunk]
            total += head.loss(logits.expand(len(part), -1), part, smoothing).item() * len(part)
    return total / len(targets)


class TagHold:
    """Sentence task first (train.hold_tags): the tag loss is multiplied by `weight` until the training intent
    loss has left its starting level, then by 1 for good.

    Why: the joint model can fail to learn the sentence task at all. On a generated set of 150 intents, each
    named by one word, the intent-only model is right after one epoch and the joint one stays at chance for 20
    (benchmarks/head_health.py: its head's ReLU units die while the tag loss reshapes the shared encoder). With
    the tag loss held until the intent loss moves, the joint model learns both (README, "Multi-task learning").
    On the development data sets it ends within the first 20-40 steps.

    Every `window` steps, the mean intent loss of those steps (over all ranks: `reduce` sums a tensor over
    them) is compared with `level` (train.hold_tags times `prior_loss`); below it, the hold ends. It ends
    anyway after `max_steps`, so a sentence task that cannot be learned does not hold the tags back for long.
    One host read per window while held; none after. `state_dict` carries it across a resumed run.
    """

    def __init__(self, rule: LossRule, level: float, max_steps: int, weight: float = HOLD_WEIGHT,
                 window: int = HOLD_WINDOW, task: str = "tags"):
        self.rule, self.level, self.max_steps, self.weight, self.window = rule, level, max_steps, weight, window
        self.task = task
        self.steps, self.counted, self.done = 0, 0, False
        self.total: Tensor | float = 0.0  # intent losses since the last comparison
        rule.hold[task] = weight

    def step(self, intent_loss: Tensor, reduce=None) -> str | None:
        """Count one training step's intent loss (this rank's, as the rule got it); at the step that ends the
        hold, lift it and return a line saying why."""
        if self.done:
            return None
        self.total = intent_loss.detach().float() + self.total
        self.steps += 1
        self.counted += 1
        if self.counted < self.window and self.steps < self.max_steps:
            return None
        total = self.total.reshape(1)  # a tensor: at least one step was added since the last comparison
        mean = float((reduce(total.clone()) if reduce else total)[0]) / self.counted
        self.total, self.counted = 0.0, 0
        if mean < self.level:
            why = f"training intent loss {mean:.4f} < {self.level:.4f}"
        elif self.steps >= self.max_steps:
            why = f"training intent loss still {mean:.4f} (>= {self.level:.4f}) after {self.steps} steps"
        else:
            return None
        self.done = True
        self.rule.hold.pop(self.task, None)
        return f"step {self.steps}: {why}; the {self.task!r} task trains at full weight from here on (train.hold_tags)"

    def state_dict(self) -> dict:
        return {"steps": self.steps, "counted": self.counted, "done": self.done, "total": float(self.total)}

    def load_state_dict(self, st: dict) -> None:
        self.steps, self.counted, self.done, self.total = st["steps"], st["counted"], st["done"], st["total"]
        if self.done:
            self.rule.hold.pop(self.task, None)
        else:
            self.rule.hold[self.task] = self.weight
