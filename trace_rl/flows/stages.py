"""The stage table: every stage of a training iteration, in the order the flow (training.py) runs
them, with its Prefect task, its random stream and when it is due.

    allocate_roots -> roll_out_roots -> allocate_prefixes -> roll_out_prefixes -> back_up
    -> [measure_headroom] -> refit_predictor -> update_policy -> evaluate -> checkpoint

The sampling stages are in sampling_stages.py, the learning ones in learn_stages.py, the measuring
ones in measure_stages.py. A stream number is given once and never reused (10 is the oracle
control's, inside allocate_roots), so adding a stage changes no other stage's stream, and no run's
results.
"""

from __future__ import annotations

from collections.abc import Sequence

from trace_rl.config.errors import SettingsError
from trace_rl.flows.context import Stage
from trace_rl.flows.learn_stages import checkpoint, refit_predictor, update_policy
from trace_rl.flows.measure_stages import evaluate, headroom_due, measure_headroom
from trace_rl.flows.sampling_stages import (
    ORACLE_ROOTS_STREAM,
    allocate_prefixes,
    allocate_roots,
    back_up,
    roll_out_prefixes,
    roll_out_roots,
)

STAGES: tuple[Stage, ...] = (
    Stage("allocate_roots", allocate_roots, stream=0),
    Stage("roll_out_roots", roll_out_roots, stream=1),
    Stage("allocate_prefixes", allocate_prefixes, stream=2),
    Stage("roll_out_prefixes", roll_out_prefixes, stream=3),
    Stage("back_up", back_up, stream=4),
    Stage("measure_headroom", measure_headroom, stream=9, due=headroom_due),
    Stage("refit_predictor", refit_predictor, stream=5),
    Stage("update_policy", update_policy, stream=6),
    Stage("evaluate", evaluate, stream=7),
    Stage("checkpoint", checkpoint, stream=8),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)
assert len({stage.stream for stage in STAGES} | {ORACLE_ROOTS_STREAM}) == len(STAGES) + 1, "a stream is reused"


def stage(name: str) -> Stage:
    return next(row for row in STAGES if row.name == name)


def check_fail_once(fail_once: Sequence[str]) -> None:
    """`orchestration.fail_once` names only stages of this table."""
    for item in fail_once:
        if item.partition("@")[0] not in STAGE_NAMES:
            raise SettingsError(
                f"orchestration.fail_once: {item!r} names no stage; the stages are {', '.join(STAGE_NAMES)}"
            )
