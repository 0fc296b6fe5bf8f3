import pytest

from trace_core.generation.hf_backend import TransformersBackend
from trace_core.method.rollout import (
    Expansion,
    grow,
    merge_shard,
    new_trees,
    rollout_batch,
    shard_seed,
    shard_trees,
    split_shards,
)


def test_a_rollout_batch_grows_n_terminal_leaves_per_prompt_within_the_turn_limit(model, tokenizer, env, small_task):
    trees = rollout_batch(
        small_task.splits["train"][:3], 3, TransformersBackend(model, tokenizer), env, env.config.sampling()
    )
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


def test_shards_partition_the_trees_keep_each_trees_expansions_in_order_and_balance_leaves():
    expansions = [
        Expansion(3, 0, 5),
        Expansion(0, 0, 1),
        Expansion(3, 2, 2),
        Expansion(1, 0, 4),
        Expansion(5, 0, 3),
        Expansion(0, 4, 2),
        Expansion(6, 0, 0),
    ]
    shards = split_shards(expansions, 3)
    assert [s.index for s in shards] == [0, 1, 2]
    owned = [t for s in shards for t in s.trees]
    assert sorted(owned) == [0, 1, 3, 5, 6] and len(owned) == len(set(owned))
    back = [Expansion(s.trees[e.tree], e.node_id, e.k) for s in shards for e in s.expansions]
    for tree in (0, 1, 3, 5, 6):
        assert [e for e in back if e.tree == tree] == [e for e in expansions if e.tree == tree]
    assert all(list(s.trees) == sorted(s.trees) for s in shards)
    # leaves per tree: 3 -> 7, 1 -> 4, 0 -> 3, 5 -> 3, 6 -> 0; each goes to the lightest shard so far
    assert [s.trees for s in shards] == [(3,), (1, 6), (0, 5)]
    assert [s.leaves for s in shards] == [7, 4, 6]
    assert split_shards(expansions, 3) == shards  # depends on the expansions only


def test_one_shard_is_the_whole_stage_with_its_own_seed_and_more_shards_than_trees_leave_some_empty():
    expansions = [Expansion(2, 0, 3), Expansion(0, 1, 2)]
    (only,) = split_shards(expansions, 1)
    assert only.trees == (0, 2) and only.expansions == (Expansion(1, 0, 3), Expansion(0, 1, 2))
    assert shard_seed(1234, 0, 1) == 1234
    seeds = [shard_seed(1234, i, 4) for i in range(4)]
    assert len(set(seeds)) == 4 and seeds == [shard_seed(1234, i, 4) for i in range(4)]
    assert [len(s.trees) for s in split_shards(expansions, 4)] == [1, 1, 0, 0]
    with pytest.raises(ValueError):
        split_shards(expansions, 0)


def test_a_shard_grows_the_same_trees_whatever_runs_before_it(model, tokenizer, env, small_task):
    """Each shard is grown from its own seed with an empty prefix cache, so shards can run in any
    order or on other workers and the merged stage is the same."""
    records = small_task.splits["train"][:4]
    expansions = [Expansion(i, 0, 1 + i % 2) for i in range(4)]
    shards = split_shards(expansions, 2)

    def run(order: list[int]) -> list:
        backend = TransformersBackend(model, tokenizer)
        trees = new_trees(records, env)
        for index in order:
            shard = shards[index]
            backend.reseed(shard_seed(7, index, 2))
            backend.reset_cache()
            part = shard_trees(trees, shard)
            grow(part, shard.expansions, backend, env, env.config.sampling(), "stage1")
            merge_shard(trees, shard, part)
        return [[(n.parent_id, n.model_ids, n.reward) for n in t] for t in trees]

    forward = run([0, 1])
    assert forward == run([1, 0])
    assert all(len(t) > 1 for t in forward)
