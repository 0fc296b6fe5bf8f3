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
- `tie_temporary_server_to_this_process`: Prefect starts its temporary API server (no
  PREFECT_API_URL set) with `subprocess.Popen` in `prefect.server.api.server` and stops it only at
  exit, so a `kill -9` of trace-rl left it running. That module's `subprocess` is given a `Popen`
  that asks Linux to send the server SIGTERM when the thread that started it ends
  (PR_SET_PDEATHSIG); only where that thread is the main thread, so the server lives exactly as long
  as the process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import types
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


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child, between fork and exec
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class _PopenDyingWithParent(subprocess.Popen):  # type: ignore[type-arg]
    def __init__(self, *args: object, **kwargs: object) -> None:
        if sys.platform == "linux" and threading.current_thread() is threading.main_thread():
            kwargs.setdefault("preexec_fn", _die_with_parent)
        super().__init__(*args, **kwargs)  # type: ignore[call-overload]


class _SubprocessForServer(types.ModuleType):
    """`subprocess` as Prefect's server module sees it: the same, but for `Popen`."""

    Popen = _PopenDyingWithParent

    def __getattr__(self, name: str) -> object:
        return getattr(subprocess, name)


def tie_temporary_server_to_this_process() -> None:
    """Prefect's temporary API server, once started by this process, ends when it ends, even by
    SIGKILL (Linux; elsewhere unchanged). Idempotent."""
    from prefect.server.api import server

    if not isinstance(server.subprocess, _SubprocessForServer):
        server.subprocess = _SubprocessForServer("subprocess")  # type: ignore[assignment]
