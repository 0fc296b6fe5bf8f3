from trace_core.data import QARecord
from trace_core.tree import RolloutNode, RolloutTree, backup


def _turn(parent, model_ids=(1,), obs=(2,), terminal=False, reward=None):
    return RolloutNode(
        node_id=-1, parent_id=parent, depth=-1, model_ids=tuple(model_ids), model_logprobs=(0.0,) * len(model_ids),
        observation_ids=tuple(obs), text="", observation="", action="search", argument="",
        finish_reason="stop", terminal=terminal, reward=reward, origin="stage1",
    )  # fmt: skip


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
