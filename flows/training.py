"""The training flow: each iteration is a sequence of retried, idempotent Prefect tasks.

    allocate_roots -> roll_out_roots -> allocate_prefixes -> roll_out_prefixes -> back_up
    -> [measure_headroom] -> refit_predictor -> update_policy -> evaluate -> checkpoint

(`measure_headroom` only at the iterations `headroom.every` names: measurement rollouts of the
pool, outside the training budget, by the policy and predictor that allocated it.)

Every task loads its inputs from the rollout store (and the in-memory policy and predictor),
calls trace_core, and commits its outputs together with its completion marker in one store
transaction. So:
- a task that fails and is retried starts again from the same stored inputs and replaces whatever
  a failed attempt could have written; the policy and predictor, which a failed attempt may have
  changed in memory, are restored from their last committed checkpoint first;
- a run started again with the same name (after a crash, even SIGKILL) skips the stages already
  committed and continues with the next one, from the latest checkpoints;
- every random choice of a stage comes from a generator seeded by (run seed, iteration, stage),
  and generation's prefix cache is emptied at the start of each rollout stage, so a replayed stage
  computes exactly what the first attempt would have.
Checkpoints (policy weights, optimizer and random states; predictor) are written atomically and
their sha256 is committed with the stage that produced them. The two rollout stages grow their trees
in `orchestration.rollout_shards` shards, in this process or as Prefect tasks on Ray (sharding.py).
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from transformers import PreTrainedModel

from flows.checkpoints import read_verified, write_atomic
from flows.pipeline import Log, Runtime, code_version, load_runtime, policy_config, settings_hash
from flows.settings import STAGE_STREAMS, STAGES, Settings, SettingsError, flow_overrides, load_settings
from flows.sharding import LocalShards, ShardRunner, shard_runner
from store.db import render_url
from store.store import CheckpointRecord, RolloutStore, StageWriter
from trace_core.atomic import write_text_atomic
from trace_core.method.advantages import ADVANTAGES, nonzero_share
from trace_core.method.allocators import AllocatorConfig, make_allocator
from trace_core.method.headroom import PoolSample, ledger, measure_pool
from trace_core.method.loss import build_sequences, freeze_copy, make_optimizer, policy_update, wrap_policy
from trace_core.method.predictor import PredictorConfig, make_predictor, quality
from trace_core.method.rollout import Expansion, new_trees, rollout_batch
from trace_core.method.sampling import (
    effective_ratio,
    learn_history,
    learn_iteration,
    node_examples,
    plan_stage1,
    plan_stage2,
    predict_nodes,
    stage1_expansions,
    stage2_expansions,
    stage2_input,
)
from trace_core.method.tree import Origin, RolloutTree, allocation_outcomes, backup
from trace_core.search_agent.evaluation import score_trees
from trace_core.search_agent.features import SearchAgentFeaturizer, TextEncoder

T = TypeVar("T")


class InjectedFault(RuntimeError):
    """A failure requested by `orchestration.fail_once` (for testing retries and resumption)."""


class TrainContext:
    """What lives across stages of one run (a plain class: Prefect passes it to tasks untouched)."""

    def __init__(self, s: Settings, store: RolloutStore, run_id: int, runtime: Runtime, log: Log) -> None:
        self.s, self.store, self.run_id, self.runtime, self.log = s, store, run_id, runtime, log
        t, p = s.trace, s.policy
        self.allocator = make_allocator(t.allocator)
        self.allocator_config = AllocatorConfig(t.budget, t.stage1_share, t.group_size, t.max_per_prompt,
                                                t.max_per_anchor)  # fmt: skip
        self.policy_config = policy_config(s)
        # full fine-tuning with a KL penalty needs a frozen copy of the starting policy as reference
        self.reference = freeze_copy(runtime.model) if p.kl_coef > 0 and not s.uses_lora() else None
        self.policy: PreTrainedModel = wrap_policy(runtime.model, self.policy_config)
        self.optimizer = make_optimizer(self.policy, self.policy_config)
        self.featurizer = SearchAgentFeaturizer(TextEncoder(device=s.model.device), s.agent.max_turns)
        q = s.predictor
        self.predictor_config = PredictorConfig(
            q.prior, q.window, q.hidden, q.epochs, q.learning_rate, seed=s.run.seed, mixedness=q.mixedness
        )
        self.predictor = make_predictor(q.name, self.featurizer.dim, self.predictor_config)
        self.run_dir = s.run.output_dir / s.run.name
        self.adapter_version = 0
        self.dirty: set[str] = set()  # "policy" / "predictor": changed in memory, not yet committed
        self.fired: set[str] = set()
        # where rollout shards grow; the flow swaps in the configured runner while it runs
        self.shards: ShardRunner = LocalShards(runtime.backend, runtime.env, s.orchestration.rollout_shards)


# -- shared stage machinery ----------------------------------------------------------------------


def stage_seed(ctx: TrainContext, iteration: int, stage: str) -> int:
    seq = np.random.SeedSequence([ctx.s.run.seed, iteration + 1, STAGE_STREAMS[stage]])
    return int(seq.generate_state(1)[0])


def stage_rng(ctx: TrainContext, iteration: int, stage: str) -> np.random.Generator:
    return np.random.default_rng(stage_seed(ctx, iteration, stage))


def _fault(ctx: TrainContext, stage: str, iteration: int) -> None:
    key = f"{stage}@{iteration}"
    if key in ctx.s.orchestration.fail_once and key not in ctx.fired:
        ctx.fired.add(key)
        raise InjectedFault(f"injected failure of {key} (orchestration.fail_once)")


def run_stage(
    ctx: TrainContext,
    iteration: int,
    stage: str,
    compute: Callable[[], T],
    write: Callable[[StageWriter, T], None],
) -> T:
    """compute(), then commit write(...) with the stage's marker in one transaction. An injected
    fault strikes between the two: the worst moment, when the work is done but nothing is saved."""
    start = time.perf_counter()
    out = compute()
    _fault(ctx, stage, iteration)
    with ctx.store.stage(ctx.run_id, iteration, stage, time.perf_counter() - start) as w:
        write(w, out)
    return out


def _fresh_generation(ctx: TrainContext, iteration: int, stage: str) -> None:
    ctx.runtime.backend.reseed(stage_seed(ctx, iteration, stage))
    ctx.runtime.backend.reset_cache()


def _grow(
    ctx: TrainContext,
    iteration: int,
    stage: str,
    trees: list[RolloutTree],
    expansions: Sequence[Expansion],
    origin: Origin,
) -> float | None:
    """Grow a rollout stage in `orchestration.rollout_shards` shards on the configured task runner;
    grown trees replace their entries in `trees`. Returns the stage's prefix-cache hit rate where
    this process's backend did the work (None on Ray workers). Each runner reseeds generation and
    empties the prefix cache per shard, so a replayed stage computes what its first attempt did."""
    before = ctx.runtime.backend.stats.prefix_counts()
    ctx.shards.grow(trees, expansions, origin, stage_seed(ctx, iteration, stage), ctx.policy)
    return ctx.runtime.backend.stats.prefix_hit_rate_since(before)


Grown = tuple[list[RolloutTree], float | None]  # a rollout stage's trees and its prefix-cache hit rate


def _rollout_metrics(grown: Grown, tokens_key: str, hit_rate_key: str) -> dict[str, float]:
    trees, hit_rate = grown
    metrics = {tokens_key: float(sum(n.generated_tokens for t in trees for n in t))}
    if hit_rate is not None:
        metrics[hit_rate_key] = hit_rate
    return metrics


# -- checkpoints -----------------------------------------------------------------------------------


def _checkpoint_path(ctx: TrainContext, kind: str, iteration: int) -> Path:
    return ctx.run_dir / "checkpoints" / f"{kind}-{iteration:05d}.pt"


def _policy_state(ctx: TrainContext) -> dict[str, Any]:
    trainable = {k: v.detach().clone() for k, v in ctx.policy.named_parameters() if v.requires_grad}
    return {"weights": trainable, "optimizer": ctx.optimizer.state_dict(), "version": ctx.adapter_version,
            "torch_rng": torch.get_rng_state()}  # fmt: skip


def _load_policy_state(ctx: TrainContext, state: dict[str, Any]) -> None:
    params = dict(ctx.policy.named_parameters())
    with torch.no_grad():
        for name, value in state["weights"].items():
            params[name].copy_(value)
    ctx.optimizer.load_state_dict(state["optimizer"])
    ctx.adapter_version = state["version"]
    torch.set_rng_state(state["torch_rng"])
    ctx.runtime.backend.sync_weights(ctx.policy)


def restore(ctx: TrainContext, kind: str) -> None:
    """Load the latest committed checkpoint of `kind` ("policy" or "predictor")."""
    saved = ctx.store.checkpoints(ctx.run_id, kind)
    if not saved:
        return
    _, record = saved[-1]
    state = read_verified(Path(record.location), record.sha256)
    if kind == "policy":
        _load_policy_state(ctx, state)
    else:
        ctx.predictor.load_state_dict(state)
    ctx.dirty.discard(kind)


def _initial_checkpoints(ctx: TrainContext) -> None:
    """Checkpoints at iteration -1, so a failed first update can always be undone."""
    for kind, state in (("policy", _policy_state(ctx)), ("predictor", ctx.predictor.state_dict())):
        if not ctx.store.checkpoints(ctx.run_id, kind):
            path = _checkpoint_path(ctx, kind, -1)
            digest = write_atomic(state, path)
            with ctx.store.stage(ctx.run_id, -1, f"initial_{kind}") as w:
                w.checkpoint(CheckpointRecord(kind, str(path), digest))


# -- the stages ------------------------------------------------------------------------------------


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
        w.stage_metrics({"alloc/stage1_leaves": plan.leaves, "alloc/stage1_prompts": sum(m > 0 for m in plan.counts),
                         "alloc/expected_mixed_stage1": plan.expected_mixed})  # fmt: skip

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
        return trees, _grow(ctx, it, "roll_out_roots", trees, stage1_expansions(plan), "stage1")

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
        w.stage_metrics({"alloc/stage2_leaves": plan2.leaves, "alloc/anchors": len(plan2.anchors),
                         "alloc/expected_mixed_stage2": plan2.expected_mixed})  # fmt: skip

    run_stage(ctx, it, "allocate_prefixes", compute, write)


@task(name="roll-out-prefixes", task_run_name="roll-out-prefixes-it{it}", cache_policy=NO_CACHE)
def roll_out_prefixes(ctx: TrainContext, it: int) -> None:
    def compute() -> Grown:
        trees = ctx.store.load_trees(ctx.run_id, it)
        expansions = stage2_expansions(ctx.store.load_prefix_plan(ctx.run_id, it))
        return trees, _grow(ctx, it, "roll_out_prefixes", trees, expansions, "stage2")

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
        w.stage_metrics({
            "rollout/trees": sum(1 for t in trees if t.leaves()), "rollout/leaves": len(leaves),
            "rollout/generated_tokens": sum(n.generated_tokens for t in trees for n in t),
            "rollout/mean_reward": float(np.mean([leaf.reward or 0.0 for leaf in leaves])) if leaves else 0.0,
            "rollout/effective_ratio": effective_ratio(trees),
        })  # fmt: skip

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
        _fresh_generation(ctx, it, "measure_headroom")
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
        metrics.update({"headroom/pool_auc": q.auc, "headroom/pool_brier": q.brier, "headroom/pool_ece": q.ece,
                        "headroom/pool_success": float(rates.mean()) if len(rates) else float("nan")})  # fmt: skip
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
        path = _checkpoint_path(ctx, "predictor", it)
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
        path = _checkpoint_path(ctx, "policy", it)
        return (
            stats,
            nonzero_share(paths),
            CheckpointRecord("policy", str(path), write_atomic(_policy_state(ctx), path)),
        )

    def write(w: StageWriter, out: tuple[Any, float, CheckpointRecord]) -> None:
        stats, nonzero, record = out
        w.policy_update(stats, ctx.adapter_version)
        w.checkpoint(record)
        w.stage_metrics({"policy/loss": stats.loss, "policy/kl": stats.kl, "policy/clip_fraction": stats.clip_fraction,
                         "policy/grad_norm": stats.grad_norm, "policy/learning_rate": stats.learning_rate,
                         "policy/tokens": stats.tokens, "policy/adapter_version": ctx.adapter_version,
                         "rollout/nonzero_advantage_share": nonzero})  # fmt: skip

    run_stage(ctx, it, "update_policy", compute, write)
    ctx.dirty.discard("policy")
    ctx.runtime.backend.sync_weights(ctx.policy)  # every later generation samples the updated policy


def dev_evaluation(ctx: TrainContext, it: int) -> dict[str, float]:
    """Dev accuracy (avg@n EM and F1 at temperature 1) and, on the same held-out trees, the
    predictor's quality: these questions are never trained on."""
    s = ctx.s
    records = ctx.runtime.data.dev[: s.train.eval_questions]
    _fresh_generation(ctx, it, "evaluate")
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
    create_markdown_artifact(markdown=f"### {ctx.s.run.name}, iteration {it}\n\n| metric | value |\n|---|---|\n{rows}",
                             key=key, description=f"trace-rl metrics, iteration {it}")  # fmt: skip


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


# -- the flow --------------------------------------------------------------------------------------


def open_context(s: Settings, log: Log) -> TrainContext:
    store = RolloutStore(s.store_url())
    run_id = store.open_run(s.run.name, s.snapshot(), settings_hash(s.identity()), code_version(), s.identity())
    store.take_lease(run_id, s.run.name, s.orchestration.lease_ttl_s)  # refuses a second writer of the run
    log(f"rollout database: {render_url(s.store_url())} (run {s.run.name!r})")
    try:
        ctx = TrainContext(s, store, run_id, load_runtime(s, log), log)
        if s.run.init_from and not store.checkpoints(run_id, "policy"):
            _start_from(ctx, s.run.init_from)
        _initial_checkpoints(ctx)
        restore(ctx, "policy")
        restore(ctx, "predictor")
    except BaseException:
        store.release_lease("failed")
        store.close()
        raise
    return ctx


# settings a run started from another run's checkpoint must share with it (the same model and task)
_SHARED_WITH_SOURCE = ("task", "model", "warmstart", "agent", "retriever")


def _start_from(ctx: TrainContext, source: str) -> None:
    """A new run's starting point is `source`'s latest policy checkpoint, and its predictor first
    learns from `source`'s stored rollouts (a deployment resuming from a checkpoint has them)."""
    source_id = ctx.store.run_id(source)
    theirs, ours = ctx.store.run_settings(source_id), ctx.s.snapshot()
    for section in _SHARED_WITH_SOURCE:
        for key, value in ours[section].items():
            there = theirs.get(section, {}).get(key)
            if there != value:
                raise SettingsError(f"run.init_from={source!r}: {section}.{key} is {there!r} there, {value!r} here; "
                                    "a run can only start from a run of the same model and task")  # fmt: skip
    saved = ctx.store.checkpoints(source_id, "policy")
    if not saved:
        raise SettingsError(f"run.init_from={source!r}: that run has no policy checkpoint yet")
    _, record = saved[-1]
    _load_policy_state(ctx, read_verified(Path(record.location), record.sha256))
    history = [(it, ctx.store.load_trees(source_id, it)) for it in ctx.store.backed_up_iterations(source_id)]
    learn_history(ctx.predictor, ctx.featurizer, history, ctx.s.predictor.targets)
    ctx.log(f"starting from run {source!r}: policy of iteration {saved[-1][0]}, predictor taught {len(history)} "
            "iterations of its rollouts")  # fmt: skip


def _progress(ctx: TrainContext, it: int, metrics: dict[str, Any], started: tuple[int, float]) -> None:
    """One log line per iteration: tqdm's bar with elapsed time and ETA (timed from the first
    iteration this process trained, so a resumed run's rate is its own), reward, effective ratio
    and dev EM where evaluated."""
    from tqdm import tqdm

    first, since = started
    n = ctx.s.train.iterations
    meter = tqdm.format_meter(it + 1 - first, n - first, time.perf_counter() - since, ncols=44, unit="it",
                              bar_format="|{bar}| {elapsed}<{remaining}, {rate_fmt}")  # fmt: skip
    dev = f"  dev EM {metrics['eval/em']:.3f}" if "eval/em" in metrics else ""
    reward, effective = metrics.get("rollout/mean_reward", 0), metrics.get("rollout/effective_ratio", 0)
    ctx.log(f"iteration {it + 1}/{n} {meter}  reward {reward:.3f}  effective {effective:.2f}{dev}")


@flow(name="trace-training", log_prints=False)
def trace_training(
    overrides: list[str] | None = None,
    served: list[str] | None = None,
    allocator: str | None = None,
    iterations: int | None = None,
    seed: int | None = None,
    run_name: str | None = None,
) -> list[dict[str, Any]]:
    """Train with TRACE (or the configured allocator) on the settings plus the parameters, merged
    by `flow_overrides` ('section.key=value' lists, then the typed parameters); resumes a run of the
    same name from its last committed stage. Secrets (the store URL) are refused here: they come
    from the environment, never as parameters."""
    s = load_settings(flow_overrides(served, overrides, allocator, iterations, seed, run_name))
    logger = get_run_logger()

    def log(message: str) -> None:
        logger.info(message)

    ctx = open_context(s, log)
    try:
        with _terminate_as_interrupt():
            history = _train(ctx)
    except (KeyboardInterrupt, Terminated):
        ctx.store.release_lease("interrupted")
        raise
    except BaseException:
        ctx.store.release_lease("failed")
        raise
    finally:
        ctx.store.close()
    _finish(s, history, log)
    return history


def _finish(s: Settings, history: list[dict[str, Any]], log: Log) -> None:
    """What every finished run leaves, however it was started (`trace-rl run`, a deployment, the
    bench): `<run dir>/metrics.jsonl` (one row per iteration, -1 the starting evaluation), a
    run-level Prefect artifact and a closing log line."""
    run_dir = s.run.output_dir / s.run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history))
    first, last = history[0], history[-1]
    ratios = [r["rollout/effective_ratio"] for r in history[1:] if r.get("rollout/effective_ratio") is not None]
    figures = {
        "allocator": s.trace.allocator, "predictor": s.predictor.name, "iterations": len(history) - 1,
        "dev EM before": first.get("eval/em"), "dev EM after": last.get("eval/em"),
        "mean effective ratio": sum(ratios) / len(ratios) if ratios else None,
        "metrics": str(run_dir / "metrics.jsonl"),
    }  # fmt: skip
    rows = "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in figures.items())
    key = "".join(c if c.isalnum() else "-" for c in f"{s.run.name}-summary".lower())
    create_markdown_artifact(markdown=f"### trace-rl run {s.run.name}\n\n| | |\n|---|---|\n{rows}", key=key,
                             description="trace-rl run summary")  # fmt: skip
    log(f"run {s.run.name!r} finished: metrics in {run_dir / 'metrics.jsonl'}")


class Terminated(BaseException):
    """SIGTERM (a cancelled Prefect flow run, `kill`, a stopped container) during training."""


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into `Terminated` so the run records `interrupted` and frees its lease."""

    def raise_terminated(_signum: int, _frame: object) -> None:
        raise Terminated("terminated by SIGTERM")

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _train(ctx: TrainContext) -> list[dict[str, Any]]:
    s = ctx.s
    retry = {"retries": s.orchestration.retries, "retry_delay_seconds": s.orchestration.retry_delay_s}
    tasks = {name: t.with_options(**retry) for name, t in STAGE_TASKS.items()}
    history = []
    if "evaluate" not in ctx.store.completed_stages(ctx.run_id, -1):
        ctx.log(f"evaluating the starting policy on {s.train.eval_questions} dev questions "
                f"x {s.train.eval_samples} samples")  # fmt: skip
        tasks["evaluate"](ctx, -1)
    history.append({"iteration": -1, **_iteration_row(ctx, -1)})
    finished = [it for it in range(s.train.iterations) if "checkpoint" in ctx.store.completed_stages(ctx.run_id, it)]
    if len(finished) == s.train.iterations:
        ctx.log(f"run {s.run.name!r} has already trained its {s.train.iterations} iterations: nothing left to do "
                "(raise train.iterations to continue it, or choose another run.name)")  # fmt: skip
        history += [{"iteration": it, **_iteration_row(ctx, it)} for it in finished]
        ctx.store.release_lease("done")
        return history
    started = (len(finished), time.perf_counter())
    with shard_runner(s, ctx.runtime) as ctx.shards:
        for it in range(s.train.iterations):
            done = ctx.store.completed_stages(ctx.run_id, it)
            for name, stage_task in tasks.items():
                if name not in done and (name != "measure_headroom" or headroom_due(s, it)):
                    stage_task(ctx, it)
            row = _iteration_row(ctx, it)
            history.append({"iteration": it, **row})
            if it >= started[0]:
                _progress(ctx, it, row, started)
    ctx.store.release_lease("done")
    return history


def _iteration_row(ctx: TrainContext, it: int) -> dict[str, Any]:
    rows = [r for r in ctx.store.iteration_metrics(ctx.run_id) if r["iteration"] == it]
    return {k: v for k, v in rows[0].items() if k != "iteration"} if rows else {}
