"""Users' own SQL over the rollout database (`trace-rl sql`), read-only by construction.

`run_sql` checks the statement before anything runs (`check_single_query`): it must be exactly one
query, written plainly (no `U&` escapes, no identifier that changes under Unicode normalisation),
and every function it calls must be on an allow-list of ordinary SQL functions (`ALLOWED_FUNCTIONS`:
aggregates, window functions, maths, strings, dates, JSON, arrays, casts). Anything else, such as a
function that reads server files, runs SQL given as a string (`query_to_xml`), signals other
sessions or changes settings, is refused naming the function, whatever block list it is missing
from. The statement then runs on a connection that cannot write (SQLite: `mode=ro` behind an
authorizer that, for `trace-rl sql`, also denies every function off the allow-list; PostgreSQL: a
`READ ONLY` transaction with a statement timeout), and on PostgreSQL never as a superuser unless
asked (`allow_superuser`). `create_reader` makes the PostgreSQL role to run it as.
"""

from __future__ import annotations

import re
import secrets
import sqlite3
import unicodedata
from collections.abc import Iterable
from typing import Any

import sqlglot
import sqlglot.errors
from sqlalchemy import Engine, text
from sqlglot import expressions as exp
from sqlglot.tokens import Token, TokenType

from trace_rl.store.db import (
    StoreError,
    _read_only_authorizer,
    check_connection,
    interruption,
    make_engine,
    parse_url,
    render_url,
    start_guard,
)
from trace_rl.store.queries import Table


class ReadOnlyError(StoreError):
    """A statement given to `trace-rl sql` tried to write or reach outside the database."""


# The functions a statement may call, on SQLite and PostgreSQL alike (a name missing on one engine
# fails there as unknown). Pure functions of their arguments (plus the clock and `random`): none
# reads files, large objects, settings or other sessions, runs SQL given as text, sleeps or writes.
ALLOWED_FUNCTIONS = frozenset(
    """
    count sum avg min max total group_concat string_agg array_agg bool_and bool_or every
    stddev stddev_pop stddev_samp variance var_pop var_samp corr covar_pop covar_samp
    regr_slope regr_intercept regr_r2 regr_count regr_avgx regr_avgy regr_sxx regr_syy regr_sxy
    percentile_cont percentile_disc mode median
    json_agg jsonb_agg json_object_agg jsonb_object_agg json_group_array json_group_object
    row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value last_value nth_value
    abs ceil ceiling floor round trunc sign sqrt cbrt exp ln log log10 log2 power pow mod div
    pi degrees radians sin cos tan asin acos atan atan2 sinh cosh tanh asinh acosh atanh
    greatest least random width_bucket gcd lcm
    length char_length character_length octet_length bit_length lower upper initcap
    trim ltrim rtrim btrim substr substring replace concat concat_ws left right lpad rpad overlay
    position strpos instr reverse repeat split_part starts_with format printf translate
    ascii chr char unicode hex to_hex md5 sha256 encode decode quote quote_ident quote_literal quote_nullable
    regexp_replace regexp_match regexp_matches regexp_split_to_array regexp_split_to_table
    regexp_like regexp_count regexp_substr regexp_instr string_to_array array_to_string like glob
    coalesce nullif ifnull iif
    now current_date current_time current_timestamp localtime localtimestamp
    clock_timestamp statement_timestamp transaction_timestamp
    date time datetime julianday strftime unixepoch timediff
    date_trunc date_part extract age to_char to_date to_timestamp to_number
    make_date make_time make_timestamp make_timestamptz make_interval
    justify_days justify_hours justify_interval date_bin isfinite timezone
    json jsonb json_extract json_array json_object json_type json_valid json_array_length
    json_each json_tree json_quote json_patch json_remove json_set json_insert json_replace
    json_build_object jsonb_build_object json_build_array jsonb_build_array to_json to_jsonb
    json_array_elements jsonb_array_elements json_array_elements_text jsonb_array_elements_text
    json_each_text jsonb_each jsonb_each_text json_object_keys jsonb_object_keys
    json_extract_path json_extract_path_text jsonb_extract_path jsonb_extract_path_text
    json_typeof jsonb_typeof jsonb_pretty jsonb_set jsonb_insert jsonb_strip_nulls json_strip_nulls
    jsonb_array_length jsonb_path_query jsonb_path_query_array jsonb_path_query_first
    jsonb_path_exists jsonb_path_match row_to_json array_to_json
    array array_length cardinality unnest array_position array_positions array_append
    array_prepend array_cat array_remove array_replace array_lower array_upper array_dims
    array_ndims generate_series generate_subscripts
    cast try_cast typeof pg_typeof current_user session_user current_schema current_database
    """.split()
)

# SQL syntax, not a call, that sqlglot parses into a function node or that reads like a name
# before a parenthesis: `CASE`, `AND`, `EXISTS (...)`, `ROW(...)`, `= ANY(...)`, `WITHIN GROUP (...)`
_SYNTAX_WORDS = frozenset("and or xor case if exists in any all some row distinct group filter over within".split())

# sqlglot's nodes for allowed functions and operators whose node names differ from the names written
# (`to_char` -> TimeToStr, `json_agg` -> JSONArrayAgg, `x ? 'k'` -> JSONBContainsTopKey, `x ~ 'a'`,
# `x -> 'k'`, `x COLLATE "C"`, ...); the test of the allow-list parses every allowed name with them
_SQLGLOT_NODES = frozenset(
    """
    jsonextract jsonextractscalar jsonbextract jsonbextractscalar jsonbcontains jsonbcontainstopkey
    jsonbcontainsanytopkeys jsonbcontainsalltopkeys jsonarrayagg jsonobjectagg jsonbobjectagg jsonobject
    jsonformat arraycontainedby arraycontainsall arrayoverlaps matchagainst collate
    timestamptrunc datetrunc explodinggenerateseries generateseries explode strposition regexplike
    regexpilike pad decodecase sha2digest strtodate strtotime timefromparts timestampfromparts
    timetostr tsordstotimestamp unixtotime struct
    """.split()
)

# relations that read server files or hold secrets (password hashes, large objects)
_SECRET_RELATIONS = frozenset(
    """
    pg_file_settings pg_hba_file_rules pg_ident_file_mappings pg_authid pg_shadow pg_user_mapping
    pg_user_mappings pg_largeobject pg_largeobject_metadata pg_stat_file pg_config
    """.split()
)

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
# function nodes that carry the name as written (sqlglot knows no more about them)
_NAMED = tuple(
    getattr(exp, name)
    for name in ("Anonymous", "AnonymousAggFunc", "CombinedAggFunc", "CombinedParameterizedAgg", "ParameterizedAgg")
    if hasattr(exp, name)
)
_NAME_TOKENS = (TokenType.VAR, TokenType.IDENTIFIER)
# Unicode bidirectional controls, which reorder what a terminal shows
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _refuse(reason: str) -> ReadOnlyError:
    return ReadOnlyError(f"refused (read-only): {reason}")


def _not_allowed(name: str) -> ReadOnlyError:
    return _refuse(
        f"the query calls {name}(), which is not on trace-rl sql's allow-list of functions "
        "(aggregates, window, maths, string, date/time, JSON, array, casts; docs/database.md)"
    )


def check_single_query(statement: str, dialect: str) -> None:
    """Refuse (ReadOnlyError, naming why) anything but exactly one plainly written query calling
    only allowed functions: no second statement, no statement that is not a SELECT/UNION/VALUES,
    nothing inside it that writes, no `U&` escape or identifier that is not in normal form, no
    function off `ALLOWED_FUNCTIONS`, nothing that reads server files or secrets. Parsed with sqlglot
    in the database's dialect, not matched by text; the function calls are also checked on the
    tokens, so a call the parser would not see as one is still refused."""
    try:
        tokens = sqlglot.tokenize(statement, read=dialect)
        parsed = [e for e in sqlglot.parse(statement, read=dialect) if e is not None]
    except sqlglot.errors.SqlglotError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise _refuse(f"cannot parse the statement as {dialect} SQL ({first})") from None
    _check_escapes(statement, tokens)
    if len(parsed) != 1:
        raise _refuse(f"`trace-rl sql` runs exactly one statement, got {len(parsed)}")
    (query,) = parsed
    if not isinstance(query, exp.Query):
        raise _refuse(f"`trace-rl sql` only runs queries (SELECT), not {query.key.upper()}")
    aliases: set[str] = set()
    for node in query.walk():
        if isinstance(node, _WRITES) or (isinstance(node, exp.Select) and node.args.get("into")):
            raise _refuse(f"the query contains a {node.key.upper()}, which writes")
        if isinstance(node, exp.Identifier):
            _check_identifier(node.name)
        elif isinstance(node, exp.TableAlias):
            aliases.add(node.name.lower())
        elif isinstance(node, exp.Table) and node.name.lower() in _SECRET_RELATIONS:
            raise _refuse(f"the query reads {node.name}, which holds server files or secrets")
        if isinstance(node, exp.Func):
            _check_call(node)
    _check_called_names(tokens, aliases)


def _check_escapes(statement: str, tokens: list[Token]) -> None:
    """No `U&'...'`/`U&"..."` (Unicode escapes, which would spell a refused name in allowed
    characters), no name that is not in normal form."""
    for i, token in enumerate(tokens):
        escaped = token.token_type == TokenType.UNICODE_STRING or (
            token.text.lower() == "u"
            and i + 1 < len(tokens)
            and tokens[i + 1].token_type == TokenType.AMP
            and tokens[i + 1].start == token.end + 1
            and statement[tokens[i + 1].end + 1 : tokens[i + 1].end + 2] in ("'", '"')
        )
        if escaped:
            raise _refuse("the statement uses a U& (Unicode escape) string or name; write it plainly")
        if token.token_type in _NAME_TOKENS:
            _check_identifier(token.text)


def _check_identifier(name: str) -> None:
    """A name must read as what it is: unchanged by NFKC normalisation (no look-alike letters), no
    control or invisible characters, no backslash (escape sequences)."""
    if (
        unicodedata.normalize("NFKC", name) != name
        or "\\" in name
        or any(unicodedata.category(ch).startswith("C") for ch in name)
    ):
        raise _refuse(f"the name {name!r} holds escapes, control, invisible or look-alike characters; write it plainly")


def _check_call(node: exp.Func) -> None:
    """One function node of the parse: on the allow-list, and not schema-qualified (a function of
    another schema could run anything), except by pg_catalog."""
    parent = node.parent
    if isinstance(parent, exp.Dot) and parent.expression is node:
        schema = parent.this.name if isinstance(parent.this, exp.Expression) else str(parent.this)
        if schema.lower() != "pg_catalog":
            called = node.name if isinstance(node, _NAMED) else node.sql_name().lower()
            raise _refuse(f"the query calls {schema}.{called}(), a function of another schema; call it unqualified")
    if isinstance(node, _NAMED):
        name = node.name
        if name.lower() not in ALLOWED_FUNCTIONS and name.lower() not in _SYNTAX_WORDS:
            raise _not_allowed(name)
    elif not _allowed_type(type(node)):
        raise _not_allowed(node.sql_name().lower())


def _allowed_type(kind: type[exp.Func]) -> bool:
    """A function node sqlglot recognised: allowed when one of the names it stands for is."""
    names = {n.lower() for n in kind.sql_names()}
    return kind.key in _SQLGLOT_NODES or bool(names & (ALLOWED_FUNCTIONS | _SYNTAX_WORDS))


def _check_called_names(tokens: list[Token], aliases: set[str]) -> None:
    """Every name written before a parenthesis is an allowed function (or a column list's table)."""
    for i, token in enumerate(tokens[:-1]):
        if token.token_type not in _NAME_TOKENS or tokens[i + 1].token_type != TokenType.L_PAREN:
            continue
        before = tokens[i - 1] if i else None
        if before is not None and before.token_type == TokenType.TABLE_SAMPLE:
            continue  # TABLESAMPLE SYSTEM (10): a sampling method, not a call
        name = token.text.lower()
        if name in aliases or name in _SYNTAX_WORDS:
            continue
        if name not in ALLOWED_FUNCTIONS:
            raise _not_allowed(token.text)
        if before is not None and before.token_type == TokenType.DOT:
            schema = tokens[i - 2].text.lower() if i > 1 else ""
            if schema != "pg_catalog":
                raise _refuse(
                    f"the query calls {schema}.{token.text}(), a function of another schema; call it unqualified"
                )


def _sqlite_authorizer(action: int, arg1: str | None, arg2: str | None, db: str | None, view: str | None) -> int:
    """The read-only authorizer, and no function off the allow-list (a view's own functions
    included, which the parser never saw), so SQLite itself refuses what the parser might miss."""
    if action == sqlite3.SQLITE_FUNCTION:
        name = (arg2 or "").lower()
        if name not in ALLOWED_FUNCTIONS and name not in _SQLITE_OPERATORS:
            return sqlite3.SQLITE_DENY
    return _read_only_authorizer(action, arg1, arg2, db, view)


# SQLite operators it implements as functions
_SQLITE_OPERATORS = frozenset({"->", "->>", "like", "glob", "regexp", "match"})


def run_sql(url: str, statement: str, timeout_s: float = 60.0, allow_superuser: bool = False) -> Table:
    """Run one read-only query and return its rows.

    Read-only by construction: the statement must pass `check_single_query`, and it runs on a
    connection that cannot write (`make_engine` with read_only: SQLite opened `mode=ro` behind an
    authorizer, here also refusing functions off the allow-list; PostgreSQL in a transaction set
    `READ ONLY`, with `standard_conforming_strings` on, so strings end where the parser saw them
    end), stopped after `timeout_s` seconds or on Ctrl-C. On PostgreSQL a superuser connection is
    refused unless `allow_superuser` (a superuser can turn read-only off and read server files).
    It goes to the driver's cursor as written (no parameter processing, so `LIKE 'a%'` means what it
    says)."""
    engine = make_engine(url, read_only=True, statement_timeout_s=timeout_s)
    try:
        postgres = engine.dialect.name == "postgresql"
        check_single_query(statement, "postgres" if postgres else "sqlite")
        check_connection(engine)
        with engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            cursor = conn.connection.cursor()
            try:
                if postgres:
                    _postgres_session(cursor, engine, timeout_s, allow_superuser)
                else:
                    raw.set_authorizer(_sqlite_authorizer)  # type: ignore[union-attr]
                start_guard(conn)
                cursor.execute(statement)
                if cursor.description is None:
                    raise _refuse("`trace-rl sql` only reads; the statement gave no rows")
                columns = tuple(str(d[0]) for d in cursor.description)
                return Table(columns, tuple(tuple(r) for r in cursor.fetchall()))
            except engine.dialect.loaded_dbapi.Error as err:
                raise _query_error(engine, conn, err, timeout_s) from None
            finally:
                cursor.close()
                conn.rollback()
                if not postgres:
                    raw.set_authorizer(_read_only_authorizer)  # type: ignore[union-attr]
    finally:
        engine.dispose()


def _postgres_session(cursor: Any, engine: Engine, timeout_s: float, allow_superuser: bool) -> None:
    """The user's transaction: read-only, time-limited, standard strings; never a superuser's."""
    timeout_ms = max(1, int(timeout_s * 1000))
    cursor.execute("SET TRANSACTION READ ONLY")
    cursor.execute(f"SET LOCAL statement_timeout = {timeout_ms}")
    cursor.execute("SET LOCAL standard_conforming_strings = on")
    cursor.execute("SELECT current_user, COALESCE((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false)")
    user, superuser = cursor.fetchone()
    if superuser and not allow_superuser:
        raise _refuse(
            f"{render_url(engine.url)} connects as the superuser {user!r}, who can turn read-only off and read "
            "server files; connect as a read-only role (`trace-rl db create-reader ROLE` makes one) or pass "
            "--allow-superuser"
        )


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
        return ReadOnlyError(
            "refused: `trace-rl sql` runs on a read-only connection and the statement tries to write "
            f"or call a function it may not ({reason})"
        )
    if "statement timeout" in reason.lower():
        return StoreError(f"the query was stopped after the {timeout_s:g} s time limit")
    return StoreError(f"the query failed: {reason}")


_WRITE_HINTS = ("readonly", "read-only", "read only", "not authorized", "prohibited")


# -- printing ----------------------------------------------------------------------------------------


def printable(table: Table, limit: int) -> tuple[Table, int]:
    """The first `limit` rows (0: all) with every control character of every cell and column name
    shown as an escape (`\\x1b`), so a value cannot drive the terminal; and how many rows were left out."""
    rows = table.rows if limit <= 0 else table.rows[:limit]
    shown = Table(
        tuple(_clean(c) for c in table.columns),
        tuple(tuple(_clean_cell(v) for v in row) for row in rows),
    )
    return shown, len(table.rows) - len(rows)


def _clean_cell(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return _clean(value if isinstance(value, str) else str(value))


def _clean(value: str) -> str:
    if value.isprintable() and not _BIDI.intersection(value):
        return value
    return "".join(
        ch.encode("unicode_escape").decode("ascii")
        if ch in _BIDI or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")
        else ch
        for ch in value
    )


# -- the read-only role ------------------------------------------------------------------------------

_ROLE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def create_reader(url: str, role: str) -> str:
    """Create the PostgreSQL role `trace-rl sql` should run as: LOGIN with a new random password, no
    superuser (nor CREATEDB, CREATEROLE, REPLICATION, BYPASSRLS), CONNECT on the database, USAGE on
    the store's schema, SELECT on its tables and views and on those created later by this URL's
    role, every transaction read-only. Returns the URL to use (with the password: shown once)."""
    parsed = parse_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise StoreError(
            "`trace-rl db create-reader` creates a PostgreSQL role; SQLite has no roles (`trace-rl sql` opens "
            "the file read-only already)"
        )
    if not _ROLE.fullmatch(role):
        raise StoreError(f"{role!r} is not a role name for create-reader (lowercase letters, digits, '_'; 63 at most)")
    password = secrets.token_urlsafe(24)  # letters, digits, '-', '_': safe inside the quoted literal
    engine = make_engine(url)
    try:
        check_connection(engine)
        with engine.begin() as conn:
            if conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first():
                raise StoreError(f"role {role!r} already exists; choose another name")
            database, schema = conn.execute(text("SELECT current_database(), current_schema()")).one()
            quote = conn.dialect.identifier_preparer.quote_identifier
            r, db, s = quote(role), quote(database), quote(schema)
            for ddl in _reader_ddl(r, db, s, password):
                conn.exec_driver_sql(ddl)
    except StoreError:
        raise
    except Exception as err:
        orig = getattr(err, "orig", None) or err
        reason = str(orig).strip().splitlines()[0] if str(orig).strip() else type(err).__name__
        raise StoreError(f"cannot create role {role!r} in {render_url(url)}: {reason}") from None
    finally:
        engine.dispose()
    return parsed.set(username=role, password=password).render_as_string(hide_password=False)


def _reader_ddl(role: str, database: str, schema: str, password: str) -> Iterable[str]:
    yield (
        f"CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD '{password}'"
    )
    yield f"ALTER ROLE {role} SET default_transaction_read_only = on"
    yield f"GRANT CONNECT ON DATABASE {database} TO {role}"
    yield f"GRANT USAGE ON SCHEMA {schema} TO {role}"
    yield f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}"  # tables and views
    yield f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT ON TABLES TO {role}"
