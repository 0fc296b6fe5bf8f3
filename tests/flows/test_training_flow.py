"""The training flow: retries and restarts never repeat or lose a committed stage's work."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch
from sqlalchemy import create_engine, text

from tests.helpers import write_settings
from trace_core.models.default_model import load_policy
from trace_rl.config.settings import SETTINGS_FILE_ENV, SettingsError
from trace_rl.flows.stages import STAGE_NAMES, STAGES, check_fail_once
from trace_rl.store.store import RolloutStore


def _run_flow(monkeypatch, settings_file: Path, overrides: list[str] | None = None) -> list[dict]:
    from trace_rl.flows.training import trace_training

    monkeypatch.setenv(SETTINGS_FILE_ENV, str(settings_file))
    return trace_training(overrides or [])


def _snapshot(db: Path, run: str) -> dict:
    """What a run left in the store and on disk, without ids, times or run-specific names."""
    store = RolloutStore(f"sqlite:///{db}")
    run_id = store.run_id(run)
    trees = {}
    for it in range(-1, 3):
        trees[it] = [
            [
                (n.node_id, n.parent_id, n.model_ids, n.observation_ids, n.reward, n.target, n.predicted, n.origin)
                for n in t
            ]
            for t in store.load_trees(run_id, it)
        ]
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        counts = {
            table: conn.execute(text(f"SELECT COUNT(*) FROM {table} WHERE run_id = :r"), {"r": run_id}).scalar_one()
            for table in ("trees", "allocations", "stages", "predictor_fits", "policy_updates", "iterations")
        }
        allocations = conn.execute(
            text(
                "SELECT iteration, stage, pool_index, node_index, count FROM allocations WHERE run_id = :r "
                "ORDER BY iteration, stage, pool_index, node_index"
            ),
            {"r": run_id},
        ).all()
    _, record = store.checkpoints(run_id, "policy")[-1]
    weights = torch.load(record.location, weights_only=False)["weights"]
    _, record = store.checkpoints(run_id, "predictor")[-1]
    mixedness = torch.load(record.location, weights_only=False).get("mixedness")
    # the bare groups the mixedness model was taught, iteration by iteration (none when it is off)
    groups = [(it, d.tolist()) for it, _, _, d, _ in mixedness["history"]] if mixedness else None
    store.close()
    return {"trees": trees, "counts": counts, "allocations": allocations, "weights": weights, "groups": groups}


def _same(a: dict, b: dict) -> None:
    assert a["counts"] == b["counts"]
    assert a["allocations"] == b["allocations"]
    assert a["trees"] == b["trees"]
    assert a["groups"] == b["groups"]
    assert a["weights"].keys() == b["weights"].keys()
    for k in a["weights"]:
        assert torch.equal(a["weights"][k], b["weights"][k]), k


def test_a_short_run_writes_every_stage_and_changes_the_policy(prefect_api, workspace, tmp_path, monkeypatch):
    settings = write_settings(tmp_path / "s.toml", workspace, tmp_path / "runs", run={"name": "short"})
    history = _run_flow(monkeypatch, settings)
    assert [h["iteration"] for h in history] == [-1, 0, 1]
    assert all("eval/em" in h for h in history)
    assert all(
        k.split("/")[0] in {"iteration", "rollout", "alloc", "predictor", "policy", "eval", "time"}
        for h in history
        for k in h
    )
    store = RolloutStore(f"sqlite:///{tmp_path / 'runs/rollouts.db'}")
    run = store.run_id("short")
    for it in (0, 1):
        assert store.completed_stages(run, it) == set(STAGE_NAMES) - {"measure_headroom"}  # headroom.every = 0
        assert sum(len(t.leaves()) for t in store.load_trees(run, it)) == 16
        # the predictor's allocation-time quality, for roots and anchors apart, is stored every iteration
        metrics = store.stage_metrics(run, it)
        assert {f"predictor/{kind}_{m}" for kind in ("root", "anchor") for m in ("auc", "brier", "ece")} <= set(metrics)
        # what Stage 1 bought: the bare groups that came out mixed, counted from the stored trees
        mixed = sum(
            len({leaf.reward for leaf in t.leaves() if leaf.origin == "stage1"}) == 2 for t in store.load_trees(run, it)
        )
        assert metrics["rollout/stage1_mixed_groups"] == mixed <= metrics["alloc/stage1_prompts"]
    iteration, record = store.checkpoints(run, "policy")[-1]
    trained = torch.load(record.location, weights_only=False)["weights"]
    start = dict(load_policy(workspace / "models" / "tiny-react")[0].named_parameters())
    assert iteration == 1 and any(not torch.equal(w, start[k]) for k, w in trained.items())
    assert (tmp_path / "runs/short/policy/config.json").exists()  # the tiny model trains all weights
    # the flow itself (as a deployment runs it, not only `trace-rl run`) leaves the per-iteration metrics
    rows = [json.loads(line) for line in (tmp_path / "runs/short/metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [-1, 0, 1]
    store.close()
    # in the Prefect UI each task run names its stage and iteration
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        names = {t.name for t in client.read_task_runs()}
    assert {f"{stage}-it{it}" for stage in ("allocate-roots", "update-policy") for it in (0, 1)} <= names


def test_one_injected_failure_per_stage_kind_leaves_the_store_and_weights_of_a_clean_run(
    prefect_api, workspace, tmp_path, monkeypatch, caplog
):
    runs = tmp_path / "runs"
    # with the mixedness model on: a retried refit must not teach it a group twice
    mixing = {"mixedness": True}
    clean = write_settings(tmp_path / "clean.toml", workspace, runs, run={"name": "clean"}, predictor=mixing)
    _run_flow(monkeypatch, clean)
    faults = [f"{stage}@{i % 2}" for i, stage in enumerate(STAGE_NAMES)]
    faulty = write_settings(
        tmp_path / "faulty.toml",
        workspace,
        runs,
        run={"name": "faulty"},
        predictor=mixing,
        orchestration={"retries": 1, "fail_once": faults},
    )
    _run_flow(monkeypatch, faulty)
    # what the task-run logger passes on, to the console and Prefect's UI alike: every retry, no routine line
    task_lines = [r.getMessage() for r in caplog.records if r.name == "prefect.task_runs"]
    retried = [line for line in task_lines if "Retry 1/1 will start" in line]
    fired = [f for f in faults if not f.startswith("measure_headroom")]  # headroom is not measured in this run
    assert all(any(fault in line for line in retried) for fault in fired), retried
    assert not [line for line in task_lines if "Finished in state Completed()" in line]
    clean_run, faulty_run = _snapshot(runs / "rollouts.db", "clean"), _snapshot(runs / "rollouts.db", "faulty")
    assert clean_run["groups"] and len(clean_run["groups"]) == 2
    _same(clean_run, faulty_run)


def test_measuring_headroom_trains_exactly_what_a_run_without_it_trains_and_stores_the_ledger(
    prefect_api, workspace, tmp_path, monkeypatch, capsys
):
    from trace_rl.cli.main import main

    runs = tmp_path / "runs"
    plain = write_settings(tmp_path / "plain.toml", workspace, runs, run={"name": "plain"})
    _run_flow(monkeypatch, plain)
    measured = write_settings(
        tmp_path / "measured.toml",
        workspace,
        runs,
        run={"name": "measured"},
        headroom={"every": 1, "samples": 16},
        orchestration={"retries": 1, "fail_once": ["measure_headroom@1"]},
    )
    history = _run_flow(monkeypatch, measured)
    a, b = _snapshot(runs / "rollouts.db", "plain"), _snapshot(runs / "rollouts.db", "measured")
    assert b["counts"]["stages"] == a["counts"]["stages"] + 2  # one measure_headroom per iteration, nothing else
    b["counts"]["stages"] = a["counts"]["stages"]
    _same(a, b)
    store = RolloutStore(f"sqlite:///{runs / 'rollouts.db'}")
    run = store.run_id("measured")
    pools = store.headroom(run)
    assert sorted(pools) == [0, 1]
    for it, pool in pools.items():
        assert len(pool) == 10 and all(p.half == 8 for p in pool)
        assert sum(p.allocated for p in pool) == store.stage_metrics(run, it)["alloc/stage1_leaves"]
    assert store.headroom(store.run_id("plain")) == {}
    store.close()
    for row in history[1:]:
        assert {
            "headroom/oracle_mixed",
            "headroom/uniform_mixed",
            "headroom/allocator_mixed",
            "headroom/pool_auc",
        } <= set(row)
        assert row["headroom/oracle_mixed"] >= 0 and row["headroom/budget"] == row["alloc/stage1_leaves"]
    monkeypatch.setenv(SETTINGS_FILE_ENV, str(measured))
    capsys.readouterr()
    assert main(["headroom"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "iteration",
        "stage1_leaves",
        "oracle_mixed",
        "allocator_mixed",
        "rule_mixed",
        "uniform_mixed",
        "share_of_gain",
        "oracle_nonzero",
        "allocator_nonzero",
        "uniform_nonzero",
        "pool_success",
    ]
    assert [line.split()[0] for line in lines[2:]] == ["0", "1"]
    monkeypatch.setenv(SETTINGS_FILE_ENV, str(plain))
    assert main(["headroom"]) == 1
    assert "headroom.every" in capsys.readouterr().out


def test_the_oracle_control_allocates_on_stored_measurements_that_a_retry_neither_repeats_nor_trains_on(
    prefect_api, workspace, tmp_path, monkeypatch, capsys
):
    runs = tmp_path / "runs"
    control = {"oracle_samples": 4}
    clean = write_settings(tmp_path / "c.toml", workspace, runs, run={"name": "oracle"}, trace=control)
    _run_flow(monkeypatch, clean)
    faulty = write_settings(
        tmp_path / "f.toml",
        workspace,
        runs,
        run={"name": "oracle-retried"},
        trace=control,
        orchestration={"retries": 1, "fail_once": ["allocate_roots@1", "roll_out_roots@1"]},
    )
    _run_flow(monkeypatch, faulty)
    _same(_snapshot(runs / "rollouts.db", "oracle"), _snapshot(runs / "rollouts.db", "oracle-retried"))
    store = RolloutStore(f"sqlite:///{runs / 'rollouts.db'}")
    run = store.run_id("oracle")
    pools = store.headroom(run)
    assert pools == store.headroom(store.run_id("oracle-retried"))
    assert sorted(pools) == [0, 1]
    for it, pool in pools.items():
        trees = store.load_trees(run, it)
        # Stage 1 followed the measured rates, the roots record them, the rows keep the plan's counts
        rates = [(p.successes_first + p.successes_second) / 4 for p in pool]
        assert [t.root.predicted for t in trees] == rates and len(pool) == 10
        _, _, plan = store.load_root_plan(run, it)
        assert [p.allocated for p in pool] == list(plan.counts)
        # the measurement rollouts are not in the trees: the run trained on its budget of leaves only
        assert sum(len(t.leaves()) for t in trees) == 16
        assert {"headroom/pool_auc", "headroom/pool_success"} <= set(store.stage_metrics(run, it))
    store.close()
    # no ledger for such a run: `trace-rl headroom` says where its measurements are instead
    from trace_rl.cli.main import main

    monkeypatch.setenv(SETTINGS_FILE_ENV, str(clean))
    capsys.readouterr()
    assert main(["headroom"]) == 1
    assert "steered by trace.oracle_samples=4" in capsys.readouterr().out


def _wait_for_stage(db: Path, run: str, iteration: int, stage: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        if db.exists():
            try:
                engine = create_engine(f"sqlite:///{db}")
                with engine.connect() as conn:
                    found = conn.execute(
                        text(
                            "SELECT COUNT(*) FROM stages s JOIN runs r ON s.run_id = r.id "
                            "WHERE r.name = :n AND s.iteration = :i AND s.stage = :s"
                        ),
                        {"n": run, "i": iteration, "s": stage},
                    ).scalar_one()
                engine.dispose()
                if found:
                    return
            except Exception:  # the schema may not exist yet
                pass
        time.sleep(0.2)
    raise AssertionError(f"{stage}@{iteration} never committed")


def test_a_run_killed_mid_iteration_resumes_and_ends_with_the_rows_of_an_uninterrupted_run(
    prefect_api, workspace, tmp_path, monkeypatch
):
    runs = tmp_path / "runs"
    clean = write_settings(tmp_path / "clean.toml", workspace, runs, run={"name": "clean"})
    _run_flow(monkeypatch, clean)
    killed = write_settings(tmp_path / "killed.toml", workspace, runs, run={"name": "killed"})
    env = {**os.environ, SETTINGS_FILE_ENV: str(killed), "PREFECT_API_URL": prefect_api}
    command = [sys.executable, "-m", "trace_rl.cli.main", "run"]
    proc = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        _wait_for_stage(runs / "rollouts.db", "killed", 1, "roll_out_roots", proc, timeout=300)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    store = RolloutStore(f"sqlite:///{runs / 'rollouts.db'}")
    assert "update_policy" not in store.completed_stages(store.run_id("killed"), 1)  # it died mid-iteration
    store.close()
    rerun = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    _same(_snapshot(runs / "rollouts.db", "clean"), _snapshot(runs / "rollouts.db", "killed"))


def test_a_run_restarted_with_other_settings_is_refused(prefect_api, workspace, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    settings = write_settings(tmp_path / "s.toml", workspace, runs, run={"name": "r"}, train={"iterations": 1})
    first = _run_flow(monkeypatch, settings)
    db = runs / "rollouts.db"
    stages = _snapshot(db, "r")["counts"]
    # the same run again has nothing left to do: it says so, writes nothing and returns the run's history
    again = _run_flow(monkeypatch, settings)
    assert [h["iteration"] for h in again] == [-1, 0] and again[1]["rollout/leaves"] == first[1]["rollout/leaves"]
    assert _snapshot(db, "r")["counts"] == stages
    changed = write_settings(
        tmp_path / "s2.toml", workspace, runs, run={"name": "r"}, train={"iterations": 1}, policy={"learning_rate": 0.5}
    )
    with pytest.raises(Exception, match="already exists with other settings") as err:
        _run_flow(monkeypatch, changed)
    assert "policy.learning_rate: 0.0003 there, 0.5 now" in str(err.value)
    assert "trace-rl runs delete r" in str(err.value)


def test_an_overlapping_start_of_a_run_being_written_ends_in_state_refused_without_touching_it(
    prefect_api, workspace, tmp_path, monkeypatch
):
    """A schedule tick (or a second process) that finds the run's lease held by a live writer: the flow
    run ends as `Refused` (type CANCELLED) naming the holder; the holder's run is untouched."""
    from prefect.exceptions import CancelledRun

    from trace_rl.config.settings import load_settings
    from trace_rl.flows.pipeline import code_version, settings_hash
    from trace_rl.flows.training import trace_training

    runs = tmp_path / "runs"
    settings = write_settings(tmp_path / "s.toml", workspace, runs, run={"name": "busy"})
    monkeypatch.setenv(SETTINGS_FILE_ENV, str(settings))
    holder = RolloutStore(f"sqlite:///{runs / 'rollouts.db'}")
    try:
        s = load_settings([])
        run = holder.open_run("busy", s.snapshot(), settings_hash(s.identity()), code_version(), s.identity())
        holder.take_lease(run, "busy", ttl_s=60)
        state = trace_training([], return_state=True)
        assert (state.type.value, state.name) == ("CANCELLED", "Refused")
        assert "run 'busy' is being written by" in str(state.message)
        with pytest.raises(CancelledRun, match="is being written by"):
            trace_training([])
        assert holder.completed_stages(run, -1) == set() and not holder.checkpoints(run, "policy")
    finally:
        holder.release_lease("done")
        holder.close()


def test_a_run_extended_past_train_iterations_is_never_shrunk_by_a_later_start(
    prefect_api, workspace, tmp_path, monkeypatch
):
    """A schedule's tick serving `train.iterations = 1` after the run was extended to 2 iterations:
    nothing trains, and metrics.jsonl and the returned history keep both iterations."""
    runs = tmp_path / "runs"
    settings = write_settings(tmp_path / "s.toml", workspace, runs, run={"name": "grown"}, train={"iterations": 1})
    _run_flow(monkeypatch, settings)
    extended = _run_flow(monkeypatch, settings, ["train.iterations=2"])
    assert [h["iteration"] for h in extended] == [-1, 0, 1]
    stages = _snapshot(runs / "rollouts.db", "grown")["counts"]
    tick = _run_flow(monkeypatch, settings)
    assert [h["iteration"] for h in tick] == [-1, 0, 1] and tick == extended
    rows = [json.loads(line) for line in (runs / "grown" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [-1, 0, 1]
    assert _snapshot(runs / "rollouts.db", "grown")["counts"] == stages


def test_a_run_name_template_is_filled_from_the_flow_runs_scheduled_start(
    prefect_api, workspace, tmp_path, monkeypatch
):
    from datetime import UTC, datetime

    runs = tmp_path / "runs"
    settings = write_settings(
        tmp_path / "s.toml", workspace, runs, run={"name": "nightly-{date}"}, train={"iterations": 1}
    )
    before = datetime.now(UTC).strftime("%Y%m%d")
    _run_flow(monkeypatch, settings)
    after = datetime.now(UTC).strftime("%Y%m%d")
    names = {p.name for p in runs.iterdir() if p.is_dir()}
    assert names & {f"nightly-{before}", f"nightly-{after}"} and not any("{" in n for n in names)


def test_a_stage_that_keeps_failing_stops_the_run_without_a_trace_and_a_rerun_continues(
    prefect_api, workspace, tmp_path, monkeypatch
):
    runs = tmp_path / "runs"
    failing = write_settings(
        tmp_path / "f.toml",
        workspace,
        runs,
        run={"name": "r"},
        orchestration={"retries": 0, "fail_once": ["back_up@0"]},
    )
    with pytest.raises(Exception, match="injected failure of back_up@0"):
        _run_flow(monkeypatch, failing)
    store = RolloutStore(f"sqlite:///{runs / 'rollouts.db'}")
    run = store.run_id("r")
    assert store.completed_stages(run, 0) == {
        "allocate_roots",
        "roll_out_roots",
        "allocate_prefixes",
        "roll_out_prefixes",
    }
    assert all(n.target is None for t in store.load_trees(run, 0) for n in t)  # back_up wrote nothing
    assert _status(store, "r") == ("failed", None)  # recorded truthfully, and the lease is free
    store.close()
    # the same settings without the fault (fault injection is not part of the run's identity)
    history = _run_flow(monkeypatch, failing, ["orchestration.fail_once=[]"])
    assert [h["iteration"] for h in history] == [-1, 0, 1]
    store = RolloutStore(f"sqlite:///{runs / 'rollouts.db'}")
    assert _status(store, "r") == ("done", None)
    store.close()


def _status(store: RolloutStore, name: str) -> tuple:
    with store.engine.connect() as conn:
        return tuple(conn.execute(text("SELECT status, lease_owner FROM runs WHERE name = :n"), {"n": name}).one())


def test_a_second_process_on_a_running_run_is_refused_in_one_line_and_writes_nothing(
    prefect_api, workspace, tmp_path, monkeypatch, capsys
):
    """The first writer is alive (here a stand-in process whose id holds the lease): the second
    `trace-rl run` of the same name must not skip, replay or overwrite anything."""
    from trace_rl.cli.main import main

    runs = tmp_path / "runs"
    settings = write_settings(tmp_path / "s.toml", workspace, runs, run={"name": "busy"}, train={"iterations": 1})
    store = RolloutStore(f"sqlite:///{runs / 'rollouts.db'}")
    from trace_rl.config.settings import load_settings
    from trace_rl.flows.pipeline import code_version, settings_hash

    monkeypatch.setenv(SETTINGS_FILE_ENV, str(settings))
    s = load_settings()
    run = store.open_run("busy", s.snapshot(), settings_hash(s.identity()), code_version())
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        owner = f"{socket.gethostname()}:{holder.pid}:0123abcd"
        with store.engine.begin() as conn:
            conn.execute(
                text("UPDATE runs SET lease_owner = :o, lease_expires_at = :e WHERE id = :r"),
                {"o": owner, "e": datetime.now(UTC) + timedelta(minutes=5), "r": run},
            )
        assert main(["run"]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and owner in err and "busy" in err
        assert store.completed_stages(run, -1) == set() and store.completed_stages(run, 0) == set()
        assert _status(store, "busy") == ("running", owner)
    finally:
        holder.kill()
        holder.wait()
    assert main(["run"]) == 0  # the holder died: its lease on this host frees at once
    assert _status(store, "busy") == ("done", None)
    store.close()


def test_publishing_the_policy_never_deletes_outside_the_run_folder(tmp_path):
    from trace_rl.flows.checkpoints import publish_directory

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "IMPORTANT.txt").write_text("keep")
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / "policy").symlink_to(outside, target_is_directory=True)
    publish_directory(lambda folder: (folder.mkdir(), (folder / "w.bin").write_bytes(b"new")), run_dir / "policy")
    assert (outside / "IMPORTANT.txt").read_text() == "keep"
    assert not (run_dir / "policy").is_symlink() and (run_dir / "policy" / "w.bin").read_bytes() == b"new"
    assert sorted(p.name for p in run_dir.iterdir()) == ["policy"]  # nothing left beside it


def test_a_run_started_from_another_starts_from_its_policy_and_a_predictor_taught_by_its_rollouts(
    prefect_api, workspace, tmp_path, monkeypatch
):
    runs = tmp_path / "runs"
    first = write_settings(
        tmp_path / "a.toml",
        workspace,
        runs,
        run={"name": "pre"},
        train={"iterations": 1},
        trace={"allocator": "uniform"},
    )
    _run_flow(monkeypatch, first)
    second = write_settings(
        tmp_path / "b.toml",
        workspace,
        runs,
        run={"name": "late", "init_from": "pre"},
        train={"iterations": 1},
        predictor={"name": "online"},
    )
    _run_flow(monkeypatch, second)
    store = RolloutStore(f"sqlite:///{runs / 'rollouts.db'}")
    pre, late = store.run_id("pre"), store.run_id("late")
    source = torch.load(store.checkpoints(pre, "policy")[-1][1].location, weights_only=False)["weights"]
    start_iteration, start = store.checkpoints(late, "policy")[0]
    assert start_iteration == -1
    start_weights = torch.load(start.location, weights_only=False)["weights"]
    assert all(torch.equal(start_weights[k], source[k]) for k in source)
    # the predictor learnt the pre-run's rollouts before allocating the first iteration: no flat prior
    roots = [t.root.predicted for t in store.load_trees(late, 0)]
    assert len(set(roots)) > 1
    # it draws its own pools, not the pre-run's again from iteration 0
    pools = [[t.record.id for t in store.load_trees(run, 0)] for run in (pre, late)]
    assert pools[0] != pools[1]
    store.close()
    other = write_settings(
        tmp_path / "c.toml",
        workspace,
        runs,
        run={"name": "late2", "init_from": "pre"},
        train={"iterations": 1},
        agent={"max_turns": 3},
    )
    with pytest.raises(SettingsError, match="agent.max_turns is 4 there, 3 here"):
        _run_flow(monkeypatch, other)


def test_every_stage_keeps_the_random_stream_it_was_given_so_stored_runs_still_reproduce():
    streams = {stage.name: stage.stream for stage in STAGES}
    assert streams == {
        "allocate_roots": 0,
        "roll_out_roots": 1,
        "allocate_prefixes": 2,
        "roll_out_prefixes": 3,
        "back_up": 4,
        "refit_predictor": 5,
        "update_policy": 6,
        "evaluate": 7,
        "checkpoint": 8,
        "measure_headroom": 9,
    }


def test_a_fault_injected_into_a_stage_that_does_not_exist_is_refused_before_the_run_starts():
    from trace_rl.config.settings import load_settings

    with pytest.raises(SettingsError, match="orchestration.fail_once: 'update_polciy@1' names no stage"):
        check_fail_once(load_settings(["orchestration.fail_once=['update_polciy@1']"]).orchestration.fail_once)
    check_fail_once(load_settings(["orchestration.fail_once=['update_policy@1']"]).orchestration.fail_once)
