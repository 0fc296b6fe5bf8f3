"""eval outcomes: every evaluation's per-question, per-sample rewards, and an eval_questions view

`eval_outcomes` holds one row per sampled rollout of an evaluation: the training flow's dev
evaluations (`kind` = 'in_flow', at their iteration; -1 is before training) and the final
evaluation of the published policy on dev and test (`kind` = 'final', and 'final_greedy' for its
greedy pass, at the iteration that published the policy). `eval_questions` is one row per
evaluated question: its samples and success rate, by run name, for paired per-question comparisons.
Existing runs get no rows: nothing is rewritten.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EVAL_QUESTIONS = """
CREATE VIEW eval_questions AS
SELECT r.name AS run, e.iteration, e.kind, e.split, e.data_source, e.question_id,
       COUNT(*) AS samples, CAST(AVG(e.correct) AS FLOAT) AS success_rate
FROM eval_outcomes e
JOIN runs r ON e.run_id = r.id
GROUP BY r.name, e.iteration, e.kind, e.split, e.data_source, e.question_id"""


def upgrade() -> None:
    op.create_table(
        "eval_outcomes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("iteration", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("split", sa.String(length=10), nullable=False),
        sa.Column("data_source", sa.String(length=100), nullable=False),
        sa.Column("question_id", sa.String(length=200), nullable=False),
        sa.Column("sample", sa.Integer(), nullable=False),
        sa.Column("correct", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "iteration", "kind", "split", "data_source", "question_id", "sample"),
    )
    op.execute(EVAL_QUESTIONS)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS eval_questions")
    op.drop_table("eval_outcomes")
