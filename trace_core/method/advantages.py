"""Advantage estimators for rollout trees, registered by name in `ADVANTAGES`.

Each estimator turns backed-up trees into one `PathAdvantage` per leaf: the advantage of every turn
on the leaf's root-to-leaf path, and whether this copy of the turn's tokens carries loss (a turn
shared by several leaves appears in several paths).

- `grpo` (flat, DeepSeekMath's GRPO on the tree's leaves): every turn of leaf j gets
      A_j = (r_j - mean(r)) / (std(r) + eps)
  over the leaves of the prompt's tree (population std); shared turns are counted once per leaf,
  as if each leaf were an independent trajectory.
- `tree` (turn-level credit, TreeRL-style): turn n with parent p gets
      A(n) = [(V(n) - V(root)) + (V(n) - V(p))] / (std(r) + eps),
  where V is the backed-up success rate. The first term is the global signal (did this path do
  better than the prompt's average); the second credits a turn relative to its siblings (what the
  branch point chose). Each turn's tokens are counted once, in the first leaf below it.

- `vine` (per-segment credit, VinePPO-style Monte Carlo values on the tree): a turn n whose nearest
  ancestor with two or more children (or the root) is b(n) gets
      A(n) = (W(n) - W(b(n))) / (std(r) + eps),
  where W is the action-averaged value: a leaf's reward, otherwise the mean of its children's W
  (each child is one draw of the policy's next turn from that prefix, so a branch point's baseline
  weighs its sampled actions equally, not by how many continuations Stage 2 later sent below
  them). An unbranched run of turns is one action from its branch point's view, so all its turns
  share the credit; a continuation's own turns are judged against its anchor's value, the anchor's
  prefix once against the root's. On a tree of bare rollouts only it equals `grpo` exactly.

All give zero advantage to every turn of an all-same tree (every value is equal, std is 0).

Default: `vine`, by measurement against `grpo` and `tree` on the same starts (docs/results.md,
"Credit where the tree branched", and the entries it links). `tree` withholds credit from
unbranched turns (V(n) = V(p) there, so only the global term remains) while doubling the first
turn's credit in flat trees.

Deviations:
1. VinePPO estimates a value at every step with fresh rollouts; `vine` has values only where the
   tree branched, so it credits segments between branch points, and its W at a branch point
   includes the rollout whose outcome chose the anchor (Stage 2 picks anchors by r), which pulls
   an anchor's value toward that outcome.
2. TreeRL divides by sqrt(leaves below n); we normalise by the tree's reward std instead, so both
   estimators share GRPO's scale.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from trace_core.method.tree import RolloutTree
from trace_core.registry import Registry

EPS = 1e-6


@dataclass(frozen=True)
class PathAdvantage:
    """Advantages along one root-to-leaf path of tree `tree` ending at `leaf_id`.

    node_ids: the path's turns (depth >= 1), in order. advantages: one per turn. counted: whether
    this copy of the turn's tokens carries loss.
    """

    tree: int
    leaf_id: int
    node_ids: tuple[int, ...]
    advantages: tuple[float, ...]
    counted: tuple[bool, ...]


Estimator = Callable[[Sequence[RolloutTree]], list[PathAdvantage]]
ADVANTAGES: Registry[Estimator] = Registry("advantage estimator")


def _leaf_stats(tree: RolloutTree) -> tuple[float, float]:
    rewards = np.array([leaf.reward or 0.0 for leaf in tree.leaves()], dtype=np.float64)
    return float(rewards.mean()), float(rewards.std())


def _require_backup(tree: RolloutTree) -> None:
    if tree.leaves() and tree.root.target is None:
        raise ValueError("advantages need backed-up trees: call trace_core.method.tree.backup on each tree first")


@ADVANTAGES.register("grpo")
def grpo_advantages(trees: Sequence[RolloutTree]) -> list[PathAdvantage]:
    out = []
    for t, tree in enumerate(trees):
        mean, std = _leaf_stats(tree) if tree.leaves() else (0.0, 0.0)
        for leaf in tree.leaves():
            path = tree.path(leaf.node_id)[1:]
            a = ((leaf.reward or 0.0) - mean) / (std + EPS)
            out.append(
                PathAdvantage(t, leaf.node_id, tuple(n.node_id for n in path), (a,) * len(path), (True,) * len(path))
            )
    return out


def _counted_once(t: int, tree: RolloutTree, node_adv: np.ndarray) -> list[PathAdvantage]:
    """One path per leaf with each turn's advantage from `node_adv`; a turn's tokens carry loss in
    the first leaf below it only."""
    out, owned = [], set()
    for leaf in tree.leaves():
        path = [n.node_id for n in tree.path(leaf.node_id)[1:]]
        counted = tuple(n not in owned for n in path)
        owned.update(path)
        out.append(PathAdvantage(t, leaf.node_id, tuple(path), tuple(float(node_adv[n]) for n in path), counted))
    return out


@ADVANTAGES.register("tree")
def tree_advantages(trees: Sequence[RolloutTree]) -> list[PathAdvantage]:
    out = []
    for t, tree in enumerate(trees):
        _require_backup(tree)
        if not tree.leaves():
            continue
        _, std = _leaf_stats(tree)
        values = np.array([n.target if n.target is not None else 0.0 for n in tree.nodes])
        parents = np.array([n.parent_id if n.parent_id is not None else 0 for n in tree.nodes])
        node_adv = ((values - values[0]) + (values - values[parents])) / (std + EPS)
        out.extend(_counted_once(t, tree, node_adv))
    return out


def _action_values(tree: RolloutTree) -> np.ndarray:
    """W per node: a leaf's reward; otherwise the mean of its children's W (nan with no leaf below)."""
    values = np.full(len(tree.nodes), np.nan)
    for node in reversed(tree.nodes):  # children come after their parent
        if node.terminal:
            values[node.node_id] = node.reward or 0.0
            continue
        below = [values[c.node_id] for c in tree.children(node.node_id)]
        below = [v for v in below if not np.isnan(v)]
        if below:
            values[node.node_id] = float(np.mean(below))
    return values


def _branch_points(tree: RolloutTree) -> np.ndarray:
    """b(n) per node: the nearest proper ancestor with two or more children, or the root."""
    base = np.zeros(len(tree.nodes), dtype=np.int64)
    for node in tree.nodes[1:]:
        parent = node.parent_id or 0
        base[node.node_id] = parent if parent == 0 or len(tree.children(parent)) > 1 else base[parent]
    return base


@ADVANTAGES.register("vine")
def vine_advantages(trees: Sequence[RolloutTree]) -> list[PathAdvantage]:
    out = []
    for t, tree in enumerate(trees):
        if not tree.leaves():
            continue
        _, std = _leaf_stats(tree)
        values = _action_values(tree)
        node_adv = np.nan_to_num((values - values[_branch_points(tree)]) / (std + EPS))
        out.extend(_counted_once(t, tree, node_adv))
    return out


def nonzero_share(paths: Sequence[PathAdvantage], tol: float = 1e-9) -> float:
    """Share of leaves whose path carries any non-zero advantage (the signal reaching the gradient)."""
    if not paths:
        return 0.0
    return sum(any(abs(a) > tol for a in p.advantages) for p in paths) / len(paths)
