from dataclasses import replace

import numpy as np

from trace_core.method.sampling import bare_groups
from trace_core.method.tree import RolloutNode, RolloutTree, allocation_outcomes, backup
from trace_core.search_agent.data import QARecord


def _turn(parent, terminal=False, reward=None, origin="stage1"):
    return RolloutNode(-1, parent, -1, (1,), (0.0,), (), "", "", "search", "", "stop", terminal, reward, origin)


def test_allocation_time_predictions_are_scored_on_the_bare_rollouts_only():
    # root (p 0.6) -> a (p 0.9, bare rollout failed) -> 3 continuations that all succeed (Stage 2)
    #             -> b (p 0.2, bare rollout succeeded)
    tree = RolloutTree(QARecord("q", "q?", ("x",), "t"), (1,))
    tree.set(replace(tree.root, predicted=0.6))
    a = tree.add(replace(_turn(0), predicted=0.9))
    tree.add(_turn(a.node_id, True, 0.0))
    for _ in range(3):
        tree.add(_turn(a.node_id, True, 1.0, origin="stage2"))
    b = tree.add(replace(_turn(0), predicted=0.2))
    tree.add(_turn(b.node_id, True, 1.0))
    backup(tree)
    predicted, target, weight = allocation_outcomes([tree])
    # root: stage-1 leaves 0 and 1 -> 0.5 over 2; a: its bare leaf failed -> 0; b: succeeded -> 1
    assert sorted(zip(predicted.tolist(), target.tolist(), weight.tolist())) == [
        (0.2, 1.0, 1.0),
        (0.6, 0.5, 2.0),
        (0.9, 0.0, 1.0),
    ]
    assert np.isclose(tree.nodes[a.node_id].target, 0.75)  # the final target would have rewarded the selection
    # roots (Stage 1's v) and anchors (Stage 2's p) are scored apart
    root_p, root_t, root_w = allocation_outcomes([tree], "root")
    assert (root_p.tolist(), root_t.tolist(), root_w.tolist()) == ([0.6], [0.5], [2.0])
    anchor_p, _, _ = allocation_outcomes([tree], "anchor")
    assert sorted(anchor_p.tolist()) == [0.2, 0.9]


class _CountingFeaturizer:
    """Features (number of nodes in the tree, node id): enough to tell rows apart."""

    dim = 2

    def features(self, trees, nodes):
        return np.array([[len(trees[t].nodes), n] for t, n in nodes], dtype=np.float64).reshape(-1, 2)


def test_bare_groups_count_only_the_stage1_rollouts_of_each_prompt():
    # tree 0: two bare rollouts (1 success) and a Stage-2 continuation; tree 1: never rolled out
    tree = RolloutTree(QARecord("q", "q?", ("x",), "t"), (1,))
    a = tree.add(_turn(0))
    tree.add(_turn(a.node_id, True, 0.0))
    tree.add(_turn(a.node_id, True, 1.0, origin="stage2"))
    tree.add(_turn(0, True, 1.0))
    unused = RolloutTree(QARecord("r", "r?", ("y",), "t"), (1,))
    x, successes, n = bare_groups([tree, unused], _CountingFeaturizer())
    assert (successes.tolist(), n.tolist()) == ([1.0], [2])
    assert x.tolist() == [[len(tree.nodes), 0.0]]


def _snapshot(trees):
    return [list(t.nodes) for t in trees]


def test_planning_stages_return_trees_with_predictions_and_leave_their_inputs_unchanged():
    from trace_core.method.allocators import AllocatorConfig, make_allocator
    from trace_core.method.mlp_predictor import SuccessPredictor
    from trace_core.method.predictor import PredictorConfig
    from trace_core.method.sampling import plan_stage1, stage2_input

    pool = [RolloutTree(QARecord(f"q{i}", "q?", ("x",), "t"), (1,)) for i in range(6)]
    before = _snapshot(pool)
    predictor = SuccessPredictor(2, PredictorConfig(prior=0.4))
    config = AllocatorConfig(budget=8, group_size=2)
    planned, plan = plan_stage1(
        pool, make_allocator("trace"), config, predictor, _CountingFeaturizer(), np.random.default_rng(0)
    )
    assert _snapshot(pool) == before and all(t.root.predicted is None for t in pool)
    assert [t.root.predicted for t in planned] == [0.4] * 6 and plan.leaves <= 8

    # Stage 1 grew one chosen prompt: a turn, then a failed and a successful leaf below it
    chosen = next(i for i, m in enumerate(plan.counts) if m > 0)
    grown = planned[chosen]
    a = grown.add(_turn(0))
    grown.add(_turn(a.node_id, True, 0.0))
    grown.add(_turn(0, True, 1.0))
    before = _snapshot(planned)
    with_p, s2 = stage2_input(planned, plan, make_allocator("trace"), predictor, _CountingFeaturizer())
    assert _snapshot(planned) == before and planned[chosen].nodes[a.node_id].predicted is None
    assert with_p[chosen].nodes[a.node_id].predicted == 0.4
    assert [(x.tree, x.node_id) for x in s2.anchors] == [(chosen, a.node_id)]


def test_measured_rates_steer_stage1_in_the_predictors_place_and_are_what_the_roots_record():
    import pytest

    from trace_core.method.allocation import allocate_roots
    from trace_core.method.allocators import AllocatorConfig, make_allocator
    from trace_core.method.mlp_predictor import SuccessPredictor
    from trace_core.method.predictor import PredictorConfig
    from trace_core.method.sampling import plan_stage1

    pool = [RolloutTree(QARecord(f"q{i}", "q?", ("x",), "t"), (1,)) for i in range(6)]
    predictor = SuccessPredictor(2, PredictorConfig(prior=0.4))  # blind: the same v for every prompt
    config = AllocatorConfig(budget=8, group_size=2)
    rates = [0.0, 1.0, 0.5, 0.125, 0.5, 1.0]
    args = (make_allocator("trace"), config, predictor, _CountingFeaturizer(), np.random.default_rng(0))
    planned, plan = plan_stage1(pool, *args, measured=rates)
    assert [t.root.predicted for t in planned] == rates and all(t.root.predicted is None for t in pool)
    # the exact Stage-1 allocation on the rates (Stage 1's share: 4 of the 8 leaves): the sure
    # prompts get nothing, the coin flips the most
    assert list(plan.counts) == list(allocate_roots(rates, 4, config.max_per_prompt))
    assert plan.counts[0] == plan.counts[1] == plan.counts[5] == 0 and plan.counts[2] >= 2
    with pytest.raises(ValueError, match="pool of 6"):
        plan_stage1(pool, *args, measured=rates[:3])
    with pytest.raises(ValueError, match="uses the predictor"):
        plan_stage1(pool, make_allocator("uniform"), *args[1:], measured=rates)
