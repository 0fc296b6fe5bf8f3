"""`StageWriter`: the writes of one stage of one iteration, in trace_core types.

A writer lives inside `RolloutStore.stage` (store.py), one transaction: each method first deletes
what an earlier attempt of the same (run, iteration, ...) wrote, then writes again, so a retried
stage replaces its rows. Trees are written in bulk: prompts with one upsert, trees with one insert,
every node with one executemany (token ids packed as int32 bytes), then every node's `parent_id`
with one UPDATE that looks the parent up by (tree, parent index).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from sqlalchemy import Table, and_, delete, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, aliased

from trace_core.method.allocators import PrefixPlan, RootPlan
from trace_core.method.tree import RolloutTree
from trace_rl.store.mapping import TaskRecord, node_row, prompt_row
from trace_rl.store.models import (
    Allocation,
    Checkpoint,
    EvalOutcome,
    HeadroomSample,
    Iteration,
    Node,
    PolicyUpdate,
    PredictorFit,
    Prompt,
    Tree,
    utcnow,
)

if TYPE_CHECKING:  # annotations only: writing rows needs neither torch nor the evaluation code
    from trace_core.method.evaluation import QuestionOutcome
    from trace_core.method.headroom import PoolSample
    from trace_core.method.loss import UpdateStats
    from trace_core.method.predictor import FitReport, PredictorQuality


@dataclass(frozen=True)
class CheckpointRecord:
    """A checkpoint file written elsewhere: where it is and the sha256 of its content."""

    kind: str
    location: str
    sha256: str


def finite(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _table(model: type) -> Table:
    """The Core table behind an ORM class (Core executemany is what makes bulk writes fast)."""
    return cast(Table, model.__table__)  # type: ignore[attr-defined]


class StageWriter:
    """The writes of one stage of one iteration; all of them commit together (see `RolloutStore.stage`).

    Each method first deletes what an earlier attempt wrote for the same (run, iteration, ...), so a
    retried stage replaces its rows.
    """

    def __init__(self, session: Session, run_id: int, iteration: int) -> None:
        self.s, self.run_id, self.iteration = session, run_id, iteration
        self.metrics: dict[str, float] = {}

    def stage_metrics(self, metrics: dict[str, float]) -> None:
        """Measurements of this stage, kept with its completion marker."""
        self.metrics.update(metrics)

    def trees(self, trees: Sequence[RolloutTree], allocator: str) -> None:
        """Replace the iteration's trees (indexed by pool position) and all their nodes."""
        s, run_id, iteration = self.s, self.run_id, self.iteration
        s.execute(delete(Tree).where(Tree.run_id == run_id, Tree.iteration == iteration))
        prompts = prompt_ids(s, (t.record for t in trees))
        tree_rows = [
            {
                "run_id": run_id,
                "iteration": iteration,
                "pool_index": i,
                "allocator": allocator,
                "prompt_id": prompts[(t.record.data_source, t.record.id)],
                "budget": len(t.leaves()),
            }
            for i, t in enumerate(trees)
        ]
        if not tree_rows:
            return
        s.execute(insert(_table(Tree)), tree_rows)
        found = s.execute(select(Tree.pool_index, Tree.id).where(Tree.run_id == run_id, Tree.iteration == iteration))
        ids = {pool_index: tree_id for pool_index, tree_id in found}
        s.execute(insert(_table(Node)), [node_row(ids[i], n) for i, t in enumerate(trees) for n in t])
        parent = aliased(Node)
        lookup = (
            select(parent.id)
            .where(and_(parent.tree_id == Node.tree_id, parent.node_index == Node.parent_index))
            .scalar_subquery()
        )
        s.execute(
            update(Node)
            .where(Node.tree_id.in_(list(ids.values())), Node.parent_index.is_not(None))
            .values(parent_id=lookup)
            .execution_options(synchronize_session=False)
        )

    def root_plan(self, pool: Sequence[TaskRecord], predicted: Sequence[float], plan: RootPlan) -> None:
        """Stage 1: one row per pool candidate (count 0 included), so the pool itself is kept too."""
        self._delete_allocations(1)
        prompts = prompt_ids(self.s, pool)
        rows = [
            {
                "run_id": self.run_id,
                "iteration": self.iteration,
                "stage": 1,
                "kind": "prompt",
                "pool_index": i,
                "prompt_id": prompts[(r.data_source, r.id)],
                "node_index": 0,
                "predicted": float(v),
                "realised_reward": None,
                "value": value,
                "count": m,
            }
            for i, (r, v, m, value) in enumerate(zip(pool, predicted, plan.counts, plan.values, strict=True))
        ]
        if rows:
            self.s.execute(insert(_table(Allocation)), rows)

    def prefix_plan(self, plan: PrefixPlan, unused_predicted: dict[int, float]) -> None:
        """Stage 2: one row per anchor offered (count 0 included) and per refill prompt (with the
        prediction it was chosen on, from `unused_predicted`)."""
        self._delete_allocations(2)
        base = {"run_id": self.run_id, "iteration": self.iteration, "stage": 2}
        rows: list[dict[str, Any]] = [
            {
                **base,
                "kind": "root" if a.node_id == 0 else "anchor",
                "pool_index": a.tree,
                "node_index": a.node_id,
                "predicted": a.p,
                "realised_reward": a.r,
                "value": value,
                "count": k,
            }
            for a, k, value in zip(plan.anchors, plan.counts, plan.values, strict=True)
        ]
        rows += [
            {
                **base,
                "kind": "refill",
                "pool_index": c,
                "node_index": 0,
                "predicted": unused_predicted[c],
                "realised_reward": None,
                "value": value,
                "count": m,
            }
            for (c, m), value in zip(plan.new_roots, plan.new_root_values, strict=True)
        ]
        if rows:
            self.s.execute(insert(_table(Allocation)), rows)

    def _delete_allocations(self, stage: int) -> None:
        self.s.execute(
            delete(Allocation).where(
                Allocation.run_id == self.run_id, Allocation.iteration == self.iteration, Allocation.stage == stage
            )
        )

    def headroom(self, pool: Sequence[TaskRecord], samples: Sequence[PoolSample]) -> None:
        """The oracle ledger's measurement of the iteration's pool (one row per prompt)."""
        self.s.execute(
            delete(HeadroomSample).where(
                HeadroomSample.run_id == self.run_id, HeadroomSample.iteration == self.iteration
            )
        )
        prompts = prompt_ids(self.s, pool)
        rows = [
            {
                "run_id": self.run_id,
                "iteration": self.iteration,
                "pool_index": i,
                "prompt_id": prompts[(r.data_source, r.id)],
                "samples": 2 * m.half,
                "successes_first": m.successes_first,
                "successes_second": m.successes_second,
                "predicted": m.predicted,
                "allocated": m.allocated,
            }
            for i, (r, m) in enumerate(zip(pool, samples, strict=True))
        ]
        if rows:
            self.s.execute(insert(_table(HeadroomSample)), rows)

    def eval_outcomes(self, split: str, outcomes: Sequence[QuestionOutcome], kind: str = "in_flow") -> None:
        """Replace the iteration's evaluation outcomes of (`kind`, `split`): one row per sampled rollout."""
        self.s.execute(
            delete(EvalOutcome).where(
                EvalOutcome.run_id == self.run_id,
                EvalOutcome.iteration == self.iteration,
                EvalOutcome.kind == kind,
                EvalOutcome.split == split,
            )
        )
        rows = [
            {
                "run_id": self.run_id,
                "iteration": self.iteration,
                "kind": kind,
                "split": split,
                "data_source": o.data_source,
                "question_id": o.question_id,
                "sample": o.sample,
                "correct": float(o.correct),
            }
            for o in outcomes
        ]
        if rows:
            self.s.execute(insert(_table(EvalOutcome)), rows)

    def predictor_fit(self, fit: FitReport, before: PredictorQuality) -> None:
        """The refit's loss and size, and the quality of the predictions made before it (`before`)."""
        self.s.execute(
            delete(PredictorFit).where(PredictorFit.run_id == self.run_id, PredictorFit.iteration == self.iteration)
        )
        self.s.add(
            PredictorFit(
                run_id=self.run_id,
                iteration=self.iteration,
                loss=fit.loss,
                examples=fit.examples,
                steps=fit.steps,
                brier=finite(before.brier),
                auc=finite(before.auc),
                calibration_error=finite(before.ece),
            )
        )

    def policy_update(self, stats: UpdateStats, adapter_version: int) -> None:
        self.s.execute(
            delete(PolicyUpdate).where(PolicyUpdate.run_id == self.run_id, PolicyUpdate.iteration == self.iteration)
        )
        self.s.add(
            PolicyUpdate(
                run_id=self.run_id,
                iteration=self.iteration,
                loss=stats.loss,
                kl=stats.kl,
                clip_fraction=stats.clip_fraction,
                grad_norm=stats.grad_norm,
                learning_rate=stats.learning_rate,
                tokens=stats.tokens,
                adapter_version=adapter_version,
            )
        )

    def checkpoint(self, record: CheckpointRecord) -> None:
        self.s.execute(
            delete(Checkpoint).where(
                Checkpoint.run_id == self.run_id, Checkpoint.iteration == self.iteration, Checkpoint.kind == record.kind
            )
        )
        self.s.add(
            Checkpoint(
                run_id=self.run_id,
                iteration=self.iteration,
                kind=record.kind,
                location=record.location,
                sha256=record.sha256,
            )
        )

    def iteration_metrics(self, metrics: dict[str, float], status: str = "done") -> None:
        clean = {k: finite(v) for k, v in metrics.items()}
        self.s.execute(delete(Iteration).where(Iteration.run_id == self.run_id, Iteration.iteration == self.iteration))
        self.s.add(
            Iteration(
                run_id=self.run_id,
                iteration=self.iteration,
                status=status,
                metrics=clean,
                finished_at=utcnow() if status == "done" else None,
            )
        )


def prompt_ids(s: Session, records: Iterable[TaskRecord]) -> dict[tuple[str, str], int]:
    """Each record's prompt row id, inserting the prompts not stored yet (one upsert per 500)."""
    unique = {(r.data_source, r.id): r for r in records}
    if not unique:
        return {}
    rows = [prompt_row(r) for r in unique.values()]
    dialect = s.get_bind().dialect.name
    maker = pg_insert if dialect == "postgresql" else sqlite_insert
    for chunk in range(0, len(rows), 500):
        stmt = maker(Prompt).on_conflict_do_nothing(index_elements=["data_source", "dataset_id"])
        s.execute(stmt, rows[chunk : chunk + 500])
    found = s.execute(
        select(Prompt.data_source, Prompt.dataset_id, Prompt.id).where(Prompt.dataset_id.in_([k[1] for k in unique]))
    )
    return {(src, did): pid for src, did, pid in found if (src, did) in unique}
