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

This module only sequences: the stage table is stages.py, what the stages share (the run's context,
the stage transaction, seeds and checkpoints) context.py.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run as prefect_flow_run
from prefect.states import Cancelled

from trace_core.atomic import write_text_atomic
from trace_rl.config.settings import Settings, flow_overrides, load_settings
from trace_rl.flows.context import TrainContext, open_context
from trace_rl.flows.pipeline import Log
from trace_rl.flows.sharding import ShardRunner, shard_runner
from trace_rl.flows.stages import STAGES, check_fail_once, stage
from trace_rl.store.lease import RunLeaseError


def _progress(ctx: TrainContext, it: int, metrics: dict[str, Any], started: tuple[int, float]) -> None:
    """One log line per iteration: tqdm's bar with elapsed time and ETA (timed from the first
    iteration this process trained, so a resumed run's rate is its own), reward, effective ratio
    and dev EM where evaluated."""
    from tqdm import tqdm

    first, since = started
    n = ctx.spec.iterations
    meter = tqdm.format_meter(
        it + 1 - first,
        n - first,
        time.perf_counter() - since,
        ncols=44,
        unit="it",
        bar_format="|{bar}| {elapsed}<{remaining}, {rate_fmt}",
    )
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
    # a name like `nightly-{date}` is filled from this flow run's scheduled start: each tick of a
    # schedule trains a run of its own, and a retry of the flow run continues the same one
    s = s.named_at(prefect_flow_run.scheduled_start_time)
    logger = get_run_logger()

    def log(message: str) -> None:
        logger.info(message)

    check_fail_once(s.orchestration.fail_once)
    try:
        ctx = open_context(s, log)
    except RunLeaseError as refused:
        # another live process writes this run (an overlapping schedule tick, a second `trace-rl run`):
        # a flow run in state Refused (type CANCELLED) with the holder in its message, no traceback
        logger.warning(str(refused))
        # (a returned state becomes the run's final state; a direct call raises CancelledRun instead)
        return Cancelled(name="Refused", message=str(refused))  # type: ignore[return-value]
    try:
        with _terminate_as_interrupt():
            history = _train(ctx, lambda: shard_runner(s, ctx.runtime))
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
    rows = "\n".join(f"| {k} | {v} |" for k, v in run_summary(s, history).items())
    key = "".join(c if c.isalnum() else "-" for c in f"{s.run.name}-summary".lower())
    create_markdown_artifact(
        markdown=f"### trace-rl run {s.run.name}\n\n| | |\n|---|---|\n{rows}",
        key=key,
        description="trace-rl run summary",
    )
    log(f"run {s.run.name!r} finished: metrics in {run_dir / 'metrics.jsonl'}")


def run_summary(s: Settings, history: list[dict[str, Any]]) -> dict[str, str]:
    """A finished run in a few figures (its Prefect artifact; `trace-rl run` prints them)."""
    first, last = history[0], history[-1]
    iterations = [row for row in history if row["iteration"] >= 0]
    ratios = [r["rollout/effective_ratio"] for r in iterations if r.get("rollout/effective_ratio") is not None]

    def num(row: dict[str, Any], key: str) -> float:
        value = row.get(key)
        return float("nan") if value is None else float(value)

    def before_after(key: str) -> str:
        return f"{num(first, key):.3f} -> {num(last, key):.3f}"

    return {
        "allocator": s.trace.allocator,
        "predictor": s.predictor.name,
        "iterations": str(len(iterations)),
        "dev EM before -> after": before_after("eval/em"),
        "dev F1 before -> after": before_after("eval/f1"),
        "mean effective ratio": f"{sum(ratios) / max(len(ratios), 1):.3f}",
        "leaves per iteration": str(s.trace.budget),
        "predictor AUC on dev (held out)": f"{num(last, 'predictor/dev_auc'):.3f}",
        "metrics": str(s.run.output_dir / s.run.name / "metrics.jsonl"),
    }


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


def _train(ctx: TrainContext, shards: Callable[[], AbstractContextManager[ShardRunner]]) -> list[dict[str, Any]]:
    """Every stage not yet committed, in order, iteration by iteration; the rollout stages grow their
    shards on the runner `shards()` opens."""
    spec = ctx.spec
    retried = {entry.name: entry.task.with_options(**spec.retry_options()) for entry in STAGES}
    history = []
    if "evaluate" not in ctx.store.completed_stages(ctx.run_id, -1):
        e = spec.evaluation
        ctx.log(f"evaluating the starting policy on {e.questions} dev questions x {e.samples} samples")
        retried["evaluate"](ctx, -1, stage("evaluate"))
    history.append({"iteration": -1, **_iteration_row(ctx, -1)})
    finished = _trained_iterations(ctx)
    if len(finished) >= spec.iterations:  # never shrinks a run extended past train.iterations
        ctx.log(
            f"run {spec.name!r} has already trained {len(finished)} iterations (train.iterations = "
            f"{spec.iterations}): nothing left to do (raise train.iterations to continue it, or choose another "
            "run.name)"
        )
        history += [{"iteration": it, **_iteration_row(ctx, it)} for it in finished]
        ctx.store.release_lease("done")
        return history
    started = (len(finished), time.perf_counter())
    with shards() as ctx.shards:
        for it in range(spec.iterations):
            done = ctx.store.completed_stages(ctx.run_id, it)
            for due in STAGES:
                if due.name not in done and due.due(spec, it):
                    retried[due.name](ctx, it, due)
            row = _iteration_row(ctx, it)
            history.append({"iteration": it, **row})
            if it >= started[0]:
                _progress(ctx, it, row, started)
    ctx.store.release_lease("done")
    return history


def _trained_iterations(ctx: TrainContext) -> list[int]:
    """The iterations 0, 1, ... the run has finished (its checkpoint stage committed), all of them."""
    it = 0
    while "checkpoint" in ctx.store.completed_stages(ctx.run_id, it):
        it += 1
    return list(range(it))


def _iteration_row(ctx: TrainContext, it: int) -> dict[str, Any]:
    rows = [r for r in ctx.store.iteration_metrics(ctx.run_id) if r["iteration"] == it]
    return {k: v for k, v in rows[0].items() if k != "iteration"} if rows else {}
