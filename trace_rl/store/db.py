"""Engines, sessions, schema versions and errors for the rollout database.

One engine factory (`make_engine`) for SQLite (the embedded default: WAL journal, a busy timeout so
a second process waits instead of failing) and PostgreSQL (a connect timeout, no retries). A
database password never appears in a message: URLs are shown with `render_url`, which masks it.
A database that cannot be reached raises one `StoreError` naming the host (or file).

Schema versions are Alembic revisions. `ensure_schema` upgrades an empty database to the head
revision and refuses, with a message saying what to do, a database whose revision is older or
newer than this code's.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"


class StoreError(RuntimeError):
    """The rollout database is unreachable, misconfigured, or at another schema version."""


def parse_url(url: str) -> URL:
    """`url` parsed; a bare `postgresql://` means psycopg 3, the project's driver (SQLAlchemy 2.0
    would otherwise pick psycopg2, which is not installed)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError("store.url is not a database URL (expected e.g. sqlite:///runs/x/rollouts.db)") from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def render_url(url: str | URL) -> str:
    """The URL with its password masked, for logs and errors."""
    parsed = url if isinstance(url, URL) else parse_url(url)
    return parsed.render_as_string(hide_password=True)


def _where(url: URL) -> str:
    if url.get_backend_name() == "sqlite":
        return f"file {url.database}"
    return f"host {url.host or 'localhost'}:{url.port or 5432}, database {url.database}"


# (dialect, driver) pairs the store is tested with: psycopg 3 is the project's PostgreSQL dependency
SUPPORTED_DRIVERS = (("sqlite", "pysqlite"), ("postgresql", "psycopg"))


def make_engine(url: str, read_only: bool = False, statement_timeout_s: float = 60.0) -> Engine:
    """An engine for `url`. With read_only, nothing can write through it, whatever SQL it is given:
    - SQLite: the file is opened read-only by URI (`mode=ro`), and an authorizer allows only reading
      (SELECT, reading tables and views, functions, recursive CTEs, a few schema-reading pragmas),
      so ATTACH (which creates files), writes, DDL and transactions are denied before they run;
    - PostgreSQL: every session starts with `default_transaction_read_only=on`, so even a transaction
      begun after a COMMIT is read-only;
    and each statement stops after `statement_timeout_s` seconds (PostgreSQL `statement_timeout`;
    SQLite a progress handler, which also makes Ctrl-C interrupt a runaway query)."""
    parsed = parse_url(url)
    _require_supported_driver(parsed)
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = {}
    if backend == "sqlite":
        parsed = _sqlite_file_url(parsed, read_only)
        kwargs["connect_args"] = {"timeout": 30}
    elif backend == "postgresql":
        kwargs = _postgres_engine_options(parsed, read_only, statement_timeout_s)
    try:
        engine = create_engine(parsed, **kwargs)
    except (NoSuchModuleError, ModuleNotFoundError) as err:
        raise StoreError(f"cannot use {render_url(parsed)}: {err}") from None
    if backend == "sqlite":
        _install_sqlite_hooks(engine, read_only, statement_timeout_s)
    return engine


def _require_supported_driver(parsed: URL) -> None:
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    if (backend, driver) not in SUPPORTED_DRIVERS:
        raise StoreError(
            f"store.url: {backend}+{driver} is not supported; use sqlite:///<file> or "
            "postgresql://user@host/db (psycopg 3, synchronous)"
        )


def _sqlite_file_url(parsed: URL, read_only: bool) -> URL:
    """The SQLite URL to open: read-only by URI for an existing file (refused when it is missing),
    otherwise unchanged, with the file's folder created so that the file can be."""
    if not parsed.database or parsed.database == ":memory:":
        return parsed
    path = Path(parsed.database)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
        return parsed
    if not path.exists():
        raise StoreError(f"no rollout database at {path}")
    return parsed.set(database=f"file:{path}?mode=ro", query={"uri": "true"})


def _postgres_engine_options(parsed: URL, read_only: bool, statement_timeout_s: float) -> dict[str, Any]:
    """create_engine keywords for PostgreSQL: a connect timeout, and for read_only, session options
    making every transaction read-only and bounding statements and idle transactions."""
    connect_args: dict[str, Any] = {"connect_timeout": 5}
    options: dict[str, Any] = {"connect_args": connect_args, "pool_pre_ping": True}
    if read_only:
        timeout_ms = max(1, int(statement_timeout_s * 1000))
        given = parsed.query.get("options")  # e.g. a search_path in the URL: keep it
        given = " ".join(given) if isinstance(given, tuple) else (given or "")
        connect_args["options"] = given + (
            f" -c default_transaction_read_only=on -c statement_timeout={timeout_ms} "
            f"-c idle_in_transaction_session_timeout={timeout_ms}"
        )
        options["execution_options"] = {"postgresql_readonly": True}
    return options


def _install_sqlite_hooks(engine: Engine, read_only: bool, statement_timeout_s: float) -> None:
    """Per-connection pragmas (foreign keys; WAL when writing) and, for read_only, the read-only
    authorizer and a time-limit guard whose clock starts with each statement."""

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        if not read_only:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()
        if read_only:
            guard = SQLiteGuard(statement_timeout_s)
            record.info["guard"] = guard
            dbapi_connection.set_authorizer(_read_only_authorizer)
            dbapi_connection.set_progress_handler(guard.check, 1000)

    if read_only:

        @event.listens_for(engine, "before_cursor_execute")
        def _start_clock(conn: Any, *_args: Any) -> None:
            start_guard(conn)


# SQLite authorizer action codes (sqlite3.h) that only read
_SQLITE_READS = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    getattr(sqlite3, "SQLITE_RECURSIVE", 33),
}
_SCHEMA_PRAGMAS = {
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "collation_list",
    "function_list",
}


def _read_only_authorizer(action: int, arg1: str | None, arg2: str | None, _db: str | None, _view: str | None) -> int:
    if action in _SQLITE_READS:
        return sqlite3.SQLITE_OK
    # arg2 is the pragma's argument: a table or index name for these, which only read the schema
    if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in _SCHEMA_PRAGMAS:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


class SQLiteGuard:
    """Per-connection progress handler: interrupts a statement past its time limit or on Ctrl-C."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.deadline = float("inf")
        self.reason: str | None = None

    def start(self) -> None:
        self.deadline = time.monotonic() + self.limit_s
        self.reason = None

    def check(self) -> int:
        try:
            if time.monotonic() > self.deadline:
                self.reason = f"stopped after the {self.limit_s:g} s time limit"
                return 1
        except KeyboardInterrupt:  # Ctrl-C arrives while SQLite calls back into Python
            self.reason = "interrupted"
            return 1
        return 0


def start_guard(conn: Any) -> None:
    """Start the time limit of a statement run on the connection's raw cursor (SQLAlchemy's own
    executions start it themselves)."""
    guard = conn.info.get("guard")
    if guard is not None:
        guard.start()


def interruption(engine: Engine, conn: Any) -> str | None:
    """Why the last statement on `conn` was stopped by its guard, if it was."""
    guard = conn.info.get("guard") if engine.dialect.name == "sqlite" else None
    return guard.reason if guard is not None else None


def check_connection(engine: Engine) -> None:
    """Connect once; an unreachable or misconfigured database becomes one StoreError."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except (OperationalError, DBAPIError) as err:
        reason = str(err.orig).strip().splitlines()[0] if err.orig is not None else type(err).__name__
        raise StoreError(f"cannot reach the rollout database ({_where(engine.url)}): {reason}") from None


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def head_revision() -> str:
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate to `revision`; a database at a revision this code does not know (written by a newer
    trace-rl) is refused in one line and left as it is."""
    try:
        command.upgrade(alembic_config(engine), revision)
    except CommandError as err:
        raise StoreError(
            f"{render_url(engine.url)} is at schema revision {current_revision(engine)!r}, which this code "
            f"(head {head_revision()}) does not know: it was written by a newer trace-rl ({err})"
        ) from None


def refuse_foreign(url: str) -> None:
    """Refuse a database that holds tables but no trace-rl schema version, before anything changes
    it (a SQLite file is inspected read-only, so it is not even switched to WAL mode)."""
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite" and not (parsed.database and Path(parsed.database).exists()):
        return  # a new file: ours to create
    engine = make_engine(url, read_only=True)
    try:
        check_connection(engine)
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    if tables and "alembic_version" not in tables:
        raise StoreError(
            f"{render_url(parsed)} holds tables ({', '.join(sorted(tables)[:3])}...) but no trace-rl schema "
            "version, so it is not a trace-rl database; point store.url at a new database (or pass --adopt to "
            "`trace-rl db upgrade` to add trace-rl's tables to it on purpose)"
        )


def backup(url: str, target: Path) -> None:
    """A consistent copy of a SQLite rollout database (the online backup API: it includes what sits
    in the write-ahead log and may run while a training run writes). PostgreSQL: use pg_dump."""
    parsed = parse_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        raise StoreError(f"`trace-rl db backup` copies SQLite files; back up {render_url(parsed)} with pg_dump")
    source = Path(parsed.database)
    if not source.exists():
        raise StoreError(f"no rollout database at {source}")
    if target.exists():
        raise StoreError(f"{target} already exists; choose a new file for the backup")
    target.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    dst.close()
    src.close()


def ensure_schema(engine: Engine, create: bool = True) -> None:
    """Create the schema in an empty database; refuse one at another revision."""
    check_connection(engine)
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is None:
        tables = set(inspect(engine).get_table_names()) - {"alembic_version"}
        if tables:
            raise StoreError(
                f"{render_url(engine.url)} holds tables ({', '.join(sorted(tables)[:3])}...) but no trace-rl "
                "schema version; point store.url at a new database"
            )
        if not create:
            raise StoreError(f"{render_url(engine.url)} has no trace-rl schema yet; run `trace-rl db upgrade`")
        upgrade(engine)
        return
    scripts = ScriptDirectory(str(MIGRATIONS))
    known = {rev.revision for rev in scripts.walk_revisions()}
    if current not in known:
        raise StoreError(
            f"the rollout database is at schema revision {current}, newer than this code's {head}: "
            "upgrade trace-rl to read it"
        )
    raise StoreError(
        f"the rollout database is at schema revision {current}, older than this code's {head}: "
        "run `trace-rl db upgrade` (back the database up first)"
    )


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: committed when the block ends, rolled back (nothing written) on error."""
    with factory() as session, session.begin():
        yield session
