"""Rollout stages split into fixed shards, grown in this process or as Prefect tasks on Ray.

`orchestration.rollout_shards` fixes how a rollout stage is split (`trace_core.method.rollout.split_shards`:
whole trees, balanced by leaves) and each shard's random stream (`shard_seed`); each shard is grown
from its seed with an empty prefix cache. `orchestration.task_runner` only decides where:
- "local": one shard after another in this process, with the run's own backend; with one shard this
  is exactly the unsharded stage;
- "ray": one Prefect task (`grow-shard`) per shard, submitted through prefect-ray's `RayTaskRunner`.
  A shard task is self-contained: it receives the settings (paths made absolute, no store URL), the
  model directory, the policy's trainable weights (put once per stage in Ray's object store) and its
  trees; each worker process builds the environment, policy and backend once and keeps them. A
  failed shard task is retried (`orchestration.retries`) from the trees as sent.
So both runners grow the same trees for the same seeds.

With `orchestration.ray_address` empty, a local Ray is started for the flow run with
`orchestration.ray_num_cpus` CPUs, its dashboard off and every Ray process listening on 127.0.0.1
only (`start_local_ray`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from trace_core.generation.backend import GenerationBackend
from trace_core.method.loss import wrap_policy
from trace_core.method.rollout import Expansion, Shard, grow, merge_shard, shard_seed, shard_trees, split_shards
from trace_core.method.tree import Origin, RolloutTree
from trace_core.models.default_model import load_policy
from trace_rl.config.sections import StoreSection
from trace_rl.config.settings import Settings
from trace_rl.flows.compat import outside_task_run, start_local_ray
from trace_rl.flows.pipeline import (
    Runtime,
    _dtype,
    make_backend,
    make_env,
    make_tools,
    prepare_task,
    settings_hash,
)
from trace_rl.flows.run_spec import policy_config


class ShardRunner(Protocol):
    def grow(
        self,
        trees: list[RolloutTree],
        expansions: Sequence[Expansion],
        origin: Origin,
        seed: int,
        policy: torch.nn.Module,
    ) -> None:
        """Grow `expansions` on `trees` (replacing grown trees in the list), the stage seeded by `seed`,
        sampling from `policy`'s current weights."""
        ...


def trainable_weights(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in policy.named_parameters() if v.requires_grad}


def load_trainable(policy: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    params = dict(policy.named_parameters())
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise KeyError(f"weights for parameters the policy does not have: {unknown[:3]}")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)


class LocalShards:
    """Every shard in this process, one after another, with the run's backend."""

    def __init__(self, backend: GenerationBackend, env: Any, count: int) -> None:
        self.backend, self.env, self.count = backend, env, count

    def grow(
        self,
        trees: list[RolloutTree],
        expansions: Sequence[Expansion],
        origin: Origin,
        seed: int,
        policy: torch.nn.Module,
    ) -> None:
        params = self.env.config.sampling()
        if self.count == 1:
            self.backend.reseed(seed)
            self.backend.reset_cache()
            grow(trees, expansions, self.backend, self.env, params, origin)
            return
        for shard in split_shards(expansions, self.count):
            if shard.expansions:
                self.backend.reseed(shard_seed(seed, shard.index, self.count))
                self.backend.reset_cache()
                grow(shard_trees(trees, shard), shard.expansions, self.backend, self.env, params, origin)


# -- the Ray runner --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardJob:
    """One shard's work, as sent to a worker (picklable)."""

    settings: Settings
    model_dir: Path
    seed: int
    trees: list[RolloutTree]
    expansions: tuple[Expansion, ...]
    origin: Origin


@dataclass
class _Worker:
    env: Any  # the task family's environment
    policy: torch.nn.Module
    backend: GenerationBackend


_WORKERS: dict[str, _Worker] = {}  # per worker process: the runtime of the latest settings


def _worker(s: Settings, model_dir: Path) -> _Worker:
    key = settings_hash(s.identity(), str(model_dir))
    if key not in _WORKERS:
        _WORKERS.clear()
        data = prepare_task(s, lambda _: None)
        tools = make_tools(s, data)
        model, tokenizer = load_policy(model_dir, s.model.device, _dtype(s))
        policy = wrap_policy(model, policy_config(s))
        env = make_env(s, tools, tokenizer)
        _WORKERS[key] = _Worker(env, policy, make_backend(s, policy, tokenizer, s.run.seed, model_dir))
    return _WORKERS[key]


@task(name="grow-shard", cache_policy=NO_CACHE)
def grow_shard(job: ShardJob, weights: dict[str, torch.Tensor]) -> list[RolloutTree]:
    """Grow one shard with the policy at `weights`; returns its trees, grown."""
    worker = _worker(job.settings, job.model_dir)
    load_trainable(worker.policy, weights)
    worker.backend.sync_weights(worker.policy)
    worker.backend.reseed(job.seed)
    worker.backend.reset_cache()
    trees = copy.deepcopy(job.trees)  # a retried attempt starts again from the trees as sent
    grow(trees, job.expansions, worker.backend, worker.env, worker.env.config.sampling(), job.origin)
    return trees


def _portable(s: Settings) -> Settings:
    """The settings a worker needs: paths absolute (a worker may start in another directory), and
    without the store URL (a worker never writes to the store)."""
    t = s.task
    paths = ("data_dir", "train_file", "dev_file", "test_file", "corpus_file")
    task_section = t.model_copy(update={k: Path(getattr(t, k)).resolve() for k in paths if getattr(t, k) is not None})
    return s.model_copy(
        update={
            "task": task_section,
            "model": s.model.model_copy(update={"models_dir": s.model.models_dir.resolve()}),
            "run": s.run.model_copy(update={"output_dir": s.run.output_dir.resolve()}),
            "store": StoreSection(),
        }
    )


@contextmanager
def _submission(share_api: bool) -> Iterator[None]:
    """The context shard tasks are submitted in (a task runner serialises it for the worker):
    - as children of the flow run, not of the stage task, whose context holds its parameters, and
      those (the run's open database and models) must not travel;
    - with `share_api` and no PREFECT_API_URL set, pointing at the temporary Prefect API this
      process runs: otherwise each worker would start one of its own."""
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with outside_task_run():
        flow_run = FlowRunContext.get()
        if share_api and not PREFECT_API_URL.value() and flow_run is not None and flow_run.client is not None:
            with temporary_settings({PREFECT_API_URL: str(flow_run.client.api_url)}):
                yield
        else:
            yield


class RayShards:
    """Every shard as a `grow-shard` Prefect task through a started `prefect_ray.RayTaskRunner`."""

    def __init__(self, runner: Any, s: Settings, model_dir: Path) -> None:
        self.runner = runner
        self.settings = _portable(s)
        self.model_dir = model_dir.resolve()
        self.count = s.orchestration.rollout_shards
        self.local = not s.orchestration.ray_address  # workers on this machine reach its temporary API
        self.task = grow_shard.with_options(**s.orchestration.retry_options())

    def grow(
        self,
        trees: list[RolloutTree],
        expansions: Sequence[Expansion],
        origin: Origin,
        seed: int,
        policy: torch.nn.Module,
    ) -> None:
        import ray

        shards = [shard for shard in split_shards(expansions, self.count) if shard.expansions]
        weights = ray.put(trainable_weights(policy))  # resolved in the worker by the task runner
        with _submission(share_api=self.local):
            futures = [
                self.runner.submit(
                    self.task.with_options(task_run_name=f"grow-shard-{origin}-{shard.index}"),
                    {"job": self._job(trees, shard, origin, seed), "weights": weights},
                )
                for shard in shards
            ]
        for shard, future in zip(shards, futures, strict=True):
            merge_shard(trees, shard, future.result())

    def _job(self, trees: list[RolloutTree], shard: Shard, origin: Origin, seed: int) -> ShardJob:
        return ShardJob(
            self.settings,
            self.model_dir,
            shard_seed(seed, shard.index, self.count),
            shard_trees(trees, shard),
            shard.expansions,
            origin,
        )


# -- starting and choosing the runner ------------------------------------------------------------


@contextmanager
def shard_runner(s: Settings, runtime: Runtime) -> Iterator[ShardRunner]:
    """The runner of `orchestration.task_runner`, open for the duration of the block."""
    o = s.orchestration
    if o.task_runner == "local":
        yield LocalShards(runtime.backend, runtime.env, o.rollout_shards)
        return
    try:
        import ray
        from prefect_ray import RayTaskRunner
    except ImportError as err:
        raise RuntimeError("orchestration.task_runner='ray' needs the ray extra: pip install '.[ray]'") from err
    started = False
    if not o.ray_address and not ray.is_initialized():
        start_local_ray(o.ray_num_cpus)
        started = True
    try:
        with RayTaskRunner(address=o.ray_address or None) as runner:
            yield RayShards(runner, s, runtime.model_dir)
    finally:
        if started:
            ray.shutdown()
