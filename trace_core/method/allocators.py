"""Allocators: who gets the iteration's sampling budget, registered by name.

Every allocator answers the same two questions with the same budget M (in leaves: each finished
root-to-leaf trajectory costs 1, bare rollout or continuation alike):
- Stage 1, `roots`: how many bare rollouts each prompt of the candidate pool gets;
- Stage 2, `prefixes`: after the bare rollouts, where the rest of the budget goes, as k
  continuations from anchor turns or as bare rollouts of prompts not yet used.
Stage 1 spends at most its share (`stage1_share * M`) except where the allocator has no second
stage; Stage 2 always spends exactly what is left, so every allocator spends M.

Each allocator is a pair of rules (`RULES`, built as `TwoStageAllocator`): a Stage-1 rule (uniform
groups of G, or the exact root allocation on the predictor's v) and a Stage-2 rule (none, the
greedy prefix allocation on (p, r), anchors at random, or fresh groups on unused prompts); which
stage reads the predictor follows from its rule.

- `uniform` (GRPO): the first M / G prompts of the pool get G rollouts each; no Stage 2.
- `dynamic_sampling` (DAPO): G rollouts for each of the first prompts in Stage 1, then fresh
  prompts with G rollouts each until the budget is spent; groups whose rewards are all equal carry
  no advantage and so drop out of the update.
- `prompt_only` (PCL/GPS-like): Stage 1 only, the whole budget by the exact root allocation with
  the predictor's v.
- `random_branch` (Tree-GRPO-like): uniform Stage 1 on its share, then continuations from anchors
  drawn uniformly at random.
- `trace`: exact root allocation with the predictor on Stage 1's share, then the greedy prefix
  allocation over anchors with the predictor's p and each anchor's realised reward r.
- `explore_share` (any allocator whose Stage 1 uses the predictor): that share of Stage 1's leaves
  goes first to pool prompts drawn at random, 2 rollouts each, and the rule spends the rest on the
  others, so the predictor also learns from prompts the rule would never choose (its own choices
  are range-restricted: bench/selection.py measures what that costs it). Off by default
  (docs/results.md).
- `active_roots` / `active_prefixes`: the stage ablation, TRACE's rule in one stage only (random
  prefixes after predicted roots; predicted prefixes after uniform roots).

Deviations:
1. When the anchors cannot absorb Stage 2's budget (every rollout answered at its first turn, say),
   the rest goes to the roots of the Stage-1 trees as extra bare rollouts, valued with the same
   formula using the group's common outcome (a mixed group gains nothing).
2. DAPO resamples until a fixed number of mixed groups is collected; at a fixed leaf budget it
   gets one refill round.
3. `explore_share` is ours (the paper's Stage 1 is the rule alone); 0 by default.
4. `root_split` (ours): V_root(v, 3) / 3 = V_root(v, 2) / 2 = v (1 - v), so a third rollout of a
   prompt is worth per leaf exactly what a second prompt's pair is worth at the same v; the exact
   optimum ('deep', the paper's objective) gives the best-ranked prompts a third rollout instead of
   adding lower-ranked prompts, so a noisy ranking decides how many distinct prompts are trained
   on. 'wide' maximises the number of chosen prompts first (2 rollouts each), then V_root: a bonus
   of 1 per chosen prompt with V_root(v, 2) > 0, more than any V_root gain 2 leaves can buy
   elsewhere (at most 2 max v (1 - v) = 0.5).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from trace_core.method.allocation import (
    agreement,
    allocate_by_table,
    allocate_prefixes,
    allocate_roots,
    mixed_value,
    prefix_value,
    root_value,
)
from trace_core.registry import Registry

ROOT_SPLITS = ("deep", "wide")
# 'wide': the bonus per chosen prompt, above any V_root gain that 2 leaves buy on other prompts (deviation 4)
WIDE_BONUS = 1.0


@dataclass(frozen=True)
class AllocatorConfig:
    """budget: leaves per iteration (M). stage1_share: fraction of M for bare rollouts where an
    allocator has two stages. group_size: G, rollouts per prompt for the uniform-style stages.
    max_per_prompt / max_per_anchor: caps on m_i and k_j. explore_share: fraction of a predicted
    Stage 1's leaves spent on pool prompts drawn at random, 2 rollouts each (0: none). root_split:
    'deep' (the exact V_root optimum) or 'wide' (most distinct prompts first; deviation 4)."""

    budget: int = 64
    stage1_share: float = 0.5
    group_size: int = 4
    max_per_prompt: int = 8
    max_per_anchor: int = 4
    explore_share: float = 0.0
    root_split: str = "deep"

    def __post_init__(self) -> None:
        if self.budget < 2:
            raise ValueError(f"the budget must cover two rollouts of one prompt, got {self.budget}")
        if not 0 < self.stage1_share <= 1:
            raise ValueError(f"stage1_share must be in (0, 1], got {self.stage1_share}")
        if self.group_size < 2 or self.max_per_prompt < max(2, self.group_size):
            raise ValueError("group_size must be >= 2 and max_per_prompt >= group_size")
        if self.max_per_anchor < 1:
            raise ValueError("max_per_anchor must be >= 1")
        if not 0 <= self.explore_share < 1:
            raise ValueError(f"explore_share must be in [0, 1), got {self.explore_share}")
        if self.root_split not in ROOT_SPLITS:
            raise ValueError(f"root_split must be one of {', '.join(ROOT_SPLITS)}, got {self.root_split!r}")

    @property
    def stage1_budget(self) -> int:
        return max(2, round(self.budget * self.stage1_share))


@dataclass(frozen=True)
class Anchor:
    """A node continuations may start from: tree index, node id, predicted success p of its
    prefix, and r, the realised reward of the rollout(s) below it (all equal for a root anchor)."""

    tree: int
    node_id: int
    p: float
    r: float


@dataclass(frozen=True)
class RootPlan:
    """Stage 1: bare rollouts per pool candidate (`counts`) and the expected mixed groups each buys
    by the allocator's estimate (`values`: V_root(v_i, m_i))."""

    counts: tuple[int, ...]
    values: tuple[float, ...]

    @property
    def leaves(self) -> int:
        return sum(self.counts)

    @property
    def expected_mixed(self) -> float:
        return float(sum(self.values))


def root_plan(predicted: Sequence[float], counts: Sequence[int], mixedness: Sequence[float] | None = None) -> RootPlan:
    """A Stage-1 plan valued on the predictions it was made with: the paper's V_root(v, m), or
    V_mix(v, d, m) where a predicted disagreement d per prompt is given (trace_core/method/mixedness.py)."""
    if mixedness is None:
        return RootPlan(tuple(counts), tuple(root_value(v, m) for v, m in zip(predicted, counts, strict=True)))
    values = (mixed_value(v, d, m) for v, d, m in zip(predicted, mixedness, counts, strict=True))
    return RootPlan(tuple(counts), tuple(values))


def stage1_counts(
    predicted: Sequence[float], mixedness: Sequence[float] | None, budget: int, cap: int, split: str = "deep"
) -> tuple[int, ...]:
    """The exact Stage-1 split on V_root(v, m), or on V_mix(v, d, m) when d is given; with
    split='wide', the most distinct prompts first (deviation 4)."""
    if mixedness is None and split == "deep":
        return allocate_roots(predicted, budget, cap)
    if mixedness is None:
        table = [[root_value(v, m) for m in range(cap + 1)] for v in predicted]
    else:
        table = [[mixed_value(v, d, m) for m in range(cap + 1)] for v, d in zip(predicted, mixedness, strict=True)]
    if split == "wide":
        table = [[x + WIDE_BONUS if m >= 2 and row[2] > 1e-12 else x for m, x in enumerate(row)] for row in table]
    return allocate_by_table(table, budget, cap)


@dataclass(frozen=True)
class PrefixPlan:
    """Stage 2: k continuations per anchor (`anchors[i]` gets `counts[i]`, worth `values[i]` =
    V_pref(p, r, k) expected mixed subtrees), and bare rollouts for new pool candidates
    (`new_roots`: candidate index -> m, worth `new_root_values` = V_root(v, m))."""

    anchors: tuple[Anchor, ...]
    counts: tuple[int, ...]
    values: tuple[float, ...]
    new_roots: tuple[tuple[int, int], ...] = ()
    new_root_values: tuple[float, ...] = ()

    @property
    def leaves(self) -> int:
        return sum(self.counts) + sum(m for _, m in self.new_roots)

    @property
    def expected_mixed(self) -> float:
        return float(sum(self.values) + sum(self.new_root_values))


NO_PREFIXES = PrefixPlan((), (), ())


def anchor_plan(anchors: Sequence[Anchor], counts: Sequence[int]) -> PrefixPlan:
    """Continuations from anchors, valued with the paper's V_prefix on each anchor's p and r."""
    values = tuple(prefix_value(a.p, a.r, k) for a, k in zip(anchors, counts, strict=True))
    return PrefixPlan(tuple(anchors), tuple(counts), values)


@dataclass(frozen=True)
class Stage2Input:
    """What Stage 2 may spend on: anchors (non-terminal turn boundaries of depth >= 1 in the bare
    rollouts), the roots of the Stage-1 trees (fallback), and the pool candidates Stage 1 left
    unused with their predicted success."""

    anchors: tuple[Anchor, ...]
    roots: tuple[Anchor, ...]
    unused: tuple[int, ...]
    unused_predicted: tuple[float, ...]


class Allocator(Protocol):
    """A two-stage allocation rule. `roots` splits Stage 1's bare rollouts over the candidate pool
    (a count per candidate); `prefixes` spends what Stage 1 left on continuations from anchors and
    on unused candidates. roots_by_predictor / prefixes_by_predictor: whether the stage uses the
    predictor's estimates (v for candidates, p for anchors); when False the training flow does not
    compute them and the stage receives the prior instead."""

    @property
    def roots_by_predictor(self) -> bool: ...

    @property
    def prefixes_by_predictor(self) -> bool: ...

    def roots(
        self,
        predicted: Sequence[float],
        config: AllocatorConfig,
        rng: np.random.Generator,
        mixedness: Sequence[float] | None = None,
    ) -> RootPlan: ...

    def prefixes(
        self, stage2: Stage2Input, budget: int, config: AllocatorConfig, rng: np.random.Generator
    ) -> PrefixPlan: ...


# name -> a factory of the allocator (a class, or any callable with no arguments)
ALLOCATORS: Registry[Callable[[], Allocator]] = Registry("allocator")


def make_allocator(name: str) -> Allocator:
    return ALLOCATORS.get(name)()


def uniform_counts(n_pool: int, budget: int, group: int) -> list[int]:
    """G each for the first prompts; a remainder below 2 joins the last chosen prompt."""
    if n_pool * group < budget and n_pool * group > 0:
        group = math.ceil(budget / n_pool)
    counts = [0] * n_pool
    spent, i = 0, 0
    while budget - spent >= 2 and i < n_pool:
        counts[i] = min(group, budget - spent)
        spent += counts[i]
        i += 1
    if spent < budget:
        counts[max(i - 1, 0)] += budget - spent
    return counts


def _no_stage2(stage2: Stage2Input, budget: int, config: AllocatorConfig, rng: np.random.Generator) -> PrefixPlan:
    if budget:
        raise ValueError(f"this allocator has no second stage but {budget} leaves were left for it")
    return NO_PREFIXES


def _greedy_over_anchors(stage2: Stage2Input, budget: int, config: AllocatorConfig) -> PrefixPlan:
    anchors = stage2.anchors
    if len(anchors) * config.max_per_anchor >= budget:
        q = [agreement(a.p, a.r) for a in anchors]
        counts = allocate_prefixes(q, budget, config.max_per_anchor)
    else:  # deviation 1: the roots take what the anchors cannot
        anchors = anchors + stage2.roots
        if not anchors:
            raise ValueError("Stage 2 has budget left but no tree to continue")
        counts = allocate_prefixes([agreement(a.p, a.r) for a in anchors], budget, None)
    return anchor_plan(anchors, counts)


def explored_prompts(n_pool: int, budget: int, share: float, rng: np.random.Generator) -> set[int]:
    """The pool prompts a predicted Stage 1 samples at random (2 rollouts each) for `share` of its
    budget: round(share * budget / 2) of them, never so many that the rest of the budget cannot be
    spent (at least 2 leaves stay with the rule). No random draw at all when `share` is 0."""
    if share <= 0:
        return set()
    k = min(round(share * budget / 2), (budget - 2) // 2, n_pool - 1)
    return {int(i) for i in rng.choice(n_pool, size=k, replace=False)} if k > 0 else set()


# -- the rules: each allocator is a (Stage-1 rule, Stage-2 rule) pair ------------------------------


@dataclass(frozen=True)
class RootRule:
    """A Stage-1 rule: `plan(predicted, budget, config, rng, mixedness)` splits `budget` bare rollouts
    over the candidate pool. by_predictor: whether it reads the predictor's v (else it gets the prior)."""

    name: str
    by_predictor: bool
    plan: Callable[[Sequence[float], int, AllocatorConfig, np.random.Generator, Sequence[float] | None], RootPlan]


@dataclass(frozen=True)
class PrefixRule:
    """A Stage-2 rule: `plan(stage2, budget, config, rng)` spends what Stage 1 left. by_predictor:
    whether it reads the predictor's p at anchors. `none`: there is no Stage 2 (Stage 1 spends it all)."""

    name: str
    by_predictor: bool
    plan: Callable[[Stage2Input, int, AllocatorConfig, np.random.Generator], PrefixPlan]


def _uniform_roots(
    predicted: Sequence[float],
    budget: int,
    config: AllocatorConfig,
    rng: np.random.Generator,
    mixedness: Sequence[float] | None,
) -> RootPlan:
    return root_plan(predicted, uniform_counts(len(predicted), budget, config.group_size))


def _predicted_roots(
    predicted: Sequence[float],
    budget: int,
    config: AllocatorConfig,
    rng: np.random.Generator,
    mixedness: Sequence[float] | None,
) -> RootPlan:
    explore = explored_prompts(len(predicted), budget, config.explore_share, rng)
    rest = [i for i in range(len(predicted)) if i not in explore]
    d = None if mixedness is None else [mixedness[i] for i in rest]
    chosen = stage1_counts(
        [predicted[i] for i in rest], d, budget - 2 * len(explore), config.max_per_prompt, config.root_split
    )
    counts = [2 if i in explore else 0 for i in range(len(predicted))]
    for i, m in zip(rest, chosen, strict=True):
        counts[i] = m
    return root_plan(predicted, counts, mixedness)


def _random_prefixes(stage2: Stage2Input, budget: int, config: AllocatorConfig, rng: np.random.Generator) -> PrefixPlan:
    """Continuations from anchors drawn uniformly at random (capped per anchor)."""
    anchors = stage2.anchors if stage2.anchors else stage2.roots
    if budget and not anchors:
        raise ValueError("Stage 2 has budget left but no tree to continue")
    cap = config.max_per_anchor if len(anchors) * config.max_per_anchor >= budget else budget
    counts = [0] * len(anchors)
    for _ in range(budget):
        open_ = [i for i, c in enumerate(counts) if c < cap]
        counts[open_[int(rng.integers(len(open_)))]] += 1
    return anchor_plan(anchors, counts)


def _greedy_prefixes(stage2: Stage2Input, budget: int, config: AllocatorConfig, rng: np.random.Generator) -> PrefixPlan:
    if budget == 0:
        return NO_PREFIXES
    return _greedy_over_anchors(stage2, budget, config)


def _fresh_groups(stage2: Stage2Input, budget: int, config: AllocatorConfig, rng: np.random.Generator) -> PrefixPlan:
    """DAPO's refill: groups of G on the pool's unused prompts; once the pool is used up, the
    groups that are all-same get more rollouts."""
    if budget == 0:
        return NO_PREFIXES
    if not stage2.unused:
        return _greedy_over_anchors(Stage2Input((), stage2.roots, (), ()), budget, config)
    counts = uniform_counts(len(stage2.unused), budget, config.group_size)
    chosen = [(c, v, m) for c, v, m in zip(stage2.unused, stage2.unused_predicted, counts, strict=True) if m]
    new_roots = tuple((c, m) for c, _, m in chosen)
    return PrefixPlan((), (), (), new_roots, tuple(root_value(v, m) for _, v, m in chosen))


UNIFORM_GROUPS = RootRule("uniform groups of G", by_predictor=False, plan=_uniform_roots)
PREDICTED_SPLIT = RootRule("the exact root allocation on v", by_predictor=True, plan=_predicted_roots)
NO_STAGE2 = PrefixRule("none", by_predictor=False, plan=_no_stage2)
GREEDY_PREFIXES = PrefixRule("the greedy prefix allocation on (p, r)", by_predictor=True, plan=_greedy_prefixes)
RANDOM_PREFIXES = PrefixRule("anchors at random", by_predictor=False, plan=_random_prefixes)
FRESH_GROUPS = PrefixRule("fresh groups of G on unused prompts", by_predictor=False, plan=_fresh_groups)


@dataclass(frozen=True)
class TwoStageAllocator:
    """An `Allocator` made of a Stage-1 rule and a Stage-2 rule; which stage reads the predictor
    follows from its rule. Without a Stage 2 (`NO_STAGE2`), Stage 1 spends the whole budget."""

    stage1: RootRule
    stage2: PrefixRule

    @property
    def roots_by_predictor(self) -> bool:
        return self.stage1.by_predictor

    @property
    def prefixes_by_predictor(self) -> bool:
        return self.stage2.by_predictor

    def roots(
        self,
        predicted: Sequence[float],
        config: AllocatorConfig,
        rng: np.random.Generator,
        mixedness: Sequence[float] | None = None,
    ) -> RootPlan:
        budget = config.budget if self.stage2 is NO_STAGE2 else config.stage1_budget
        return self.stage1.plan(predicted, budget, config, rng, mixedness)

    def prefixes(
        self, stage2: Stage2Input, budget: int, config: AllocatorConfig, rng: np.random.Generator
    ) -> PrefixPlan:
        return self.stage2.plan(stage2, budget, config, rng)


# name -> (Stage-1 rule, Stage-2 rule); the module docstring says what each is
RULES: dict[str, tuple[RootRule, PrefixRule]] = {
    "uniform": (UNIFORM_GROUPS, NO_STAGE2),
    "prompt_only": (PREDICTED_SPLIT, NO_STAGE2),
    "dynamic_sampling": (UNIFORM_GROUPS, FRESH_GROUPS),
    "random_branch": (UNIFORM_GROUPS, RANDOM_PREFIXES),
    "trace": (PREDICTED_SPLIT, GREEDY_PREFIXES),
    "active_roots": (PREDICTED_SPLIT, RANDOM_PREFIXES),
    "active_prefixes": (UNIFORM_GROUPS, GREEDY_PREFIXES),
}
for _name, (_stage1, _stage2) in RULES.items():
    ALLOCATORS.register(_name)(functools.partial(TwoStageAllocator, _stage1, _stage2))
