"""Rollout trees: one node per ReAct turn, the prompt at the root, siblings sharing their prefix.

A node holds the tokens the policy generated in its turn (`model_ids`, with their log-probs) and
the tokens the environment appended after it (`observation_ids`); the root holds the prompt as its
observation and no model tokens. The context a node's children continue from is the concatenation
of (model_ids + observation_ids) along the path from the root, so a branch starts from exactly the
token ids of its prefix and is never re-tokenised.

Backup (`backup`): a terminal node's value is its reward; any other node's value is the success
rate over all leaves below it, i.e. the leaf-count-weighted mean of its children's values
(docs/method.md, "The predictor"). The leaf count is kept as the node's weight for the predictor.

Launched targets (`launched_targets`), the predictor's alternative (`predictor.targets`): a node's
success rate over only the leaves whose rollout was *sampled from that node or from above it*. The
backed-up mean also counts the continuations Stage 2 launched from a node's descendants, and Stage 2
launches them exactly where a rollout's outcome r disagreed with its prediction: those leaves are
draws of the descendant's value, chosen by an outcome, so they bias the ancestor's target (a root
whose bare rollouts mostly failed gets continuations from failing prefixes, whose value is below
the root's: its target is pulled down, and a mostly-succeeding root's pulled up). Leaves launched
from the node itself (Stage 1 from a root, Stage 2 from an anchor or a root it extends) are fresh
draws of the node's own value even when the decision to draw them looked at earlier outcomes, so
their pooled likelihood is unbiased (an adaptive stopping rule is ignorable). Anchors are always
Stage-1 nodes or roots, so a Stage-2 leaf was launched from its nearest ancestor that is not a
Stage-2 node. Against the backed-up targets, launched ones gave a higher effective ratio and test
EM on the runs that compared them (bench/results/targets-ab, since found flawed for its late regime:
docs/results.md). Adopted as the default (`predictor.targets`).

Outcomes at allocation time (`stage1_outcomes`, `allocation_outcomes`): each prediction against
the success of the bare (Stage-1) leaves below its node, the only leaves not chosen by an outcome.

Deviations: none for `backup`; `launched_targets` is ours (the paper leaves the predictor open: docs/method.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, Literal, TypeVar

import numpy as np

from trace_core.method.environment import Prompt

Origin = Literal["root", "stage1", "stage2"]
R = TypeVar("R", bound=Prompt)


@dataclass(frozen=True)
class RolloutNode:
    """One turn of a rollout (or the prompt, at depth 0).

    model_ids / model_logprobs: the policy's tokens for the turn and their log-probs at sampling time.
    observation_ids: tokens appended by the environment after the turn (the prompt, at the root).
    action / argument: "search" with its query, "answer" with the answer, "invalid", or "prompt".
    finish_reason: why the turn's generation stopped ("stop", "eos", "length"; "" at the root).
    origin: "root", "stage1" (a bare rollout from the prompt) or "stage2" (a continuation from an
        anchor prefix).
    predicted: the predictor's success estimate for this node's prefix when allocation was decided.
    target / leaf_count: after `backup`, the success rate over the leaves below and their number.
    details: what the environment kept with the turn (JSON-able; a stateful environment's calls,
        outputs and state digest), or None.
    """

    node_id: int
    parent_id: int | None
    depth: int
    model_ids: tuple[int, ...]
    model_logprobs: tuple[float, ...]
    observation_ids: tuple[int, ...]
    text: str
    observation: str
    action: str
    argument: str
    finish_reason: str
    terminal: bool
    reward: float | None
    origin: Origin
    predicted: float | None = None
    target: float | None = None
    leaf_count: int = 0
    details: Mapping[str, Any] | None = None

    @property
    def generated_tokens(self) -> int:
        return len(self.model_ids)


class RolloutTree(Generic[R]):
    """The nodes grown from one prompt, indexed by `node_id` (their position in `nodes`); `record` is
    the task family's prompt (its id and data source identify it, the rest is the environment's)."""

    def __init__(self, record: R, prompt_ids: tuple[int, ...], prompt_text: str = "") -> None:
        self.record = record
        root = RolloutNode(
            node_id=0,
            parent_id=None,
            depth=0,
            model_ids=(),
            model_logprobs=(),
            observation_ids=prompt_ids,
            text="",
            observation=prompt_text,
            action="prompt",
            argument="",
            finish_reason="",
            terminal=False,
            reward=None,
            origin="root",
        )
        self.nodes: list[RolloutNode] = [root]
        self._children: dict[int, list[int]] = {0: []}

    @property
    def root(self) -> RolloutNode:
        return self.nodes[0]

    def add(self, node: RolloutNode) -> RolloutNode:
        """Append a child; its node_id is assigned here (the given one is ignored)."""
        parent = node.parent_id
        if parent is None or parent not in self._children:
            raise KeyError(f"parent {parent} is not in the tree")
        node = replace(node, node_id=len(self.nodes), depth=self.nodes[parent].depth + 1)
        self.nodes.append(node)
        self._children[parent].append(node.node_id)
        self._children[node.node_id] = []
        return node

    def set(self, node: RolloutNode) -> None:
        """Replace a node by an updated copy with the same id."""
        self.nodes[node.node_id] = node

    def copy(self) -> RolloutTree[R]:
        """An independent tree with the same nodes (nodes are immutable, so sharing them is safe)."""
        other: RolloutTree[R] = RolloutTree.__new__(RolloutTree)
        other.record = self.record
        other.nodes = list(self.nodes)
        other._children = {k: list(v) for k, v in self._children.items()}
        return other

    def children(self, node_id: int) -> list[RolloutNode]:
        return [self.nodes[c] for c in self._children[node_id]]

    def path(self, node_id: int) -> list[RolloutNode]:
        """Nodes from the root down to `node_id`, both included."""
        out = []
        current: int | None = node_id
        while current is not None:
            out.append(self.nodes[current])
            current = self.nodes[current].parent_id
        return out[::-1]

    def context_ids(self, node_id: int) -> tuple[int, ...]:
        """Token ids a continuation from `node_id` is conditioned on (prompt included)."""
        ids: list[int] = []
        for node in self.path(node_id):
            ids.extend(node.model_ids)
            ids.extend(node.observation_ids)
        return tuple(ids)

    def leaves(self) -> list[RolloutNode]:
        return [n for n in self.nodes if n.terminal]

    def __iter__(self) -> Iterator[RolloutNode]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def is_mixed(self) -> bool:
        """True when the tree's leaves hold both a success and a failure."""
        rewards = {n.reward for n in self.leaves()}
        return any(r is not None and r > 0 for r in rewards) and any(r is not None and r <= 0 for r in rewards)


def with_predictions(
    trees: Sequence[RolloutTree], nodes: Sequence[tuple[int, int]], predicted: Sequence[float] | np.ndarray
) -> list[RolloutTree]:
    """The trees with `predicted` recorded on the (tree index, node id) pairs: copies where a node
    changes, the same objects elsewhere; the inputs are left as they are."""
    out = list(trees)
    copied: set[int] = set()
    for (t, n), p in zip(nodes, predicted, strict=True):
        if t not in copied:
            out[t] = out[t].copy()
            copied.add(t)
        out[t].set(replace(out[t].nodes[n], predicted=float(p)))
    return out


def backup(tree: RolloutTree) -> None:
    """Fill `target` and `leaf_count` of every node from the rewards of the leaves below it.

    Children are always appended after their parent, so one reverse pass over the nodes sees every
    child before its parent. A node with no terminal leaf below it keeps target None.
    """
    sums = [0.0] * len(tree.nodes)
    counts = [0] * len(tree.nodes)
    for node in reversed(tree.nodes):
        if node.terminal:
            sums[node.node_id] += node.reward or 0.0
            counts[node.node_id] += 1
        if node.parent_id is not None:
            sums[node.parent_id] += sums[node.node_id]
            counts[node.parent_id] += counts[node.node_id]
    for node in tree.nodes:
        n = counts[node.node_id]
        tree.set(replace(node, target=sums[node.node_id] / n if n else None, leaf_count=n))


def backed_up(tree: RolloutTree) -> RolloutTree:
    """A copy of `tree` with every node's `target` and `leaf_count` filled (`backup`); the input is
    left as it is."""
    out = tree.copy()
    backup(out)
    return out


def launched_targets(tree: RolloutTree) -> tuple[list[float | None], list[int]]:
    """Per node (by node_id): the success rate over the leaves launched from the node or above it
    on their path, and their count (None and 0 where there are none). See the module docstring."""
    sums = [0.0] * len(tree.nodes)
    counts = [0] * len(tree.nodes)
    for leaf in tree.leaves():
        current: int | None = leaf.node_id
        while current is not None:
            node = tree.nodes[current]
            sums[current] += leaf.reward or 0.0
            counts[current] += 1
            if leaf.origin == "stage2" and node.origin != "stage2":
                break  # the anchor (or root) this continuation was launched from
            current = node.parent_id
    return [s / n if n else None for s, n in zip(sums, counts, strict=True)], counts


def stage1_outcomes(trees: Sequence[RolloutTree]) -> dict[tuple[int, int], tuple[float, int]]:
    """(tree index, node id) -> (success rate of the bare Stage-1 leaves below the node, their
    count), for every node with a bare leaf below it."""
    out: dict[tuple[int, int], tuple[float, int]] = {}
    for t, tree in enumerate(trees):
        below: dict[int, list[float]] = {}
        for leaf in tree.leaves():
            if leaf.origin == "stage1":
                for node in tree.path(leaf.node_id)[:-1]:
                    below.setdefault(node.node_id, []).append(leaf.reward or 0.0)
        out.update({(t, n): (sum(r) / len(r), len(r)) for n, r in below.items()})
    return out


def allocation_outcomes(
    trees: Sequence[RolloutTree], kind: Literal["all", "root", "anchor"] = "all"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each prediction made at allocation time against what the bare rollouts (Stage 1) then did.

    Only Stage-1 leaves count: Stage 2 continues exactly where prediction and outcome disagreed,
    so scoring against the final targets would measure the allocator's selection, not the
    predictor. kind: every predicted node, only roots (Stage 1's v) or only anchors (Stage 2's p,
    depth >= 1). Returns (predicted, success rate of the Stage-1 leaves below, their count).
    """
    predicted, target, weight = [], [], []
    for (t, node_id), (rate, count) in stage1_outcomes(trees).items():
        p = trees[t].nodes[node_id].predicted
        if p is None or (kind != "all" and (node_id == 0) != (kind == "root")):
            continue
        predicted.append(p)
        target.append(rate)
        weight.append(count)
    return np.array(predicted), np.array(target), np.array(weight, dtype=np.float64)
