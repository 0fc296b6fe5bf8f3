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

from tests.helpers import make_tree, save_trees
from trace_rl.cli.main import main
from trace_rl.store.db import StoreError, make_engine, parse_url
from trace_rl.store.user_sql import ReadOnlyError, check_single_query, run_sql

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
    from trace_rl.store.store import RolloutStore

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
        allow_superuser=True,  # the test server's URL is a superuser's
    )
    assert table.columns == ("name", "trees") and table.rows == (("fx", 2),)


def test_a_runaway_query_stops_at_the_time_limit(store):
    _seed(store)
    start = time.perf_counter()
    with pytest.raises(StoreError, match="time limit"):
        run_sql(store.url, RUNAWAY, timeout_s=0.5, allow_superuser=True)
    assert time.perf_counter() - start < 10


def test_ctrl_c_interrupts_a_runaway_sqlite_query(tmp_path):
    from trace_rl.store.store import RolloutStore

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


# -- issue: escapes, SQL run from a string, functions off any block list ------------------------------

# every statement the report used to reach outside the database, and its relatives: (statement, what
# the one-line refusal must name)
_OUTSIDE = [
    "pg_create_physical_replication_slot('s')",
    "pg_stat_reset()",
    "pg_stat_reset_shared('bgwriter')",
    "pg_switch_wal()",
    "pg_logical_emit_message(true, 'p', 'm')",
    "pg_backup_start('label')",
    "pg_terminate_backend(1)",
    "pg_cancel_backend(1)",
    "set_config('default_transaction_read_only', 'off', false)",
    "current_setting('data_directory')",
    "pg_reload_conf()",
    "lo_import('/etc/hostname')",
    "lo_export(16597, '{tmp}/exported')",
    "lo_get(16597)",
    "lo_put(16597, 0, 'x')",
    "lo_create(0)",
    "lo_unlink(16597)",
    "lo_from_bytea(0, 'x')",
    "pg_read_file('/etc/hostname')",
    "pg_read_binary_file('/etc/hostname')",
    "pg_ls_dir('.')",
    "pg_ls_logdir()",
    "pg_ls_waldir()",
    "pg_ls_tmpdir()",
    "pg_stat_file('/etc/hostname')",
    "pg_sleep(30)",
    "pg_sleep_for('30 s')",
    "pg_sleep_until(now() + INTERVAL '30 s')",
    "pg_advisory_lock(1)",
    "nextval('s')",
    "query_to_xml('select lo_export(16597, ''{tmp}/exported'')', true, true, '')",
    "query_to_xml('select pg_terminate_backend(1)', true, true, '')",
    "query_to_xml_and_xmlschema('select pg_stat_reset()', true, true, '')",
    "query_to_xmlschema('select 1', true, true, '')",
    "cursor_to_xml('c', 1, true, true, '')",
    "table_to_xml('runs', true, true, '')",
    "table_to_xmlschema('runs', true, true, '')",
    "table_to_xml_and_xmlschema('runs', true, true, '')",
    "schema_to_xml('public', true, true, '')",
    "database_to_xml(true, true, '')",
    "dblink('dbname=test', 'select pg_terminate_backend(1)')",
    "dblink_exec('dbname=test', 'drop table runs')",
    "dblink_connect('c', 'dbname=test')",
    "fts3_tokenizer('simple')",
    "load_extension('/tmp/x.so')",
    "readfile('/etc/hostname')",
    "writefile('{tmp}/written', 'x')",
]
HOSTILE_CALLS = [(f"SELECT {call}", call.split("(")[0]) for call in _OUTSIDE] + [
    (r"""SELECT U&"lo\005fexport"(16597, '{tmp}/exported')""", "U&"),
    (r"""SELECT U&"pg\005fread_file"('/etc/hostname')""", "U&"),
    (r"""SELECT u&"pg\005fls\005fdir"('.')""", "U&"),
    (r"""SELECT U&'\0041' AS a""", "U&"),
    ("SELECT pg_catalog.lo_export(16597, '{tmp}/exported')", "lo_export"),
    ("SELECT \"lo_export\"(16597, '{tmp}/exported')", "lo_export"),
    ("SELECT lo_export (16597, '{tmp}/exported')", "lo_export"),
    ("SELECT * FROM pg_ls_dir('.')", "pg_ls_dir"),
    ("SELECT * FROM pragma_table_info('runs')", "pragma_table_info"),
    ("SELECT public.lower('x')", "public.lower"),
    ("SELECT \uff4c\uff4f_export(16597, 'x')", "look-alike"),
    ('SELECT 1 AS "a\u202eb"', "look-alike"),
    ('SELECT 1 AS "lo\\005fexport"', "escapes"),
    ("SELECT * FROM pg_file_settings", "pg_file_settings"),
    ("SELECT * FROM pg_authid", "pg_authid"),
]


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
@pytest.mark.parametrize(("statement", "named"), HOSTILE_CALLS)
def test_escapes_and_calls_off_the_allow_list_are_refused_naming_them(statement, named, dialect, tmp_path):
    with pytest.raises(ReadOnlyError) as refused:
        check_single_query(statement.replace("{tmp}", str(tmp_path)), dialect)
    message = str(refused.value)
    assert len(message.splitlines()) == 1 and "read-only" in message and named in message, message


def test_every_hostile_call_is_refused_by_trace_rl_sql_and_changes_nothing(store, capsys, tmp_path):
    """The same statements through `trace-rl sql`, on SQLite and PostgreSQL (as the test server's
    superuser, allowed on purpose: the statement is refused before it could use the power)."""
    _seed(store)
    before = _state(store)
    for statement, named in HOSTILE_CALLS:
        code = main(
            ["sql", statement.replace("{tmp}", str(tmp_path)), "--allow-superuser", "--set", f"store.url={store.url}"]
        )
        err = capsys.readouterr().err.strip()
        assert code == 1 and len(err.splitlines()) == 1 and named in err, (statement, err)
    assert _state(store) == before
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("rollouts.db")) == []


_PLAIN_BOTH = [
    "SELECT run, AVG(reward) AS mean, COUNT(*) AS n, MAX(depth), MIN(depth) FROM leaf_paths GROUP BY run",
    "SELECT CASE WHEN reward > 0 AND depth < 3 OR depth IS NULL THEN 'a' ELSE 'b' END, coalesce(reward, 0), "
    "nullif(depth, 0), abs(depth), lower(action), upper(action), length(action), substr(action, 1, 2), "
    "replace(action, 'a', 'b'), trim(action), CAST(depth AS REAL), action || '!' FROM leaf_paths",
    "SELECT row_number() OVER (PARTITION BY run ORDER BY reward), rank() OVER w, lag(reward, 1) OVER w, "
    "lead(reward) OVER w, first_value(reward) OVER w FROM leaf_paths WINDOW w AS (ORDER BY leaf_id)",
    "SELECT count(DISTINCT run) FROM leaf_paths WHERE depth IN (1, 2) AND EXISTS (SELECT 1 FROM runs)",
    "SELECT x FROM (SELECT 1 AS x) AS sub UNION ALL SELECT 2 EXCEPT SELECT 3",
    'SELECT "Mean Reward" FROM (SELECT 1 AS "Mean Reward") s',
    "SELECT count(*) FILTER (WHERE reward > 0) FROM leaf_paths",
    "SELECT greatest(1, 2), least(1, 2), round(2.5), floor(1.5), ceil(1.5), power(2, 3), sqrt(4.0)",
    "SELECT pg_catalog.lower('A')",
]
_PLAIN = [(s, "sqlite") for s in _PLAIN_BOTH] + [(s, "postgres") for s in _PLAIN_BOTH]
_PLAIN += [
    (
        "SELECT date_trunc('day', now()), extract(epoch FROM now()), to_char(now(), 'YYYY'), now() - INTERVAL '1 day'",
        "postgres",
    ),
    (
        "SELECT settings->'trace'->>'allocator', json_agg(name), jsonb_build_object('a', 1) "
        "FROM runs GROUP BY settings",
        "postgres",
    ),
    (
        "SELECT string_agg(name, ','), array_agg(id), bool_and(id > 0), "
        "percentile_cont(0.5) WITHIN GROUP (ORDER BY id) FROM runs",
        "postgres",
    ),
    ("SELECT generate_series(1, 3), unnest(ARRAY[1, 2]), 1 = ANY(ARRAY[1]), '1'::int, 'x'::jsonb ? 'a'", "postgres"),
    (
        "SELECT split_part(name, ',', 1), strpos(name, 'b'), position('a' IN name), substring(name FROM 2 FOR 3), "
        "regexp_replace(name, 'x', 'y'), name ~ 'x', name ILIKE 'x', E'a\\'b', $$dollar$$ FROM runs",
        "postgres",
    ),
    ("SELECT * FROM runs TABLESAMPLE SYSTEM (10)", "postgres"),
    ("SELECT x FROM (VALUES (1), (2)) AS v(x)", "postgres"),
    (
        "SELECT group_concat(name, ','), total(id), ifnull(name, 0), iif(id, 1, 2), typeof(name), julianday('now'), "
        "strftime('%Y', 'now'), date('now'), datetime('now') FROM runs",
        "sqlite",
    ),
    ("SELECT json_extract(settings, '$.trace.allocator'), settings -> '$.a', settings ->> '$.b' FROM runs", "sqlite"),
    ("SELECT printf('%.2f', 1.0), instr(name, 'b'), hex(name), unicode(name), char(65), quote(1) FROM runs", "sqlite"),
    ("SELECT name FROM runs WHERE name GLOB 'x*' OR name LIKE 'y%'", "sqlite"),
]


@pytest.mark.parametrize(("statement", "dialect"), _PLAIN)
def test_ordinary_queries_pass_the_allow_list(statement, dialect):
    check_single_query(statement, dialect)


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_every_allowed_function_is_callable_by_its_own_name(dialect):
    """The allow-list and sqlglot agree: each allowed name, called as written, passes (sqlglot may
    turn it into a node of another name, e.g. to_char into TimeToStr)."""
    from trace_rl.store.user_sql import ALLOWED_FUNCTIONS

    refused = []
    for name in sorted(ALLOWED_FUNCTIONS):
        for args in ("x", "x, y", "x, y, z", "", "x, y, z, w", "x AS int"):
            try:
                check_single_query(f"SELECT {name}({args}) FROM t", dialect)
                break
            except ReadOnlyError:
                continue
        else:
            refused.append(name)
    assert refused == []


def test_sqlite_itself_refuses_a_function_off_the_allow_list_for_trace_rl_sql(tmp_path):
    """Defence in depth: were the parser to miss a call, `trace-rl sql`'s SQLite authorizer denies it."""
    import sqlite3

    from trace_rl.store.user_sql import _sqlite_authorizer

    conn = sqlite3.connect(tmp_path / "x.db")
    conn.set_authorizer(_sqlite_authorizer)
    try:
        assert conn.execute("SELECT lower('A'), count(*), json_extract('{\"a\": 1}', '$.a')").fetchone() == ("a", 1, 1)
        for statement in (
            "SELECT fts3_tokenizer('simple')",
            "SELECT sqlite_compileoption_get(0)",
            "SELECT zeroblob(9)",
        ):
            with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
                conn.execute(statement)
    finally:
        conn.close()


# -- PostgreSQL: superusers refused, the read-only role --------------------------------------------------


def _postgres_only(store) -> None:
    if not store.url.startswith("postgresql"):
        pytest.skip("PostgreSQL roles")


@pytest.fixture()
def reader_url(store):
    """A role made by `trace-rl db create-reader` for this test's schema (dropped afterwards)."""
    import os
    import uuid

    from sqlalchemy import create_engine

    from tests.helpers import PG_ENV

    _postgres_only(store)
    role = f"trace_reader_{uuid.uuid4().hex[:8]}"
    from trace_rl.store.user_sql import create_reader

    url = create_reader(store.url, role)
    try:
        yield url
    finally:
        admin = create_engine(parse_url(os.environ[PG_ENV]))
        with admin.begin() as conn:
            conn.execute(text(f"DROP OWNED BY {role}"))
            conn.execute(text(f"DROP ROLE {role}"))
        admin.dispose()


def test_a_superuser_connection_is_refused_unless_allowed(store, capsys):
    _postgres_only(store)
    _seed(store)
    assert main(["sql", "SELECT name FROM runs", "--set", f"store.url={store.url}"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "superuser" in err and "create-reader" in err and "--allow-superuser" in err
    assert main(["sql", "SELECT name FROM runs", "--allow-superuser", "--set", f"store.url={store.url}"]) == 0
    assert "fx" in capsys.readouterr().out


def test_create_reader_makes_a_role_that_reads_and_cannot_write(store, capsys):
    import os
    import uuid

    from sqlalchemy import create_engine
    from sqlalchemy.exc import DBAPIError

    from tests.helpers import PG_ENV

    _postgres_only(store)
    _seed(store)
    role = f"trace_reader_{uuid.uuid4().hex[:8]}"
    admin = create_engine(parse_url(os.environ[PG_ENV]))
    try:
        assert main(["db", "create-reader", role, "--set", f"store.url={store.url}"]) == 0
        out = capsys.readouterr().out
        url = next(line.split("'")[1] for line in out.splitlines() if "TRACE_STORE__URL=" in line)
        assert url.split("://")[1].startswith(f"{role}:")
        with store.engine.begin() as conn:  # a table made later by the writer: readable too
            conn.execute(text("CREATE TABLE later (x int)"))
        assert main(["sql", "SELECT name FROM runs", "--set", f"store.url={url}"]) == 0
        assert "fx" in capsys.readouterr().out
        assert main(["sql", "SELECT count(*) AS n FROM later", "--set", f"store.url={url}"]) == 0
        engine = make_engine(url)  # even outside trace-rl sql, the role cannot write
        try:
            with engine.connect() as conn:
                flags = conn.execute(
                    text("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user")
                ).one()
                assert tuple(flags) == (False, False, False)
                with pytest.raises(DBAPIError, match="read-only|permission denied"):
                    conn.execute(text("UPDATE runs SET status = 'x'"))
        finally:
            engine.dispose()
        assert main(["db", "create-reader", role, "--set", f"store.url={store.url}"]) == 1
        assert "already exists" in capsys.readouterr().err
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP OWNED BY {role}"))
            conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
        admin.dispose()
    assert _state(store)[0][0][2] != "x"


def test_create_reader_on_sqlite_says_there_are_no_roles(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'rollouts.db'}"
    assert main(["db", "create-reader", "reader", "--set", f"store.url={url}"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "SQLite has no roles" in err


def test_query_to_xml_no_longer_kills_another_session_of_the_read_only_role(store, reader_url, capsys):
    """The report: as the README's read-only role, query_to_xml('select pg_terminate_backend(...)')
    killed another session. Now it is refused before it runs, and the other session lives."""
    import psycopg

    _seed(store)
    victim = psycopg.connect(reader_url.replace("postgresql+psycopg://", "postgresql://"))
    try:
        pid = victim.info.backend_pid
        for statement in (
            f"SELECT query_to_xml('select pg_terminate_backend({pid})', true, true, '')",
            f"SELECT pg_terminate_backend({pid})",
            f"SELECT dblink('dbname=test', 'select pg_terminate_backend({pid})')",
        ):
            assert main(["sql", statement, "--set", f"store.url={reader_url}"]) == 1
            err = capsys.readouterr().err
            assert "read-only" in err and len(err.strip().splitlines()) == 1
        assert victim.execute("SELECT 1").fetchone() == (1,)
    finally:
        victim.close()


# -- printing: a row cap and no terminal control characters ----------------------------------------------


def test_printing_stops_at_the_limit_and_says_how_to_see_the_rest(store, capsys, tmp_path):
    url = f"store.url={store.url}"
    many = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 25) SELECT n FROM r"
    assert main(["sql", many, "--limit", "10", "--allow-superuser", "--set", url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 + 10 + 1 and out[-1].startswith("(15 more rows not shown; use --csv")
    csv = tmp_path / "all.csv"
    assert main(["sql", many, "--limit", "10", "--csv", str(csv), "--allow-superuser", "--set", url]) == 0
    assert f"all of them are in {csv}" in capsys.readouterr().out
    assert len(csv.read_text().splitlines()) == 1 + 25
    assert main(["sql", many, "--allow-superuser", "--set", url]) == 0  # default limit 10000
    assert "more rows" not in capsys.readouterr().out


def test_control_characters_in_cells_are_printed_as_escapes(store, capsys):
    esc = "chr(27)" if store.url.startswith("postgresql") else "char(27)"
    statement = f"SELECT 'a' || {esc} || '[2J' || {esc} || ']0;pwned' || chr(7) AS x".replace(
        "chr(7)", esc.replace("27", "7")
    )
    assert main(["sql", statement, "--allow-superuser", "--set", f"store.url={store.url}"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "a\\x1b[2J\\x1b]0;pwned\\x07" in out
