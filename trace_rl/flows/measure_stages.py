"""The measuring stages of a training iteration: the oracle ledger of the pool (`measure_headroom`)
and the dev evaluation (`evaluate`, with the predictor's held-out quality, storing each dev
question's per-sample outcomes as `eval_outcomes` rows of kind `in_flow`). Neither trains
anything: their rollouts never reach the predictor, the policy update or a later stage's
randomness."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from trace_core.method.evaluation import QuestionOutcome, score_trees
from trace_core.method.headroom import PoolSample, ledger, measure_pool, pool_quality
from trace_core.method.predictor import quality
from trace_core.method.rollout import new_trees, rollout_batch
from trace_core.method.sampling import (
    node_examples,
    predict_nodes,
)
from trace_core.method.tree import backed_up
from trace_rl.flows.context import (
    Stage,
    TrainContext,
    fresh_generation,
    run_stage,
)
from trace_rl.flows.run_spec import RunSpec
from trace_rl.store.writer import StageWriter

Evaluated = tuple[dict[str, Any], tuple[QuestionOutcome, ...]]  # the iteration's metrics, the dev outcomes


def headroom_due(spec: RunSpec, it: int) -> bool:
    return spec.headroom.due(it)


@task(name="measure-headroom", task_run_name="measure-headroom-it{it}", cache_policy=NO_CACHE)
def measure_headroom(ctx: TrainContext, it: int, stage: Stage) -> None:
    """The oracle ledger of this iteration's pool (trace_core/method/headroom.py). Runs before the
    predictor's refit and the policy's update, so both are the ones that allocated the pool; its
    rollouts come from their own random stream and are stored apart from the trees: they never
    reach the predictor, the update or any later stage's randomness."""

    def compute() -> tuple[list[Any], list[PoolSample], dict[str, float]]:
        pool, _, plan = ctx.store.load_root_plan(ctx.run_id, it)
        trees = new_trees(pool, ctx.runtime.env)
        predicted = predict_nodes(trees, [(i, 0) for i in range(len(trees))], ctx.predictor, ctx.featurizer)
        fresh_generation(ctx, it, stage.stream)
        half = ctx.spec.headroom.samples // 2
        sampling = ctx.runtime.env.config.sampling()
        samples = measure_pool(
            pool, predicted.tolist(), plan.counts, half, ctx.runtime.backend, ctx.runtime.env, sampling
        )
        config = ctx.spec.sampling.config
        metrics = ledger(samples, config.group_size, config.max_per_prompt).metrics()
        return pool, samples, {**metrics, **pool_quality(samples)}

    def write(w: StageWriter, out: tuple[list[Any], list[PoolSample], dict[str, float]]) -> None:
        pool, samples, metrics = out
        w.headroom(pool, samples)
        w.stage_metrics(metrics)

    run_stage(ctx, it, stage, compute, write)


def dev_evaluation(ctx: TrainContext, it: int, stream: int) -> tuple[dict[str, float], tuple[QuestionOutcome, ...]]:
    """Dev accuracy (avg@n EM and F1 at temperature 1) and, on the same held-out trees, the
    predictor's quality: these questions are never trained on. Also each rollout's outcome."""
    e = ctx.spec.evaluation
    records = ctx.runtime.data.dev[: e.questions]
    fresh_generation(ctx, it, stream)
    sampling = ctx.runtime.env.config.sampling(1.0)
    trees = rollout_batch(records, e.samples, ctx.runtime.backend, ctx.runtime.env, sampling)
    report = score_trees(trees, e.samples, ctx.f1)
    out = {"eval/em": report.em, "eval/f1": report.f1, "eval/mixed_share": report.mixed / len(records)}
    if len(report.by_source) > 1:  # e.g. BFCL's subsets
        out.update({f"eval/em_{source}": em for source, em in report.by_source})
    if ctx.predictor.fitted:
        trees = [backed_up(tree) for tree in trees]
        _, target, weight, nodes = node_examples(trees, ctx.featurizer)
        q = quality(predict_nodes(trees, nodes, ctx.predictor, ctx.featurizer), target, weight)
        out.update({"predictor/dev_brier": q.brier, "predictor/dev_auc": q.auc, "predictor/dev_ece": q.ece})
    return out, report.outcomes


@task(name="evaluate", task_run_name="evaluate-it{it}", cache_policy=NO_CACHE)
def evaluate(ctx: TrainContext, it: int, stage: Stage) -> dict[str, Any]:
    def compute() -> Evaluated:
        metrics = {k: v for k, v in ctx.store.stage_metrics(ctx.run_id, it).items() if v is not None}
        outcomes: tuple[QuestionOutcome, ...] = ()
        if ctx.spec.evaluation.due(it):
            dev, outcomes = dev_evaluation(ctx, it, stage.stream)
            metrics.update(dev)
        return metrics, outcomes

    def write(w: StageWriter, out: Evaluated) -> None:
        metrics, outcomes = out
        w.iteration_metrics(metrics)
        w.stage_metrics({k: v for k, v in metrics.items() if k.startswith("eval/") or "/dev_" in k})
        w.eval_outcomes("dev", outcomes)  # replaces an earlier attempt's rows (none when no evaluation was due)

    metrics, _ = run_stage(ctx, it, stage, compute, write)
    _publish_artifact(ctx, it, metrics)
    return metrics


def _publish_artifact(ctx: TrainContext, it: int, metrics: dict[str, Any]) -> None:
    rows = "\n".join(f"| `{k}` | {v:.4g} |" for k, v in sorted(metrics.items()) if isinstance(v, (int, float)))
    key = "".join(c if c.isalnum() else "-" for c in f"{ctx.spec.name}-iteration-{it}".lower())
    create_markdown_artifact(
        markdown=f"### {ctx.spec.name}, iteration {it}\n\n| metric | value |\n|---|---|\n{rows}",
        key=key,
        description=f"trace-rl metrics, iteration {it}",
    )
