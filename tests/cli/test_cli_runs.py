"""`trace-rl runs list|delete|rename`: runs are managed by name, rows and folders together."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from tests.helpers import make_tree, save_trees
from trace_rl.cli.main import main
from trace_rl.store.models import Run, utcnow
from trace_rl.store.writer import CheckpointRecord


def _seed(store, tmp_path):
    for name in ("a", "b"):
        run = store.open_run(name, {"trace": {"allocator": "uniform"}}, "h", "test")
        save_trees(store, run, 0, [make_tree("q1", [1.0, 0.0])], "uniform")
        with store.stage(run, 0) as w:
            w.iteration_metrics({"rollout/effective_ratio": 0.5})
            w.checkpoint(CheckpointRecord("policy", str(tmp_path / name / "checkpoints" / "policy-00000.pt"), "x"))
        (tmp_path / name / "checkpoints").mkdir(parents=True)


def _args(store, tmp_path):
    return ["--set", f"store.url={store.url}", "--set", f"run.output_dir={tmp_path}"]


def test_runs_are_listed_with_status_iterations_and_allocator(store, tmp_path, capsys):
    _seed(store, tmp_path)
    assert main(["runs", "list", *_args(store, tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["name", "status", "iterations", "allocator"]
    rows = [line.split()[:4] for line in lines[2:]]
    assert rows == [["a", "running", "1", "uniform"], ["b", "running", "1", "uniform"]]


def test_a_bare_runs_command_lists_the_runs(store, tmp_path, capsys):
    _seed(store, tmp_path)
    assert main(["runs", *_args(store, tmp_path)]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]]
    assert names == ["a", "b"]


def test_deleting_a_run_needs_yes_and_removes_its_rows_and_folder_only(store, tmp_path, capsys):
    _seed(store, tmp_path)
    assert main(["runs", "delete", "a", *_args(store, tmp_path)]) == 2
    assert "add --yes" in capsys.readouterr().out and (tmp_path / "a").exists()
    assert main(["runs", "delete", "a", "--yes", *_args(store, tmp_path)]) == 0
    assert [r.name for r in store.runs()] == ["b"] and not (tmp_path / "a").exists() and (tmp_path / "b").exists()
    assert len(store.load_trees(store.run_id("b"), 0)) == 1
    assert main(["runs", "delete", "a", "--yes", *_args(store, tmp_path)]) == 1
    assert "no run named 'a'" in capsys.readouterr().err


def test_a_run_another_process_writes_can_be_neither_deleted_nor_renamed(store, tmp_path, capsys):
    _seed(store, tmp_path)
    with store._sessions() as s, s.begin():
        held = {"lease_owner": "elsewhere:1:abc", "lease_expires_at": utcnow() + timedelta(minutes=5)}
        s.execute(update(Run).where(Run.name == "a").values(**held))
    for command in (["runs", "delete", "a", "--yes"], ["runs", "rename", "a", "c"]):
        assert main([*command, *_args(store, tmp_path)]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "elsewhere:1:abc" in err
    assert [r.name for r in store.runs()] == ["a", "b"] and (tmp_path / "a").exists()


def test_renaming_a_run_moves_its_folder_and_checkpoint_records(store, tmp_path, capsys):
    _seed(store, tmp_path)
    assert main(["runs", "rename", "a", "a2", *_args(store, tmp_path)]) == 0
    assert [r.name for r in store.runs()] == ["a2", "b"]
    assert (tmp_path / "a2" / "checkpoints").is_dir() and not (tmp_path / "a").exists()
    ((_, record),) = store.checkpoints(store.run_id("a2"), "policy")
    assert record.location == str(tmp_path / "a2" / "checkpoints" / "policy-00000.pt")
    assert main(["runs", "rename", "a2", "b", *_args(store, tmp_path)]) == 2  # taken (its folder exists)
    assert main(["runs", "rename", "b", "../x", *_args(store, tmp_path)]) == 2
