"""How close does an allocator get to the best possible? The oracle study on the known-probability task.

Per iteration, on a fresh candidate pool of the simulated task (`simulated.py`):
1. the allocator plans Stage 1 with its predictor's v, and the oracle (the same allocator fed the
   true probabilities) plans it with the true v;
2. the allocator's bare rollouts are simulated; both plan Stage 2 on those same trees, with
   predicted and with true p;
3. each plan is scored by its expected number of mixed groups under the true probabilities,
       E = sum_i V_root(v*_i, m_i) + sum_j V_pref(p*_j, r_j, k_j),
   and uniform's plan (G per prompt, no Stage 2) is scored the same way;
4. the continuations are simulated, the trees backed up, and the predictor refitted on them.
The realised effective ratio of the allocator's and of uniform's own trees is reported beside it.

Deviations:
1. The oracle's Stage 2 is planned on the allocator's bare rollouts, not on its own (so both are
   scored on the same anchors).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from trace_core.method.allocation import prefix_value, root_value
from trace_core.method.allocators import (
    Allocator,
    AllocatorConfig,
    PrefixPlan,
    RootPlan,
    Stage2Input,
    make_allocator,
)
from trace_core.method.mlp_predictor import SuccessPredictor
from trace_core.method.predictor import PredictorConfig
from trace_core.method.sampling import (
    effective_ratio,
    node_examples,
    predict_nodes,
    stage1_expansions,
    stage2_expansions,
    stage2_input,
)
from trace_core.method.tree import RolloutTree, backup, with_predictions
from trace_core.sim.simulated import KnownProbabilityTask, SimPrompt


@dataclass(frozen=True)
class OracleIteration:
    iteration: int
    expected: float  # the allocator's expected mixed groups, true probabilities
    oracle: float  # the oracle's
    uniform: float  # uniform's (Stage 1 only)
    effective_ratio: float  # realised, the allocator's trees
    uniform_effective_ratio: float  # realised, uniform's trees on the same pool
    predictor_fitted: bool

    @property
    def share(self) -> float:
        return self.expected / self.oracle if self.oracle > 0 else 1.0


def _true_stage2(task: KnownProbabilityTask, trees: list[RolloutTree], stage2: Stage2Input) -> Stage2Input:
    """The same Stage-2 candidates with true probabilities (a mixed root keeps its no-gain marker)."""
    anchors = tuple(replace(a, p=task.true_value(trees[a.tree], a.node_id)) for a in stage2.anchors)
    roots = tuple(
        a if trees[a.tree].is_mixed() else replace(a, p=task.true_value(trees[a.tree], 0)) for a in stage2.roots
    )
    return Stage2Input(anchors, roots, stage2.unused, tuple(task.true_value(trees[i], 0) for i in stage2.unused))


def _score(v_true: np.ndarray, truth2: Stage2Input, counts: tuple[int, ...], plan2: PrefixPlan) -> float:
    """Expected mixed groups of a plan under the true probabilities."""
    true_anchor = {(a.tree, a.node_id): a for a in truth2.anchors + truth2.roots}
    total = sum(root_value(float(v_true[i]), m) for i, m in enumerate(counts))
    for a, k in zip(plan2.anchors, plan2.counts, strict=True):
        t = true_anchor[(a.tree, a.node_id)]
        total += prefix_value(t.p, t.r, k)
    total += sum(root_value(float(v_true[c]), m) for c, m in plan2.new_roots)
    return total


def _uniform_run(
    uniform: Allocator,
    task: KnownProbabilityTask,
    pool: list[SimPrompt],
    v_true: np.ndarray,
    config: AllocatorConfig,
    rng: np.random.Generator,
) -> tuple[RootPlan, list[RolloutTree]]:
    """Uniform's Stage-1 plan for the pool and the fresh trees it grows."""
    plan = uniform.roots(v_true.tolist(), config, rng)
    trees = [task.new_tree(p) for p in pool]
    task.grow(trees, stage1_expansions(plan), rng, "stage1")
    return plan, trees


def _refit(predictor: SuccessPredictor, iteration: int, trees: list[RolloutTree], task: KnownProbabilityTask) -> None:
    """Back up the grown trees, add their node examples to the predictor and refit it."""
    for tree in trees:
        backup(tree)
    x, t, w, nodes = node_examples(trees, task)
    predictor.add(iteration, x, t, w, [trees[i].record.id for i, _ in nodes])
    predictor.fit()


def oracle_study(
    allocator_name: str,
    task: KnownProbabilityTask,
    config: AllocatorConfig,
    iterations: int,
    pool_size: int,
    predictor_config: PredictorConfig = PredictorConfig(),
    seed: int = 0,
    true_probabilities: bool = False,
) -> list[OracleIteration]:
    """Run `iterations` of allocation on the simulated task; see the module docstring."""
    rng = np.random.default_rng(seed)
    allocator = make_allocator(allocator_name)
    uniform = make_allocator("uniform")
    predictor = SuccessPredictor(task.dim, predictor_config)
    out = []
    for it in range(iterations):
        pool = [task.prompts[i] for i in rng.choice(len(task.prompts), pool_size, replace=False)]
        trees = [task.new_tree(p) for p in pool]
        roots = [(i, 0) for i in range(len(trees))]
        v_true = np.array([task.true_value(t, 0) for t in trees])
        if true_probabilities:
            v = v_true
        else:
            v = predict_nodes(trees, roots, predictor, task)
            trees = with_predictions(trees, roots, v)
        plan1 = allocator.roots(v.tolist(), config, rng)
        oracle1 = allocator.roots(v_true.tolist(), config, rng)
        task.grow(trees, stage1_expansions(plan1), rng, "stage1")
        trees, stage2 = stage2_input(trees, plan1, allocator, predictor, task)
        truth2 = _true_stage2(task, trees, stage2)
        plan2 = allocator.prefixes(truth2 if true_probabilities else stage2, config.budget - plan1.leaves, config, rng)
        oracle2 = allocator.prefixes(truth2, config.budget - oracle1.leaves, config, rng)
        uniform_plan, uniform_trees = _uniform_run(uniform, task, pool, v_true, config, rng)
        task.grow(trees, stage2_expansions(plan2), rng, "stage2")
        fitted = predictor.fitted
        _refit(predictor, it, trees, task)
        out.append(
            OracleIteration(
                iteration=it,
                expected=_score(v_true, truth2, plan1.counts, plan2),
                oracle=_score(v_true, truth2, oracle1.counts, oracle2),
                uniform=sum(root_value(float(v_true[i]), m) for i, m in enumerate(uniform_plan.counts)),
                effective_ratio=effective_ratio(trees),
                uniform_effective_ratio=effective_ratio(uniform_trees),
                predictor_fitted=fitted,
            )
        )
    return out
