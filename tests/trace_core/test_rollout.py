import pytest

from trace_core.hf_backend import TransformersBackend
from trace_core.rollout import Expansion, grow, rollout_batch


def test_a_rollout_batch_grows_n_terminal_leaves_per_prompt_within_the_turn_limit(model, tokenizer, env, small_task):
    trees = rollout_batch(small_task.splits["train"][:3], 3, TransformersBackend(model, tokenizer), env,
                          env.config.sampling())  # fmt: skip
    for tree in trees:
        leaves = tree.leaves()
        assert len(leaves) == 3 and len(tree.children(0)) == 3
        assert all(1 <= leaf.depth <= env.config.max_turns and leaf.reward in (0.0, 1.0) for leaf in leaves)
        for node in tree:
            assert node.terminal == (not tree.children(node.node_id) and node.depth > 0)
            if node.depth:
                assert node.origin == "stage1" and node.model_ids and len(node.model_logprobs) == len(node.model_ids)


def test_continuing_k_times_from_a_turn_adds_k_leaves_below_it(model, tokenizer, env, small_task):
    backend = TransformersBackend(model, tokenizer)
    trees = rollout_batch(small_task.splits["train"][:1], 1, backend, env, env.config.sampling())
    anchor = trees[0].path(trees[0].leaves()[0].node_id)[1]
    assert not anchor.terminal
    new = grow(trees, [Expansion(0, anchor.node_id, 3)], backend, env, env.config.sampling(), "stage2")
    assert len(new) == 3 and len(trees[0].children(anchor.node_id)) == 4
    for _, leaf_id in new:
        path = trees[0].path(leaf_id)
        assert path[1].node_id == anchor.node_id
        assert all(n.origin == "stage2" for n in path[2:])


def test_a_terminal_node_cannot_be_continued(model, tokenizer, env, small_task):
    backend = TransformersBackend(model, tokenizer)
    trees = rollout_batch(small_task.splits["train"][:1], 1, backend, env, env.config.sampling())
    with pytest.raises(ValueError, match="terminal"):
        grow(
            trees,
            [Expansion(0, trees[0].leaves()[0].node_id, 1)],
            backend,
            env,
            env.config.sampling(),
            "stage2",
        )
