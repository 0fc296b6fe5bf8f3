"""The SQLite file: foreign databases are left alone; committed stages survive a copy of the file."""

from __future__ import annotations

import shutil
import sqlite3

from tests.helpers import make_tree, save_trees
from trace_rl.cli.main import main
from trace_rl.store.store import RolloutStore


def _foreign(path):
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        conn.execute("INSERT INTO invoices VALUES (1, 9.5)")
    conn.close()


def _tables_and_journal(path):
    with sqlite3.connect(path) as conn:
        tables = sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master"))
        journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    conn.close()
    return tables, journal


def test_db_upgrade_refuses_somebody_elses_sqlite_file_and_leaves_it_untouched(tmp_path, capsys):
    path = tmp_path / "theirs.db"
    _foreign(path)
    before = _tables_and_journal(path)
    assert main(["db", "upgrade", "--set", f"store.url=sqlite:///{path}"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a trace-rl database" in err and "--adopt" in err
    assert _tables_and_journal(path) == before == (["invoices"], "delete")
    assert main(["db", "upgrade", "--adopt", "--set", f"store.url=sqlite:///{path}"]) == 0  # asked for on purpose
    assert "runs" in _tables_and_journal(path)[0]


def test_training_refuses_somebody_elses_database(tmp_path):
    import pytest

    from trace_rl.store.db import StoreError

    path = tmp_path / "theirs.db"
    _foreign(path)
    with pytest.raises(StoreError, match="not a trace-rl database"):
        RolloutStore(f"sqlite:///{path}")
    assert _tables_and_journal(path) == (["invoices"], "delete")


def test_a_copy_of_the_database_file_alone_holds_every_committed_stage(tmp_path):
    """As after a kill -9: the store is never closed, and only `rollouts.db` is copied, not its -wal."""
    store = RolloutStore(f"sqlite:///{tmp_path / 'rollouts.db'}")
    run = store.open_run("r", {}, "h", "test")
    save_trees(store, run, 0, [make_tree("q1", [1.0, 0.0])], stage="roll_out_roots")
    shutil.copy(tmp_path / "rollouts.db", tmp_path / "copy.db")
    copy = RolloutStore(f"sqlite:///{tmp_path / 'copy.db'}")
    assert copy.completed_stages(copy.run_id("r"), 0) == {"roll_out_roots"}
    copy.close()
    store.close()


def test_db_backup_writes_a_consistent_copy_while_the_store_is_open(tmp_path, capsys):
    store = RolloutStore(f"sqlite:///{tmp_path / 'rollouts.db'}")
    run = store.open_run("r", {}, "h", "test")
    save_trees(store, run, 0, [make_tree("q1", [1.0, 0.0])], stage="roll_out_roots")
    url = f"store.url=sqlite:///{tmp_path / 'rollouts.db'}"
    assert main(["db", "backup", str(tmp_path / "backup.db"), "--set", url]) == 0
    copy = RolloutStore(f"sqlite:///{tmp_path / 'backup.db'}")
    assert copy.completed_stages(copy.run_id("r"), 0) == {"roll_out_roots"}
    copy.close()
    assert main(["db", "backup", str(tmp_path / "backup.db"), "--set", url]) == 1  # never overwrites
    assert "already exists" in capsys.readouterr().err
    store.close()


def test_the_migrations_build_exactly_the_schema_the_models_declare(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine

    from trace_rl.store.models import Base

    RolloutStore(f"sqlite:///{tmp_path / 'db.sqlite'}").close()  # upgraded to head
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    engine.dispose()


def test_an_unsupported_database_driver_is_refused_by_name_in_one_line(tmp_path, capsys):
    for url in ("postgresql+asyncpg://postgres@127.0.0.1:5432/test", "mysql://root@127.0.0.1/test"):
        assert main(["db", "status", "--set", f"store.url={url}"]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "is not supported" in err and url.split(":")[0] in err


def test_db_status_reads_the_schema_revision_of_a_sqlite_file_without_writing_it(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    assert main(["db", "upgrade", "--set", f"store.url={url}"]) == 0
    capsys.readouterr()
    before = (tmp_path / "r.db").read_bytes()
    assert main(["db", "status", "--set", f"store.url={url}"]) == 0
    out = capsys.readouterr().out
    assert "schema revision" in out and "(this code:" in out
    assert (tmp_path / "r.db").read_bytes() == before


def test_a_database_from_a_newer_trace_rl_is_refused_in_one_line_and_left_as_it_is(tmp_path, capsys):
    path = tmp_path / "newer.db"
    assert main(["db", "upgrade", "--set", f"store.url=sqlite:///{path}"]) == 0
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'f00d'")
    conn.close()
    capsys.readouterr()
    assert main(["db", "upgrade", "--set", f"store.url=sqlite:///{path}"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'f00d'" in err and "newer trace-rl" in err
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == ("f00d",)
    conn.close()


def test_debug_shows_the_traceback_a_known_error_otherwise_hides(tmp_path, capsys):
    import pytest

    from trace_rl.store.db import StoreError

    assert main(["db", "status", "--set", "store.url=mysql://root@127.0.0.1/x"]) == 1
    assert "--debug" in capsys.readouterr().err
    with pytest.raises(StoreError, match="not supported"):
        main(["--debug", "db", "status", "--set", "store.url=mysql://root@127.0.0.1/x"])


def test_a_closed_store_leaves_one_self_contained_file_even_after_using_several_connections(tmp_path):
    """A run's store holds several pooled connections (its stages, the lease's heartbeat); closing it
    still folds the write-ahead log back, so a read-only reader (the report, `dvc repro`'s later
    stages) finds one file and leaves no -wal / -shm beside it."""
    path = tmp_path / "rollouts.db"
    store = RolloutStore(f"sqlite:///{path}")
    run = store.open_run("r", {}, "h", "test")
    with store.engine.connect() as held:  # a second connection stays open while the store writes
        held.exec_driver_sql("SELECT 1")
        save_trees(store, run, 0, [make_tree("q1", [1.0, 0.0])])
    store.close()
    assert _tables_and_journal(path)[1] == "delete"
    reader = RolloutStore(f"sqlite:///{path}", create=False, read_only=True)
    assert reader.run_id("r") == run
    reader.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rollouts.db"]
