"""Rows of the rollout database <-> trace_core values: the one place that knows how a tree, a
node and a prompt are laid out in the schema (trace_rl/store/models.py) and packed (token ids as
little-endian int32 blobs, log-probs as float32 blobs).

Prompts: a search QA question fills the question columns; a function-calling episode (`FCRecord`)
also fills them for readers (`question`: its user turns; no answers, no hops) and is kept whole,
as JSON, in `payload` ({"family": "function_calling", "record": ...}), from which it is rebuilt."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from trace_core.function_calling.data import FCRecord
from trace_core.method.tree import RolloutNode, RolloutTree
from trace_core.search_agent.data import QARecord
from trace_rl.store.db import StoreError
from trace_rl.store.models import Node, Prompt, Tree

# the records a prompt row holds, one type per task family
TaskRecord = QARecord | FCRecord


def pack_ints(values: Sequence[int]) -> bytes:
    return np.asarray(values, dtype="<i4").tobytes()


def pack_floats(values: Sequence[float]) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


def unpack_ints(blob: bytes) -> tuple[int, ...]:
    return tuple(int(v) for v in np.frombuffer(blob, dtype="<i4"))


def unpack_floats(blob: bytes) -> tuple[float, ...]:
    return tuple(float(v) for v in np.frombuffer(blob, dtype="<f4"))


def node_row(tree_id: int, n: RolloutNode) -> dict[str, Any]:
    """The `nodes` row of node `n` of tree `tree_id`."""
    return {
        "tree_id": tree_id,
        "node_index": n.node_id,
        "parent_index": n.parent_id,
        "depth": n.depth,
        "model_token_ids": pack_ints(n.model_ids),
        "model_logprobs": pack_floats(n.model_logprobs),
        "observation_token_ids": pack_ints(n.observation_ids),
        "text": n.text,
        "observation": n.observation,
        "action": n.action,
        "argument": n.argument,
        "finish_reason": n.finish_reason,
        "terminal": n.terminal,
        "reward": n.reward,
        "predicted": n.predicted,
        "target": n.target,
        "leaf_count": n.leaf_count,
        "origin": n.origin,
        "generated_tokens": len(n.model_ids),
        "details": dict(n.details) if n.details is not None else None,
    }


def prompt_row(record: TaskRecord) -> dict[str, Any]:
    """The `prompts` row of a record (without its id)."""
    row = {"dataset_id": record.id, "data_source": record.data_source, "question": record.question}
    if isinstance(record, FCRecord):
        return {
            **row,
            "golden_answers": [],
            "hops": None,
            "payload": {"family": "function_calling", "record": record.to_json()},
        }
    return {**row, "golden_answers": list(record.golden_answers), "hops": record.hops, "payload": None}


def to_record(prompt: Prompt) -> TaskRecord:
    payload = prompt.payload
    if payload is None:
        return QARecord(
            prompt.dataset_id, prompt.question, tuple(prompt.golden_answers), prompt.data_source, prompt.hops
        )
    if payload.get("family") != "function_calling":
        raise StoreError(f"prompt {prompt.id}: payload of unknown family {payload.get('family')!r}")
    # the row's columns are authoritative for what they hold (payloads written before `id` and
    # `data_source` were in the record lack them)
    return FCRecord.from_json({**payload["record"], "id": prompt.dataset_id, "data_source": prompt.data_source})


def to_node(row: Node) -> RolloutNode:
    return RolloutNode(
        node_id=row.node_index,
        parent_id=row.parent_index,
        depth=row.depth,
        model_ids=unpack_ints(row.model_token_ids),
        model_logprobs=unpack_floats(row.model_logprobs),
        observation_ids=unpack_ints(row.observation_token_ids),
        text=row.text,
        observation=row.observation,
        action=row.action,
        argument=row.argument,
        finish_reason=row.finish_reason,
        terminal=row.terminal,
        reward=row.reward,
        origin=row.origin,  # type: ignore[arg-type]
        predicted=row.predicted,
        target=row.target,
        leaf_count=row.leaf_count,
        details=row.details,
    )


def read_trees(s: Session, run_id: int, iteration: int) -> list[RolloutTree]:
    """The iteration's trees in pool order, as trace_core trees."""
    trees = s.execute(
        select(Tree.id, Prompt)
        .join(Prompt, Tree.prompt_id == Prompt.id)
        .where(Tree.run_id == run_id, Tree.iteration == iteration)
        .order_by(Tree.pool_index)
    ).all()
    nodes = s.scalars(
        select(Node).where(Node.tree_id.in_([t for t, _ in trees])).order_by(Node.tree_id, Node.node_index)
    ).all()
    by_tree: dict[int, list[Node]] = {}
    for node in nodes:
        by_tree.setdefault(node.tree_id, []).append(node)
    out = []
    for tree_id, prompt in trees:
        rows = by_tree.get(tree_id, [])
        if not rows or rows[0].node_index != 0:
            raise StoreError(f"tree {tree_id} of run {run_id} iteration {iteration} has no root node")
        tree = RolloutTree(to_record(prompt), unpack_ints(rows[0].observation_token_ids), rows[0].observation)
        tree.set(to_node(rows[0]))
        for row in rows[1:]:
            tree.add(to_node(row))
            tree.set(to_node(row))  # keep the stored fields exactly (add recomputes id and depth)
        out.append(tree)
    return out
