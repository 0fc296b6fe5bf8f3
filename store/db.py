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

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"


class StoreError(RuntimeError):
    """The rollout database is unreachable, misconfigured, or at another schema version."""


def parse_url(url: str) -> URL:
    try:
        return make_url(url)
    except ArgumentError:
        raise StoreError("store.url is not a database URL (expected e.g. sqlite:///runs/x/rollouts.db)") from None


def render_url(url: str | URL) -> str:
    """The URL with its password masked, for logs and errors."""
    parsed = url if isinstance(url, URL) else parse_url(url)
    return parsed.render_as_string(hide_password=True)


def _where(url: URL) -> str:
    if url.get_backend_name() == "sqlite":
        return f"file {url.database}"
    return f"host {url.host or 'localhost'}:{url.port or 5432}, database {url.database}"


def make_engine(url: str, read_only: bool = False) -> Engine:
    """An engine for `url`; read_only opens SQLite in read-only mode and PostgreSQL read-only
    transactions, so no statement can write through it."""
    parsed = parse_url(url)
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = {}
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            path = Path(parsed.database)
            if read_only:
                if not path.exists():
                    raise StoreError(f"no rollout database at {path}")
                parsed = parsed.set(database=f"file:{path}?mode=ro", query={"uri": "true"})
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30}
    elif backend == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": 5}
        kwargs["pool_pre_ping"] = True
        if read_only:
            kwargs["execution_options"] = {"postgresql_readonly": True}
    try:
        engine = create_engine(parsed, **kwargs)
    except (NoSuchModuleError, ModuleNotFoundError) as err:
        raise StoreError(f"cannot use {render_url(parsed)}: {err}") from None
    if backend == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            if not read_only:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

    return engine


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
    command.upgrade(alembic_config(engine), revision)


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
