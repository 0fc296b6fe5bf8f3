"""What one training run holds across its stages, and the machinery every stage shares.

`TrainContext` carries the settings, the store, the runtime (model, backend, environment), the
policy with its optimizer, the allocator and the predictor. `run_stage` is a stage's transaction:
compute, then commit the outputs with the stage's completion marker; `Stage` is a row of the stage
table (stages.py); `stage_seed` gives each (run seed, iteration, stage) its own random stream (by the
stage's stream number); the checkpoint
helpers write and restore the policy and predictor atomically; `open_context` opens (or resumes) a
run, starting a new one from another run's checkpoint where `run.init_from` says so.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from transformers import PreTrainedModel

from trace_core.method.allocators import AllocatorConfig, make_allocator
from trace_core.method.loss import freeze_copy, make_optimizer, wrap_policy
from trace_core.method.predictor import PredictorConfig, make_predictor
from trace_core.method.rollout import Expansion
from trace_core.method.sampling import (
    learn_history,
)
from trace_core.method.tree import Origin, RolloutTree
from trace_rl.config.settings import Settings, SettingsError
from trace_rl.flows.checkpoints import read_verified, write_atomic
from trace_rl.flows.pipeline import Log, Runtime, code_version, load_runtime, policy_config, settings_hash
from trace_rl.flows.sharding import LocalShards, ShardRunner
from trace_rl.store.db import render_url
from trace_rl.store.store import RolloutStore
from trace_rl.store.writer import CheckpointRecord, StageWriter
from trace_rl.tasks.family import family

T = TypeVar("T")


class InjectedFault(RuntimeError):
    """A failure requested by `orchestration.fail_once` (for testing retries and resumption)."""


class TrainContext:
    """What lives across stages of one run (a plain class: Prefect passes it to tasks untouched)."""

    def __init__(self, s: Settings, store: RolloutStore, run_id: int, runtime: Runtime, log: Log) -> None:
        self.s, self.store, self.run_id, self.runtime, self.log = s, store, run_id, runtime, log
        t, p = s.trace, s.policy
        self.allocator = make_allocator(t.allocator)
        self.allocator_config = AllocatorConfig(
            t.budget, t.stage1_share, t.group_size, t.max_per_prompt, t.max_per_anchor, t.explore_share, t.root_split
        )
        self.policy_config = policy_config(s)
        # full fine-tuning with a KL penalty needs a frozen copy of the starting policy as reference
        self.reference = freeze_copy(runtime.model) if p.kl_coef > 0 and not s.uses_lora() else None
        self.policy: PreTrainedModel = wrap_policy(runtime.model, self.policy_config)
        self.optimizer = make_optimizer(self.policy, self.policy_config)
        self.featurizer = family(s).featurizer(s, s.model.device)
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


def every_iteration(_s: Settings, _it: int) -> bool:
    return True


@dataclass(frozen=True)
class Stage:
    """A row of the stage table (stages.py). name: the stage's completion marker and its
    `orchestration.fail_once` key; task: its Prefect task, called as task(ctx, iteration, stage);
    stream: its random stream with the run seed and the iteration, a number given once and never
    reused, so adding a stage changes no other stage's stream, nor any run's results; due: whether
    it runs at an iteration."""

    name: str
    task: Any
    stream: int
    due: Callable[[Settings, int], bool] = every_iteration


def stage_seed(ctx: TrainContext, iteration: int, stream: int) -> int:
    """The random stream `stream` of (run seed, iteration); a run started from another (`run.init_from`) also
    keys it by that run's name. Without that key it re-drew its source's streams from iteration 0:
    the bench's late regime trained every allocator on exactly the pools of the pre-run it started
    from, in the same order (64 of 64 prompts shared at every iteration), which a deployment that
    continues a run would not do, and which let a predictor that had learnt those very prompts
    look better than it is."""
    keys = [ctx.s.run.seed, iteration + 1, stream]
    if ctx.s.run.init_from:
        keys.append(int.from_bytes(hashlib.sha256(ctx.s.run.init_from.encode()).digest()[:4], "big"))
    return int(np.random.SeedSequence(keys).generate_state(1)[0])


def stage_rng(ctx: TrainContext, iteration: int, stage: Stage) -> np.random.Generator:
    return np.random.default_rng(stage_seed(ctx, iteration, stage.stream))


def _fault(ctx: TrainContext, stage: str, iteration: int) -> None:
    key = f"{stage}@{iteration}"
    if key in ctx.s.orchestration.fail_once and key not in ctx.fired:
        ctx.fired.add(key)
        raise InjectedFault(f"injected failure of {key} (orchestration.fail_once)")


def run_stage(
    ctx: TrainContext,
    iteration: int,
    stage: Stage,
    compute: Callable[[], T],
    write: Callable[[StageWriter, T], None],
) -> T:
    """compute(), then commit write(...) with the stage's marker in one transaction. An injected
    fault strikes between the two: the worst moment, when the work is done but nothing is saved."""
    start = time.perf_counter()
    out = compute()
    _fault(ctx, stage.name, iteration)
    with ctx.store.stage(ctx.run_id, iteration, stage.name, time.perf_counter() - start) as w:
        write(w, out)
    return out


def fresh_generation(ctx: TrainContext, iteration: int, stream: int) -> None:
    """Reseed generation with the random stream `stream` and empty the prefix cache."""
    ctx.runtime.backend.reseed(stage_seed(ctx, iteration, stream))
    ctx.runtime.backend.reset_cache()


def grow_stage(
    ctx: TrainContext,
    iteration: int,
    stage: Stage,
    trees: list[RolloutTree],
    expansions: Sequence[Expansion],
    origin: Origin,
) -> float | None:
    """Grow a rollout stage in `orchestration.rollout_shards` shards on the configured task runner;
    grown trees replace their entries in `trees`. Returns the stage's prefix-cache hit rate where
    this process's backend did the work (None on Ray workers). Each runner reseeds generation and
    empties the prefix cache per shard, so a replayed stage computes what its first attempt did."""
    before = ctx.runtime.backend.stats.prefix_counts()
    ctx.shards.grow(trees, expansions, origin, stage_seed(ctx, iteration, stage.stream), ctx.policy)
    return ctx.runtime.backend.stats.prefix_hit_rate_since(before)


Grown = tuple[list[RolloutTree], float | None]  # a rollout stage's trees and its prefix-cache hit rate


# -- checkpoints -----------------------------------------------------------------------------------


def checkpoint_path(ctx: TrainContext, kind: str, iteration: int) -> Path:
    return ctx.run_dir / "checkpoints" / f"{kind}-{iteration:05d}.pt"


def policy_state(ctx: TrainContext) -> dict[str, Any]:
    trainable = {k: v.detach().clone() for k, v in ctx.policy.named_parameters() if v.requires_grad}
    return {
        "weights": trainable,
        "optimizer": ctx.optimizer.state_dict(),
        "version": ctx.adapter_version,
        "torch_rng": torch.get_rng_state(),
    }


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
    for kind, state in (("policy", policy_state(ctx)), ("predictor", ctx.predictor.state_dict())):
        if not ctx.store.checkpoints(ctx.run_id, kind):
            path = checkpoint_path(ctx, kind, -1)
            digest = write_atomic(state, path, ctx.store.fence)
            with ctx.store.stage(ctx.run_id, -1, f"initial_{kind}") as w:
                w.checkpoint(CheckpointRecord(kind, str(path), digest))


# -- opening a run ---------------------------------------------------------------------------------


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
                raise SettingsError(
                    f"run.init_from={source!r}: {section}.{key} is {there!r} there, {value!r} here; "
                    "a run can only start from a run of the same model and task"
                )
    saved = ctx.store.checkpoints(source_id, "policy")
    if not saved:
        raise SettingsError(f"run.init_from={source!r}: that run has no policy checkpoint yet")
    _, record = saved[-1]
    _load_policy_state(ctx, read_verified(Path(record.location), record.sha256))
    history = [(it, ctx.store.load_trees(source_id, it)) for it in ctx.store.backed_up_iterations(source_id)]
    learn_history(ctx.predictor, ctx.featurizer, history, ctx.s.predictor.targets)
    ctx.log(
        f"starting from run {source!r}: policy of iteration {saved[-1][0]}, predictor taught {len(history)} "
        "iterations of its rollouts"
    )
