import numpy as np
import pytest

from trace_core.method.allocators import AllocatorConfig
from trace_core.sim.oracle import oracle_study
from trace_core.sim.simulated import KnownProbabilityTask, success_probability

CONFIG = AllocatorConfig(budget=64, stage1_share=0.5, group_size=4)


def test_success_probability_is_the_binomial_tail():
    # 3 turns left, 2 good needed, q = 0.5: P(X >= 2) for Binomial(3, 0.5) = 4/8
    assert success_probability(0.5, 3, 2) == pytest.approx(0.5)
    assert success_probability(0.3, 1, 2) == 0.0 and success_probability(0.3, 0, 0) == 1.0


def test_the_simulated_success_rate_matches_the_known_probability():
    task = KnownProbabilityTask(n_prompts=5, seed=2)
    rng = np.random.default_rng(0)
    from trace_core.method.rollout import Expansion
    from trace_core.method.tree import backup

    tree = task.new_tree(task.prompts[0])
    task.grow([tree], [Expansion(0, 0, 4000)], rng, "stage1")
    backup(tree)
    assert tree.root.target == pytest.approx(task.true_value(tree, 0), abs=0.03)


def test_trace_with_the_true_probabilities_reaches_the_oracle():
    task = KnownProbabilityTask(seed=0)
    result = oracle_study("trace", task, CONFIG, iterations=3, pool_size=64, seed=1, true_probabilities=True)
    assert all(r.share == pytest.approx(1.0) for r in result)


@pytest.mark.slow
def test_trace_with_its_learned_predictor_nears_the_oracle_and_beats_uniform():
    task = KnownProbabilityTask(seed=0)
    result = oracle_study("trace", task, CONFIG, iterations=10, pool_size=64, seed=1)
    late = result[-5:]
    assert not result[0].predictor_fitted and result[0].share < 0.8  # cold start: the prior
    assert np.mean([r.share for r in late]) >= 0.9
    assert np.mean([r.expected for r in late]) > 1.5 * np.mean([r.uniform for r in late])
    assert np.mean([r.effective_ratio for r in late]) > np.mean([r.uniform_effective_ratio for r in late])
