import itertools

import numpy as np
import pytest

from trace_core.method.allocation import (
    agreement,
    allocate_prefixes,
    allocate_roots,
    nonzero_leaves_value,
    prefix_value,
    root_value,
)


def _mixed_probability(v: float, m: int) -> float:
    """Brute force: sum over all 2^m outcome vectors of P(outcome) * [both 0 and 1 occur]."""
    total = 0.0
    for outcome in itertools.product([0, 1], repeat=m):
        prob = np.prod([v if o else 1 - v for o in outcome])
        total += prob * (0 < sum(outcome) < m)
    return total


def _disagree_probability(p: float, r: int, k: int) -> float:
    """Brute force: P(at least one of k Bernoulli(p) continuations differs from r)."""
    total = 0.0
    for outcome in itertools.product([0, 1], repeat=k):
        prob = np.prod([p if o else 1 - p for o in outcome])
        total += prob * any(o != r for o in outcome)
    return total


@pytest.mark.parametrize("v", [0.0, 0.1, 0.5, 0.73, 1.0])
@pytest.mark.parametrize("m", range(0, 7))
def test_root_value_matches_enumeration_of_bernoulli_outcomes(v, m):
    assert root_value(v, m) == pytest.approx(_mixed_probability(v, m), abs=1e-12)


def test_root_value_hand_cases():
    # V(v, 2) = 2v(1-v); V(v, 3) = 3v(1-v)
    assert root_value(0.3, 2) == pytest.approx(2 * 0.3 * 0.7)
    assert root_value(0.3, 3) == pytest.approx(3 * 0.3 * 0.7)


@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 0.9])
@pytest.mark.parametrize("r", [0, 1])
@pytest.mark.parametrize("k", range(0, 6))
def test_prefix_value_matches_enumeration_of_continuations(p, r, k):
    assert prefix_value(p, r, k) == pytest.approx(_disagree_probability(p, r, k), abs=1e-12)


def _brute_force_roots(v, budget, cap, objective=root_value):
    best, best_counts = -1.0, None
    for counts in itertools.product([0, *range(2, cap + 1)], repeat=len(v)):
        if sum(counts) == budget:
            value = sum(objective(x, m) for x, m in zip(v, counts))
            if value > best + 1e-12:
                best, best_counts = value, counts
    return best, best_counts


@pytest.mark.parametrize("seed", range(12))
def test_stage1_dynamic_programme_is_optimal_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 6))
    cap = int(rng.integers(2, 5))
    budget = int(rng.integers(2, n * cap + 1))
    v = rng.choice([0.0, 0.02, 0.3, 0.5, 0.8, 0.97, 1.0], size=n).tolist()
    best, best_counts = _brute_force_roots(v, budget, cap)
    if best_counts is None:  # e.g. an odd budget with a cap of 2: nothing spends it exactly
        with pytest.raises(ValueError):
            allocate_roots(v, budget, cap)
        return
    counts = allocate_roots(v, budget, cap)
    assert sum(counts) == budget
    assert all(m == 0 or 2 <= m <= cap for m in counts)
    assert sum(root_value(x, m) for x, m in zip(v, counts)) == pytest.approx(best, abs=1e-9)


def test_stage1_skips_prompts_that_are_sure_to_succeed_or_fail():
    # v = 0 and v = 1 can never be mixed; the budget goes to the uncertain prompts
    # (3, 3) on the two: 0.75 + 0.75 = 1.5 beats (2, 4): 0.5 + 0.875 = 1.375
    assert allocate_roots([0.0, 0.5, 1.0, 0.5], 6, 4) == (0, 3, 0, 3)


def test_greedy_stage1_would_stall_where_the_dynamic_programme_does_not():
    # one unit at a time, no prompt ever gains from its first rollout (V(v,1) = 0): greedy spends nothing
    # useful, the exact solution pairs them up: 2 + 2 on the two most uncertain prompts
    counts = allocate_roots([0.5, 0.45, 0.1], 4, 4)
    assert counts == (2, 2, 0)


def test_stage1_refuses_a_budget_it_cannot_spend_exactly():
    with pytest.raises(ValueError, match="cannot be spent"):
        allocate_roots([0.5, 0.5], 1, 4)
    with pytest.raises(ValueError, match="cannot be spent"):
        allocate_roots([0.5, 0.5], 9, 4)


def _brute_force_prefixes(q, budget, cap):
    best = -1.0
    for counts in itertools.product(range(cap + 1), repeat=len(q)):
        if sum(counts) == budget:
            best = max(best, sum(1 - qi**k for qi, k in zip(q, counts)))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_stage2_greedy_is_optimal_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, cap = int(rng.integers(1, 5)), int(rng.integers(1, 4))
    budget = int(rng.integers(0, n * cap + 1))
    p, r = rng.random(n), rng.integers(0, 2, n)
    q = [agreement(pi, ri) for pi, ri in zip(p, r)]
    counts = allocate_prefixes(q, budget, cap)
    assert sum(counts) == budget and max(counts, default=0) <= cap
    value = sum(prefix_value(pi, ri, k) for pi, ri, k in zip(p, r, counts))
    assert value == pytest.approx(_brute_force_prefixes(q, budget, cap), abs=1e-9)


def test_a_failed_rollouts_prefix_is_worth_expanding_when_its_predicted_success_is_high():
    # anchor 0: failed rollout (r=0) but p=0.9 -> q=0.1; anchor 1: failed, p=0.1 -> q=0.9
    assert allocate_prefixes([agreement(0.9, 0), agreement(0.1, 0)], 1, 4) == (1, 0)
    # a successful rollout's prefix is worth expanding when p is low
    assert allocate_prefixes([agreement(0.9, 1), agreement(0.2, 1)], 1, 4) == (0, 1)


@pytest.mark.parametrize("seed", range(8))
def test_stage1_maximises_any_per_prompt_value_such_as_the_non_zero_advantage_leaves(seed):
    rng = np.random.default_rng(100 + seed)
    n, cap = int(rng.integers(2, 5)), int(rng.integers(2, 5))
    budget = int(rng.integers(2, n * cap + 1))
    v = rng.choice([0.0, 0.1, 0.3, 0.5, 0.8, 1.0], size=n).tolist()
    best, best_counts = _brute_force_roots(v, budget, cap, nonzero_leaves_value)
    if best_counts is None:
        return
    counts = allocate_roots(v, budget, cap, nonzero_leaves_value)
    assert sum(nonzero_leaves_value(x, m) for x, m in zip(v, counts)) == pytest.approx(best, abs=1e-9)


def test_the_non_zero_leaves_of_a_group_are_its_size_times_its_chance_of_mixing():
    assert nonzero_leaves_value(0.5, 4) == pytest.approx(4 * 0.875)
    assert nonzero_leaves_value(1.0, 8) == 0.0 and nonzero_leaves_value(0.5, 1) == 0.0
