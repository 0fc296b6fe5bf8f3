"""The oracle ledger on the real task: how much of the best possible Stage 1 does an allocator get?

At a measured iteration every prompt of the candidate pool is sampled n times by the current
policy (measurement rollouts: outside the training budget, never trained on). With s_i successes
in n_i samples the ledger scores, on the same pool and the same Stage-1 budget B (the run's own
Stage-1 leaves), three plans:
- **uniform**: G rollouts for each of the first B / G prompts (GRPO);
- **the run's allocator**: the Stage-1 counts it actually chose, from its predictor's v;
- **the oracle**: the exact Stage-1 allocation (`allocate_roots`) fed the prompts' success rates;
and, for every run, the **predictor's rule**: TRACE's Stage-1 allocation fed the predictor's v
(for a `trace` run this is its own plan; for any other it says what TRACE would have chosen).

A plan m is scored by its expected mixed groups sum_i V_root(v_i, m_i), V_root(v, m) = 1 - v^m -
(1 - v)^m (the paper's Stage-1 objective), and by its expected leaves with non-zero advantage,
sum_i m_i V_root(v_i, m_i) (in a mixed group every leaf's group-relative advantage is non-zero;
in an all-equal group none is).

Estimators (the plug-in V_root(s/n, m) is biased: it calls a prompt with 1 success in 4 samples
"mixed with probability 0.68" where the truth may be anything):
- v^m has the unbiased estimator C(s, m) / C(n, m) for m <= n (the chance that m samples drawn
  without replacement from the n all succeeded), so V_root(v, m) is estimated without bias by
  1 - [C(s, m) + C(n - s, m)] / C(n, m). A plan chosen without looking at the samples (uniform,
  the allocator's, the predictor's rule) is scored this way on all n samples.
- The oracle's plan depends on the samples, so scoring it on them would be optimistic. It is
  cross-fitted: allocate on the plug-in rates of the first half of each prompt's samples, score
  with the unbiased estimator on the second half, swap the halves, average (both halves need
  n / 2 >= the per-prompt cap). The halves follow the order the rollouts were sampled in
  (`rollout_rewards`), never the order they ended in, which goes with their length and so with
  success. The oracle knows n / 2 samples, not v, so it under-states the true oracle (by how much
  on simulated pools: `python bench/oracle_sim.py`, docs/results.md); shares of the oracle's gain
  are, if anything, flattered.

share of gain = (allocator - uniform) / (oracle - uniform), in expected mixed groups (undefined
when the oracle does not beat uniform).

**The oracle control** (`measured_stage1`; flows' `trace.oracle_samples`): the same measurement
made before Stage 1 at every iteration, and Stage 1 allocated on each prompt's plug-in rate s / n
instead of the predictor's v. It costs pool_size * n rollouts per iteration outside the budget, so
it is a bound, not an equal-cost allocator: what the run's allocator would do with a root
predictor as good as n fresh samples of the current policy. The measurement rollouts are never
trained on; the predictor still learns from the run's own trees and still steers Stage 2. What it
bought on the default task (bench/results/oracle_roots) is in docs/results.md.

Deviations: Stage 1 only (Stage 2's anchors exist only in the run's own trees, so there is no
common ground to score another plan's prefixes on).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from math import comb
from typing import Any

import numpy as np

from trace_core.generation.backend import GenerationBackend, SamplingParams
from trace_core.method.allocation import allocate_roots, nonzero_leaves_value, root_value
from trace_core.method.allocators import Allocator, AllocatorConfig, RootPlan, uniform_counts
from trace_core.method.environment import Environment, Prompt
from trace_core.method.predictor import Predictor, quality
from trace_core.method.rollout import rollout_batch
from trace_core.method.sampling import Featurizer, plan_stage1, predict_nodes
from trace_core.method.tree import RolloutTree


def unbiased_mixed(successes: int, samples: int, m: int) -> float:
    """Unbiased estimate of V_root(v, m) from `successes` in `samples` Bernoulli(v) draws (m <= samples)."""
    if m < 2:
        return 0.0
    if m > samples:
        raise ValueError(f"cannot estimate a group of {m} from {samples} samples without bias")
    total = comb(samples, m)
    return 1.0 - (comb(successes, m) + comb(samples - successes, m)) / total


@dataclass(frozen=True)
class PlanScore:
    """A Stage-1 plan's expected mixed groups and expected leaves with non-zero advantage."""

    mixed: float
    nonzero_leaves: float


def score_plan(successes: Sequence[int], samples: Sequence[int], counts: Sequence[int]) -> PlanScore:
    """Unbiased expected mixed groups and non-zero-advantage leaves of `counts` (chosen without the samples)."""
    values = [unbiased_mixed(s, n, m) for s, n, m in zip(successes, samples, counts, strict=True)]
    return PlanScore(float(sum(values)), float(sum(m * v for m, v in zip(counts, values, strict=True))))


def cross_fitted_oracle(
    first: Sequence[int],
    second: Sequence[int],
    half: int,
    budget: int,
    cap: int,
    leaves: bool = False,
) -> tuple[PlanScore, tuple[int, ...]]:
    """The oracle plan allocated on one half's plug-in rates s / half and scored on the other half,
    both ways, averaged; returns the score and the plan allocated on the first half. It maximises
    the expected mixed groups (the expected non-zero-advantage leaves with `leaves`)."""
    if half < cap:
        raise ValueError(f"cross-fitting needs half the samples ({half}) >= the per-prompt cap ({cap})")
    halves = [half] * len(first)
    value = nonzero_leaves_value if leaves else root_value
    plan_a = allocate_roots([c / half for c in first], budget, cap, value)
    plan_b = allocate_roots([c / half for c in second], budget, cap, value)
    a, b = score_plan(second, halves, plan_a), score_plan(first, halves, plan_b)
    return PlanScore((a.mixed + b.mixed) / 2, (a.nonzero_leaves + b.nonzero_leaves) / 2), plan_a


@dataclass(frozen=True)
class Ledger:
    """One measured iteration. budget: the Stage-1 leaves every plan spends."""

    budget: int
    oracle: PlanScore
    uniform: PlanScore
    allocator: PlanScore
    predictor_rule: PlanScore

    @property
    def share_of_gain(self) -> float:
        """(allocator - uniform) / (oracle - uniform) in expected mixed groups; NaN where the oracle
        gains nothing over uniform."""
        gain = self.oracle.mixed - self.uniform.mixed
        return (self.allocator.mixed - self.uniform.mixed) / gain if gain > 1e-9 else float("nan")

    @property
    def rule_share_of_gain(self) -> float:
        """The same share for the predictor's rule."""
        gain = self.oracle.mixed - self.uniform.mixed
        return (self.predictor_rule.mixed - self.uniform.mixed) / gain if gain > 1e-9 else float("nan")

    def metrics(self) -> dict[str, float]:
        out = {"headroom/budget": float(self.budget)}
        for name in ("oracle", "uniform", "allocator", "predictor_rule"):
            score: PlanScore = getattr(self, name)
            out[f"headroom/{name}_mixed"] = score.mixed
            out[f"headroom/{name}_nonzero_leaves"] = score.nonzero_leaves
        out["headroom/share_of_gain"] = self.share_of_gain
        out["headroom/rule_share_of_gain"] = self.rule_share_of_gain
        return out


@dataclass(frozen=True)
class PoolSample:
    """One pool prompt's measurement: successes in the two halves of its 2 * half samples, the
    predictor's v at allocation time and the run's Stage-1 count for it."""

    successes_first: int
    successes_second: int
    half: int
    predicted: float
    allocated: int


def ledger(pool: Sequence[PoolSample], group_size: int, cap: int) -> Ledger:
    """The ledger of one measured pool (see the module docstring); every plan spends the run's
    Stage-1 budget, the sum of its counts."""
    if not pool:
        raise ValueError("the ledger needs a measured pool")
    half = pool[0].half
    if any(p.half != half for p in pool):
        raise ValueError("every pool prompt must be measured with the same number of samples")
    first = [p.successes_first for p in pool]
    second = [p.successes_second for p in pool]
    allocated = [p.allocated for p in pool]
    budget = int(sum(allocated))
    successes = [a + b for a, b in zip(first, second, strict=True)]
    samples = [2 * half] * len(pool)
    oracle, _ = cross_fitted_oracle(first, second, half, budget, cap)
    uniform = uniform_counts(len(pool), budget, group_size)
    rule = allocate_roots([p.predicted for p in pool], budget, cap)
    return Ledger(
        budget=budget,
        oracle=oracle,
        uniform=score_plan(successes, samples, uniform),
        allocator=score_plan(successes, samples, allocated),
        predictor_rule=score_plan(successes, samples, rule),
    )


def success_counts(rewards: Sequence[Sequence[float]], half: int) -> tuple[list[int], list[int]]:
    """Each prompt's successes (reward > 0) in the first and in the second `half` of its samples."""
    first, second = [], []
    for r in rewards:
        if len(r) != 2 * half:
            raise ValueError(f"expected {2 * half} samples per prompt, got {len(r)}")
        won = np.asarray(r, dtype=np.float64) > 0
        first.append(int(won[:half].sum()))
        second.append(int(won[half:].sum()))
    return first, second


def rollout_rewards(tree: RolloutTree) -> list[float]:
    """The rewards of a tree's bare rollouts in the order they were sampled (by their first turn).

    Not `tree.leaves()` order: a leaf's node is created when its rollout ends, so leaves come
    sorted by length, which goes with success; halves taken in that order would not be
    exchangeable, and the cross-fitted oracle would be scored on a different population than it
    allocated on."""
    first_turn = {leaf.node_id: tree.path(leaf.node_id)[1].node_id for leaf in tree.leaves()}
    return [leaf.reward or 0.0 for leaf in sorted(tree.leaves(), key=lambda leaf: first_turn[leaf.node_id])]


def measure_pool(
    pool: Sequence[Prompt],
    predicted: Sequence[float],
    allocated: Sequence[int],
    half: int,
    backend: GenerationBackend,
    env: Environment[Any],
    params: SamplingParams,
) -> list[PoolSample]:
    """Sample every pool prompt 2 * half times with the backend's current policy (bare rollouts with
    the training sampling parameters) and count its successes per half."""
    trees = rollout_batch(pool, 2 * half, backend, env, params)
    first, second = success_counts([rollout_rewards(t) for t in trees], half)
    return [
        PoolSample(a, b, half, float(v), int(m)) for a, b, v, m in zip(first, second, predicted, allocated, strict=True)
    ]


def measured_stage1(
    trees: Sequence[RolloutTree],
    allocator: Allocator,
    config: AllocatorConfig,
    predictor: Predictor,
    featurizer: Featurizer,
    rng: np.random.Generator,
    half: int,
    backend: GenerationBackend,
    env: Environment[Any],
    params: SamplingParams,
) -> tuple[list[RolloutTree], RootPlan, list[PoolSample]]:
    """The oracle control's Stage 1: measure every pool prompt with 2 * half rollouts of the current
    policy, allocate on the measured rates (recorded on the roots), and return the trees, the plan
    and the measurement (each sample carrying the predictor's own v and the prompt's count)."""
    roots = [(i, 0) for i in range(len(trees))]
    predicted = predict_nodes(trees, roots, predictor, featurizer)
    pool = [t.record for t in trees]
    measured = measure_pool(pool, predicted.tolist(), [0] * len(trees), half, backend, env, params)
    rates = [(m.successes_first + m.successes_second) / (2 * half) for m in measured]
    planned, plan = plan_stage1(trees, allocator, config, predictor, featurizer, rng, measured=rates)
    return planned, plan, [replace(m, allocated=c) for m, c in zip(measured, plan.counts, strict=True)]


def pool_quality(pool: Sequence[PoolSample]) -> dict[str, float]:
    """The predictor's v against the measured success of the whole pool (no range restriction to the
    prompts an allocator chose): AUC, Brier and ECE, and the pool's mean measured success."""
    rates = np.array([(m.successes_first + m.successes_second) / (2 * m.half) for m in pool])
    q = quality(np.array([m.predicted for m in pool]), rates, np.array([2.0 * m.half for m in pool]))
    return {
        "headroom/pool_auc": q.auc,
        "headroom/pool_brier": q.brier,
        "headroom/pool_ece": q.ece,
        "headroom/pool_success": float(rates.mean()) if len(rates) else float("nan"),
    }
