"""The stages of one training iteration, each a retried, idempotent Prefect task.

Each task loads its inputs from the rollout store (and the in-memory policy and predictor), calls
trace_core, and commits its outputs with its completion marker through `run_stage` (context.py).
`STAGE_TASKS` lists them in the order the flow (training.py) runs them.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.checkpoints import write_atomic
from flows.context import (
    Grown,
    TrainContext,
    checkpoint_path,
    fresh_generation,
    grow_stage,
    policy_state,
    restore,
    run_stage,
    stage_rng,
)
from flows.sections import STAGES
from flows.settings import Settings
from store.writer import CheckpointRecord, StageWriter
from trace_core.method.advantages import ADVANTAGES, nonzero_share
from trace_core.method.headroom import PoolSample, ledger, measure_pool
from trace_core.method.loss import build_sequences, policy_update
from trace_core.method.predictor import quality
from trace_core.method.rollout import new_trees, rollout_batch
from trace_core.method.sampling import (
    effective_ratio,
    learn_iteration,
    node_examples,
    plan_stage1,
    plan_stage2,
    predict_nodes,
    stage1_expansions,
    stage2_expansions,
    stage2_input,
)
from trace_core.method.tree import RolloutTree, allocation_outcomes, backup
from trace_core.search_agent.evaluation import score_trees


def _rollout_metrics(grown: Grown, tokens_key: str, hit_rate_key: str) -> dict[str, float]:
    trees, hit_rate = grown
    metrics = {tokens_key: float(sum(n.generated_tokens for t in trees for n in t))}
    if hit_rate is not None:
        metrics[hit_rate_key] = hit_rate
    return metrics


@task(name="allocate-roots", task_run_name="allocate-roots-it{it}", cache_policy=NO_CACHE)
def allocate_roots(ctx: TrainContext, it: int) -> None:
    rng = stage_rng(ctx, it, "allocate_roots")

    def compute() -> tuple[list[RolloutTree], Any]:
        train = ctx.runtime.data.train
        picks = rng.choice(len(train), min(ctx.s.trace.pool_size, len(train)), replace=False)
        trees = new_trees([train[i] for i in picks], ctx.runtime.env)
        return trees, plan_stage1(trees, ctx.allocator, ctx.allocator_config, ctx.predictor, ctx.featurizer, rng)

    def write(w: StageWriter, out: tuple[list[RolloutTree], Any]) -> None:
        trees, plan = out
        prior = ctx.predictor_config.prior
        w.root_plan([t.record for t in trees], [_or(t.root.predicted, prior) for t in trees], plan)
        w.stage_metrics(
            {
                "alloc/stage1_leaves": plan.leaves,
                "alloc/stage1_prompts": sum(m > 0 for m in plan.counts),
                "alloc/expected_mixed_stage1": plan.expected_mixed,
            }
        )

    run_stage(ctx, it, "allocate_roots", compute, write)


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


@task(name="roll-out-roots", task_run_name="roll-out-roots-it{it}", cache_policy=NO_CACHE)
def roll_out_roots(ctx: TrainContext, it: int) -> None:
    def compute() -> Grown:
        pool, predicted, plan = ctx.store.load_root_plan(ctx.run_id, it)
        trees = new_trees(pool, ctx.runtime.env)
        if ctx.allocator.roots_by_predictor:
            for tree, v in zip(trees, predicted, strict=True):
                tree.set(replace(tree.root, predicted=v))
        return trees, grow_stage(ctx, it, "roll_out_roots", trees, stage1_expansions(plan), "stage1")

    def write(w: StageWriter, grown: Grown) -> None:
        w.trees(grown[0], ctx.s.trace.allocator)
        metrics = _rollout_metrics(grown, "rollout/stage1_generated_tokens", "rollout/stage1_prefix_cache_hit_rate")
        # what Stage 1 bought, beside what its plan expected (alloc/expected_mixed_stage1)
        metrics["rollout/stage1_mixed_groups"] = float(sum(t.is_mixed() for t in grown[0]))
        w.stage_metrics(metrics)

    run_stage(ctx, it, "roll_out_roots", compute, write)


@task(name="allocate-prefixes", task_run_name="allocate-prefixes-it{it}", cache_policy=NO_CACHE)
def allocate_prefixes(ctx: TrainContext, it: int) -> None:
    rng = stage_rng(ctx, it, "allocate_prefixes")

    def compute() -> tuple[list[RolloutTree], Any, dict[int, float]]:
        trees = ctx.store.load_trees(ctx.run_id, it)
        _, predicted, plan1 = ctx.store.load_root_plan(ctx.run_id, it)
        s2 = stage2_input(trees, plan1, ctx.allocator, ctx.predictor, ctx.featurizer)
        plan2 = plan_stage2(s2, plan1, ctx.allocator, ctx.allocator_config, rng)
        unused = {i: predicted[i] for i in s2.unused}
        return trees, plan2, unused

    def write(w: StageWriter, out: tuple[list[RolloutTree], Any, dict[int, float]]) -> None:
        trees, plan2, unused = out
        w.prefix_plan(plan2, unused)
        w.trees(trees, ctx.s.trace.allocator)  # keeps the anchors' predictions made at allocation time
        w.stage_metrics(
            {
                "alloc/stage2_leaves": plan2.leaves,
                "alloc/anchors": len(plan2.anchors),
                "alloc/expected_mixed_stage2": plan2.expected_mixed,
            }
        )

    run_stage(ctx, it, "allocate_prefixes", compute, write)


@task(name="roll-out-prefixes", task_run_name="roll-out-prefixes-it{it}", cache_policy=NO_CACHE)
def roll_out_prefixes(ctx: TrainContext, it: int) -> None:
    def compute() -> Grown:
        trees = ctx.store.load_trees(ctx.run_id, it)
        expansions = stage2_expansions(ctx.store.load_prefix_plan(ctx.run_id, it))
        return trees, grow_stage(ctx, it, "roll_out_prefixes", trees, expansions, "stage2")

    def write(w: StageWriter, grown: Grown) -> None:
        w.trees(grown[0], ctx.s.trace.allocator)
        w.stage_metrics(_rollout_metrics(grown, "rollout/all_generated_tokens", "rollout/stage2_prefix_cache_hit_rate"))

    run_stage(ctx, it, "roll_out_prefixes", compute, write)


@task(name="back-up", task_run_name="back-up-it{it}", cache_policy=NO_CACHE)
def back_up(ctx: TrainContext, it: int) -> None:
    def compute() -> list[RolloutTree]:
        trees = ctx.store.load_trees(ctx.run_id, it)
        for tree in trees:
            backup(tree)
        return trees

    def write(w: StageWriter, trees: list[RolloutTree]) -> None:
        w.trees(trees, ctx.s.trace.allocator)
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

    run_stage(ctx, it, "back_up", compute, write)


def headroom_due(s: Settings, it: int) -> bool:
    return s.headroom.every > 0 and it % s.headroom.every == 0


@task(name="measure-headroom", task_run_name="measure-headroom-it{it}", cache_policy=NO_CACHE)
def measure_headroom(ctx: TrainContext, it: int) -> None:
    """The oracle ledger of this iteration's pool (trace_core/method/headroom.py). Runs before the
    predictor's refit and the policy's update, so both are the ones that allocated the pool; its
    rollouts come from their own random stream and are stored apart from the trees: they never
    reach the predictor, the update or any later stage's randomness."""

    def compute() -> tuple[list[Any], list[PoolSample], dict[str, float]]:
        pool, _, plan = ctx.store.load_root_plan(ctx.run_id, it)
        trees = new_trees(pool, ctx.runtime.env)
        predicted = predict_nodes(trees, [(i, 0) for i in range(len(trees))], ctx.predictor, ctx.featurizer)
        fresh_generation(ctx, it, "measure_headroom")
        half = ctx.s.headroom.samples // 2
        sampling = ctx.runtime.env.config.sampling()
        samples = measure_pool(
            pool, predicted.tolist(), plan.counts, half, ctx.runtime.backend, ctx.runtime.env, sampling
        )
        metrics = ledger(samples, ctx.s.trace.group_size, ctx.s.trace.max_per_prompt).metrics()
        # the predictor against the measured success of the whole pool: no range restriction to the
        # prompts an allocator chose
        rates = np.array([(m.successes_first + m.successes_second) / (2 * half) for m in samples])
        q = quality(np.asarray(predicted), rates, np.full(len(samples), 2.0 * half))
        metrics.update(
            {
                "headroom/pool_auc": q.auc,
                "headroom/pool_brier": q.brier,
                "headroom/pool_ece": q.ece,
                "headroom/pool_success": float(rates.mean()) if len(rates) else float("nan"),
            }
        )
        return pool, samples, metrics

    def write(w: StageWriter, out: tuple[list[Any], list[PoolSample], dict[str, float]]) -> None:
        pool, samples, metrics = out
        w.headroom(pool, samples)
        w.stage_metrics(metrics)

    run_stage(ctx, it, "measure_headroom", compute, write)


@task(name="refit-predictor", task_run_name="refit-predictor-it{it}", cache_policy=NO_CACHE)
def refit_predictor(ctx: TrainContext, it: int) -> None:
    if "predictor" in ctx.dirty:  # an earlier attempt changed it in memory: start from the committed one
        restore(ctx, "predictor")

    def compute() -> tuple[Any, Any, CheckpointRecord]:
        trees = ctx.store.load_trees(ctx.run_id, it)
        before = {kind: quality(*allocation_outcomes(trees, kind)) for kind in ("all", "root", "anchor")}
        ctx.dirty.add("predictor")
        fit = learn_iteration(ctx.predictor, ctx.featurizer, it, trees, ctx.s.predictor.targets)
        if fit is None:  # a backed-up iteration always has its bare rollouts' roots
            raise RuntimeError(f"iteration {it} gave the predictor no examples")
        path = checkpoint_path(ctx, "predictor", it)
        return before, fit, CheckpointRecord("predictor", str(path), write_atomic(ctx.predictor.state_dict(), path))

    def write(w: StageWriter, out: tuple[Any, Any, CheckpointRecord]) -> None:
        before, fit, record = out
        w.predictor_fit(fit, before["all"])
        w.checkpoint(record)
        # quality at allocation time, scored on the bare rollouts that followed: all predicted nodes,
        # then roots (Stage 1's v) and anchors (Stage 2's p) apart
        metrics = {"predictor/fit_loss": fit.loss, "predictor/fit_steps": fit.steps}
        for kind, q in before.items():
            prefix = "predictor/" if kind == "all" else f"predictor/{kind}_"
            metrics.update({f"{prefix}brier": q.brier, f"{prefix}auc": q.auc, f"{prefix}ece": q.ece})
            if kind != "all":
                metrics.update({f"{prefix}mean_predicted": q.mean_predicted, f"{prefix}mean_outcome": q.mean_target})
        w.stage_metrics(metrics)

    run_stage(ctx, it, "refit_predictor", compute, write)
    ctx.dirty.discard("predictor")


@task(name="update-policy", task_run_name="update-policy-it{it}", cache_policy=NO_CACHE)
def update_policy(ctx: TrainContext, it: int) -> None:
    if "policy" in ctx.dirty:
        restore(ctx, "policy")

    def compute() -> tuple[Any, float, CheckpointRecord]:
        trees = ctx.store.load_trees(ctx.run_id, it)
        paths = ADVANTAGES.get(ctx.s.trace.advantage)(trees)
        rows = build_sequences(trees, paths, keep_zero=ctx.policy_config.kl_coef > 0)
        pad = ctx.runtime.env.tokenizer.pad_token_id or 0
        ctx.dirty.add("policy")
        stats = policy_update(ctx.policy, ctx.optimizer, rows, ctx.policy_config, pad, it, ctx.reference)
        ctx.adapter_version += 1
        path = checkpoint_path(ctx, "policy", it)
        return (
            stats,
            nonzero_share(paths),
            CheckpointRecord("policy", str(path), write_atomic(policy_state(ctx), path)),
        )

    def write(w: StageWriter, out: tuple[Any, float, CheckpointRecord]) -> None:
        stats, nonzero, record = out
        w.policy_update(stats, ctx.adapter_version)
        w.checkpoint(record)
        w.stage_metrics(
            {
                "policy/loss": stats.loss,
                "policy/kl": stats.kl,
                "policy/clip_fraction": stats.clip_fraction,
                "policy/grad_norm": stats.grad_norm,
                "policy/learning_rate": stats.learning_rate,
                "policy/tokens": stats.tokens,
                "policy/adapter_version": ctx.adapter_version,
                "rollout/nonzero_advantage_share": nonzero,
            }
        )

    run_stage(ctx, it, "update_policy", compute, write)
    ctx.dirty.discard("policy")
    ctx.runtime.backend.sync_weights(ctx.policy)  # every later generation samples the updated policy


def dev_evaluation(ctx: TrainContext, it: int) -> dict[str, float]:
    """Dev accuracy (avg@n EM and F1 at temperature 1) and, on the same held-out trees, the
    predictor's quality: these questions are never trained on."""
    s = ctx.s
    records = ctx.runtime.data.dev[: s.train.eval_questions]
    fresh_generation(ctx, it, "evaluate")
    sampling = ctx.runtime.env.config.sampling(1.0)
    trees = rollout_batch(records, s.train.eval_samples, ctx.runtime.backend, ctx.runtime.env, sampling)
    report = score_trees(trees, s.train.eval_samples)
    out = {"eval/em": report.em, "eval/f1": report.f1, "eval/mixed_share": report.mixed / len(records)}
    if ctx.predictor.fitted:
        for tree in trees:
            backup(tree)
        _, target, weight, nodes = node_examples(trees, ctx.featurizer)
        q = quality(predict_nodes(trees, nodes, ctx.predictor, ctx.featurizer), target, weight)
        out.update({"predictor/dev_brier": q.brier, "predictor/dev_auc": q.auc, "predictor/dev_ece": q.ece})
    return out


def _eval_due(s: Settings, it: int) -> bool:
    return it < 0 or (it + 1) % s.train.eval_every == 0 or it == s.train.iterations - 1


@task(name="evaluate", task_run_name="evaluate-it{it}", cache_policy=NO_CACHE)
def evaluate(ctx: TrainContext, it: int) -> dict[str, Any]:
    def compute() -> dict[str, Any]:
        metrics = {k: v for k, v in ctx.store.stage_metrics(ctx.run_id, it).items() if v is not None}
        if _eval_due(ctx.s, it):
            metrics.update(dev_evaluation(ctx, it))
        return metrics

    def write(w: StageWriter, metrics: dict[str, Any]) -> None:
        w.iteration_metrics(metrics)
        w.stage_metrics({k: v for k, v in metrics.items() if k.startswith("eval/") or "/dev_" in k})

    metrics = run_stage(ctx, it, "evaluate", compute, write)
    _publish_artifact(ctx, it, metrics)
    return metrics


def _publish_artifact(ctx: TrainContext, it: int, metrics: dict[str, Any]) -> None:
    rows = "\n".join(f"| `{k}` | {v:.4g} |" for k, v in sorted(metrics.items()) if isinstance(v, (int, float)))
    key = "".join(c if c.isalnum() else "-" for c in f"{ctx.s.run.name}-iteration-{it}".lower())
    create_markdown_artifact(
        markdown=f"### {ctx.s.run.name}, iteration {it}\n\n| metric | value |\n|---|---|\n{rows}",
        key=key,
        description=f"trace-rl metrics, iteration {it}",
    )


@task(name="checkpoint", task_run_name="checkpoint-it{it}", cache_policy=NO_CACHE)
def checkpoint(ctx: TrainContext, it: int) -> None:
    """Publish the current policy as a model directory (`runs/<name>/policy`) and drop older
    checkpoint files, keeping the two newest of each kind."""

    def compute() -> CheckpointRecord:
        target = ctx.run_dir / "policy"
        tmp = ctx.run_dir / "policy.partial"
        ctx.policy.save_pretrained(tmp)
        ctx.runtime.env.tokenizer.save_pretrained(tmp)
        digest = _directory_digest(tmp)
        if target.exists() or target.is_symlink():
            _remove_tree(target, ctx.run_dir)
        tmp.replace(target)
        _prune(ctx)
        return CheckpointRecord("export", str(target), digest)

    def write(w: StageWriter, record: CheckpointRecord) -> None:
        w.checkpoint(record)

    run_stage(ctx, it, "checkpoint", compute, write)


def _directory_digest(directory: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _remove_tree(path: Path, run_dir: Path) -> None:
    """Delete the run's previous export; never anything outside the run's own folder (a symlink
    placed there is unlinked, not followed)."""
    import shutil

    if path.is_symlink():
        path.unlink()
        return
    if path.resolve().parent != run_dir.resolve():
        raise RuntimeError(f"refusing to delete {path}: it is not inside the run's folder {run_dir}")
    shutil.rmtree(path)


def _prune(ctx: TrainContext) -> None:
    for kind in ("policy", "predictor"):
        keep = {Path(r.location) for _, r in ctx.store.checkpoints(ctx.run_id, kind)[-2:]}
        for path in (ctx.run_dir / "checkpoints").glob(f"{kind}-*.pt"):
            if path not in keep:
                path.unlink(missing_ok=True)


STAGE_TASKS: dict[str, Any] = {
    "allocate_roots": allocate_roots,
    "roll_out_roots": roll_out_roots,
    "allocate_prefixes": allocate_prefixes,
    "roll_out_prefixes": roll_out_prefixes,
    "back_up": back_up,
    "measure_headroom": measure_headroom,
    "refit_predictor": refit_predictor,
    "update_policy": update_policy,
    "evaluate": evaluate,
    "checkpoint": checkpoint,
}
assert tuple(STAGE_TASKS) == STAGES
