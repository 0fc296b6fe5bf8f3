"""views: effective_ratio returns floats on every engine; a headroom_pool view of the oracle ledger

PostgreSQL typed `AVG(1.0 * ...)` as numeric, so clients received Decimal('0.666...67') where SQLite
gave a float: both ratios are now cast to FLOAT. `headroom_pool` shows each measured pool prompt
(trace-rl headroom) with its question, measured success rate, prediction and allocation.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 07:45:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MIXED = "CASE WHEN root.target > 0 AND root.target < 1 THEN 1 ELSE 0 END"

EFFECTIVE_RATIO = f"""
CREATE VIEW effective_ratio AS
SELECT r.name AS run, t.iteration, COUNT(*) AS trees,
       SUM({_MIXED}) AS mixed_trees,
       CAST(AVG(1.0 * {_MIXED}) AS FLOAT) AS effective_ratio,
       SUM(root.leaf_count) AS leaves,
       CAST(SUM(root.target * root.leaf_count) / SUM(root.leaf_count) AS FLOAT) AS mean_reward
FROM trees t
JOIN runs r ON t.run_id = r.id
JOIN nodes root ON root.tree_id = t.id AND root.node_index = 0
WHERE root.leaf_count > 0
GROUP BY r.name, t.iteration"""

OLD_EFFECTIVE_RATIO = f"""
CREATE VIEW effective_ratio AS
SELECT r.name AS run, t.iteration, COUNT(*) AS trees,
       SUM({_MIXED}) AS mixed_trees,
       AVG(1.0 * {_MIXED}) AS effective_ratio,
       SUM(root.leaf_count) AS leaves,
       SUM(root.target * root.leaf_count) / SUM(root.leaf_count) AS mean_reward
FROM trees t
JOIN runs r ON t.run_id = r.id
JOIN nodes root ON root.tree_id = t.id AND root.node_index = 0
WHERE root.leaf_count > 0
GROUP BY r.name, t.iteration"""

HEADROOM_POOL = """
CREATE VIEW headroom_pool AS
SELECT r.name AS run, h.iteration, h.pool_index, p.data_source, p.dataset_id AS question_id, p.question,
       h.samples, h.successes_first + h.successes_second AS successes,
       CAST(h.successes_first + h.successes_second AS FLOAT) / h.samples AS success_rate,
       h.predicted, h.allocated
FROM headroom_samples h
JOIN runs r ON h.run_id = r.id
JOIN prompts p ON h.prompt_id = p.id"""


def upgrade() -> None:
    op.execute("DROP VIEW IF EXISTS effective_ratio")
    op.execute(EFFECTIVE_RATIO)
    op.execute(HEADROOM_POOL)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS headroom_pool")
    op.execute("DROP VIEW IF EXISTS effective_ratio")
    op.execute(OLD_EFFECTIVE_RATIO)
