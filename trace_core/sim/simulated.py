"""A task whose every prefix has a known success probability, for comparing allocation with the oracle.

Each prompt i has a visible feature vector x_i and a hidden per-turn skill q_i = sigmoid(w . x_i + e_i)
(e_i is prompt-specific noise no predictor can see). An episode takes up to T turns; each turn is
"good" with probability q_i. It succeeds as soon as it has K good turns, and fails as soon as K can
no longer be reached. So a prefix with t turns taken and g good ones has the exact success
probability

    P(success | t, g) = P(Binomial(T - t, q_i) >= K - g),

and prompts range from always solved (large q) to never solved (small q) as the real task does.
Trees grown here are ordinary `RolloutTree`s (a turn's `argument` is "good" or "bad"), so
backup, allocation and the predictor run on them unchanged. The oracle is the same allocator fed
these true probabilities instead of predictions.

Deviations: none (this is a test bed, not part of the paper).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import comb

import numpy as np

from trace_core.method.rollout import Expansion
from trace_core.method.tree import Origin, RolloutNode, RolloutTree


@dataclass(frozen=True)
class SimRecord:
    """A simulated prompt's identity: what a tree's root holds of it."""

    id: str
    question: str
    data_source: str = "sim"


@dataclass(frozen=True)
class SimPrompt:
    record: SimRecord
    features: np.ndarray
    q: float


def success_probability(q: float, turns_left: int, good_needed: int) -> float:
    """P(Binomial(turns_left, q) >= good_needed)."""
    if good_needed <= 0:
        return 1.0
    if good_needed > turns_left:
        return 0.0
    return float(
        sum(comb(turns_left, j) * q**j * (1 - q) ** (turns_left - j) for j in range(good_needed, turns_left + 1))
    )


class KnownProbabilityTask:
    """Prompts with known success probabilities; see the module docstring."""

    def __init__(
        self,
        n_prompts: int = 400,
        n_features: int = 6,
        horizon: int = 4,
        needed: int = 2,
        noise: float = 0.0,
        seed: int = 0,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.horizon, self.needed = horizon, needed
        weights = rng.normal(0.0, 1.0, n_features)
        self.prompts: list[SimPrompt] = []
        for i in range(n_prompts):
            x = rng.normal(0.0, 1.0, n_features)
            logit = 1.2 * float(weights @ x) / np.sqrt(n_features) + noise * float(rng.normal())
            q = float(1 / (1 + np.exp(-2.0 * logit)))
            self.prompts.append(SimPrompt(SimRecord(f"sim-{i}", f"sim prompt {i}"), x, q))
        self._by_id = {p.record.id: p for p in self.prompts}
        self.dim = n_features + 3

    def prompt(self, tree: RolloutTree) -> SimPrompt:
        return self._by_id[tree.record.id]

    def new_tree(self, prompt: SimPrompt) -> RolloutTree:
        return RolloutTree(prompt.record, prompt_ids=(0,))

    def progress(self, tree: RolloutTree, node_id: int) -> tuple[int, int]:
        """(turns taken, good turns) on the path to `node_id`."""
        path = tree.path(node_id)[1:]
        return len(path), sum(n.argument == "good" for n in path)

    def true_value(self, tree: RolloutTree, node_id: int) -> float:
        t, g = self.progress(tree, node_id)
        return success_probability(self.prompt(tree).q, self.horizon - t, self.needed - g)

    def features(self, trees: Sequence[RolloutTree], nodes: Sequence[tuple[int, int]]) -> np.ndarray:
        rows = []
        for t, n in nodes:
            taken, good = self.progress(trees[t], n)
            extra = [taken / self.horizon, good / self.needed, (self.horizon - taken) / self.horizon]
            rows.append(np.concatenate([self.prompt(trees[t]).features, extra]))
        return np.array(rows).reshape(len(rows), self.dim)

    def grow(
        self, trees: Sequence[RolloutTree], expansions: Sequence[Expansion], rng: np.random.Generator, origin: Origin
    ) -> list[tuple[int, int]]:
        """Continue each expansion's node k times to a terminal leaf; returns the new leaves."""
        leaves = []
        for e in expansions:
            tree = trees[e.tree]
            q = self.prompt(tree).q
            for _ in range(e.k):
                node_id = e.node_id
                taken, good = self.progress(tree, node_id)
                while True:
                    ok = bool(rng.random() < q)
                    taken, good = taken + 1, good + ok
                    won = good >= self.needed
                    lost = self.needed - good > self.horizon - taken
                    node = tree.add(
                        RolloutNode(
                            node_id=-1,
                            parent_id=node_id,
                            depth=-1,
                            model_ids=(),
                            model_logprobs=(),
                            observation_ids=(),
                            text="",
                            observation="",
                            action="step",
                            argument="good" if ok else "bad",
                            finish_reason="stop",
                            terminal=won or lost,
                            reward=(1.0 if won else 0.0) if won or lost else None,
                            origin=origin,
                        )
                    )
                    node_id = node.node_id
                    if won or lost:
                        leaves.append((e.tree, node_id))
                        break
        return leaves
