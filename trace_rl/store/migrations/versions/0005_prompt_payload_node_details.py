"""prompt payloads and node details: a second task family's records and its environment's per-turn data

`prompts.payload` holds a record the question columns cannot (a BFCL multi-turn episode: its user
turns, APIs, initial state, held-back functions and ground truth), as JSON; NULL for search QA
questions, which the columns hold. `nodes.details` holds what the environment kept with a turn
(function calling: the turn's calls, their outputs and a digest of the API state after it); NULL
where there is none. Existing rows keep NULL in both: nothing is rewritten.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 00:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("prompts") as batch:
        batch.add_column(sa.Column("payload", sa.JSON(), nullable=True))
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("details", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("details")
    with op.batch_alter_table("prompts") as batch:
        batch.drop_column("payload")
