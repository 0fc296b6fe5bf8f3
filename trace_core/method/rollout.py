"""Growing rollout trees: continue k times from chosen nodes to terminal leaves, all in lockstep.

Every round sends one batch to the generation backend: each open branch asks for its next turn,
and a node that is to be continued k times asks once with n = k, so its prefix is encoded once
for its k siblings. The environment then answers all turns of the round together (one retriever
call), and the branches that did not end form the next round. A bare rollout is a continuation
from the root (the prompt); a Stage-2 continuation is one from an anchor turn.

Sharding (`split_shards`): a stage's expansions can be split into a fixed number of shards, each
holding whole trees, to be grown independently (in one process or on several workers), each from
its own random stream (`shard_seed`); the split depends only on the expansions and the shard
count, so a stage grown in shards is reproducible wherever its shards run.

Deviations: none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trace_core.generation.backend import GenerationBackend, GenerationRequest, SamplingParams
from trace_core.method.environment import Environment, Prompt
from trace_core.method.tree import Origin, RolloutNode, RolloutTree


@dataclass(frozen=True)
class Expansion:
    """Continue `k` times from node `node_id` of tree number `tree` (an index into a tree list)."""

    tree: int
    node_id: int
    k: int


def new_trees(records: Sequence[Prompt], env: Environment[Any]) -> list[RolloutTree]:
    return [RolloutTree(r, env.prompt_ids(r), env.prompt_text(r)) for r in records]


def grow(
    trees: Sequence[RolloutTree],
    expansions: Sequence[Expansion],
    backend: GenerationBackend,
    env: Environment[Any],
    params: SamplingParams,
    origin: Origin,
) -> list[tuple[int, int]]:
    """Continue each expansion's node k times to a leaf; returns (tree index, leaf id) of new leaves."""
    for e in expansions:
        if trees[e.tree].nodes[e.node_id].terminal:
            raise ValueError(f"node {e.node_id} of tree {e.tree} is terminal and cannot be continued")
    frontier = [(e.tree, e.node_id, e.k) for e in expansions if e.k > 0]
    leaves: list[tuple[int, int]] = []
    while frontier:
        requests = [GenerationRequest(trees[t].context_ids(n), k) for t, n, k in frontier]
        completions = backend.generate(requests, params)
        turns = [(t, n, c) for (t, n, _), cs in zip(frontier, completions, strict=True) for c in cs]
        texts = [env.decode(c.token_ids) for _, _, c in turns]
        steps = _answer(trees, turns, texts, env)
        frontier = []
        for (t, n, c), text, step in zip(turns, texts, steps, strict=True):
            node = trees[t].add(
                RolloutNode(
                    node_id=-1,
                    parent_id=n,
                    depth=-1,
                    model_ids=c.token_ids,
                    model_logprobs=c.logprobs,
                    observation_ids=step.observation_ids,
                    text=text,
                    observation=step.observation,
                    action=step.parsed.action,
                    argument=step.parsed.argument,
                    finish_reason=c.finish_reason,
                    terminal=step.terminal,
                    reward=step.reward,
                    origin=origin,
                    details=getattr(step, "details", None),
                )
            )
            if step.terminal:
                leaves.append((t, node.node_id))
            else:
                frontier.append((t, node.node_id, 1))
    return leaves


def _answer(
    trees: Sequence[RolloutTree], turns: Sequence[tuple[int, int, Any]], texts: Sequence[str], env: Environment[Any]
) -> Sequence[Any]:
    """The environment's answer to a round of turns, each (tree, parent node, completion), with the
    policy's earlier turns on each path as its history."""
    return env.step(
        [trees[t].record for t, _, _ in turns],
        texts,
        [trees[t].nodes[n].depth + 1 for t, n, _ in turns],
        [c.finish_reason for _, _, c in turns],
        [[node.text for node in trees[t].path(n)[1:]] for t, n, _ in turns],
    )


def rollout_batch(
    records: Sequence[Prompt],
    n: int,
    backend: GenerationBackend,
    env: Environment[Any],
    params: SamplingParams,
) -> list[RolloutTree]:
    """n bare rollouts (Stage 1) for each record, one tree per record."""
    trees = new_trees(records, env)
    grow(trees, [Expansion(i, 0, n) for i in range(len(trees))], backend, env, params, "stage1")
    return trees


@dataclass(frozen=True)
class Shard:
    """One part of a stage's rollouts.

    index: the shard's number, in [0, count).
    trees: indices into the stage's tree list, ascending.
    expansions: the stage's expansions on those trees, in their original order, with `tree`
        renumbered to index into `trees`.
    """

    index: int
    trees: tuple[int, ...]
    expansions: tuple[Expansion, ...]

    @property
    def leaves(self) -> int:
        return sum(e.k for e in self.expansions)


def split_shards(expansions: Sequence[Expansion], count: int) -> list[Shard]:
    """Split expansions into `count` shards (some may be empty), each tree wholly in one shard.

    Deterministic, and balanced by leaves: trees are dealt most leaves first (ties: lower tree
    index), each to the shard with the fewest leaves so far (ties: lower shard index). A tree
    without expansions belongs to no shard.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    work: dict[int, int] = {}
    for e in expansions:
        work[e.tree] = work.get(e.tree, 0) + e.k
    loads = [0] * count
    owner: dict[int, int] = {}
    for tree in sorted(work, key=lambda t: (-work[t], t)):
        shard = min(range(count), key=lambda s: (loads[s], s))
        owner[tree] = shard
        loads[shard] += work[tree]
    shards = []
    for index in range(count):
        trees = tuple(sorted(t for t, s in owner.items() if s == index))
        position = {t: i for i, t in enumerate(trees)}
        local = tuple(Expansion(position[e.tree], e.node_id, e.k) for e in expansions if e.tree in position)
        shards.append(Shard(index, trees, local))
    return shards


def shard_seed(seed: int, index: int, count: int) -> int:
    """The seed of shard `index` of `count` in a stage seeded with `seed`; a single shard keeps the
    stage's own seed, so an unsharded stage computes what it always did."""
    if count == 1:
        return seed
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def shard_trees(trees: Sequence[RolloutTree], shard: Shard) -> list[RolloutTree]:
    """The shard's trees, in the numbering its expansions use."""
    return [trees[i] for i in shard.trees]


def merge_shard(trees: list[RolloutTree], shard: Shard, grown: Sequence[RolloutTree]) -> None:
    """Put a shard's grown trees (as returned by a worker) back at their places in `trees`."""
    if len(grown) != len(shard.trees):
        raise ValueError(f"shard {shard.index} holds {len(shard.trees)} trees, got {len(grown)} back")
    for i, tree in zip(shard.trees, grown, strict=True):
        trees[i] = tree
