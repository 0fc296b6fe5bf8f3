"""TRACE's two allocation problems: how many rollouts per prompt, how many continuations per prefix.

Stage 1 (roots). A prompt with predicted success v given m bare rollouts yields a mixed group
(both a success and a failure) with probability

    V_root(v, m) = 1 - v^m - (1 - v)^m,            V_root(v, 0) = V_root(v, 1) = 0.

Over a candidate pool, choose m_i in {0} u {2, ..., cap} with sum m_i = B to maximise
sum_i V_root(v_i, m_i), the expected number of mixed groups. The jump from 0 to 2 makes the sum
non-concave, so greedy can stall; `allocate_roots` solves it exactly by dynamic programming over
the integer budget (a knapsack with one choice per prompt), O(N * B * cap).

Stage 2 (prefixes). An anchor is a turn boundary inside a bare rollout; with predicted success p
for its prefix and the realised reward r of the rollout it lies on, k more continuations make its
subtree mixed with probability

    V_pref(p, r, k) = 1 - q^k,   q = r p + (1 - r)(1 - p)    (q: chance a continuation agrees with r).

V_pref is concave in k (its increments q^k (1 - q) shrink), so taking the best marginal gain one
leaf at a time (`allocate_prefixes`) is exact.

With a predicted chance d that two rollouts of the prompt disagree (trace_core/method/mixedness.py), the
prompt's success is read as the Beta with mean v and E[2 s (1 - s)] = d, and m rollouts are worth

    V_mix(v, d, m) = 1 - E[s^m] - E[(1 - s)^m]     (= d at m = 2, 3 d / 2 at m = 3),

which tends to V_root(v, m) as d -> 2 v (1 - v) (v known exactly).

Deviations:
1. The whole budget is spent (sum m_i = B exactly, sum k = B exactly). V only grows with more
   samples, so spending everything never lowers the objective; it keeps "equal cost" literal.
2. Ties (equal values, e.g. at cold start when every v is the prior) are broken by candidate
   order; callers shuffle the pool first.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence

import numpy as np


def root_value(v: float, m: int) -> float:
    """Probability that m Bernoulli(v) outcomes are mixed."""
    if m < 2:
        return 0.0
    return float(1.0 - v**m - (1.0 - v) ** m)


def prefix_value(p: float, r: float, k: int) -> float:
    """Probability that at least one of k continuations (success prob p) disagrees with reward r."""
    if k < 1:
        return 0.0
    q = r * p + (1.0 - r) * (1.0 - p)
    return float(1.0 - q**k)


def group_disagreement(successes: float, n: int) -> float:
    """Unbiased estimate of 2 s (1 - s), the chance two rollouts disagree, from one group."""
    if n < 2:
        raise ValueError(f"a disagreement needs a group of at least 2 rollouts, got {n}")
    k = float(successes)
    return 2.0 * k * (n - k) / (n * (n - 1))


def beta_from_moments(v: float, d: float, eps: float = 1e-6) -> tuple[float, float]:
    """(alpha, beta) of the Beta with mean v and E[2 s (1 - s)] = d. d is clipped into
    (0, 2 v (1 - v)): at its top the Beta is a point mass at v (alpha, beta -> inf), at its
    bottom the two-point law on {0, 1} (alpha, beta -> 0)."""
    v = min(max(v, eps), 1 - eps)
    top = 2 * v * (1 - v)
    d = min(max(d, eps * top), top * (1 - eps))
    var = v * (1 - v) - d / 2  # E[s^2] = v - d / 2
    kappa = v * (1 - v) / var - 1
    return v * kappa, (1 - v) * kappa


def mixed_value(v: float, d: float, m: int) -> float:
    """V_mix(v, d, m): the chance m rollouts are mixed when s ~ Beta with mean v and E[2 s (1-s)] = d."""
    if m < 2:
        return 0.0
    a, b = beta_from_moments(v, d)
    es = ef = 1.0
    for j in range(m):
        es *= (a + j) / (a + b + j)
        ef *= (b + j) / (a + b + j)
    return float(1.0 - es - ef)


def nonzero_leaves_value(v: float, m: int) -> float:
    """Expected leaves with a non-zero group-relative advantage among m rollouts: m V_root(v, m)
    (every leaf of a mixed group has one, no leaf of an all-same group does)."""
    return m * root_value(v, m)


def allocate_roots(
    predicted: Sequence[float], budget: int, cap: int, value: Callable[[float, int], float] = root_value
) -> tuple[int, ...]:
    """Exact Stage-1 allocation: m_i in {0, 2..cap}, sum m_i == budget, maximising sum value(v_i, m_i)
    (the paper's V_root by default; any per-prompt value, e.g. `nonzero_leaves_value`).

    Raises ValueError when no allocation spends exactly `budget` (budget 1, or more than N * cap).
    """
    return allocate_by_table([[value(v, m) for m in range(max(cap, 0) + 1)] for v in predicted], budget, cap)


def allocate_by_table(values: Sequence[Sequence[float]], budget: int, cap: int) -> tuple[int, ...]:
    """The Stage-1 knapsack on explicit values: prompt i given m rollouts is worth values[i][m]
    (m = 0..cap; entries for m = 1 are never chosen). m_i in {0, 2..cap}, sum m_i == budget."""
    n = len(values)
    if cap < 2:
        raise ValueError(f"the per-prompt cap must be >= 2, got {cap}")
    if budget == 0:
        return (0,) * n
    if budget == 1 or budget > n * cap:
        raise ValueError(f"a budget of {budget} leaves cannot be spent on {n} prompts with 2..{cap} rollouts each")
    choices = [0, *range(2, cap + 1)]
    neg = -np.inf
    best = np.full(budget + 1, neg)
    best[0] = 0.0
    picks = np.zeros((n, budget + 1), dtype=np.int64)
    for i, row in enumerate(values):
        new = np.full(budget + 1, neg)
        for m in choices:
            if m > budget:
                break
            shifted = np.full(budget + 1, neg)
            shifted[m:] = best[: budget + 1 - m] + (row[m] if m else 0.0)
            better = shifted > new + 1e-12  # strict: the smaller m wins ties, keeping the order stable
            new = np.where(better, shifted, new)
            picks[i] = np.where(better, m, picks[i])
        best = new
    if not np.isfinite(best[budget]):
        raise ValueError(f"no allocation of 2..{cap} rollouts per prompt spends exactly {budget} leaves")
    counts = [0] * n
    remaining = budget
    for i in range(n - 1, -1, -1):
        counts[i] = int(picks[i, remaining])
        remaining -= counts[i]
    assert remaining == 0
    return tuple(counts)


def allocate_prefixes(q_agree: Sequence[float], budget: int, cap: int | None = None) -> tuple[int, ...]:
    """Exact Stage-2 allocation by greedy marginal gains.

    q_agree: per anchor, q = r p + (1 - r)(1 - p), the chance a continuation agrees with r.
    Gives k_i <= cap (None: no cap) with sum k_i == budget; raises ValueError when the anchors
    cannot absorb the budget.
    """
    n = len(q_agree)
    if budget == 0:
        return (0,) * n
    if n == 0 or (cap is not None and n * cap < budget):
        raise ValueError(f"{n} anchors with at most {cap} continuations each cannot take {budget} leaves")
    counts = [0] * n
    # gain of the (k+1)-th continuation: q^k (1 - q); heap keyed by (-gain, index) for stable ties
    heap = [(-(1.0 - q), i) for i, q in enumerate(q_agree)]
    heapq.heapify(heap)
    for _ in range(budget):
        _, i = heapq.heappop(heap)
        counts[i] += 1
        if cap is None or counts[i] < cap:
            q = q_agree[i]
            heapq.heappush(heap, (-(q ** counts[i]) * (1.0 - q), i))
    return tuple(counts)


def agreement(p: float, r: float) -> float:
    """q = r p + (1 - r)(1 - p): the chance one more continuation ends with the same reward r."""
    return r * p + (1.0 - r) * (1.0 - p)
