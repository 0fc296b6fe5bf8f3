"""The internals trace-rl relies on still behave as trace_rl/flows/compat.py says (Ray's in test_ray_runner.py)."""

from __future__ import annotations

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
