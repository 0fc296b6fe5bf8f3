from dataclasses import replace

import numpy as np

from trace_core.method.tree import RolloutNode, RolloutTree, backup, launched_targets
from trace_core.search_agent.data import QARecord


def _turn(parent, model_ids=(1,), obs=(2,), terminal=False, reward=None, origin="stage1"):
    return replace(_stage1_turn(parent, model_ids, obs, terminal, reward), origin=origin)


def _stage1_turn(parent, model_ids, obs, terminal, reward):
    return RolloutNode(
        node_id=-1,
        parent_id=parent,
        depth=-1,
        model_ids=tuple(model_ids),
        model_logprobs=(0.0,) * len(model_ids),
        observation_ids=tuple(obs),
        text="",
        observation="",
        action="search",
        argument="",
        finish_reason="stop",
        terminal=terminal,
        reward=reward,
        origin="stage1",
    )


def _hand_tree():
    """root -> a -> {a1: 1, a2: 0, a3 -> {a31: 1}};  root -> b: 0

    leaves below a: a1, a2, a31 -> rewards 1, 0, 1 -> target 2/3, count 3
    a3: one leaf (1) -> 1.0;  root: 1 + 0 + 1 + 0 over 4 leaves -> 0.5
    """
    tree = RolloutTree(QARecord("q", "Who?", ("x",), "test"), prompt_ids=(9, 9))
    a = tree.add(_turn(0, model_ids=(5,), obs=(6, 7)))
    tree.add(_turn(a.node_id, terminal=True, reward=1.0, obs=()))
    tree.add(_turn(a.node_id, terminal=True, reward=0.0, obs=()))
    a3 = tree.add(_turn(a.node_id, model_ids=(8,), obs=(3,)))
    tree.add(_turn(a3.node_id, terminal=True, reward=1.0, obs=()))
    tree.add(_turn(0, terminal=True, reward=0.0, obs=()))
    return tree, a, a3


def test_backup_gives_each_node_the_success_rate_of_the_leaves_below_it():
    tree, a, a3 = _hand_tree()
    backup(tree)
    assert (tree.root.target, tree.root.leaf_count) == (0.5, 4)
    assert abs(tree.nodes[a.node_id].target - 2 / 3) < 1e-12 and tree.nodes[a.node_id].leaf_count == 3
    assert (tree.nodes[a3.node_id].target, tree.nodes[a3.node_id].leaf_count) == (1.0, 1)
    leaf_targets = [(n.target, n.leaf_count) for n in tree.leaves()]
    assert leaf_targets == [(1.0, 1), (0.0, 1), (1.0, 1), (0.0, 1)]


def test_depth_counts_turns_from_the_prompt():
    tree, a, a3 = _hand_tree()
    assert [tree.nodes[i].depth for i in (0, a.node_id, a3.node_id)] == [0, 1, 2]
    assert [n.node_id for n in tree.path(a3.node_id + 1)] == [0, a.node_id, a3.node_id, a3.node_id + 1]


def test_a_branch_context_is_the_exact_token_ids_along_its_path():
    tree, _, a3 = _hand_tree()
    # prompt (9, 9), turn a: model (5,) + observation (6, 7), turn a3: model (8,) + observation (3,)
    assert tree.context_ids(a3.node_id) == (9, 9, 5, 6, 7, 8, 3)


def test_a_tree_is_mixed_only_when_its_leaves_hold_a_success_and_a_failure():
    tree, _, _ = _hand_tree()
    assert tree.is_mixed()
    solo = RolloutTree(QARecord("q", "Who?", ("x",), "test"), prompt_ids=(1,))
    solo.add(_turn(0, terminal=True, reward=1.0))
    solo.add(_turn(0, terminal=True, reward=1.0))
    assert not solo.is_mixed()


def _branched_tree():
    """root -> a (stage 1) -> a1: 0 (stage 1);  root -> b: 1 (stage 1);
    a -> c (stage 2) -> c1: 1;  a -> d: 1 (stage 2): two continuations launched from anchor a."""
    tree = RolloutTree(QARecord("q", "Who?", ("x",), "test"), prompt_ids=(9,))
    a = tree.add(_turn(0))
    tree.add(_turn(a.node_id, terminal=True, reward=0.0))
    tree.add(_turn(0, terminal=True, reward=1.0))
    c = tree.add(_turn(a.node_id, origin="stage2"))
    tree.add(_turn(c.node_id, terminal=True, reward=1.0, origin="stage2"))
    tree.add(_turn(a.node_id, terminal=True, reward=1.0, origin="stage2"))
    return tree, a, c


def test_launched_targets_count_at_a_node_only_the_leaves_sampled_from_it_or_above():
    tree, a, c = _branched_tree()
    rates, counts = launched_targets(tree)
    assert (rates[0], counts[0]) == (0.5, 2)  # the root: its two bare rollouts, not a's continuations
    assert abs(rates[a.node_id] - 2 / 3) < 1e-12 and counts[a.node_id] == 3  # a's own rollout and its two
    assert (rates[c.node_id], counts[c.node_id]) == (1.0, 1)
    backup(tree)
    assert (tree.root.target, tree.root.leaf_count) == (0.75, 4)  # the paper's backup counts them all


def test_launched_root_targets_are_unbiased_where_stage_2_continues_the_failures():
    # a root of success v whose first turn lands in a good (0.9) or bad (0.1) state; Stage 2
    # continues (4 times) from the first turn of every failed bare rollout, as TRACE's value
    # 1 - (1 - p)^k does for a failure predicted likely to succeed
    rng = np.random.default_rng(0)
    v = 0.5
    subtree, launched = [], []
    for _ in range(4000):
        tree = RolloutTree(QARecord("q", "Who?", ("x",), "test"), prompt_ids=(9,))
        for _ in range(2):
            value = 0.9 if rng.random() < 0.5 else 0.1
            first = tree.add(_turn(0))
            reward = float(rng.random() < value)
            tree.add(_turn(first.node_id, terminal=True, reward=reward))
            if reward == 0.0:
                for _ in range(4):
                    tree.add(_turn(first.node_id, terminal=True, reward=float(rng.random() < value), origin="stage2"))
        backup(tree)
        subtree.append(tree.root.target)
        launched.append(launched_targets(tree)[0][0])
    assert abs(np.mean(launched) - v) < 0.02
    assert np.mean(subtree) < v - 0.05  # failures' prefixes are mostly bad ones: the backup is pulled down


def test_backed_up_returns_a_filled_copy_and_leaves_the_tree_as_it_was():
    from trace_core.method.tree import backed_up

    tree = RolloutTree(QARecord("q", "q?", ("x",), "t"), (1,))
    first = tree.add(_turn(0))
    tree.add(_turn(first.node_id, terminal=True, reward=1.0))
    tree.add(_turn(0, terminal=True, reward=0.0))
    before = list(tree.nodes)
    filled = backed_up(tree)
    assert tree.nodes == before and tree.root.target is None
    assert (filled.root.target, filled.root.leaf_count) == (0.5, 2)
    assert filled.nodes[first.node_id].target == 1.0
