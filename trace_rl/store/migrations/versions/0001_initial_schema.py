"""initial schema: runs, iterations, stages, prompts, trees, nodes, allocations, fits, updates, checkpoints

Also creates the analysis views (documented in docs/database.md): effective_ratio, leaf_paths,
anchor_outcomes.

Revision ID: 0001
Revises:
Create Date: 2026-11-27 18:03:40.916312
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

_MIXED = "CASE WHEN {n}.target > 0 AND {n}.target < 1 THEN 1 ELSE 0 END"

VIEWS = {
    "effective_ratio": f"""
CREATE VIEW effective_ratio AS
SELECT r.name AS run, t.iteration, COUNT(*) AS trees,
       SUM({_MIXED.format(n="root")}) AS mixed_trees,
       AVG(1.0 * {_MIXED.format(n="root")}) AS effective_ratio,
       SUM(root.leaf_count) AS leaves,
       SUM(root.target * root.leaf_count) / SUM(root.leaf_count) AS mean_reward
FROM trees t
JOIN runs r ON t.run_id = r.id
JOIN nodes root ON root.tree_id = t.id AND root.node_index = 0
WHERE root.leaf_count > 0
GROUP BY r.name, t.iteration""",
    "leaf_paths": f"""
CREATE VIEW leaf_paths AS
SELECT r.name AS run, t.iteration, t.id AS tree_id, t.allocator, p.data_source, p.dataset_id AS question_id,
       p.question, n.id AS leaf_id, n.depth, n.origin, n.action, n.argument AS answer, n.reward,
       parent.predicted AS parent_predicted, root.predicted AS prompt_predicted,
       root.target AS prompt_success_rate, root.leaf_count AS prompt_leaves,
       {_MIXED.format(n="root")} AS tree_mixed
FROM nodes n
JOIN trees t ON n.tree_id = t.id
JOIN runs r ON t.run_id = r.id
JOIN prompts p ON t.prompt_id = p.id
JOIN nodes root ON root.tree_id = t.id AND root.node_index = 0
LEFT JOIN nodes parent ON parent.id = n.parent_id
WHERE n.terminal""",
    "anchor_outcomes": f"""
CREATE VIEW anchor_outcomes AS
SELECT r.name AS run, t.iteration, t.id AS tree_id, n.id AS node_id, n.node_index, n.depth, n.origin,
       n.action, n.argument, n.predicted, n.target, n.leaf_count,
       CAST(ROUND(n.target * n.leaf_count) AS INTEGER) AS successes,
       {_MIXED.format(n="n")} AS mixed,
       (SELECT COUNT(*) FROM nodes c WHERE c.parent_id = n.id) AS children
FROM nodes n
JOIN trees t ON n.tree_id = t.id
JOIN runs r ON t.run_id = r.id
WHERE NOT n.terminal AND n.leaf_count > 0""",
}


revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "prompts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.String(length=200), nullable=False),
        sa.Column("data_source", sa.String(length=100), nullable=False),
        sa.Column("question", sa.Text(), nullable=False),
        sa.Column("golden_answers", sa.JSON(), nullable=False),
        sa.Column("hops", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("data_source", "dataset_id"),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("settings_hash", sa.String(length=64), nullable=False),
        sa.Column("code_version", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "allocations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("iteration", sa.Integer(), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("pool_index", sa.Integer(), nullable=False),
        sa.Column("prompt_id", sa.Integer(), nullable=True),
        sa.Column("node_index", sa.Integer(), nullable=False),
        sa.Column("predicted", sa.Float(), nullable=True),
        sa.Column("realised_reward", sa.Float(), nullable=True),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["prompt_id"], ["prompts.id"]),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "iteration", "stage", "pool_index", "node_index"),
    )
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("iteration", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("location", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "iteration", "kind"),
    )
    op.create_table(
        "iterations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("iteration", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "iteration"),
    )
    op.create_table(
        "policy_updates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("iteration", sa.Integer(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=False),
        sa.Column("kl", sa.Float(), nullable=False),
        sa.Column("clip_fraction", sa.Float(), nullable=False),
        sa.Column("grad_norm", sa.Float(), nullable=False),
        sa.Column("learning_rate", sa.Float(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("adapter_version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "iteration"),
    )
    op.create_table(
        "predictor_fits",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("iteration", sa.Integer(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=False),
        sa.Column("examples", sa.Integer(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("brier", sa.Float(), nullable=True),
        sa.Column("auc", sa.Float(), nullable=True),
        sa.Column("calibration_error", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "iteration"),
    )
    op.create_table(
        "stages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("iteration", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("seconds", sa.Double(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "iteration", "stage"),
    )
    op.create_table(
        "trees",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("iteration", sa.Integer(), nullable=False),
        sa.Column("pool_index", sa.Integer(), nullable=False),
        sa.Column("prompt_id", sa.Integer(), nullable=False),
        sa.Column("allocator", sa.String(length=40), nullable=False),
        sa.Column("budget", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["prompt_id"],
            ["prompts.id"],
        ),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "iteration", "pool_index"),
    )
    op.create_table(
        "nodes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tree_id", sa.Integer(), nullable=False),
        sa.Column("node_index", sa.Integer(), nullable=False),
        sa.Column("parent_index", sa.Integer(), nullable=True),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("depth", sa.Integer(), nullable=False),
        sa.Column("model_token_ids", sa.LargeBinary(), nullable=False),
        sa.Column("model_logprobs", sa.LargeBinary(), nullable=False),
        sa.Column("observation_token_ids", sa.LargeBinary(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("observation", sa.Text(), nullable=False),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column("argument", sa.Text(), nullable=False),
        sa.Column("finish_reason", sa.String(length=20), nullable=False),
        sa.Column("terminal", sa.Boolean(), nullable=False),
        sa.Column("reward", sa.Float(), nullable=True),
        sa.Column("predicted", sa.Float(), nullable=True),
        sa.Column("target", sa.Float(), nullable=True),
        sa.Column("leaf_count", sa.Integer(), nullable=False),
        sa.Column("origin", sa.String(length=10), nullable=False),
        sa.Column("generated_tokens", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["parent_id"], ["nodes.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["tree_id"], ["trees.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tree_id", "node_index"),
    )
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.create_index("ix_nodes_parent", ["parent_id"], unique=False)

    for statement in VIEWS.values():
        op.execute(statement)


def downgrade() -> None:
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_index("ix_nodes_parent")

    op.drop_table("nodes")
    op.drop_table("trees")
    op.drop_table("stages")
    op.drop_table("predictor_fits")
    op.drop_table("policy_updates")
    op.drop_table("iterations")
    op.drop_table("checkpoints")
    op.drop_table("allocations")
    op.drop_table("runs")
    op.drop_table("prompts")
