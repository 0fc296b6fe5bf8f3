"""The oracle ledger: unbiased scoring of Stage-1 plans from measurement rollouts."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest

from trace_core.generation.hf_backend import TransformersBackend
from trace_core.method.allocation import allocate_roots, root_value
from trace_core.method.headroom import (
    PoolSample,
    cross_fitted_oracle,
    ledger,
    measure_pool,
    measured_stage1,
    score_plan,
    success_counts,
    unbiased_mixed,
)


@pytest.mark.parametrize("n", [2, 5, 8])
@pytest.mark.parametrize("v", [0.0, 0.1, 0.37, 0.5, 0.9])
def test_the_mixed_estimate_averages_to_the_true_chance_of_a_mixed_group(n, v):
    for m in range(n + 1):
        expected = sum(comb(n, s) * v**s * (1 - v) ** (n - s) * unbiased_mixed(s, n, m) for s in range(n + 1))
        assert expected == pytest.approx(root_value(v, m), abs=1e-12)


def test_the_plug_in_estimate_is_biased_where_the_unbiased_one_is_not():
    # 4 samples, true v = 0.5, groups of 4: the plug-in V(s/4, 4) averages above the truth
    n, v, m = 4, 0.5, 4
    pmf = [comb(n, s) * v**s * (1 - v) ** (n - s) for s in range(n + 1)]
    plug_in = sum(p * root_value(s / n, m) for s, p in enumerate(pmf))
    assert plug_in < root_value(v, m) - 0.05
    assert sum(p * unbiased_mixed(s, n, m) for s, p in enumerate(pmf)) == pytest.approx(root_value(v, m))


def test_a_group_larger_than_the_samples_cannot_be_scored():
    with pytest.raises(ValueError, match="without bias"):
        unbiased_mixed(2, 4, 5)


def test_a_plans_nonzero_leaves_are_its_group_sizes_times_their_mixed_chance():
    score = score_plan([2, 0, 4], [4, 4, 4], [4, 2, 0])
    assert score.mixed == pytest.approx(unbiased_mixed(2, 4, 4) + unbiased_mixed(0, 4, 2))
    assert score.nonzero_leaves == pytest.approx(4 * unbiased_mixed(2, 4, 4))


def test_the_cross_fitted_oracle_is_scored_on_the_half_it_did_not_allocate_on():
    # prompt 0 looks mixed in the first half only, prompt 1 in the second only: an oracle scored on
    # its own half would count a mixed group; cross-fitted, each plan finds its pick all-same
    first, second = [4, 8], [8, 4]
    score, plan = cross_fitted_oracle(first, second, half=8, budget=8, cap=8)
    assert plan == (8, 0)
    assert score.mixed == pytest.approx(0.0)


def test_cross_fitting_needs_halves_as_large_as_the_cap():
    with pytest.raises(ValueError, match="cap"):
        cross_fitted_oracle([1], [1], half=4, budget=8, cap=8)


def _pool(rates: list[float], half: int, predicted: list[float], allocated: list[int]) -> list[PoolSample]:
    return [PoolSample(round(r * half), round(r * half), half, v, m) for r, v, m in zip(rates, predicted, allocated)]


def test_on_a_pool_of_sure_and_coin_flip_prompts_the_oracle_beats_uniform_and_a_perfect_predictor_gets_all_of_it():
    half = 8
    rates = [1.0, 0.0] * 8 + [0.5] * 8  # 24 prompts: uniform's first 8 groups are all-same
    coin = [i for i, r in enumerate(rates) if r == 0.5]
    allocated = [0] * len(rates)
    for i in coin:
        allocated[i] = 4
    rows = _pool(rates, half, predicted=rates, allocated=allocated)
    book = ledger(rows, group_size=4, cap=8)
    assert book.budget == 32
    assert book.uniform.mixed == pytest.approx(0.0)
    assert book.oracle.mixed > 7.0 and book.allocator.mixed > 7.0
    # TRACE's rule on perfect predictions spends on the coin flips as well
    assert book.predictor_rule.mixed == pytest.approx(book.allocator.mixed)
    assert book.rule_share_of_gain > 0.9
    assert book.share_of_gain == pytest.approx(book.allocator.mixed / book.oracle.mixed)
    assert book.metrics()["headroom/share_of_gain"] == book.share_of_gain


def test_a_blind_predictor_allocates_like_uniform_and_gets_no_share():
    half = 8
    rates = [1.0, 0.0, 0.5, 0.5] * 6
    blind = [0.5] * len(rates)
    rule = allocate_roots(blind, 32, 8)
    rows = _pool(rates, half, predicted=blind, allocated=list(rule))
    book = ledger(rows, group_size=4, cap=8)
    assert book.oracle.mixed > book.uniform.mixed
    assert abs(book.share_of_gain) < 0.35


def test_the_share_is_undefined_when_no_prompt_can_mix():
    rows = _pool([1.0] * 8, 8, [0.5] * 8, [4, 4, 0, 0, 0, 0, 0, 0])
    assert np.isnan(ledger(rows, group_size=4, cap=8).share_of_gain)


def test_successes_are_counted_per_half_of_the_samples():
    assert success_counts([[1, 0, 1, 1], [0, 0, 0, 1]], half=2) == ([1, 0], [2, 1])
    with pytest.raises(ValueError, match="4 samples"):
        success_counts([[1, 0, 1]], half=2)


def test_measuring_a_pool_samples_every_prompt_twice_half_times(model, tokenizer, env, small_task):
    pool = small_task.splits["train"][:3]
    backend = TransformersBackend(model, tokenizer)
    rows = measure_pool(pool, [0.2, 0.4, 0.6], [2, 0, 3], 2, backend, env, env.config.sampling())
    assert [(r.half, r.predicted, r.allocated) for r in rows] == [(2, 0.2, 2), (2, 0.4, 0), (2, 0.6, 3)]
    assert all(0 <= r.successes_first <= 2 and 0 <= r.successes_second <= 2 for r in rows)


def test_the_cross_fitted_oracle_gets_most_of_the_true_oracles_gain_on_a_known_pool():
    from trace_core.method.allocators import uniform_counts

    rng = np.random.default_rng(2)
    got = {"oracle": 0.0, "true": 0.0, "uniform": 0.0}
    for _ in range(30):
        v = rng.beta(1.0, 1.0, size=64)
        first, second = rng.binomial(8, v).tolist(), rng.binomial(8, v).tolist()
        _, plan = cross_fitted_oracle(first, second, 8, 32, 8)
        for name, counts in (
            ("oracle", plan),
            ("true", allocate_roots(v.tolist(), 32, 8)),
            ("uniform", uniform_counts(64, 32, 4)),
        ):
            got[name] += sum(root_value(float(x), m) for x, m in zip(v, counts))
    assert got["oracle"] > 0.85 * got["true"] and got["oracle"] > 1.4 * got["uniform"]


def _turn(parent: int, terminal: bool = False, reward: float | None = None):
    from trace_core.method.tree import RolloutNode

    action = "answer" if terminal else "search"
    return RolloutNode(
        node_id=-1,
        parent_id=parent,
        depth=-1,
        model_ids=(1,),
        model_logprobs=(-0.1,),
        observation_ids=(),
        text="t",
        observation="",
        action=action,
        argument="x",
        finish_reason="stop",
        terminal=terminal,
        reward=reward,
        origin="stage1",
    )


def test_rollout_rewards_come_in_sampling_order_not_in_the_order_rollouts_ended():
    from trace_core.method.headroom import rollout_rewards
    from trace_core.method.tree import RolloutTree
    from trace_core.search_agent.data import QARecord

    tree = RolloutTree(QARecord("q", "Q?", ("a",), "s", 1), prompt_ids=(1,), prompt_text="Q?")
    long_first = tree.add(_turn(0))  # rollout 0 searches first...
    tree.add(_turn(0, terminal=True, reward=0.0))  # rollout 1 answers (wrongly) at once
    tree.add(_turn(0, terminal=True, reward=0.0))  # rollout 2 likewise
    tree.add(_turn(long_first.node_id, terminal=True, reward=1.0))  # ...and rollout 0 ends last, right
    assert [leaf.reward for leaf in tree.leaves()] == [0.0, 0.0, 1.0]
    assert rollout_rewards(tree) == [1.0, 0.0, 0.0]


def test_the_oracle_control_allocates_on_the_pools_measured_rates_and_keeps_the_predictors_v(
    model, tokenizer, env, small_task
):
    from trace_core.method.allocators import AllocatorConfig, make_allocator
    from trace_core.method.mlp_predictor import SuccessPredictor
    from trace_core.method.predictor import PredictorConfig
    from trace_core.method.rollout import new_trees
    from trace_core.method.sampling import plan_stage1

    class Blank:
        dim = 2

        def features(self, trees, nodes):
            return np.zeros((len(nodes), 2))

    trees = new_trees(small_task.splits["train"][:5], env)
    predictor = SuccessPredictor(2, PredictorConfig(prior=0.3))
    config = AllocatorConfig(budget=6, group_size=2, max_per_prompt=4)
    backend = TransformersBackend(model, tokenizer)
    planned, plan, measured = measured_stage1(
        trees,
        make_allocator("trace"),
        config,
        predictor,
        Blank(),
        np.random.default_rng(0),
        2,
        backend,
        env,
        env.config.sampling(),
    )
    rates = [(m.successes_first + m.successes_second) / 4 for m in measured]
    assert [t.root.predicted for t in planned] == rates  # the roots record what Stage 1 used
    assert [m.predicted for m in measured] == [0.3] * 5  # the rows keep the predictor's own v
    assert [m.allocated for m in measured] == list(plan.counts) and plan.leaves <= 6
    again = plan_stage1(trees, make_allocator("trace"), config, predictor, Blank(), np.random.default_rng(0), rates)
    assert again[1] == plan
    assert all(len(t.leaves()) == 0 for t in planned)  # measurement rollouts never enter the pool's trees
