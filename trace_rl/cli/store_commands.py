"""The `trace-rl` commands over the rollout database: query, sql, headroom, runs and db."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from trace_rl.cli.support import settings_of as _settings
from trace_rl.config.errors import SettingsError

if TYPE_CHECKING:
    from trace_rl.store.queries import Table
    from trace_rl.store.store import RolloutStore


def csv_target(csv: str | None, store_url: str, overwrite: bool) -> None:
    """Refuse a `--csv` path before anything runs: never the SQLite database being read, never an
    existing file unless `overwrite`, never a folder or an empty path."""
    if csv is None:
        return
    if not csv.strip():
        raise SettingsError("--csv: an empty path")
    path = Path(csv)
    if store_url.startswith("sqlite:///"):
        database = Path(store_url.removeprefix("sqlite:///"))
        if path.exists() and database.exists() and path.resolve() == database.resolve():
            raise SettingsError(f"--csv {csv}: that is the rollout database being read; choose another file")
    if path.is_dir():
        raise SettingsError(f"--csv {csv}: a folder, not a file")
    if path.exists() and not overwrite and path.is_file():
        raise SettingsError(f"--csv {csv}: the file exists; add --overwrite to replace it")


def cmd_query(args: argparse.Namespace) -> int:
    from trace_rl.store import queries
    from trace_rl.store.db import check_connection, make_engine

    s = _settings(args)
    csv_target(args.csv, s.store_url(), args.overwrite)
    if args.bins < 1:
        raise SettingsError(f"--bins must be at least 1, got {args.bins}")
    engine = make_engine(s.store_url(), read_only=True)
    try:
        check_connection(engine)
        if args.run is not None:
            queries.require_run(engine, args.run)
        if args.name == "tree":
            if args.tree_id is None:
                raise SettingsError("`trace-rl query tree` needs a tree id")
            print(queries.draw_tree(engine, args.tree_id))
            return 0
        table = {
            "effective-ratio": lambda: queries.effective_ratio(engine, args.run),
            "calibration": lambda: queries.calibration(engine, args.run, args.bins),
            "depth-success": lambda: queries.depth_success(engine, args.run),
        }[args.name]()
    finally:
        engine.dispose()
    return _show(table, args.csv)


def cmd_headroom(args: argparse.Namespace) -> int:
    from trace_rl.report.pages import headroom_table
    from trace_rl.store.store import RolloutStore

    s = _settings(args)
    csv_target(args.csv, s.store_url(), args.overwrite)
    store = RolloutStore(s.store_url(), create=False, read_only=True)
    try:
        table = headroom_table(store, s.run.name)
    finally:
        store.close()
    if not table.rows:
        steered = (
            f" (its Stage 1 was steered by trace.oracle_samples={s.trace.oracle_samples}: those measurements are "
            "in the headroom_pool view, with no ledger)"
            if s.trace.oracle_samples
            else ""
        )
        print(
            f"run {s.run.name!r} has no headroom measurement{steered}: train it with `--set headroom.every=N` "
            "(measures at iteration 0 and every N after)"
        )
        return 1
    return _show(table, args.csv)


def _show(table: Table, csv: str | None) -> int:
    """Print a table, and write it to `csv` when one is given."""
    print(table.render())
    if csv:
        table.to_csv(csv)
        print(f"\nwritten to {csv}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    """List, delete or rename the runs of the rollout database (and their folders under run.output_dir)."""
    from trace_rl.store.store import RolloutStore

    s = _settings(args)
    store = RolloutStore(s.store_url(), create=False)
    try:
        if args.action == "list":
            return _list_runs(store)
        if not args.name:
            raise SettingsError(f"`trace-rl runs {args.action}` needs a run name")
        if args.action == "delete":
            return _delete_run(store, args.name, s.run.output_dir, s.store_url(), args.yes)
        return _rename_run(store, args.name, args.new or "", s.run.output_dir)
    finally:
        store.close()


def _list_runs(store: RolloutStore) -> int:
    from trace_rl.store.queries import Table

    rows = tuple(
        (
            r.name,
            r.status,
            r.iterations,
            r.allocator,
            f"{r.created_at:%Y-%m-%d %H:%M}",
            f"{r.updated_at:%Y-%m-%d %H:%M}",
            r.lease_owner or "",
        )
        for r in store.runs()
    )
    columns = ("name", "status", "iterations", "allocator", "created", "updated", "writer")
    print(Table(columns, rows).render() if rows else "no runs yet")
    return 0


def _delete_run(store: RolloutStore, name: str, output_dir: Path, url: str, yes: bool) -> int:
    """Delete a run's rows and its folder; without `yes`, only say what would go."""
    import shutil

    store.run_id(name)  # an unknown name fails here
    folder = output_dir / name
    if not yes:
        print(f"would delete run {name!r}: its rows in {url.split('://')[0]} and {folder}/; add --yes to delete")
        return 2
    store.delete_run(name)
    if folder.is_symlink():
        folder.unlink()
    elif folder.is_dir():
        shutil.rmtree(folder)
    print(f"deleted run {name!r}")
    return 0


def _rename_run(store: RolloutStore, name: str, new: str, output_dir: Path) -> int:
    """Rename a run's rows and folder (and the folder paths its rows record)."""
    from trace_rl.config.sections import RUN_NAME

    if not RUN_NAME.fullmatch(new):
        raise SettingsError(f"{new!r} is not a run name (letters, digits, '-', '_', '.'; no path separators)")
    folder, target = output_dir / name, output_dir / new
    if target.exists():
        raise SettingsError(f"{target} already exists; choose another name")
    moves = {str(folder): str(target), str(folder.resolve()): str(target.resolve())}
    store.rename_run(name, new, moves if folder.is_dir() else None)
    if folder.is_dir():
        folder.rename(target)
    print(f"renamed run {name!r} to {new!r}" + (f" (and {folder} to {target})" if target.is_dir() else ""))
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    """Print one read-only query's rows (at most --limit, control characters shown as escapes), and
    write every row to --csv."""
    from trace_rl.store.user_sql import printable, run_sql

    url = _settings(args).store_url()
    csv_target(args.csv, url, args.overwrite)
    table = run_sql(url, args.statement, allow_superuser=args.allow_superuser)
    shown, hidden = printable(table, args.limit)
    print(shown.render())
    if hidden:
        where = f"all of them are in {args.csv}" if args.csv else "use --csv FILE for all of them"
        print(f"({hidden} more rows not shown; {where}, --limit N to print more, or LIMIT in the query)")
    if args.csv:
        table.to_csv(args.csv)
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from trace_rl.store.db import (
        backup,
        current_revision,
        ensure_schema,
        head_revision,
        make_engine,
        refuse_foreign,
        render_url,
        upgrade,
    )

    url = _settings(args).store_url()
    if args.action == "create-reader":  # the PostgreSQL role `trace-rl sql` should connect as
        from trace_rl.store.user_sql import create_reader

        if not args.target:
            raise SettingsError("`trace-rl db create-reader` needs the new role's name: trace-rl db create-reader ROLE")
        refuse_foreign(url)
        reader_url = create_reader(url, args.target)
        print(
            f"created role {args.target!r}: it can log in and read the rollout database (SELECT on its tables and "
            "views, also future ones) and nothing else; every transaction is read-only. Run `trace-rl sql` with "
            "(the password is shown only this once):"
        )
        print(f"  TRACE_STORE__URL='{reader_url}'")
        return 0
    if args.action == "backup":
        if not args.target:
            raise SettingsError("`trace-rl db backup` needs the file to copy to: trace-rl db backup PATH")
        backup(url, Path(args.target))
        print(f"{render_url(url)} copied to {args.target}")
        return 0
    if not (args.action == "upgrade" and args.adopt):
        refuse_foreign(url)
    engine = make_engine(url, read_only=args.action == "status")
    try:
        if args.action == "upgrade":
            upgrade(engine)
            ensure_schema(engine)
        print(f"{render_url(url)}: schema revision {current_revision(engine)} (this code: {head_revision()})")
    finally:
        engine.dispose()
    return 0
