"""The internals trace-rl relies on still behave as trace_rl/flows/compat.py says (Ray's in test_ray_runner.py)."""

from __future__ import annotations

import sys

import pytest
from prefect import flow, task
from prefect.context import TaskRunContext

from trace_rl.flows.compat import outside_task_run


def test_outside_task_run_hides_the_running_task_for_the_block_and_brings_it_back(prefect_api):
    @task
    def stage() -> tuple[bool, bool, bool]:
        before = TaskRunContext.get() is not None
        with outside_task_run():
            inside = TaskRunContext.get() is None
        return before, inside, TaskRunContext.get() is not None

    @flow
    def run() -> tuple[bool, bool, bool]:
        return stage()

    assert run() == (True, True, True)


_KILLED_CHILD = """
import sys, time
from prefect import flow
from trace_rl.flows.compat import tie_temporary_server_to_this_process
if sys.argv[1] == "tied":
    tie_temporary_server_to_this_process()
from prefect.server.api.server import SubprocessASGIServer

@flow
def hello() -> int:
    return 1

hello()
server = SubprocessASGIServer._instances
print(next(s.server_process.pid for s in server.values() if s.server_process), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie waiting for its reaper is gone too
        return stat.read().split(") ")[1][0] != "Z"


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_sigkilled_process_leaves_no_temporary_prefect_server_behind(tmp_path):
    import os
    import signal
    import subprocess
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(tmp_path)
    servers = {}
    for mode in ("tied", "untied"):
        child = subprocess.Popen(
            [sys.executable, "-c", _KILLED_CHILD, mode], stdout=subprocess.PIPE, text=True, env=env
        )
        assert child.stdout is not None
        servers[mode] = int(child.stdout.readline())
        child.send_signal(signal.SIGKILL)
        child.wait()
    try:
        deadline = time.monotonic() + 20
        while _alive(servers["tied"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(servers["tied"])
        assert _alive(servers["untied"])  # what Prefect alone leaves behind
    finally:
        for pid in servers.values():
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
