"""The learning stages of a training iteration: refit the success predictor on the iteration's
backed-up trees, update the policy, and checkpoint both (with the export of the trained policy)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from trace_core.method.advantages import ADVANTAGES, nonzero_share
from trace_core.method.loss import UpdateStats, build_sequences, policy_update
from trace_core.method.predictor import FitReport, PredictorQuality, quality
from trace_core.method.sampling import learn_iteration
from trace_core.method.tree import allocation_outcomes
from trace_rl.flows.checkpoints import publish_directory, write_atomic
from trace_rl.flows.context import (
    Stage,
    TrainContext,
    checkpoint_path,
    restore_policy_if_dirty,
    restore_predictor_if_dirty,
    run_stage,
)
from trace_rl.store.writer import CheckpointRecord, StageWriter


@dataclass(frozen=True)
class Refit:
    """What `refit_predictor` commits: the predictor's quality at allocation time (by node kind:
    all, root, anchor), the fit, and the new predictor checkpoint."""

    before: dict[str, PredictorQuality]
    fit: FitReport
    checkpoint: CheckpointRecord


@dataclass(frozen=True)
class Update:
    """What `update_policy` commits: the update's statistics, the share of leaves with a non-zero
    advantage, and the new policy checkpoint."""

    stats: UpdateStats
    nonzero: float
    checkpoint: CheckpointRecord


@task(name="refit-predictor", task_run_name="refit-predictor-it{it}", cache_policy=NO_CACHE)
def refit_predictor(ctx: TrainContext, it: int, stage: Stage) -> None:
    restore_predictor_if_dirty(ctx)  # an earlier attempt changed it in memory: start from the committed one

    def compute() -> Refit:
        trees = ctx.store.load_trees(ctx.run_id, it)
        before = {kind: quality(*allocation_outcomes(trees, kind)) for kind in ("all", "root", "anchor")}
        ctx.predictor_dirty = True
        fit = learn_iteration(ctx.predictor, ctx.featurizer, it, trees, ctx.spec.prediction.targets)
        if fit is None:  # a backed-up iteration always has its bare rollouts' roots
            raise RuntimeError(f"iteration {it} gave the predictor no examples")
        path = checkpoint_path(ctx, "predictor", it)
        digest = write_atomic(ctx.predictor.state_dict(), path, ctx.store.fence)
        return Refit(before, fit, CheckpointRecord("predictor", str(path), digest))

    def write(w: StageWriter, out: Refit) -> None:
        before, fit = out.before, out.fit
        w.predictor_fit(fit, before["all"])
        w.checkpoint(out.checkpoint)
        # quality at allocation time, scored on the bare rollouts that followed: all predicted nodes,
        # then roots (Stage 1's v) and anchors (Stage 2's p) apart
        metrics = {"predictor/fit_loss": fit.loss, "predictor/fit_steps": fit.steps}
        for kind, q in before.items():
            prefix = "predictor/" if kind == "all" else f"predictor/{kind}_"
            metrics.update({f"{prefix}brier": q.brier, f"{prefix}auc": q.auc, f"{prefix}ece": q.ece})
            if kind != "all":
                metrics.update({f"{prefix}mean_predicted": q.mean_predicted, f"{prefix}mean_outcome": q.mean_target})
        w.stage_metrics(metrics)

    run_stage(ctx, it, stage, compute, write)
    ctx.predictor_dirty = False


@task(name="update-policy", task_run_name="update-policy-it{it}", cache_policy=NO_CACHE)
def update_policy(ctx: TrainContext, it: int, stage: Stage) -> None:
    restore_policy_if_dirty(ctx)
    learner = ctx.learner

    def compute() -> Update:
        trees = ctx.store.load_trees(ctx.run_id, it)
        paths = ADVANTAGES.get(ctx.spec.advantage)(trees)
        rows = build_sequences(trees, paths, keep_zero=ctx.learner.config.kl_coef > 0)
        pad = ctx.runtime.env.tokenizer.pad_token_id or 0
        learner.changing()
        stats = policy_update(learner.policy, learner.optimizer, rows, learner.config, pad, it, learner.reference)
        learner.version += 1
        path = checkpoint_path(ctx, "policy", it)
        digest = write_atomic(learner.state(), path, ctx.store.fence)
        return Update(stats, nonzero_share(paths), CheckpointRecord("policy", str(path), digest))

    def write(w: StageWriter, out: Update) -> None:
        stats, nonzero = out.stats, out.nonzero
        w.policy_update(stats, learner.version)
        w.checkpoint(out.checkpoint)
        w.stage_metrics(
            {
                "policy/loss": stats.loss,
                "policy/kl": stats.kl,
                "policy/clip_fraction": stats.clip_fraction,
                "policy/grad_norm": stats.grad_norm,
                "policy/learning_rate": stats.learning_rate,
                "policy/tokens": stats.tokens,
                "policy/adapter_version": learner.version,
                "rollout/nonzero_advantage_share": nonzero,
            }
        )

    run_stage(ctx, it, stage, compute, write)
    learner.committed()
    ctx.runtime.backend.sync_weights(learner.policy)  # every later generation samples the updated policy


@task(name="checkpoint", task_run_name="checkpoint-it{it}", cache_policy=NO_CACHE)
def checkpoint(ctx: TrainContext, it: int, stage: Stage) -> None:
    """Publish the current policy as a model directory (`runs/<name>/policy`) and drop older
    checkpoint files, keeping the two newest of each kind."""

    def compute() -> CheckpointRecord:
        target = ctx.spec.run_dir / "policy"

        def save(folder: Path) -> None:
            ctx.learner.policy.save_pretrained(folder)
            ctx.runtime.env.tokenizer.save_pretrained(folder)

        digest = publish_directory(save, target, ctx.store.fence)
        _prune(ctx)
        return CheckpointRecord("export", str(target), digest)

    def write(w: StageWriter, record: CheckpointRecord) -> None:
        w.checkpoint(record)

    run_stage(ctx, it, stage, compute, write)


def _prune(ctx: TrainContext) -> None:
    for kind in ("policy", "predictor"):
        keep = {Path(r.location) for _, r in ctx.store.checkpoints(ctx.run_id, kind)[-2:]}
        for path in (ctx.spec.run_dir / "checkpoints").glob(f"{kind}-*.pt"):
            if path not in keep:
                path.unlink(missing_ok=True)
