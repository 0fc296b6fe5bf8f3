import multiprocessing as mp
from dataclasses import replace

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from tests.helpers import make_tree, save_trees
from trace_core.method.allocators import Anchor, PrefixPlan, RootPlan
from trace_core.method.loss import UpdateStats
from trace_rl.store.db import StoreError, make_engine, render_url
from trace_rl.store.models import Node, Prompt, Stage, Tree
from trace_rl.store.store import RolloutStore


def _count(store, model, **where):
    with store.engine.connect() as conn:
        stmt = select(func.count()).select_from(model)
        for k, v in where.items():
            stmt = stmt.where(getattr(model, k) == v)
        return conn.execute(stmt).scalar_one()


def test_trees_round_trip_as_trace_core_trees(store):
    run = store.open_run("r1", {"a": 1}, "h1", "test")
    trees = [make_tree("q1", [1.0, 0.0]), make_tree("q2", [1.0, 1.0, 0.0])]
    save_trees(store, run, 0, trees, "trace", stage="roll_out_roots")
    loaded = store.load_trees(run, 0)
    for a, b in zip(trees, loaded):
        assert b.record == a.record
        for x, y in zip(a.nodes, b.nodes):
            assert (
                y.node_id,
                y.parent_id,
                y.depth,
                y.model_ids,
                y.observation_ids,
                y.reward,
                y.target,
                y.leaf_count,
                y.predicted,
                y.origin,
                y.terminal,
            ) == (
                x.node_id,
                x.parent_id,
                x.depth,
                x.model_ids,
                x.observation_ids,
                x.reward,
                x.target,
                x.leaf_count,
                x.predicted,
                x.origin,
                x.terminal,
            )
            assert y.model_logprobs == pytest.approx(x.model_logprobs)
    assert store.completed_stages(run, 0) == {"roll_out_roots"}


def test_parent_ids_point_at_the_parent_rows(store):
    run = store.open_run("r1", {}, "h", "test")
    save_trees(store, run, 0, [make_tree("q1", [1.0, 0.0])], "trace")
    with store.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT c.node_index, p.node_index FROM nodes c LEFT JOIN nodes p ON c.parent_id = p.id "
                "ORDER BY c.node_index"
            )
        ).all()
    assert rows == [(0, None), (1, 0), (2, 1), (3, 1), (4, 0)]


def test_a_stage_written_twice_leaves_the_same_rows_as_once(store):
    run = store.open_run("r1", {}, "h", "test")
    trees = [make_tree("q1", [1.0, 0.0]), make_tree("q2", [0.0, 0.0])]
    for _ in range(2):
        save_trees(store, run, 0, trees, "trace", stage="roll_out_roots")
    assert _count(store, Tree) == 2 and _count(store, Node) == 10 and _count(store, Prompt) == 2
    assert _count(store, Stage) == 1


def test_a_failure_in_the_middle_of_a_write_leaves_no_partial_rows(store):
    run = store.open_run("r1", {}, "h", "test")
    save_trees(store, run, 0, [make_tree("q1", [1.0])], "trace", stage="roll_out_roots")
    broken = make_tree("q2", [1.0])
    broken.set(replace(broken.nodes[2], text=None))  # violates NOT NULL after the trees were inserted
    with pytest.raises(IntegrityError):
        save_trees(store, run, 0, [make_tree("q3", [0.0]), broken], "trace", stage="roll_out_prefixes")
    # the earlier write is intact and nothing of the failed one remains
    assert [t.record.id for t in store.load_trees(run, 0)] == ["q1"]
    assert store.completed_stages(run, 0) == {"roll_out_roots"}


def test_restarting_a_run_with_other_settings_is_refused(store):
    first = store.open_run("r1", {"x": 1}, "h1", "test")
    assert store.open_run("r1", {"x": 1}, "h1", "test") == first
    save_trees(store, first, 0, [make_tree("q1", [1.0])], "trace", stage="roll_out_roots")
    with pytest.raises(StoreError, match="already exists with other settings"):
        store.open_run("r1", {"x": 2}, "h2", "test")


def test_a_run_that_failed_before_committing_anything_takes_the_corrected_settings(store):
    first = store.open_run("r1", {"x": 1}, "h1", "test")  # e.g. the model failed to load: nothing committed
    assert store.open_run("r1", {"x": 2}, "h2", "test") == first
    assert store.run_settings(first) == {"x": 2}
    lease = store.take_lease(first, "r1", ttl_s=60)  # but not while a writer holds it
    with pytest.raises(StoreError, match="already exists with other settings"):
        store.open_run("r1", {"x": 3}, "h3", "test")
    lease.release("failed")


def test_allocation_plans_round_trip(store):
    run = store.open_run("r1", {}, "h", "test")
    pool = [make_tree(f"q{i}", [1.0]).record for i in range(3)]
    plan1 = RootPlan((2, 0, 3), (0.5, 0.0, 0.4))
    with store.stage(run, 0, "allocate_roots") as w:
        w.root_plan(pool, [0.5, 0.1, 0.4], plan1)
    loaded_pool, predicted, loaded = store.load_root_plan(run, 0)
    assert loaded_pool == pool and predicted == [0.5, 0.1, 0.4] and loaded == plan1
    plan2 = PrefixPlan((Anchor(0, 1, 0.8, 0.0), Anchor(2, 1, 0.3, 1.0)), (3, 0), (0.99, 0.0), ((1, 2),), (0.18,))
    with store.stage(run, 0, "allocate_prefixes") as w:
        w.prefix_plan(plan2, {1: 0.1})
    again = store.load_prefix_plan(run, 0)
    assert again == plan2
    assert [(a.tree, a.node_id, a.r) for a in again.anchors] == [(0, 1, 0.0), (2, 1, 1.0)]


def test_the_store_refuses_a_database_at_another_schema_version(db_url):
    RolloutStore(db_url).close()
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(StoreError, match="schema revision 9999, newer than this code"):
        RolloutStore(db_url)


def test_an_unreachable_database_is_one_clear_error_naming_the_host_without_the_password():
    url = "postgresql://trace:s3cret-pw@127.0.0.1:1/nowhere"
    with pytest.raises(StoreError) as err:
        RolloutStore(url)
    message = str(err.value)
    assert "host 127.0.0.1:1" in message and "s3cret-pw" not in message
    assert "s3cret-pw" not in render_url(url) and "***" in render_url(url)


def test_a_bad_url_is_a_clear_error():
    with pytest.raises(StoreError, match="store.url is not a database URL"):
        RolloutStore("not a url")


def _writer(url: str, worker: int) -> None:
    store = RolloutStore(url)
    run = store.open_run(f"run-{worker}", {}, "h", "test")
    for it in range(3):
        save_trees(store, run, it, [make_tree(f"shared-{j}", [1.0, 0.0]) for j in range(4)], "trace", stage="roll")
        with store.stage(run, it, "update") as w:
            w.policy_update(UpdateStats(0.1, 0.0, 0.0, 1.0, 1e-3, 100, 8, 2), it)
    store.close()


def test_concurrent_writers_lose_nothing(db_url):
    RolloutStore(db_url).close()  # create the schema once
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(db_url, w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    store = RolloutStore(db_url)
    # 3 writers x 3 iterations x 4 trees x 5 nodes; the 4 shared prompts stored once
    assert _count(store, Tree) == 36 and _count(store, Node) == 180 and _count(store, Prompt) == 4
    assert _count(store, Stage) == 18
    store.close()
