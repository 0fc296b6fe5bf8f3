"""Store fixtures: every test runs against SQLite and, when TRACE_TEST_POSTGRES_URL is set, PostgreSQL.

Each PostgreSQL test gets its own schema (dropped afterwards), so tests never see each other's rows.
If the variable is set but the server cannot be reached, the PostgreSQL tests fail: CI sets it.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import replace

import pytest
from sqlalchemy import create_engine, text

from store.db import parse_url
from store.store import RolloutStore
from trace_core.method.tree import RolloutNode, RolloutTree, backup
from trace_core.search_agent.data import QARecord

PG_ENV = "TRACE_TEST_POSTGRES_URL"


def _pg_schema_url(base: str, schema: str) -> str:
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'rollouts.db'}"
        return
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"{PG_ENV} is not set")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(parse_url(base))
    with admin.begin() as conn:  # fails (not skips) when the server is unreachable
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield _pg_schema_url(base, schema)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture()
def store(db_url):
    s = RolloutStore(db_url)
    yield s
    s.close()


def _turn(parent, model_ids, obs, terminal=False, reward=None, action="search", origin="stage1"):
    return RolloutNode(
        node_id=-1,
        parent_id=parent,
        depth=-1,
        model_ids=tuple(model_ids),
        model_logprobs=tuple(-0.5 for _ in model_ids),
        observation_ids=tuple(obs),
        text=f"turn {model_ids}",
        observation="obs" if obs else "",
        action=action,
        argument="Varno" if terminal else "Oskar Lind",
        finish_reason="stop",
        terminal=terminal,
        reward=reward,
        origin=origin,
    )


def make_tree(question_id: str, rewards: list[float], predicted: float = 0.4) -> RolloutTree:
    """root -> first turn -> one leaf per reward; a second branch from the root fails directly.

    With rewards [1, 0]: root target (1 + 0 + 0) / 3, first turn 1/2.
    """
    record = QARecord(question_id, f"Where was {question_id} born?", ("Varno", "New Varno"), "synthetic_mhqa", 2)
    tree = RolloutTree(record, prompt_ids=(1, 2, 3), prompt_text="Question: ...")
    tree.set(replace(tree.root, predicted=predicted))
    first = tree.add(_turn(0, [10, 11, 12], [20, 21]))
    for i, r in enumerate(rewards):
        tree.add(
            _turn(
                first.node_id,
                [30 + i, 31],
                [],
                terminal=True,
                reward=r,
                action="answer",
                origin="stage2" if i else "stage1",
            )
        )
    tree.add(_turn(0, [40], [], terminal=True, reward=0.0, action="answer"))
    backup(tree)
    return tree


def save_trees(store, run_id, iteration, trees, allocator="trace", stage=None):
    """Write trees as one stage (the way the training flow does)."""
    with store.stage(run_id, iteration, stage) as w:
        w.trees(trees, allocator)
