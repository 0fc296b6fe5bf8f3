"""Named analysis queries over the rollout database, and the reads the analysis scripts share.

Each named query returns a `Table` (column names and rows) that the CLI prints or writes as CSV:
- `effective-ratio`: per run and iteration, trees, mixed trees, the effective ratio, leaves and mean
  reward (the `effective_ratio` view);
- `calibration`: predicted success at allocation time against the success of the bare (Stage-1)
  rollouts below each predicted node, in equal-width bins, leaf-weighted (a reliability table);
- `depth-success`: per turn depth, nodes, leaves, leaf-weighted success rate and the share of nodes
  whose leaves are mixed;
- `tree`: one tree drawn as indented text with each turn's predicted p, target and reward.

Users' own SQL (`trace-rl sql`) runs read-only through `trace_rl/store/user_sql.py`.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from trace_core.method.tree import allocation_outcomes
from trace_rl.store.db import StoreError
from trace_rl.store.mapping import read_trees


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]

    def render(self) -> str:
        cells = [self.columns] + [tuple(_fmt(v) for v in row) for row in self.rows]
        widths = [max(len(str(row[i])) for row in cells) for i in range(len(self.columns))]
        lines = ["  ".join(str(v).rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def to_csv(self, path: str | Path) -> None:
        """Write the table as CSV; a file that cannot be written (disk full, no permission) is one
        StoreError naming it, and a regular file is never left half-written (written beside, then
        renamed into place)."""
        target = Path(path)
        regular = not target.exists() or target.is_file()
        tmp = target.with_name(f".{target.name}.partial") if regular else target
        try:
            with tmp.open("w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(self.columns)
                writer.writerows(self.rows)
            if regular:
                tmp.replace(target)
        except OSError as err:
            raise StoreError(f"cannot write {target}: {err.strerror or err}") from None
        finally:
            if regular:
                tmp.unlink(missing_ok=True)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _run_filter(run: str | None, column: str = "r.name") -> tuple[str, dict[str, Any]]:
    return (f" AND {column} = :run", {"run": run}) if run else ("", {})


def require_run(engine: Engine, run: str) -> None:
    """Raise StoreError naming the runs there are when no run is named `run`."""
    with engine.connect() as conn:
        names = [r[0] for r in conn.execute(text("SELECT name FROM runs ORDER BY name"))]
    if run not in names:
        shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        raise StoreError(f"no run named {run!r} in the rollout database (runs: {shown or 'none'})")


def effective_ratio(engine: Engine, run: str | None = None) -> Table:
    where, params = _run_filter(run, "run")
    sql = (
        "SELECT run, iteration, trees, mixed_trees, effective_ratio, leaves, mean_reward "
        f"FROM effective_ratio WHERE 1 = 1{where} ORDER BY run, iteration"
    )
    return _query(engine, sql, params)


def _allocation_outcomes(engine: Engine, run: str | None) -> list[tuple[float, float, int]]:
    """(predicted, success rate of the Stage-1 leaves below, their count) per predicted node, the
    way training scores its predictor (trace_core.method.tree.allocation_outcomes: Stage-2 leaves were
    sampled where prediction and outcome disagreed, so they are left out)."""
    where, params = _run_filter(run)
    sql = f"SELECT DISTINCT t.run_id, t.iteration FROM trees t JOIN runs r ON t.run_id = r.id WHERE 1 = 1{where}"
    out: list[tuple[float, float, int]] = []
    with Session(engine) as s:
        for run_id, iteration in s.execute(text(sql + " ORDER BY t.run_id, t.iteration"), params).all():
            predicted, target, weight = allocation_outcomes(read_trees(s, run_id, iteration))
            out += zip(predicted.tolist(), target.tolist(), weight.astype(int).tolist(), strict=True)
    return out


def calibration(engine: Engine, run: str | None = None, bins: int = 10) -> Table:
    """Reliability table of the predictions made at allocation time against what the bare
    (Stage-1) rollouts below each predicted node then did, leaf-weighted."""
    acc = [[0, 0.0, 0.0, 0.0] for _ in range(bins)]  # nodes, leaves, sum p * leaves, sum t * leaves
    for p, t, n in _allocation_outcomes(engine, run):
        b = min(int(p * bins), bins - 1)
        acc[b][0] += 1
        acc[b][1] += n
        acc[b][2] += p * n
        acc[b][3] += t * n
    out = []
    for b, (nodes, leaves, sp, st) in enumerate(acc):
        if nodes:
            out.append(
                (
                    f"{b / bins:.1f}-{(b + 1) / bins:.1f}",
                    nodes,
                    int(leaves),
                    sp / leaves,
                    st / leaves,
                    st / leaves - sp / leaves,
                )
            )
    return Table(("predicted_bin", "nodes", "leaves", "mean_predicted", "mean_target", "gap"), tuple(out))


def depth_success(engine: Engine, run: str | None = None) -> Table:
    where, params = _run_filter(run)
    sql = (
        "SELECT n.depth, COUNT(*) AS nodes, SUM(n.leaf_count) AS leaves, "
        "SUM(n.target * n.leaf_count) / SUM(n.leaf_count) AS success_rate, "
        "AVG(CASE WHEN n.target > 0 AND n.target < 1 THEN 1.0 ELSE 0.0 END) AS mixed_share "
        "FROM nodes n JOIN trees t ON n.tree_id = t.id JOIN runs r ON t.run_id = r.id "
        f"WHERE n.leaf_count > 0{where} GROUP BY n.depth ORDER BY n.depth"
    )
    return _query(engine, sql, params)


def iteration_table(engine: Engine, run: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT i.iteration, i.metrics FROM iterations i JOIN runs r ON i.run_id = r.id WHERE r.name = :n "
                "ORDER BY i.iteration"
            ),
            {"n": run},
        ).all()
    out = []
    for iteration, metrics in rows:
        values = json.loads(metrics) if isinstance(metrics, str) else metrics
        out.append({"iteration": iteration, **values})
    return out


def leaf_outcomes(engine: Engine, run_prefix: str) -> list[Any]:
    """Every leaf of the runs whose name starts with `run_prefix`: rows of (run, tree, hops, origin,
    reward). `hops` is the synthetic task's own metadata: for analysis, never for the predictor."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT r.name AS run, t.id AS tree, p.hops, n.origin, n.reward FROM nodes n "
                    "JOIN trees t ON n.tree_id = t.id JOIN runs r ON t.run_id = r.id "
                    "JOIN prompts p ON t.prompt_id = p.id WHERE n.terminal AND r.name LIKE :prefix"
                ),
                {"prefix": f"{run_prefix}%"},
            ).all()
        )


def iteration_metrics(engine: Engine, run_prefix: str) -> list[Any]:
    """The training iterations' metrics of the runs whose name starts with `run_prefix`: rows of
    (run, iteration, metrics as stored: JSON text on SQLite, a mapping on PostgreSQL)."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT r.name AS run, i.iteration, i.metrics FROM iterations i JOIN runs r ON i.run_id = r.id "
                    "WHERE r.name LIKE :prefix AND i.iteration >= 0"
                ),
                {"prefix": f"{run_prefix}%"},
            ).all()
        )


def stage_timings(engine: Engine, run: str) -> list[Any]:
    """Every committed stage of run `run`, in the order they finished: rows of (iteration, stage,
    seconds, finished_at)."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT s.iteration, s.stage, s.seconds, s.finished_at FROM stages s JOIN runs r "
                    "ON s.run_id = r.id WHERE r.name = :n AND s.iteration >= -1 ORDER BY s.finished_at"
                ),
                {"n": run},
            ).all()
        )


def run_snapshot(engine: Engine, run: str) -> dict[str, Any]:
    """The settings run `run` was started with, as stored."""
    with engine.connect() as conn:
        value = conn.execute(text("SELECT settings FROM runs WHERE name = :n"), {"n": run}).scalar_one_or_none()
    if value is None:
        raise FileNotFoundError(f"no run named {run!r} in the rollout database")
    return json.loads(value) if isinstance(value, str) else dict(value)


def pick_tree(engine: Engine, run: str) -> int | None:
    """A tree from the last iteration with both outcomes and a Stage-2 branch if there is one."""
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT t.id FROM trees t JOIN runs r ON t.run_id = r.id "
                "JOIN nodes root ON root.tree_id = t.id AND root.node_index = 0 "
                "WHERE r.name = :n AND root.target > 0 AND root.target < 1 "
                "ORDER BY t.iteration DESC, (SELECT COUNT(*) FROM nodes c WHERE c.tree_id = t.id "
                "AND c.origin = 'stage2') DESC, t.id LIMIT 1"
            ),
            {"n": run},
        ).first()
    return None if row is None else int(row[0])


def tree_nodes(engine: Engine, tree_id: int) -> tuple[str, list[Any]]:
    """A tree's question and its nodes (index, parent, depth, action, predicted, target, reward,
    origin), in node order."""
    with engine.connect() as conn:
        nodes = conn.execute(
            text(
                "SELECT node_index, parent_index, depth, action, predicted, target, reward, origin FROM nodes "
                "WHERE tree_id = :t ORDER BY node_index"
            ),
            {"t": tree_id},
        ).all()
        question = conn.execute(
            text("SELECT p.question FROM trees t JOIN prompts p ON t.prompt_id = p.id WHERE t.id = :t"), {"t": tree_id}
        ).scalar_one()
    return question, list(nodes)


def draw_tree(engine: Engine, tree_id: int) -> str:
    """The tree as indented text: one line per turn with action, p (predicted), target and reward."""
    with engine.connect() as conn:
        head = conn.execute(
            text(
                "SELECT r.name, t.iteration, t.allocator, p.question, p.golden_answers FROM trees t "
                "JOIN runs r ON t.run_id = r.id JOIN prompts p ON t.prompt_id = p.id WHERE t.id = :id"
            ),
            {"id": tree_id},
        ).one_or_none()
        if head is None:
            raise StoreError(f"no tree with id {tree_id}")
        nodes = conn.execute(
            text(
                "SELECT node_index, parent_index, depth, action, argument, predicted, target, leaf_count, reward, "
                "origin FROM nodes WHERE tree_id = :id ORDER BY node_index"
            ),
            {"id": tree_id},
        ).all()
    children: dict[int | None, list[Any]] = {}
    for node in nodes:
        children.setdefault(node.parent_index, []).append(node)
    run, iteration, allocator, question, gold = head
    if isinstance(gold, str):  # SQLite hands JSON columns over as text when read with raw SQL
        gold = json.loads(gold)
    lines = [
        f"tree {tree_id}  run {run}  iteration {iteration}  allocator {allocator}",
        f"Q: {question}  gold: {', '.join(gold)}",
    ]

    def show(node: Any, indent: int) -> None:
        label = "prompt" if node.depth == 0 else f"{node.action}: {node.argument}"[:60]
        parts = [label, f"p={_fmt(node.predicted)}", f"target={_fmt(node.target)} ({node.leaf_count} leaves)"]
        if node.reward is not None:
            parts.append(f"reward={node.reward:g}")
        if node.depth > 0:
            parts.append(node.origin)
        lines.append("  " * indent + ("- " if indent else "") + "  ".join(parts))
        for child in children.get(node.node_index, []):
            show(child, indent + 1)

    for root in children.get(None, []):
        show(root, 0)
    return "\n".join(lines)


def _query(engine: Engine, sql: str, params: dict[str, Any]) -> Table:
    with engine.connect() as conn:
        result = conn.execute(text(sql), params)
        return Table(tuple(result.keys()), tuple(tuple(r) for r in result.all()))
