"""Growing rollout trees: continue k times from chosen nodes to terminal leaves, all in lockstep.

Every round sends one batch to the generation backend: each open branch asks for its next turn,
and a node that is to be continued k times asks once with n = k, so its prefix is encoded once
for its k siblings. The environment then answers all turns of the round together (one retriever
call), and the branches that did not end form the next round. A bare rollout is a continuation
from the root (the prompt); a Stage-2 continuation is one from an anchor turn.

Deviations: none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from trace_core.agent import SearchEnv
from trace_core.data import QARecord
from trace_core.generation import GenerationBackend, GenerationRequest, SamplingParams
from trace_core.tree import Origin, RolloutNode, RolloutTree


@dataclass(frozen=True)
class Expansion:
    """Continue `k` times from node `node_id` of tree number `tree` (an index into a tree list)."""

    tree: int
    node_id: int
    k: int


def new_trees(records: Sequence[QARecord], env: SearchEnv) -> list[RolloutTree]:
    return [RolloutTree(r, env.prompt_ids(r), env.prompt_text(r)) for r in records]


def grow(
    trees: Sequence[RolloutTree],
    expansions: Sequence[Expansion],
    backend: GenerationBackend,
    env: SearchEnv,
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
        texts = [str(env.tokenizer.decode(list(c.token_ids), skip_special_tokens=False)) for _, _, c in turns]
        steps = env.step(
            [trees[t].record for t, _, _ in turns],
            texts,
            [trees[t].nodes[n].depth + 1 for t, n, _ in turns],
            [c.finish_reason for _, _, c in turns],
        )
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
                )
            )
            if step.terminal:
                leaves.append((t, node.node_id))
            else:
                frontier.append((t, node.node_id, 1))
    return leaves


class AgentGrower:
    """`grow` bound to one backend, environment and sampling setting (the `Grower` of sampling.py)."""

    def __init__(self, backend: GenerationBackend, env: SearchEnv, params: SamplingParams) -> None:
        self.backend, self.env, self.params = backend, env, params

    def __call__(
        self, trees: Sequence[RolloutTree], expansions: Sequence[Expansion], origin: Origin
    ) -> list[tuple[int, int]]:
        return grow(trees, expansions, self.backend, self.env, self.params, origin)


def rollout_batch(
    records: Sequence[QARecord],
    n: int,
    backend: GenerationBackend,
    env: SearchEnv,
    params: SamplingParams,
) -> list[RolloutTree]:
    """n bare rollouts (Stage 1) for each record, one tree per record."""
    trees = new_trees(records, env)
    grow(trees, [Expansion(i, 0, n) for i in range(len(trees))], backend, env, params, "stage1")
    return trees
