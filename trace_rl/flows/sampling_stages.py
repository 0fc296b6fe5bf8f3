"""The sampling stages of a training iteration: plan and grow Stage 1 and Stage 2, back up.

Each is a retried, idempotent Prefect task: it loads its inputs from the rollout store (and the
in-memory policy and predictor), calls trace_core, and commits its outputs with its completion
marker through `run_stage` (context.py). The stage table (stages.py) lists every stage in the order
the flow (training.py) runs them.
"""

from __future__ import annotations

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from trace_core.method.allocators import PrefixPlan, RootPlan
from trace_core.method.headroom import PoolSample, measured_stage1, pool_quality
from trace_core.method.rollout import new_trees
from trace_core.method.sampling import (
    effective_ratio,
    plan_stage1,
    plan_stage2,
    stage1_expansions,
    stage2_expansions,
    stage2_input,
)
from trace_core.method.tree import RolloutTree, backed_up
from trace_rl.flows.context import (
    Grown,
    Stage,
    TrainContext,
    fresh_generation,
    grow_stage,
    run_stage,
    stage_rng,
)
from trace_rl.store.writer import StageWriter

# the oracle control's random stream (`trace.oracle_samples`), inside allocate_roots: one of the stage
# table's numbers (stages.py), never reused
ORACLE_ROOTS_STREAM = 10


def _rollout_metrics(grown: Grown, tokens_key: str, hit_rate_key: str) -> dict[str, float]:
    trees, hit_rate = grown
    metrics = {tokens_key: float(sum(n.generated_tokens for t in trees for n in t))}
    if hit_rate is not None:
        metrics[hit_rate_key] = hit_rate
    return metrics


@task(name="allocate-roots", task_run_name="allocate-roots-it{it}", cache_policy=NO_CACHE)
def allocate_roots(ctx: TrainContext, it: int, stage: Stage) -> None:
    """Draw the candidate pool, predict, plan Stage 1; store the pool's trees (roots carrying the
    predictions made here) and the plan."""
    rng = stage_rng(ctx, it, stage)

    def compute() -> tuple[list[RolloutTree], RootPlan, list[PoolSample]]:
        train = ctx.runtime.data.train
        picks = rng.choice(len(train), min(ctx.spec.sampling.pool_size, len(train)), replace=False)
        trees = new_trees([train[i] for i in picks], ctx.runtime.env)
        if not ctx.spec.sampling.oracle_samples:
            return *plan_stage1(trees, ctx.allocator, ctx.spec.sampling.config, ctx.predictor, ctx.featurizer, rng), []
        # the oracle control: its own random stream, so the stages after it sample what they would without it
        fresh_generation(ctx, it, ORACLE_ROOTS_STREAM)
        env = ctx.runtime.env
        return measured_stage1(
            trees,
            ctx.allocator,
            ctx.spec.sampling.config,
            ctx.predictor,
            ctx.featurizer,
            rng,
            ctx.spec.sampling.oracle_samples // 2,
            ctx.runtime.backend,
            env,
            env.config.sampling(),
        )

    def write(w: StageWriter, out: tuple[list[RolloutTree], RootPlan, list[PoolSample]]) -> None:
        trees, plan, measured = out
        prior = ctx.spec.prediction.config.prior
        w.root_plan([t.record for t in trees], [_or(t.root.predicted, prior) for t in trees], plan)
        w.trees(trees, ctx.spec.sampling.allocator)
        metrics = {
            "alloc/stage1_leaves": plan.leaves,
            "alloc/stage1_prompts": sum(m > 0 for m in plan.counts),
            "alloc/expected_mixed_stage1": plan.expected_mixed,
        }
        if measured:
            w.headroom([t.record for t in trees], measured)
            metrics.update(pool_quality(measured))
        w.stage_metrics(metrics)

    run_stage(ctx, it, stage, compute, write)


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


@task(name="roll-out-roots", task_run_name="roll-out-roots-it{it}", cache_policy=NO_CACHE)
def roll_out_roots(ctx: TrainContext, it: int, stage: Stage) -> None:
    """Grow the stored pool trees by the Stage-1 plan."""

    def compute() -> Grown:
        trees = ctx.store.load_trees(ctx.run_id, it)
        _, _, plan = ctx.store.load_root_plan(ctx.run_id, it)
        return trees, grow_stage(ctx, it, stage, trees, stage1_expansions(plan), "stage1")

    def write(w: StageWriter, grown: Grown) -> None:
        w.trees(grown[0], ctx.spec.sampling.allocator)
        metrics = _rollout_metrics(grown, "rollout/stage1_generated_tokens", "rollout/stage1_prefix_cache_hit_rate")
        # what Stage 1 bought, beside what its plan expected (alloc/expected_mixed_stage1)
        metrics["rollout/stage1_mixed_groups"] = float(sum(t.is_mixed() for t in grown[0]))
        w.stage_metrics(metrics)

    run_stage(ctx, it, stage, compute, write)


@task(name="allocate-prefixes", task_run_name="allocate-prefixes-it{it}", cache_policy=NO_CACHE)
def allocate_prefixes(ctx: TrainContext, it: int, stage: Stage) -> None:
    """Predict p for every anchor of the bare rollouts, plan Stage 2; store the plan and the trees
    with the anchors' predictions."""
    rng = stage_rng(ctx, it, stage)

    def compute() -> tuple[list[RolloutTree], PrefixPlan, dict[int, float]]:
        _, predicted, plan1 = ctx.store.load_root_plan(ctx.run_id, it)
        trees, s2 = stage2_input(
            ctx.store.load_trees(ctx.run_id, it), plan1, ctx.allocator, ctx.predictor, ctx.featurizer
        )
        plan2 = plan_stage2(s2, plan1, ctx.allocator, ctx.spec.sampling.config, rng)
        return trees, plan2, {i: predicted[i] for i in s2.unused}

    def write(w: StageWriter, out: tuple[list[RolloutTree], PrefixPlan, dict[int, float]]) -> None:
        trees, plan2, unused = out
        w.prefix_plan(plan2, unused)
        w.trees(trees, ctx.spec.sampling.allocator)
        w.stage_metrics(
            {
                "alloc/stage2_leaves": plan2.leaves,
                "alloc/anchors": len(plan2.anchors),
                "alloc/expected_mixed_stage2": plan2.expected_mixed,
            }
        )

    run_stage(ctx, it, stage, compute, write)


@task(name="roll-out-prefixes", task_run_name="roll-out-prefixes-it{it}", cache_policy=NO_CACHE)
def roll_out_prefixes(ctx: TrainContext, it: int, stage: Stage) -> None:
    def compute() -> Grown:
        trees = ctx.store.load_trees(ctx.run_id, it)
        expansions = stage2_expansions(ctx.store.load_prefix_plan(ctx.run_id, it))
        return trees, grow_stage(ctx, it, stage, trees, expansions, "stage2")

    def write(w: StageWriter, grown: Grown) -> None:
        w.trees(grown[0], ctx.spec.sampling.allocator)
        w.stage_metrics(_rollout_metrics(grown, "rollout/all_generated_tokens", "rollout/stage2_prefix_cache_hit_rate"))

    run_stage(ctx, it, stage, compute, write)


@task(name="back-up", task_run_name="back-up-it{it}", cache_policy=NO_CACHE)
def back_up(ctx: TrainContext, it: int, stage: Stage) -> None:
    def compute() -> list[RolloutTree]:
        return [backed_up(tree) for tree in ctx.store.load_trees(ctx.run_id, it)]

    def write(w: StageWriter, trees: list[RolloutTree]) -> None:
        w.trees(trees, ctx.spec.sampling.allocator)
        leaves = [leaf for t in trees for leaf in t.leaves()]
        w.stage_metrics(
            {
                "rollout/trees": sum(1 for t in trees if t.leaves()),
                "rollout/leaves": len(leaves),
                "rollout/generated_tokens": sum(n.generated_tokens for t in trees for n in t),
                "rollout/mean_reward": float(np.mean([leaf.reward or 0.0 for leaf in leaves])) if leaves else 0.0,
                "rollout/effective_ratio": effective_ratio(trees),
            }
        )

    run_stage(ctx, it, stage, compute, write)
