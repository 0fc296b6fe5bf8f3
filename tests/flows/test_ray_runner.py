"""Rollout shards grown as Prefect tasks on Ray are the trees the same shards grow in one process."""

from __future__ import annotations

import ipaddress
import math
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import write_settings
from trace_rl.config.settings import SETTINGS_FILE_ENV
from trace_rl.store.store import RolloutStore

pytest.importorskip("ray")
pytest.importorskip("prefect_ray")


@pytest.fixture()
def ray_processes():
    """A local Ray with 2 CPUs, dashboard off, every process on 127.0.0.1, shut down at the end with
    all its processes gone. Yields a function listing the processes Ray runs now."""
    import ray

    from trace_rl.flows.compat import start_local_ray

    before = {p.pid for p in psutil.Process().children(recursive=True)}

    def spawned() -> list[psutil.Process]:
        return [p for p in psutil.Process().children(recursive=True) if p.pid not in before]

    start_local_ray(2)
    try:
        assert ray.cluster_resources()["CPU"] == 2
        yield spawned
    finally:
        processes = spawned()
        ray.shutdown()
        _, alive = psutil.wait_procs(processes, timeout=30)
        for p in alive:
            p.kill()
        assert not alive, f"Ray processes left running after shutdown: {[p.pid for p in alive]}"


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _listening(processes: list[psutil.Process]) -> set[str]:
    addresses = set()
    for p in processes:
        try:
            addresses |= {c.laddr.ip for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN}
        except psutil.NoSuchProcess:
            pass
    return addresses


def _trees(db: Path, run: str, iteration: int) -> list[list[tuple]]:
    store = RolloutStore(f"sqlite:///{db}")
    trees = store.load_trees(store.run_id(run), iteration)
    store.close()
    return [
        [
            (
                n.node_id,
                n.parent_id,
                n.depth,
                n.model_ids,
                n.observation_ids,
                n.action,
                n.argument,
                n.reward,
                n.terminal,
                n.origin,
                n.target,
                n.model_logprobs,
            )
            for n in t
        ]
        for t in trees
    ]


def _grow_shard_runs() -> list:
    from prefect import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        return client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="grow-shard")))


def test_rollout_shards_on_ray_grow_the_trees_the_local_runner_grows(
    prefect_api, workspace, tmp_path, monkeypatch, ray_processes
):
    from trace_rl.flows.training import trace_training

    settings = write_settings(
        tmp_path / "s.toml",
        workspace,
        tmp_path / "runs",
        train={"iterations": 1},
        orchestration={"retries": 1, "rollout_shards": 2},
    )
    monkeypatch.setenv(SETTINGS_FILE_ENV, str(settings))
    start = time.perf_counter()
    trace_training(["run.name=local", "orchestration.task_runner=local"])
    local_s = time.perf_counter() - start
    trace_training(["run.name=ray", "orchestration.task_runner=ray"])
    ray_s = time.perf_counter() - start - local_s
    print(f"one iteration: local {local_s:.1f}s, ray {ray_s:.1f}s")

    db = tmp_path / "runs" / "rollouts.db"
    local, ray = _trees(db, "local", 0), _trees(db, "ray", 0)
    assert sum(1 for t in local for n in t if n[8]) == 16  # the budget's leaves, in both stages
    assert [[n[:-1] for n in t] for t in ray] == [[n[:-1] for n in t] for t in local]
    for tree_ray, tree_local in zip(ray, local):
        for a, b in zip(tree_ray, tree_local):
            assert all(math.isclose(x, y, rel_tol=0, abs_tol=1e-5) for x, y in zip(a[-1], b[-1]))

    shard_runs = _grow_shard_runs()  # both stages, two shards each, on Ray's worker processes
    assert len(shard_runs) == 4 and all(r.state and r.state.is_completed() for r in shard_runs)
    assert all(r.empirical_policy.retries == 1 for r in shard_runs)  # orchestration.retries, like the stages
    listening = _listening(ray_processes())
    assert listening and all(_loopback(a) for a in listening), f"Ray listens on {listening}"


def test_a_retried_shard_task_starts_again_from_the_trees_as_sent(workspace, tmp_path, monkeypatch):
    from trace_core.method.rollout import Expansion, new_trees
    from trace_rl.config.settings import load_settings
    from trace_rl.flows.pipeline import load_runtime
    from trace_rl.flows.sharding import ShardJob, _portable, grow_shard, trainable_weights

    monkeypatch.setenv(SETTINGS_FILE_ENV, str(write_settings(tmp_path / "s.toml", workspace, tmp_path / "runs")))
    s = load_settings()
    runtime = load_runtime(s, lambda _: None)
    trees = new_trees(runtime.data.train[:2], runtime.env)
    job = ShardJob(_portable(s), runtime.model_dir, 3, trees, (Expansion(0, 0, 2), Expansion(1, 0, 1)), "stage1")
    weights = trainable_weights(runtime.model)
    first, second = grow_shard.fn(job, weights), grow_shard.fn(job, weights)
    assert all(len(t) == 1 for t in job.trees)  # the job's trees are never grown in place
    assert [len(t.leaves()) for t in first] == [2, 1]
    assert [[(n.parent_id, n.model_ids, n.reward) for n in t] for t in first] == [
        [(n.parent_id, n.model_ids, n.reward) for n in t] for t in second
    ]
