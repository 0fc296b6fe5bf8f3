"""Where trace-rl reaches into its orchestration libraries' internals: every such use, in one place.

Each helper depends on a private detail of a pinned version (prefect==3.7.7, ray==2.60.0 via
prefect-ray==0.6.0; see pyproject.toml) and is tested in tests/flows/test_compat.py (Ray's where
the ray extra is installed), so an upgrade that breaks one fails there, by name.

- `outside_task_run`: Prefect has no public way to submit tasks from inside a task as children of
  the flow run. Its task-run context lives in a context variable (`TaskRunContext.__var__`); it is
  cleared for the block and restored after, so the task runner does not serialise the running
  stage's parameters (the run's open database and models) with every submitted shard.
- `start_local_ray`: `ray.init(_node_ip_address="127.0.0.1")` still listens on the machine's
  outward address unless multi-node support is off, which Ray reads from the environment
  (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER) and caches in `ray._private.ray_constants.ENABLE_RAY_CLUSTER`;
  both are switched off for the start, then restored.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.context import TaskRunContext

LOOPBACK = "127.0.0.1"


@contextmanager
def outside_task_run() -> Iterator[None]:
    """The block runs as if no task run were active (TaskRunContext.get() is None), then the
    task run's context comes back."""
    token = TaskRunContext.__var__.set(None)  # type: ignore[arg-type]
    try:
        yield
    finally:
        TaskRunContext.__var__.reset(token)


_RAY_NODE_IP_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def start_local_ray(num_cpus: int) -> None:
    """Start a Ray instance on this machine only: `num_cpus` CPUs, no dashboard, and every Ray
    process (GCS, raylet, agents, workers) listening on 127.0.0.1.

    Told `_node_ip_address='127.0.0.1'`, Ray still swaps loopback for the machine's outward address
    and listens there, unless multi-node support is off (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read
    for choosing the node address only); it is switched off for the start, then restored.
    """
    import ray

    previous = os.environ.get(_RAY_NODE_IP_ENV)
    os.environ[_RAY_NODE_IP_ENV] = "0"
    constants = sys.modules["ray._private.ray_constants"]
    enabled = getattr(constants, "ENABLE_RAY_CLUSTER", True)
    setattr(constants, "ENABLE_RAY_CLUSTER", False)  # noqa: B010
    try:
        ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address=LOOPBACK, namespace="trace-rl")
    finally:
        setattr(constants, "ENABLE_RAY_CLUSTER", enabled)  # noqa: B010
        if previous is None:
            del os.environ[_RAY_NODE_IP_ENV]
        else:
            os.environ[_RAY_NODE_IP_ENV] = previous
