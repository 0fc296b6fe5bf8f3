"""What one training run holds across its stages, and the machinery every stage shares.

`TrainContext` carries the run's description (settings resolved once, run_spec.py), the store, the
runtime (model, backend, environment), the learner (learner.py), the allocator and the predictor.
`run_stage` is a stage's transaction:
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

from trace_core.method.allocators import make_allocator
from trace_core.method.evaluation import LeafF1
from trace_core.method.predictor import make_predictor
from trace_core.method.rollout import Expansion
from trace_core.method.sampling import learn_history
from trace_core.method.tree import Origin, RolloutTree
from trace_rl.config.settings import Settings, SettingsError
from trace_rl.flows.checkpoints import read_verified, write_atomic
from trace_rl.flows.learner import Learner
from trace_rl.flows.pipeline import Log, Runtime, code_version, load_runtime, settings_hash
from trace_rl.flows.run_spec import RunSpec, describe
from trace_rl.flows.sharding import ShardRunner
from trace_rl.store.db import render_url
from trace_rl.store.store import RolloutStore
from trace_rl.store.writer import CheckpointRecord, StageWriter
from trace_rl.tasks.family import family

T = TypeVar("T")


class InjectedFault(RuntimeError):
    """A failure requested by `orchestration.fail_once` (for testing retries and resumption)."""


class TrainContext:
    """What lives across stages of one run (a plain class: Prefect passes it to tasks untouched):
    the run's description (`spec`, settings resolved once), the store, the runtime (data, model,
    backend, environment), the learner (the policy), the allocator, the featurizer and predictor,
    and the task's answer scorer. What changes during a run: the learner, the predictor and
    whether it is `predictor_dirty`, the faults already `fired`, and the shard runner (`shards`),
    which the flow swaps in while it runs."""

    def __init__(
        self,
        spec: RunSpec,
        store: RolloutStore,
        run_id: int,
        runtime: Runtime,
        learner: Learner,
        featurizer: Any,
        f1: LeafF1 | None,
        log: Log,
    ) -> None:
        self.spec, self.store, self.run_id, self.runtime, self.log = spec, store, run_id, runtime, log
        self.allocator = make_allocator(spec.sampling.allocator)
        self.learner = learner
        self.featurizer = featurizer
        self.f1 = f1
        self.predictor = make_predictor(spec.prediction.name, self.featurizer.dim, spec.prediction.config)
        self.predictor_dirty = False  # changed in memory by a refit not yet committed
        self.fired: set[str] = set()
        self.shards: ShardRunner | None = None


# -- shared stage machinery ----------------------------------------------------------------------


def every_iteration(_spec: RunSpec, _it: int) -> bool:
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
    due: Callable[[RunSpec, int], bool] = every_iteration


def stage_seed(ctx: TrainContext, iteration: int, stream: int) -> int:
    """The random stream `stream` of (run seed, iteration); a run started from another (`run.init_from`) also
    keys it by that run's name: without it, the new run would redraw its source's pools in the same
    order, which a deployment that continues a run would not do (and a predictor that learnt those
    very prompts would look better than it is)."""
    keys = [ctx.spec.seed, iteration + 1, stream]
    if ctx.spec.init_from:
        keys.append(int.from_bytes(hashlib.sha256(ctx.spec.init_from.encode()).digest()[:4], "big"))
    return int(np.random.SeedSequence(keys).generate_state(1)[0])


def stage_rng(ctx: TrainContext, iteration: int, stage: Stage) -> np.random.Generator:
    return np.random.default_rng(stage_seed(ctx, iteration, stage.stream))


def _fault(ctx: TrainContext, stage: str, iteration: int) -> None:
    key = f"{stage}@{iteration}"
    if key in ctx.spec.fail_once and key not in ctx.fired:
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
    if ctx.shards is None:
        raise RuntimeError(f"{stage.name}: no shard runner is open (the flow opens one around the iterations)")
    before = ctx.runtime.backend.stats.prefix_counts()
    ctx.shards.grow(trees, expansions, origin, stage_seed(ctx, iteration, stage.stream), ctx.learner.policy)
    return ctx.runtime.backend.stats.prefix_hit_rate_since(before)


Grown = tuple[list[RolloutTree], float | None]  # a rollout stage's trees and its prefix-cache hit rate


# -- checkpoints -----------------------------------------------------------------------------------


def checkpoint_path(ctx: TrainContext, kind: str, iteration: int) -> Path:
    return ctx.spec.run_dir / "checkpoints" / f"{kind}-{iteration:05d}.pt"


def latest_state(ctx: TrainContext, kind: str) -> dict[str, Any] | None:
    """The latest committed checkpoint of `kind` ("policy" or "predictor"), verified, or None."""
    saved = ctx.store.checkpoints(ctx.run_id, kind)
    if not saved:
        return None
    _, record = saved[-1]
    return read_verified(Path(record.location), record.sha256)


def load_policy_state(ctx: TrainContext, state: dict[str, Any]) -> None:
    """The learner takes `state`; generation samples it from now on."""
    ctx.learner.load(state)
    ctx.runtime.backend.sync_weights(ctx.learner.policy)


def restore_policy_if_dirty(ctx: TrainContext) -> None:
    """Undo an earlier attempt's in-memory policy update: back to the latest committed checkpoint."""
    if ctx.learner.restore_if_dirty(lambda: latest_state(ctx, "policy")):
        ctx.runtime.backend.sync_weights(ctx.learner.policy)


def restore_predictor_if_dirty(ctx: TrainContext) -> None:
    """Undo an earlier attempt's in-memory refit: back to the latest committed predictor."""
    if ctx.predictor_dirty:
        state = latest_state(ctx, "predictor")
        if state is not None:
            ctx.predictor.load_state_dict(state)
        ctx.predictor_dirty = False


def _initial_checkpoints(ctx: TrainContext) -> None:
    """Checkpoints at iteration -1, so a failed first update can always be undone."""
    for kind, state in (("policy", ctx.learner.state()), ("predictor", ctx.predictor.state_dict())):
        if not ctx.store.checkpoints(ctx.run_id, kind):
            path = checkpoint_path(ctx, kind, -1)
            digest = write_atomic(state, path, ctx.store.fence)
            with ctx.store.stage(ctx.run_id, -1, f"initial_{kind}") as w:
                w.checkpoint(CheckpointRecord(kind, str(path), digest))


# -- opening a run ---------------------------------------------------------------------------------


def open_context(s: Settings, log: Log) -> TrainContext:
    """Open (or resume) the run `s` describes: settings are resolved here, once (`describe`); the
    stages see only the run's description and what the context built from it."""
    store = RolloutStore(s.store_url())
    run_id = store.open_run(s.run.name, s.snapshot(), settings_hash(s.identity()), code_version(), s.identity())
    store.take_lease(run_id, s.run.name, s.orchestration.lease_ttl_s)  # refuses a second writer of the run
    log(f"rollout database: {render_url(s.store_url())} (run {s.run.name!r})")
    try:
        spec, task, runtime = describe(s), family(s), load_runtime(s, log)
        learner = Learner(runtime.model, spec.policy, spec.use_reference)  # before the featurizer: torch's draws
        featurizer = task.featurizer(s, s.model.device)
        ctx = TrainContext(spec, store, run_id, runtime, learner, featurizer, task.f1, log)
        if s.run.init_from and not store.checkpoints(run_id, "policy"):
            _start_from(ctx, s)
        _initial_checkpoints(ctx)
        policy, predictor = latest_state(ctx, "policy"), latest_state(ctx, "predictor")
        if policy is not None:
            load_policy_state(ctx, policy)
        if predictor is not None:
            ctx.predictor.load_state_dict(predictor)
    except BaseException:
        store.release_lease("failed")
        store.close()
        raise
    return ctx


# settings a run started from another run's checkpoint must share with it (the same model and task)
_SHARED_WITH_SOURCE = ("task", "model", "warmstart", "agent", "retriever")


def _start_from(ctx: TrainContext, s: Settings) -> None:
    """A new run's starting point is the latest policy checkpoint of the run `run.init_from` names,
    and its predictor first learns from that run's stored rollouts (a deployment resuming from a
    checkpoint has them)."""
    source = s.run.init_from
    source_id = ctx.store.run_id(source)
    theirs, ours = ctx.store.run_settings(source_id), s.snapshot()
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
    load_policy_state(ctx, read_verified(Path(record.location), record.sha256))
    history = [(it, ctx.store.load_trees(source_id, it)) for it in ctx.store.backed_up_iterations(source_id)]
    learn_history(ctx.predictor, ctx.featurizer, history, ctx.spec.prediction.targets)
    ctx.log(
        f"starting from run {source!r}: policy of iteration {saved[-1][0]}, predictor taught {len(history)} "
        "iterations of its rollouts"
    )
