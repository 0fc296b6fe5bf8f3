import numpy as np
import pytest

from trace_core.method.advantages import (
    ADVANTAGES,
    grpo_advantages,
    nonzero_share,
    tree_advantages,
    vine_advantages,
)
from trace_core.method.tree import RolloutNode, RolloutTree, backup
from trace_core.search_agent.data import QARecord


def _node(parent, terminal=False, reward=None):
    return RolloutNode(-1, parent, -1, (1,), (0.0,), (), "", "", "search", "", "stop", terminal, reward, "stage1")


def _flat_tree(rewards):
    tree = RolloutTree(QARecord("q", "q?", ("a",), "t"), (1,))
    for r in rewards:
        tree.add(_node(0, True, r))
    backup(tree)
    return tree


def test_grpo_equals_the_textbook_formula_on_a_hand_case():
    # rewards 1, 0, 0, 1, 1: mean 0.6, population std sqrt(0.24) = 0.4899
    tree = _flat_tree([1.0, 0.0, 0.0, 1.0, 1.0])
    advantages = [p.advantages[0] for p in grpo_advantages([tree])]
    std = np.sqrt(0.24)
    expected = [(r - 0.6) / (std + 1e-6) for r in [1, 0, 0, 1, 1]]
    assert advantages == pytest.approx(expected)


@pytest.mark.parametrize("name", ["grpo", "tree", "vine"])
@pytest.mark.parametrize("reward", [0.0, 1.0])
def test_all_same_groups_give_zero_advantage(name, reward):
    rng = np.random.default_rng(0)
    tree = _random_tree(rng, force_reward=reward)
    paths = ADVANTAGES.get(name)([tree])
    assert all(a == 0.0 for p in paths for a in p.advantages)
    assert nonzero_share(paths) == 0.0


def _random_tree(rng, force_reward=None):
    tree = RolloutTree(QARecord("q", "q?", ("a",), "t"), (1,))
    frontier = [0]
    while frontier:
        parent = frontier.pop()
        depth = tree.nodes[parent].depth
        for _ in range(int(rng.integers(1, 4)) if depth < 3 else 1):
            terminal = depth >= 2 or rng.random() < 0.3
            reward = (force_reward if force_reward is not None else float(rng.integers(0, 2))) if terminal else None
            child = tree.add(_node(parent, terminal, reward))
            if not terminal:
                frontier.append(child.node_id)
    backup(tree)
    return tree


def _slow_tree_advantages(tree):
    """Loop reference: per leaf, walk the path; value = mean reward of the leaves under a node."""

    def leaves_under(node_id):
        if tree.nodes[node_id].terminal:
            return [tree.nodes[node_id].reward]
        return [r for c in tree.children(node_id) for r in leaves_under(c.node_id)]

    all_rewards = leaves_under(0)
    mean = sum(all_rewards) / len(all_rewards)
    std = (sum((r - mean) ** 2 for r in all_rewards) / len(all_rewards)) ** 0.5
    seen, out = set(), []
    for leaf in [n for n in tree.nodes if n.terminal]:
        chain = []
        node_id = leaf.node_id
        while node_id != 0:
            chain.append(node_id)
            node_id = tree.nodes[node_id].parent_id
        chain.reverse()
        advs, counted = [], []
        for n in chain:
            v_n = sum(leaves_under(n)) / len(leaves_under(n))
            parent = tree.nodes[n].parent_id
            v_p = sum(leaves_under(parent)) / len(leaves_under(parent))
            advs.append(((v_n - mean) + (v_n - v_p)) / (std + 1e-6))
            counted.append(n not in seen)
            seen.add(n)
        out.append((leaf.node_id, chain, advs, counted))
    return out


@pytest.mark.parametrize("seed", range(10))
def test_tree_estimator_equals_a_slow_loop_reference_on_random_trees(seed):
    tree = _random_tree(np.random.default_rng(seed))
    fast = tree_advantages([tree])
    slow = _slow_tree_advantages(tree)
    assert len(fast) == len(slow)
    for p, (leaf, chain, advs, counted) in zip(fast, slow):
        assert p.leaf_id == leaf and list(p.node_ids) == chain and list(p.counted) == counted
        assert list(p.advantages) == pytest.approx(advs, abs=1e-9)


def test_tree_estimator_credits_a_branch_relative_to_its_siblings():
    # root -> a -> {win, lose}; root -> b -> lose: V(a) = 0.5, V(b) = 0, V(root) = 1/3
    tree = RolloutTree(QARecord("q", "q?", ("a",), "t"), (1,))
    a = tree.add(_node(0))
    win = tree.add(_node(a.node_id, True, 1.0))
    tree.add(_node(a.node_id, True, 0.0))
    b = tree.add(_node(0))
    tree.add(_node(b.node_id, True, 0.0))
    backup(tree)
    adv = {n: a for p in tree_advantages([tree]) for n, a in zip(p.node_ids, p.advantages)}
    assert adv[a.node_id] > 0 > adv[b.node_id]
    assert adv[win.node_id] > adv[a.node_id]


def test_each_turn_is_counted_once_by_the_tree_estimator_and_once_per_leaf_by_grpo():
    tree = _random_tree(np.random.default_rng(3))
    counted_tree = [n for p in tree_advantages([tree]) for n, c in zip(p.node_ids, p.counted) if c]
    assert sorted(counted_tree) == sorted(set(counted_tree)) == [n.node_id for n in tree.nodes[1:]]
    assert all(all(p.counted) for p in grpo_advantages([tree]))


def _slow_vine_advantages(tree):
    """Loop reference: W by recursion over children; b(n) by walking up to a node with two children."""

    def value(node_id):
        node = tree.nodes[node_id]
        if node.terminal:
            return node.reward
        children = tree.children(node_id)
        return sum(value(c.node_id) for c in children) / len(children)

    rewards = [n.reward for n in tree.nodes if n.terminal]
    mean = sum(rewards) / len(rewards)
    std = (sum((r - mean) ** 2 for r in rewards) / len(rewards)) ** 0.5
    seen, out = set(), []
    for leaf in [n for n in tree.nodes if n.terminal]:
        chain = [n.node_id for n in tree.path(leaf.node_id)[1:]]
        advs, counted = [], []
        for n in chain:
            b = tree.nodes[n].parent_id
            while b != 0 and len(tree.children(b)) < 2:
                b = tree.nodes[b].parent_id
            advs.append((value(n) - value(b)) / (std + 1e-6))
            counted.append(n not in seen)
            seen.add(n)
        out.append((leaf.node_id, chain, advs, counted))
    return out


@pytest.mark.parametrize("seed", range(10))
def test_vine_estimator_equals_a_slow_loop_reference_on_random_trees(seed):
    tree = _random_tree(np.random.default_rng(seed))
    fast = vine_advantages([tree])
    slow = _slow_vine_advantages(tree)
    assert len(fast) == len(slow)
    for p, (leaf, chain, advs, counted) in zip(fast, slow):
        assert p.leaf_id == leaf and list(p.node_ids) == chain and list(p.counted) == counted
        assert list(p.advantages) == pytest.approx(advs, abs=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_vine_equals_grpo_on_bare_rollouts(seed):
    rng = np.random.default_rng(seed)
    tree = RolloutTree(QARecord("q", "q?", ("a",), "t"), (1,))
    for _ in range(int(rng.integers(2, 7))):
        turn = tree.add(_node(0))
        if rng.random() < 0.5:
            turn = tree.add(_node(turn.node_id))
        tree.add(_node(turn.node_id, True, float(rng.integers(0, 2))))
    backup(tree)
    vine, grpo = vine_advantages([tree]), grpo_advantages([tree])
    assert [p.node_ids for p in vine] == [p.node_ids for p in grpo]
    assert [a for p in vine for a in p.advantages] == pytest.approx([a for p in grpo for a in p.advantages])
    assert all(all(p.counted) for p in vine)


def test_vine_judges_a_continuation_against_its_anchor_and_the_anchor_once_against_the_root():
    # root -> a -> {lose (its rollout), win, lose (continuations)}; root -> b -> win.
    # W(a) = 1/3, W(b) = 1, W(root) = 2/3; leaves 0, 1, 0, 1: std 0.5
    tree = RolloutTree(QARecord("q", "q?", ("a",), "t"), (1,))
    a = tree.add(_node(0))
    lose = tree.add(_node(a.node_id, True, 0.0))
    win = tree.add(_node(a.node_id, True, 1.0))
    tree.add(_node(a.node_id, True, 0.0))
    b = tree.add(_node(0))
    b_leaf = tree.add(_node(b.node_id, True, 1.0))
    backup(tree)
    paths = vine_advantages([tree])
    adv = {n: x for p in paths for n, x in zip(p.node_ids, p.advantages)}
    assert adv[a.node_id] == pytest.approx(-2 / 3, abs=1e-5)
    assert adv[lose.node_id] == pytest.approx(-2 / 3, abs=1e-5)
    assert adv[win.node_id] == pytest.approx(4 / 3, abs=1e-5)
    assert adv[b.node_id] == adv[b_leaf.node_id] == pytest.approx(2 / 3, abs=1e-5)
    assert sum(c for p in paths for n, c in zip(p.node_ids, p.counted) if n == a.node_id) == 1
