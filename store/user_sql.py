"""Users' own SQL over the rollout database (`trace-rl sql`), read-only by construction.

`run_sql` parses the statement (it must be exactly one query, with no function that reaches outside
the database or changes session settings), then runs it on a connection that cannot write, with a
time limit; anything else is refused with `ReadOnlyError` before or while it runs, never after it
wrote.
"""

from __future__ import annotations

from typing import Any

import sqlglot
import sqlglot.errors
from sqlalchemy import Engine
from sqlglot import expressions as exp

from store.db import StoreError, check_connection, interruption, make_engine, start_guard
from store.queries import Table


class ReadOnlyError(StoreError):
    """A statement given to `trace-rl sql` tried to write."""


# functions that reach outside the database (server files, large objects, other sessions or
# servers) or change session settings: refused even in a SELECT, before the read-only session
# would stop most of them anyway
_REFUSED_FUNCTIONS = {
    "lo_import",
    "lo_export",
    "lo_unlink",
    "lo_create",
    "lo_from_bytea",
    "lo_put",
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_stat_file",
    "pg_file_write",
    "set_config",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "dblink",
    "dblink_exec",
    "dblink_connect",
    "pg_advisory_lock",
    "pg_advisory_xact_lock",
    "pg_sleep",
    "load_extension",
    "writefile",
    "readfile",
}
_WRITES = (
    exp.Insert,
    exp.Update,
    exp.Delete,
    exp.Merge,
    exp.Create,
    exp.Drop,
    exp.Alter,
    exp.Command,
    exp.Copy,
    exp.Transaction,
    exp.Commit,
    exp.Rollback,
    exp.Set,
    exp.Use,
    exp.LoadData,
    exp.Into,
)


def check_single_query(statement: str, dialect: str) -> None:
    """Refuse (ReadOnlyError, naming why) anything but exactly one query: no second statement, no
    statement that is not a SELECT/UNION/VALUES, nothing inside it that writes or reaches outside
    the database. Parsed with sqlglot in the database's dialect, not matched by text."""
    try:
        parsed = [e for e in sqlglot.parse(statement, read=dialect) if e is not None]
    except sqlglot.errors.SqlglotError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ReadOnlyError(f"refused (read-only): cannot parse the statement as {dialect} SQL ({first})") from None
    if len(parsed) != 1:
        raise ReadOnlyError(f"refused (read-only): `trace-rl sql` runs exactly one statement, got {len(parsed)}")
    (query,) = parsed
    if not isinstance(query, exp.Query):
        raise ReadOnlyError(f"refused (read-only): `trace-rl sql` only runs queries (SELECT), not {query.key.upper()}")
    for node in query.walk():
        if isinstance(node, _WRITES) or (isinstance(node, exp.Select) and node.args.get("into")):
            raise ReadOnlyError(f"refused (read-only): the query contains a {node.key.upper()}, which writes")
        if isinstance(node, exp.Func):
            name = (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()
            if name in _REFUSED_FUNCTIONS:
                raise ReadOnlyError(
                    f"refused (read-only): the query calls {name}(), which reaches outside the database"
                )


def run_sql(url: str, statement: str, timeout_s: float = 60.0) -> Table:
    """Run one read-only query and return its rows.

    Read-only by construction: the statement must parse as exactly one query
    (`check_single_query`), and it runs on a connection that cannot write (`make_engine` with
    read_only: SQLite opened `mode=ro` behind an authorizer, PostgreSQL sessions with
    `default_transaction_read_only`), stopped after `timeout_s` seconds or on Ctrl-C. It goes to the
    driver's cursor as written (no parameter processing, so `LIKE 'a%'` means what it says)."""
    engine = make_engine(url, read_only=True, statement_timeout_s=timeout_s)
    try:
        check_single_query(statement, "postgres" if engine.dialect.name == "postgresql" else "sqlite")
        check_connection(engine)
        with engine.connect() as conn:
            start_guard(conn)
            cursor = conn.connection.cursor()
            try:
                cursor.execute(statement)
                if cursor.description is None:
                    raise ReadOnlyError("refused (read-only): `trace-rl sql` only reads; the statement gave no rows")
                columns = tuple(str(d[0]) for d in cursor.description)
                return Table(columns, tuple(tuple(r) for r in cursor.fetchall()))
            except engine.dialect.loaded_dbapi.Error as err:
                raise _query_error(engine, conn, err, timeout_s) from None
            finally:
                cursor.close()
                conn.rollback()
    finally:
        engine.dispose()


def _query_error(engine: Engine, conn: Any, err: Exception, timeout_s: float) -> BaseException:
    stopped = interruption(engine, conn)
    if stopped == "interrupted" or (stopped is None and str(err) == "interrupted"):
        # SQLite stops a statement when its progress handler returns non-zero or raises: past the
        # deadline the guard says so; otherwise it was Ctrl-C arriving inside the handler
        return KeyboardInterrupt()
    if stopped is not None:
        return StoreError(f"the query was {stopped}")
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if any(h in reason.lower() for h in _WRITE_HINTS):
        return ReadOnlyError("refused: `trace-rl sql` runs on a read-only connection and the statement tries to write")
    if "statement timeout" in reason.lower():
        return StoreError(f"the query was stopped after the {timeout_s:g} s time limit")
    return StoreError(f"the query failed: {reason}")


_WRITE_HINTS = ("readonly", "read-only", "read only", "not authorized", "prohibited")
