"""`RolloutStore`: the training stages' reads and writes, in trace_core types.

All writes of a stage go through `with store.stage(run, iteration, name) as w:`, one transaction
whose writers first delete what an earlier attempt of the same (run, iteration, stage) wrote and
then write again, together with the stage's completion marker:
a retried stage replaces its rows, a failure in the middle leaves nothing half-written, and
`completed_stages` tells a restarted run where to resume.

The writers themselves (`StageWriter`, the bulk tree insert) are in writer.py.

The one write outside a stage is `record_final_evaluation`: the per-question outcomes of the final
evaluation of a run's published policy, made after training (its lease long released). It writes only
rows of its own kinds (`FINAL_KINDS`), which no stage writes, and replaces them in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from trace_core.method.allocators import Anchor, PrefixPlan, RootPlan
from trace_core.method.evaluation import QuestionOutcome
from trace_core.method.headroom import PoolSample
from trace_core.method.tree import RolloutTree
from trace_rl.store.db import (
    StoreError,
    ensure_schema,
    make_engine,
    refuse_foreign,
    render_url,
    session_factory,
    transaction,
)
from trace_rl.store.lease import RunLease, RunLeaseError, aware, held_by_another
from trace_rl.store.mapping import TaskRecord, read_trees, to_record
from trace_rl.store.models import (
    Allocation,
    Checkpoint,
    EvalOutcome,
    HeadroomSample,
    Iteration,
    Prompt,
    Run,
    Stage,
    utcnow,
)
from trace_rl.store.writer import CheckpointRecord, StageWriter, finite

# the eval_outcomes kinds of a final evaluation: avg@n at temperature 1, and the greedy pass
FINAL_KINDS = ("final", "final_greedy")


@dataclass(frozen=True)
class RunSummary:
    """One run as `trace-rl runs list` shows it. lease_owner: the process writing it, if any."""

    name: str
    status: str
    created_at: datetime
    updated_at: datetime
    iterations: int
    allocator: str
    lease_owner: str | None


def _aware_time(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _required(value: float | None, what: str) -> float:
    """A value every row of its kind holds (the allocation was made on it); None means a damaged row."""
    if value is None:
        raise StoreError(f"a stored allocation lacks its {what}: the database was changed outside trace-rl")
    return float(value)


def _differences(stored: dict[str, Any], identity: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(section.key, stored value, new value) for every key of `identity` the stored snapshot holds otherwise."""
    out = []
    for section, values in identity.items():
        for key, value in values.items() if isinstance(values, dict) else []:
            there = stored.get(section, {}).get(key)
            if there != value:
                out.append((f"{section}.{key}", there, value))
    return out


class RolloutStore:
    """Reads and writes of training runs; see the module docstring."""

    def __init__(self, url: str, create: bool = True, read_only: bool = False) -> None:
        """create: make the schema in an empty database. read_only: only read (reports, queries):
        nothing is written, not even SQLite's journal mode, so a versioned file stays byte for byte."""
        self.url = url
        self.read_only = read_only
        refuse_foreign(url)
        self.engine = make_engine(url, read_only=read_only)
        ensure_schema(self.engine, create and not read_only)
        self._sessions = session_factory(self.engine)
        self._lease: RunLease | None = None

    def __repr__(self) -> str:
        return f"RolloutStore({render_url(self.url)})"

    def close(self) -> None:
        """Release connections. A SQLite file is left as one self-contained file (its write-ahead
        log folded back in), so copying it, versioning it or opening it read-only sees everything."""
        # leaving WAL mode needs the only connection to the file: the pool's idle ones (the lease's
        # heartbeat, a stage's session) are closed first, then one connection folds the log back in
        self.engine.dispose()
        if self.engine.dialect.name == "sqlite" and not self.read_only:
            try:
                with self.engine.connect() as conn:
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                    conn.exec_driver_sql("PRAGMA journal_mode=DELETE")
            except OperationalError:
                pass  # another process still has the file open; it stays in WAL mode
            finally:
                self.engine.dispose()

    # -- runs and stages --------------------------------------------------------------------------

    def open_run(
        self,
        name: str,
        settings: dict[str, Any],
        settings_hash: str,
        code_version: str,
        identity: dict[str, Any] | None = None,
    ) -> int:
        """The id of run `name`, created if new; a run started again must have the same settings
        (the same `settings_hash`), unless it never got as far as committing anything (it failed at
        start-up and nobody holds it): then it takes the new settings. `identity`, the settings the
        hash covers, lets a refusal name each key whose value differs from the stored run's."""
        with transaction(self._sessions) as s:
            run = s.scalars(select(Run).where(Run.name == name)).one_or_none()
            if run is None:
                run = Run(name=name, settings=settings, settings_hash=settings_hash, code_version=code_version)
                s.add(run)
                s.flush()
            elif run.settings_hash != settings_hash and self._never_started(s, run):
                run.settings, run.settings_hash, run.code_version = settings, settings_hash, code_version
            elif run.settings_hash != settings_hash:
                changed = _differences(run.settings, identity or {})
                detail = "; ".join(f"{k}: {old!r} there, {new!r} now" for k, old, new in changed[:8])
                raise StoreError(
                    f"run {name!r} already exists with other settings ({detail or 'hash ' + run.settings_hash}); "
                    f"resume it with the same settings, choose another run.name, or `trace-rl runs delete {name}` "
                    f"/ `trace-rl runs rename {name} NEW`"
                )
            return run.id

    @staticmethod
    def _never_started(s: Session, run: Run) -> bool:
        """No writer holds the run and it has committed nothing: no stage, iteration or checkpoint."""
        if run.lease_owner is not None:
            return False
        return all(
            s.scalar(select(func.count()).select_from(table).where(table.run_id == run.id)) == 0
            for table in (Stage, Iteration, Checkpoint)
        )

    def refuse_if_written(self, name: str) -> None:
        """Raise RunLeaseError (one line naming the holder) where a live process writes run `name`."""
        with self._sessions() as s:
            row = s.execute(select(Run.lease_owner, Run.lease_expires_at).where(Run.name == name)).one_or_none()
        if row is not None:
            refusal = held_by_another(name, row[0], aware(row[1]))
            if refusal:
                raise RunLeaseError(refusal)

    def take_lease(self, run_id: int, name: str, ttl_s: float) -> RunLease:
        """Become the run's only writer (see trace_rl/store/lease.py); every later stage transaction checks
        that this process still is. Raises RunLeaseError naming the current holder."""
        lease = RunLease(self._sessions, run_id, name, ttl_s)
        lease.acquire()
        self._lease = lease
        return lease

    def fence(self) -> AbstractContextManager[object]:
        """Publish a file inside this block: it holds the run's lease (`RunLease.fence`) while the file
        is renamed into place, and refuses (RunLeaseError) where another process took the run. Without
        a lease (analysis, tests) it fences nothing."""
        return self._lease.fence() if self._lease is not None else nullcontext()

    def release_lease(self, status: str) -> None:
        """Record the run's end (`done`, `failed`, `interrupted`) and let another process write it."""
        if self._lease is not None:
            self._lease.release(status)
            self._lease = None

    def runs(self) -> list[RunSummary]:
        """Every run of the database, oldest first."""
        with self._sessions() as s:
            rows = s.scalars(select(Run).order_by(Run.id)).all()
            counts = select(Iteration.run_id, func.count()).where(Iteration.iteration >= 0).group_by(Iteration.run_id)
            done: dict[int, int] = {run_id: n for run_id, n in s.execute(counts).tuples()}
        return [
            RunSummary(
                r.name,
                r.status,
                _aware_time(r.created_at),
                _aware_time(r.updated_at),
                int(done.get(r.id, 0)),
                str(r.settings.get("trace", {}).get("allocator", "")),
                r.lease_owner,
            )
            for r in rows
        ]

    def _exclusive(self, name: str) -> RunLease:
        """Hold run `name`'s lease (refused, naming the holder, while another process writes it)."""
        lease = RunLease(self._sessions, self.run_id(name), name, ttl_s=60.0)
        lease.acquire()
        return lease

    def delete_run(self, name: str) -> None:
        """Delete run `name` and everything it wrote (its trees, allocations, metrics, checkpoint
        records); the prompts it used stay, other runs may share them."""
        lease = self._exclusive(name)
        try:
            with transaction(self._sessions) as s:
                lease.verify(s)
                s.execute(delete(Run).where(Run.id == lease.run_id))
        finally:
            lease.release("deleted")  # the row is gone: nothing left to update
        self._fold_wal()

    def rename_run(self, old: str, new: str, locations: dict[str, str] | None = None) -> None:
        """Give run `old` the name `new`; `locations` rewrites checkpoint paths (old prefix -> new
        prefix) when the caller moved the run's folder."""
        with self._sessions() as s:
            if s.scalar(select(Run.id).where(Run.name == new)) is not None:
                raise StoreError(f"a run named {new!r} already exists")
            status = s.scalar(select(Run.status).where(Run.name == old))
        lease = self._exclusive(old)
        try:
            with transaction(self._sessions) as s:
                lease.verify(s)
                s.execute(update(Run).where(Run.id == lease.run_id).values(name=new, updated_at=utcnow()))
                for before, after in (locations or {}).items():
                    for row in s.scalars(select(Checkpoint).where(Checkpoint.run_id == lease.run_id)).all():
                        if row.location.startswith(before):
                            row.location = after + row.location[len(before) :]
        finally:
            lease.release(status or "done")
        self._fold_wal()

    def run_settings(self, run_id: int) -> dict[str, Any]:
        """The settings snapshot the run was started with."""
        with self._sessions() as s:
            return dict(s.scalars(select(Run.settings).where(Run.id == run_id)).one())

    def backed_up_iterations(self, run_id: int) -> list[int]:
        """Iterations whose trees carry backed-up targets (their `back_up` stage committed)."""
        with self._sessions() as s:
            rows = s.scalars(select(Stage.iteration).where(Stage.run_id == run_id, Stage.stage == "back_up"))
            return sorted(set(rows))

    def run_id(self, name: str) -> int:
        with self._sessions() as s:
            found = s.scalar(select(Run.id).where(Run.name == name))
        if found is None:
            raise StoreError(f"no run named {name!r} in {render_url(self.url)}")
        return found

    def completed_stages(self, run_id: int, iteration: int) -> set[str]:
        with self._sessions() as s:
            rows = s.scalars(select(Stage.stage).where(Stage.run_id == run_id, Stage.iteration == iteration))
            return set(rows)

    @contextmanager
    def stage(
        self, run_id: int, iteration: int, name: str | None = None, seconds: float | None = None
    ) -> Iterator[StageWriter]:
        """One transaction for a stage's writes; on success it also records the stage as done.

        An exception inside the block rolls everything back: nothing of the attempt remains.
        """
        with transaction(self._sessions) as s:
            if self._lease is not None:
                self._lease.verify(s)
            writer = StageWriter(s, run_id, iteration)
            yield writer
            if name is not None:
                s.execute(
                    delete(Stage).where(Stage.run_id == run_id, Stage.iteration == iteration, Stage.stage == name)
                )
                metrics = {k: finite(v) for k, v in writer.metrics.items()}
                s.add(Stage(run_id=run_id, iteration=iteration, stage=name, seconds=seconds, metrics=metrics))
        self._fold_wal()

    def _fold_wal(self) -> None:
        """SQLite: copy committed pages from the write-ahead log into the database file (passive: never
        waits for readers), so that after a kill -9 the file `rollouts.db` alone holds every
        committed stage. `trace-rl db backup` takes a consistent copy at any moment."""
        if self.engine.dialect.name == "sqlite":
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def stage_metrics(self, run_id: int, iteration: int) -> dict[str, Any]:
        """The measurements of every committed stage of an iteration, merged, with `time/<stage>`."""
        with self._sessions() as s:
            rows = s.scalars(
                select(Stage).where(Stage.run_id == run_id, Stage.iteration == iteration).order_by(Stage.id)
            ).all()
        merged: dict[str, Any] = {}
        for row in rows:
            merged.update(row.metrics)
            merged[f"time/{row.stage}"] = row.seconds
        return merged

    # -- the final evaluation (outside the training flow) -----------------------------------------------

    def published_iteration(self, run_id: int) -> int | None:
        """The iteration whose policy the run published last (`runs/<name>/policy`, recorded as its
        latest `export` checkpoint); None when it has published none."""
        with self._sessions() as s:
            return s.scalar(
                select(func.max(Checkpoint.iteration)).where(Checkpoint.run_id == run_id, Checkpoint.kind == "export")
            )

    def record_final_evaluation(
        self, run_id: int, iteration: int, outcomes: Mapping[tuple[str, str], Sequence[QuestionOutcome]]
    ) -> None:
        """Store a final evaluation of the policy published at `iteration`: `outcomes` by (kind, split),
        kind one of FINAL_KINDS. One transaction that first deletes every final-evaluation row of
        (run, iteration), so evaluating again replaces the earlier evaluation whole (a pass it no
        longer makes included). Needs no lease: the training flow never writes these kinds."""
        unknown = {kind for kind, _ in outcomes} - set(FINAL_KINDS)
        if unknown:
            raise ValueError(f"final evaluation kinds are {FINAL_KINDS}, not {sorted(unknown)}")
        with transaction(self._sessions) as s:
            s.execute(
                delete(EvalOutcome).where(
                    EvalOutcome.run_id == run_id,
                    EvalOutcome.iteration == iteration,
                    EvalOutcome.kind.in_(FINAL_KINDS),
                )
            )
            writer = StageWriter(s, run_id, iteration)
            for (kind, split), rows in outcomes.items():
                writer.eval_outcomes(split, rows, kind)
        self._fold_wal()

    # -- reads --------------------------------------------------------------------------------------

    def load_trees(self, run_id: int, iteration: int) -> list[RolloutTree]:
        """The iteration's trees in pool order, as trace_core trees."""
        with self._sessions() as s:
            return read_trees(s, run_id, iteration)

    def load_root_plan(self, run_id: int, iteration: int) -> tuple[list[TaskRecord], list[float], RootPlan]:
        """The stored pool (in order), its predictions and the Stage-1 plan."""
        with self._sessions() as s:
            rows = s.execute(
                select(Allocation, Prompt)
                .join(Prompt, Allocation.prompt_id == Prompt.id)
                .where(Allocation.run_id == run_id, Allocation.iteration == iteration, Allocation.stage == 1)
                .order_by(Allocation.pool_index)
            ).all()
        pool = [to_record(p) for _, p in rows]
        predicted = [_required(a.predicted, "Stage-1 prediction") for a, _ in rows]
        return pool, predicted, RootPlan(tuple(a.count for a, _ in rows), tuple(a.value for a, _ in rows))

    def load_prefix_plan(self, run_id: int, iteration: int) -> PrefixPlan:
        with self._sessions() as s:
            rows = s.scalars(
                select(Allocation)
                .where(Allocation.run_id == run_id, Allocation.iteration == iteration, Allocation.stage == 2)
                .order_by(Allocation.id)
            ).all()
        anchors = [r for r in rows if r.kind != "refill"]
        refills = [r for r in rows if r.kind == "refill"]
        return PrefixPlan(
            tuple(
                Anchor(
                    r.pool_index,
                    r.node_index,
                    _required(r.predicted, "anchor prediction"),
                    _required(r.realised_reward, "anchor reward"),
                )
                for r in anchors
            ),
            tuple(r.count for r in anchors),
            tuple(r.value for r in anchors),
            tuple((r.pool_index, r.count) for r in refills),
            tuple(r.value for r in refills),
        )

    def headroom(self, run_id: int) -> dict[int, list[PoolSample]]:
        """Every measured iteration's pool (in pool order), for the oracle ledger."""
        with self._sessions() as s:
            rows = s.scalars(
                select(HeadroomSample)
                .where(HeadroomSample.run_id == run_id)
                .order_by(HeadroomSample.iteration, HeadroomSample.pool_index)
            ).all()
        out: dict[int, list[PoolSample]] = {}
        for r in rows:
            out.setdefault(r.iteration, []).append(
                PoolSample(r.successes_first, r.successes_second, r.samples // 2, r.predicted, r.allocated)
            )
        return out

    def checkpoints(self, run_id: int, kind: str) -> list[tuple[int, CheckpointRecord]]:
        with self._sessions() as s:
            rows = s.scalars(
                select(Checkpoint)
                .where(Checkpoint.run_id == run_id, Checkpoint.kind == kind)
                .order_by(Checkpoint.iteration)
            ).all()
        return [(r.iteration, CheckpointRecord(r.kind, r.location, r.sha256)) for r in rows]

    def iteration_metrics(self, run_id: int) -> list[dict[str, Any]]:
        with self._sessions() as s:
            rows = s.scalars(select(Iteration).where(Iteration.run_id == run_id).order_by(Iteration.iteration)).all()
        return [{"iteration": r.iteration, **r.metrics} for r in rows]

    def eval_outcomes(self, run_id: int, iteration: int, split: str, kind: str = "in_flow") -> list[QuestionOutcome]:
        """The stored outcomes of one evaluation, in the order they were scored (question, then sample)."""
        with self._sessions() as s:
            rows = s.scalars(
                select(EvalOutcome)
                .where(
                    EvalOutcome.run_id == run_id,
                    EvalOutcome.iteration == iteration,
                    EvalOutcome.kind == kind,
                    EvalOutcome.split == split,
                )
                .order_by(EvalOutcome.id)
            ).all()
        return [QuestionOutcome(r.question_id, r.sample, r.correct, r.data_source) for r in rows]
