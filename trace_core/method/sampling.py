"""One iteration's sampling under a fixed budget, stage by stage.

    pool trees --predict v--> Stage 1 plan --grow--> bare rollouts
               --anchors, predict p--> Stage 2 plan --grow--> continuations --> backup

Each step is its own function with typed inputs and outputs, so an orchestrator can run (and
retry) them as separate stages. Trees are indexed by their position in the candidate pool, so a
plan's indices stay valid across stages. No function changes its inputs: the planning steps return
new trees with the predictor's output for every node it scored in that node's `predicted` field,
where the store and the calibration analysis read it.

Deviations:
1. A Stage-1 group that is already mixed is offered to Stage 2's root fallback with p = r = 1
   (a continuation cannot make it "more mixed"), so it gains nothing there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import numpy as np

from trace_core.method.allocators import Allocator, AllocatorConfig, Anchor, PrefixPlan, RootPlan, Stage2Input
from trace_core.method.predictor import FitReport, Predictor
from trace_core.method.rollout import Expansion
from trace_core.method.tree import RolloutTree, launched_targets, stage1_outcomes, with_predictions

Targets = Literal["subtree", "launched"]
TARGETS: tuple[str, ...] = ("subtree", "launched")


class Featurizer(Protocol):
    dim: int

    def features(self, trees: Sequence[RolloutTree], nodes: Sequence[tuple[int, int]]) -> np.ndarray: ...


def predict_nodes(
    trees: Sequence[RolloutTree],
    nodes: Sequence[tuple[int, int]],
    predictor: Predictor,
    featurizer: Featurizer,
) -> np.ndarray:
    """Predicted success for (tree, node) pairs (record them with `tree.with_predictions`)."""
    if not nodes:
        return np.zeros(0)
    if predictor.fitted:
        return predictor.predict(featurizer.features(trees, nodes))
    return predictor.predict(np.zeros((len(nodes), predictor.dim)))  # cold start: the prior, no features


def plan_stage1(
    trees: Sequence[RolloutTree],
    allocator: Allocator,
    config: AllocatorConfig,
    predictor: Predictor,
    featurizer: Featurizer,
    rng: np.random.Generator,
    measured: Sequence[float] | None = None,
) -> tuple[list[RolloutTree], RootPlan]:
    """Predict v for every pool prompt (if the allocator uses it), and the chance two of its rollouts
    disagree where the predictor learns that, and allocate bare rollouts. Returns the pool's trees
    with v recorded on their roots (new trees; the inputs are unchanged) and the plan.

    `measured`: each pool prompt's success rate measured by sampling it at the current policy (the
    oracle control, outside any equal-cost comparison); Stage 1 allocates on it instead of the
    predictor's v, and it is what the roots record."""
    if not allocator.roots_by_predictor:
        if measured is not None:
            raise ValueError("measured success rates steer only allocators whose Stage 1 uses the predictor")
        return list(trees), allocator.roots([predictor.config.prior] * len(trees), config, rng)
    roots = [(i, 0) for i in range(len(trees))]
    if measured is not None:
        if len(measured) != len(trees):
            raise ValueError(f"{len(measured)} measured rates for a pool of {len(trees)} prompts")
        rates = np.asarray(measured, dtype=np.float64)
        return with_predictions(trees, roots, rates), allocator.roots([float(x) for x in rates], config, rng)
    v = predict_nodes(trees, roots, predictor, featurizer)
    learnt = predictor.config.mixedness and predictor.fitted  # else no second pass of the text encoder
    d = predictor.predict_mixedness(featurizer.features(trees, roots)) if learnt else None
    plan = allocator.roots([float(x) for x in v], config, rng, None if d is None else [float(x) for x in d])
    return with_predictions(trees, roots, v), plan


def stage1_expansions(plan: RootPlan) -> list[Expansion]:
    return [Expansion(i, 0, m) for i, m in enumerate(plan.counts) if m > 0]


def _common_outcome(tree: RolloutTree) -> float | None:
    rewards = {leaf.reward for leaf in tree.leaves()}
    return None if len(rewards) != 1 else float(rewards.pop() or 0.0)


def stage2_input(
    trees: Sequence[RolloutTree],
    plan: RootPlan,
    allocator: Allocator,
    predictor: Predictor,
    featurizer: Featurizer,
) -> tuple[list[RolloutTree], Stage2Input]:
    """Anchors (every non-terminal turn of depth >= 1 in the bare rollouts, with its rollout's
    reward), root fallbacks of the rolled-out prompts, and the unused pool prompts. Returns the
    trees with each anchor's p recorded (new trees; the inputs are unchanged) and Stage 2's input."""
    chosen = [i for i, m in enumerate(plan.counts) if m > 0]
    nodes: list[tuple[int, int]] = []
    rewards: list[float] = []
    for t in chosen:
        tree = trees[t]
        for leaf in tree.leaves():
            for node in tree.path(leaf.node_id)[1:-1]:
                nodes.append((t, node.node_id))
                rewards.append(leaf.reward or 0.0)
    if allocator.prefixes_by_predictor:
        p = predict_nodes(trees, nodes, predictor, featurizer)
        predicted = with_predictions(trees, nodes, p)
    else:
        p = np.full(len(nodes), predictor.config.prior)
        predicted = list(trees)
    anchors = tuple(Anchor(t, n, float(pi), r) for (t, n), pi, r in zip(nodes, p, rewards, strict=True))
    roots = []
    for t in chosen:
        common = _common_outcome(trees[t])
        v = _predicted_or(trees[t].root.predicted, predictor.config.prior)
        roots.append(Anchor(t, 0, 1.0, 1.0) if common is None else Anchor(t, 0, v, common))
    unused = tuple(i for i, m in enumerate(plan.counts) if m == 0)
    unused_v = tuple(_predicted_or(trees[i].root.predicted, predictor.config.prior) for i in unused)
    return predicted, Stage2Input(anchors, tuple(roots), unused, unused_v)


def _predicted_or(value: float | None, prior: float) -> float:
    return prior if value is None else value


def plan_stage2(
    stage2: Stage2Input,
    plan1: RootPlan,
    allocator: Allocator,
    config: AllocatorConfig,
    rng: np.random.Generator,
) -> PrefixPlan:
    """Allocate what Stage 1 left of the budget."""
    return allocator.prefixes(stage2, config.budget - plan1.leaves, config, rng)


def stage2_expansions(plan: PrefixPlan) -> list[Expansion]:
    moves = [Expansion(a.tree, a.node_id, k) for a, k in zip(plan.anchors, plan.counts, strict=True) if k > 0]
    moves += [Expansion(c, 0, m) for c, m in plan.new_roots if m > 0]
    return moves


def effective_ratio(trees: Sequence[RolloutTree]) -> float:
    """The paper's effective ratio: share of the iteration's trees (with leaves) that are mixed."""
    grown = [t for t in trees if t.leaves()]
    return sum(t.is_mixed() for t in grown) / len(grown) if grown else 0.0


def node_examples(
    trees: Sequence[RolloutTree], featurizer: Featurizer, targets: Targets = "subtree"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Predictor training rows from backed-up trees: every non-terminal node with leaves below.

    Terminal nodes are left out: nothing is ever allocated from them. targets: "subtree" (the
    backed-up success over every leaf below, the paper's) or "launched" (only the leaves launched
    from the node or above it, `launched_targets`: no Stage-2 selection bias). Returns (features,
    target, leaf-count weight, the (tree, node) of each row).
    """
    if targets not in TARGETS:
        raise ValueError(f"unknown predictor targets {targets!r}; valid: {', '.join(TARGETS)}")
    rows: list[tuple[int, int, float, int]] = []
    for t, tree in enumerate(trees):
        if targets == "launched":
            rates, counts = launched_targets(tree)
            pairs = [(rates[n.node_id], counts[n.node_id]) for n in tree]
        else:
            pairs = [(n.target, n.leaf_count) for n in tree]
        for n, (r, c) in zip(tree, pairs, strict=True):
            if not n.terminal and c > 0 and r is not None:
                rows.append((t, n.node_id, r, c))
    nodes = [(t, n) for t, n, _, _ in rows]
    target = np.array([r for _, _, r, _ in rows], dtype=np.float64)
    weight = np.array([c for _, _, _, c in rows], dtype=np.float64)
    features = featurizer.features(trees, nodes) if nodes else np.zeros((0, featurizer.dim))
    return features, target, weight, nodes


def learn_history(
    predictor: Predictor,
    featurizer: Featurizer,
    history: Sequence[tuple[int, Sequence[RolloutTree]]],
    targets: Targets = "subtree",
) -> None:
    """Feed a predictor earlier iterations' backed-up trees, oldest first, exactly as training
    does after each iteration (add the node examples, refit): e.g. a shared pre-run's rollouts
    for a run that starts from its checkpoint."""
    for iteration, trees in history:
        learn_iteration(predictor, featurizer, iteration, trees, targets)


def bare_groups(trees: Sequence[RolloutTree], featurizer: Featurizer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every prompt's bare Stage-1 group: (prompt features, successes, rollouts)."""
    groups = sorted((t, rate, n) for (t, node), (rate, n) in stage1_outcomes(trees).items() if node == 0)
    x = featurizer.features(trees, [(t, 0) for t, _, _ in groups]) if groups else np.zeros((0, featurizer.dim))
    successes = np.array([round(rate * n) for _, rate, n in groups], dtype=np.float64)
    return x, successes, np.array([n for _, _, n in groups], dtype=np.int64)


def learn_iteration(
    predictor: Predictor,
    featurizer: Featurizer,
    iteration: int,
    trees: Sequence[RolloutTree],
    targets: Targets = "subtree",
) -> FitReport | None:
    """One iteration's backed-up trees into the predictor, then a refit (None: nothing to learn).
    The bare groups go in first, scored by the predictor as it was when it allocated them."""
    if predictor.config.mixedness:
        predictor.add_groups(iteration, *bare_groups(trees, featurizer))
    x, target, weight, nodes = node_examples(trees, featurizer, targets)
    if not len(target):
        return None
    predictor.add(iteration, x, target, weight, [trees[t].record.id for t, _ in nodes])
    return predictor.fit()
