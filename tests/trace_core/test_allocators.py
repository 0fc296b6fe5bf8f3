import numpy as np
import pytest

from trace_core.method.allocators import ALLOCATORS, AllocatorConfig, Anchor, Stage2Input, make_allocator
from trace_core.registry import UnknownNameError

NAMES = ["active_prefixes", "active_roots", "dynamic_sampling", "prompt_only", "random_branch", "trace", "uniform"]


def test_the_allocators_and_ablation_variants_are_registered_and_an_unknown_name_lists_them():
    assert ALLOCATORS.names() == NAMES
    with pytest.raises(UnknownNameError, match="valid names: active_prefixes, active_roots, dynamic_sampling"):
        make_allocator("grpo")


def _stage2(n_trees, rng, anchors_per_tree=2, unused=8):
    anchors = tuple(
        Anchor(t, j + 1, float(rng.random()), float(rng.integers(0, 2)))
        for t in range(n_trees)
        for j in range(anchors_per_tree)
    )
    roots = tuple(Anchor(t, 0, float(rng.random()), float(rng.integers(0, 2))) for t in range(n_trees))
    return Stage2Input(anchors, roots, tuple(range(n_trees, n_trees + unused)), tuple(rng.random(unused)))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("seed", range(6))
def test_every_allocator_spends_exactly_the_budget_never_more(name, seed):
    rng = np.random.default_rng(seed)
    config = AllocatorConfig(
        budget=int(rng.integers(8, 80)),
        stage1_share=float(rng.choice([0.25, 0.5, 0.75])),
        group_size=int(rng.integers(2, 5)),
        max_per_prompt=8,
        max_per_anchor=3,
        explore_share=float(rng.choice([0.0, 0.25])),
    )
    allocator = make_allocator(name)
    pool = rng.random(64).tolist()
    plan1 = allocator.roots(pool, config, rng)
    assert plan1.leaves <= config.budget
    assert all(m == 0 or m >= 2 for m in plan1.counts)
    chosen = sum(m > 0 for m in plan1.counts)
    plan2 = allocator.prefixes(_stage2(chosen, rng, unused=64 - chosen), config.budget - plan1.leaves, config, rng)
    assert plan1.leaves + plan2.leaves == config.budget


@pytest.mark.parametrize("anchors_per_tree", [0, 1])
def test_stage2_falls_back_to_the_roots_when_anchors_cannot_absorb_the_budget(anchors_per_tree):
    rng = np.random.default_rng(0)
    config = AllocatorConfig(budget=40, stage1_share=0.25, max_per_anchor=2)
    plan = make_allocator("trace").prefixes(_stage2(3, rng, anchors_per_tree), 30, config, rng)
    assert plan.leaves == 30
    assert any(a.node_id == 0 and k > 0 for a, k in zip(plan.anchors, plan.counts))


def test_uniform_gives_g_rollouts_to_the_first_prompts_of_the_pool():
    config = AllocatorConfig(budget=16, group_size=4)
    plan = make_allocator("uniform").roots([0.5] * 10, config, np.random.default_rng(0))
    assert plan.counts == (4, 4, 4, 4, 0, 0, 0, 0, 0, 0)


def test_dynamic_sampling_refills_with_fresh_prompts_in_groups_of_g():
    config = AllocatorConfig(budget=16, stage1_share=0.5, group_size=4)
    ds = make_allocator("dynamic_sampling")
    rng = np.random.default_rng(0)
    plan1 = ds.roots([0.5] * 10, config, rng)
    assert plan1.counts[:2] == (4, 4) and plan1.leaves == 8
    plan2 = ds.prefixes(Stage2Input((), (), tuple(range(2, 10)), (0.5,) * 8), 8, config, rng)
    assert plan2.new_roots == ((2, 4), (3, 4))


def test_trace_spends_stage1_on_uncertain_prompts_and_skips_certain_ones():
    config = AllocatorConfig(budget=16, stage1_share=0.5)
    plan = make_allocator("trace").roots([0.0, 1.0, 0.5, 0.4, 0.99, 0.6], config, np.random.default_rng(0))
    assert plan.counts[0] == plan.counts[1] == 0 and plan.leaves == 8


def test_an_exploration_share_samples_random_prompts_in_pairs_and_the_rule_spends_the_rest():
    config = AllocatorConfig(budget=32, stage1_share=0.5, explore_share=0.25)
    certain = [0.0] * 12 + [0.5] * 4  # the rule alone never samples the first 12
    picked = set()
    for seed in range(20):
        plan = make_allocator("trace").roots(certain, config, np.random.default_rng(seed))
        assert plan.leaves == 16
        explored = [i for i, m in enumerate(plan.counts) if m and certain[i] == 0.0]
        assert len(explored) <= 2 and all(plan.counts[i] == 2 for i in explored)
        picked.update(explored)
    assert len(picked) > 6  # different prompts under different random streams


def test_without_an_exploration_share_the_plan_is_the_rules_and_draws_nothing():
    pool = np.random.default_rng(3).random(20).tolist()
    rng = np.random.default_rng(7)
    plan = make_allocator("trace").roots(pool, AllocatorConfig(budget=32), rng)
    assert plan == make_allocator("trace").roots(pool, AllocatorConfig(budget=32, explore_share=0.0), rng)
    assert rng.random() == np.random.default_rng(7).random()  # the stream is untouched


def test_an_exploration_share_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match="explore_share"):
        AllocatorConfig(explore_share=1.0)


def _lexicographic_wide(predicted, budget, cap):
    """Slow reference for root_split='wide': over every allocation m_i in {0, 2..cap} spending the
    budget, the most prompts with V_root(v, 2) > 0 chosen, then the largest sum of V_root."""
    import itertools

    from trace_core.method.allocation import root_value

    best = None
    for counts in itertools.product([0, *range(2, cap + 1)], repeat=len(predicted)):
        if sum(counts) != budget:
            continue
        chosen = sum(1 for v, m in zip(predicted, counts) if m and root_value(v, 2) > 0)
        key = (chosen, round(sum(root_value(v, m) for v, m in zip(predicted, counts)), 9))
        best = key if best is None or key > best else best
    return best


@pytest.mark.parametrize("seed", range(8))
def test_a_wide_root_split_matches_the_lexicographic_brute_force(seed):
    from trace_core.method.allocation import root_value
    from trace_core.method.allocators import stage1_counts

    rng = np.random.default_rng(seed)
    predicted = [float(x) for x in rng.random(6)]
    budget = int(rng.integers(2, 13))
    counts = stage1_counts(predicted, None, budget, 4, "wide")
    chosen = sum(1 for v, m in zip(predicted, counts) if m and root_value(v, 2) > 0)
    value = round(sum(root_value(v, m) for v, m in zip(predicted, counts)), 9)
    assert sum(counts) == budget and (chosen, value) == _lexicographic_wide(predicted, budget, 4)


def test_a_wide_root_split_trains_on_more_distinct_prompts_than_a_deep_one():
    # V_root(v, 3) / 3 = V_root(v, 2) / 2 = v (1 - v): 'deep' gives the best-ranked prompts a third
    # rollout, 'wide' spends 32 leaves as 16 pairs on the 16 best-ranked prompts
    rng = np.random.default_rng(0)
    predicted = tuple(float(x) for x in rng.uniform(0.2, 0.8, 64))
    deep = make_allocator("trace").roots(predicted, AllocatorConfig(budget=64), rng)
    wide = make_allocator("trace").roots(predicted, AllocatorConfig(budget=64, root_split="wide"), rng)
    assert sum(1 for m in wide.counts if m) == 16 and set(wide.counts) == {0, 2}
    assert sum(1 for m in deep.counts if m) < 16
    ranked = sorted(range(64), key=lambda i: -predicted[i] * (1 - predicted[i]))
    assert {i for i, m in enumerate(wide.counts) if m} == set(ranked[:16])


def test_an_unknown_root_split_is_refused_naming_the_valid_ones():
    with pytest.raises(ValueError, match="deep, wide"):
        AllocatorConfig(root_split="narrow")
