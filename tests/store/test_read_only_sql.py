"""`trace-rl sql` and the named queries are read-only by construction, on SQLite and PostgreSQL.

Every statement below once got through (issue 12): each must be refused in one line and leave the
database, and the file system, exactly as they were.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from flows.cli import main
from store.db import StoreError, make_engine
from store.user_sql import ReadOnlyError, check_single_query, run_sql
from tests.store.conftest import make_tree, save_trees

RUNAWAY = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT COUNT(*) FROM r"


def _seed(store):
    run = store.open_run("fx", {}, "h", "test")
    save_trees(store, run, 0, [make_tree("q1", [1.0, 0.0]), make_tree("q2", [0.0, 0.0])], "trace")


def _state(store) -> tuple:
    with store.engine.connect() as conn:
        runs = conn.execute(text("SELECT id, name, status FROM runs ORDER BY id")).all()
        nodes = conn.execute(text("SELECT COUNT(*) FROM nodes")).scalar_one()
        ratio = conn.execute(text("SELECT COUNT(*) FROM effective_ratio")).scalar_one()
    return runs, nodes, ratio


def _hostile(tmp_path) -> list[str]:
    return [
        "COMMIT; DROP TABLE nodes CASCADE; SELECT 1",
        "ROLLBACK; UPDATE runs SET status='x' RETURNING id",
        "COMMIT; DELETE FROM runs WHERE id > 0; SELECT 1",
        "COMMIT; CREATE TABLE t(x int); SELECT 1",
        "SELECT 1; SELECT 2",
        "DELETE FROM nodes",
        f"COPY (SELECT * FROM runs) TO '{tmp_path / 'copied.csv'}'",
        "SELECT lo_import('/etc/hostname')",
        f"ATTACH '{tmp_path / 'attached.db'}' AS x",
        f"ATTACH 'file:{tmp_path / 'rwc.db'}?mode=rwc' AS y",
        f"VACUUM INTO '{tmp_path / 'vacuumed.db'}'",
        "WITH gone AS (DELETE FROM runs RETURNING id) SELECT * FROM gone",
        "SELECT * INTO stolen FROM runs",
        "SELECT set_config('default_transaction_read_only', 'off', false)",
        "PRAGMA journal_mode=DELETE",
        "BEGIN; UPDATE runs SET status='x'; COMMIT",
    ]


def test_every_hostile_statement_is_refused_in_one_line_and_changes_nothing(store, capsys, tmp_path):
    _seed(store)
    before = _state(store)
    for statement in _hostile(tmp_path):
        code = main(["sql", statement, "--set", f"store.url={store.url}"])
        err = capsys.readouterr().err.strip()
        assert code == 1, statement
        assert len(err.splitlines()) == 1 and "read-only" in err, (statement, err)
    assert _state(store) == before
    made = sorted(
        p.name for p in tmp_path.iterdir() if p.name not in {"rollouts.db", "rollouts.db-wal", "rollouts.db-shm"}
    )
    assert made == []


@pytest.mark.parametrize(
    "statement",
    ["COMMIT; CREATE TABLE t(x int)", "CREATE TABLE t(x int)", "UPDATE runs SET status = 'x'"],
)
def test_the_connection_itself_cannot_write_even_past_the_parser(store, statement):
    """Defence in depth: the statement reaches the database unparsed, and the session refuses it."""
    _seed(store)
    before = _state(store)
    engine = make_engine(store.url, read_only=True)
    try:
        with engine.connect() as conn, pytest.raises(DBAPIError):
            for part in statement.split(";"):
                conn.exec_driver_sql(part)
    finally:
        engine.dispose()
    assert _state(store) == before


def test_sqlite_connection_refuses_attach_and_creates_no_file(tmp_path):
    from store.store import RolloutStore

    url = f"sqlite:///{tmp_path / 'rollouts.db'}"
    RolloutStore(url).close()
    engine = make_engine(url, read_only=True)
    try:
        with engine.connect() as conn, pytest.raises(DBAPIError, match="not authorized"):
            conn.exec_driver_sql(f"ATTACH '{tmp_path / 'new.db'}' AS x")
    finally:
        engine.dispose()
    assert not (tmp_path / "new.db").exists()


def test_a_query_with_percent_signs_and_joins_runs(store):
    _seed(store)
    table = run_sql(
        store.url,
        "SELECT r.name, COUNT(*) AS trees FROM runs r JOIN trees t ON t.run_id = r.id "
        "WHERE r.name LIKE 'f%' GROUP BY r.name",
    )
    assert table.columns == ("name", "trees") and table.rows == (("fx", 2),)


def test_a_runaway_query_stops_at_the_time_limit(store):
    _seed(store)
    start = time.perf_counter()
    with pytest.raises(StoreError, match="time limit"):
        run_sql(store.url, RUNAWAY, timeout_s=0.5)
    assert time.perf_counter() - start < 10


def test_ctrl_c_interrupts_a_runaway_sqlite_query(tmp_path):
    from store.store import RolloutStore

    url = f"sqlite:///{tmp_path / 'rollouts.db'}"
    RolloutStore(url).close()
    # Ctrl-C as a fresh `trace-rl sql` process has it: Python's default handler (an earlier test in
    # this process, e.g. a Prefect flow run, may have left another one installed)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
    start = time.perf_counter()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_sql(url, RUNAWAY, timeout_s=600)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT 1",
        "SELECT * FROM runs UNION SELECT * FROM runs",
        "WITH a AS (SELECT 1 AS x) SELECT x FROM a",
        "SELECT name FROM runs WHERE status = 'done' ORDER BY name LIMIT 3",
    ],
)
def test_single_queries_pass_the_parser(statement):
    check_single_query(statement, "sqlite")
    check_single_query(statement, "postgres")


def test_an_unparseable_statement_is_refused_naming_the_dialect():
    with pytest.raises(ReadOnlyError, match="postgres"):
        check_single_query("SELEC FROM WHERE (", "postgres")
