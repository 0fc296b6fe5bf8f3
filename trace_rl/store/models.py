"""The rollout database's tables (SQLAlchemy 2.0 typed models). These ORM classes never leave `store`.

Every row that a training stage writes carries (run, iteration) and sits under a unique constraint,
so writing a stage again replaces its rows instead of adding a second copy. Token ids and
log-probabilities are stored compactly as little-endian int32 / float32 byte strings.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Double,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        datetime: DateTime(timezone=True),
        float: Double,  # as the migrations declare it, on SQLAlchemy 2.0 and 2.1 alike
    }


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    settings: Mapped[dict[str, Any]]
    settings_hash: Mapped[str] = mapped_column(String(64))
    code_version: Mapped[str] = mapped_column(String(64))
    # running | done | failed | interrupted; a run whose writer was killed stays `running` with an
    # expired lease (see trace_rl/store/lease.py)
    status: Mapped[str] = mapped_column(String(20), default="running")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(200))  # host:pid:token of the one writer
    lease_expires_at: Mapped[datetime | None]


class Iteration(Base):
    __tablename__ = "iterations"
    __table_args__ = (UniqueConstraint("run_id", "iteration"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    iteration: Mapped[int]
    status: Mapped[str] = mapped_column(String(20), default="running")
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class Stage(Base):
    """A committed stage of one iteration; written in the same transaction as the stage's rows."""

    __tablename__ = "stages"
    __table_args__ = (UniqueConstraint("run_id", "iteration", "stage"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    iteration: Mapped[int]
    stage: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20), default="done")
    seconds: Mapped[float | None]
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)  # what the stage measured, namespaced
    finished_at: Mapped[datetime] = mapped_column(default=utcnow)


class Prompt(Base):
    __tablename__ = "prompts"
    __table_args__ = (UniqueConstraint("data_source", "dataset_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[str] = mapped_column(String(200))
    data_source: Mapped[str] = mapped_column(String(100))
    question: Mapped[str] = mapped_column(Text)
    golden_answers: Mapped[list[str]] = mapped_column(JSON)
    hops: Mapped[int | None]
    # a record the columns above cannot hold (a function-calling episode), as JSON; NULL for search QA
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Tree(Base):
    __tablename__ = "trees"
    __table_args__ = (UniqueConstraint("run_id", "iteration", "pool_index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    iteration: Mapped[int]
    pool_index: Mapped[int]
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"))
    allocator: Mapped[str] = mapped_column(String(40))
    budget: Mapped[int]  # leaves this tree was given (bare rollouts plus continuations)
    nodes: Mapped[list[Node]] = relationship(
        back_populates="tree", cascade="all, delete-orphan", passive_deletes=True, foreign_keys="Node.tree_id"
    )


class Node(Base):
    __tablename__ = "nodes"
    __table_args__ = (UniqueConstraint("tree_id", "node_index"), Index("ix_nodes_parent", "parent_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    tree_id: Mapped[int] = mapped_column(ForeignKey("trees.id", ondelete="CASCADE"))
    node_index: Mapped[int]  # the node's id inside its tree (trace_core's RolloutNode.node_id)
    parent_index: Mapped[int | None]
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    depth: Mapped[int]
    model_token_ids: Mapped[bytes] = mapped_column(LargeBinary)
    model_logprobs: Mapped[bytes] = mapped_column(LargeBinary)
    observation_token_ids: Mapped[bytes] = mapped_column(LargeBinary)
    text: Mapped[str] = mapped_column(Text)
    observation: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(String(20))
    argument: Mapped[str] = mapped_column(Text)
    finish_reason: Mapped[str] = mapped_column(String(20))
    terminal: Mapped[bool] = mapped_column(Boolean)
    reward: Mapped[float | None] = mapped_column(Float)
    predicted: Mapped[float | None] = mapped_column(Float)
    target: Mapped[float | None] = mapped_column(Float)
    leaf_count: Mapped[int] = mapped_column(Integer, default=0)
    origin: Mapped[str] = mapped_column(String(10))
    generated_tokens: Mapped[int] = mapped_column(Integer, default=0)
    # what the environment kept with the turn (function calling: calls, outputs, state digest), or NULL
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    tree: Mapped[Tree] = relationship(back_populates="nodes", foreign_keys=[tree_id])


class Allocation(Base):
    __tablename__ = "allocations"
    __table_args__ = (UniqueConstraint("run_id", "iteration", "stage", "pool_index", "node_index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    iteration: Mapped[int]
    stage: Mapped[int]  # 1: bare rollouts of a prompt, 2: continuations from an anchor (or a refill prompt)
    kind: Mapped[str] = mapped_column(String(10))  # "prompt" (stage 1), "anchor", "root" or "refill" (stage 2)
    pool_index: Mapped[int]
    prompt_id: Mapped[int | None] = mapped_column(ForeignKey("prompts.id"))  # stage 1 rows: the pool's prompt
    node_index: Mapped[int]  # 0 for a prompt
    predicted: Mapped[float | None] = mapped_column(Float)
    realised_reward: Mapped[float | None] = mapped_column(Float)
    value: Mapped[float] = mapped_column(Float)  # expected mixed groups bought by this allocation
    count: Mapped[int]


class PredictorFit(Base):
    __tablename__ = "predictor_fits"
    __table_args__ = (UniqueConstraint("run_id", "iteration"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    iteration: Mapped[int]
    loss: Mapped[float] = mapped_column(Float)
    examples: Mapped[int]
    steps: Mapped[int]
    brier: Mapped[float | None] = mapped_column(Float)  # of the predictions made before the fit
    auc: Mapped[float | None] = mapped_column(Float)
    calibration_error: Mapped[float | None] = mapped_column(Float)


class PolicyUpdate(Base):
    __tablename__ = "policy_updates"
    __table_args__ = (UniqueConstraint("run_id", "iteration"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    iteration: Mapped[int]
    loss: Mapped[float] = mapped_column(Float)
    kl: Mapped[float] = mapped_column(Float)
    clip_fraction: Mapped[float] = mapped_column(Float)
    grad_norm: Mapped[float] = mapped_column(Float)
    learning_rate: Mapped[float] = mapped_column(Float)
    tokens: Mapped[int]
    adapter_version: Mapped[int]


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("run_id", "iteration", "kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    iteration: Mapped[int]
    kind: Mapped[str] = mapped_column(String(20))  # "policy" or "predictor"
    location: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class HeadroomSample(Base):
    """The oracle ledger's measurement (trace_core/method/headroom.py): one row per pool prompt of a measured
    iteration, sampled `samples` times by the policy of that iteration, outside the training budget."""

    __tablename__ = "headroom_samples"
    __table_args__ = (UniqueConstraint("run_id", "iteration", "pool_index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    iteration: Mapped[int]
    pool_index: Mapped[int]
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"))
    samples: Mapped[int]  # measurement rollouts of this prompt (two halves for cross-fitting)
    successes_first: Mapped[int]  # successes among the first half
    successes_second: Mapped[int]  # ... and the second half
    predicted: Mapped[float] = mapped_column(Float)  # the predictor's v at allocation time
    allocated: Mapped[int]  # the run's Stage-1 bare rollouts for this prompt


class EvalOutcome(Base):
    """One sampled rollout of an evaluation, for paired per-question analysis (the `eval_questions`
    view aggregates them per question). kind: `in_flow` the training flow's dev evaluation of
    `iteration` (-1: before training); `final` / `final_greedy` the final evaluation of the run's
    published policy (`trace-rl evaluate`, the bench: avg@n at temperature 1 / one greedy sample), kept
    under the iteration that published it. sample: the rollout's index among the question's samples."""

    __tablename__ = "eval_outcomes"
    __table_args__ = (UniqueConstraint("run_id", "iteration", "kind", "split", "data_source", "question_id", "sample"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    iteration: Mapped[int]
    kind: Mapped[str] = mapped_column(String(20))  # in_flow | final | final_greedy
    split: Mapped[str] = mapped_column(String(10))  # dev | test
    data_source: Mapped[str] = mapped_column(String(100))
    question_id: Mapped[str] = mapped_column(String(200))  # the record's id (prompts.dataset_id)
    sample: Mapped[int]
    correct: Mapped[float] = mapped_column(Float)  # the rollout's reward: 1.0 exactly right, 0.0 not
