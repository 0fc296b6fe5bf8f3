import pytest

from tests.helpers import make_tree, save_trees
from trace_rl.store import queries
from trace_rl.store.db import make_engine
from trace_rl.store.user_sql import ReadOnlyError, run_sql


@pytest.fixture()
def fixture_run(store):
    """Iteration 0: q1 leaves (1, 0, 0) mixed, q2 (0, 0, 0) not. Iteration 1: q3 (1, 1, 0) mixed.
    Only the roots carry a prediction (0.4)."""
    run = store.open_run("fx", {}, "h", "test")
    save_trees(store, run, 0, [make_tree("q1", [1.0, 0.0]), make_tree("q2", [0.0, 0.0])], "trace")
    save_trees(store, run, 1, [make_tree("q3", [1.0, 1.0])], "trace")
    return store


def test_effective_ratio_per_iteration(fixture_run):
    table = queries.effective_ratio(fixture_run.engine, "fx")
    rows = [tuple(r) for r in table.rows]
    # it 0: 2 trees, 1 mixed, 6 leaves, 1 success -> 0.5, 1/6; it 1: 1 tree, mixed, 3 leaves, 2 successes
    assert [r[:4] for r in rows] == [("fx", 0, 2, 1), ("fx", 1, 1, 1)]
    assert [float(r[4]) for r in rows] == pytest.approx([0.5, 1.0])
    assert [int(r[5]) for r in rows] == [6, 3]
    assert [float(r[6]) for r in rows] == pytest.approx([1 / 6, 2 / 3])


def test_depth_success(fixture_run):
    rows = queries.depth_success(fixture_run.engine, "fx").rows
    # depth 0: 3 roots, 9 leaves, 3 successes, 2 of 3 mixed
    # depth 1: 3 first turns (leaves 2, 2, 2; successes 1, 0, 2) + 3 failed answers -> 9 leaves, 3 successes, 1/6 mixed
    # depth 2: 6 answers, 3 successes
    assert [(r[0], r[1], int(r[2])) for r in rows] == [(0, 3, 9), (1, 6, 9), (2, 6, 6)]
    assert [float(r[3]) for r in rows] == pytest.approx([1 / 3, 1 / 3, 0.5])
    assert [float(r[4]) for r in rows] == pytest.approx([2 / 3, 1 / 6, 0.0])


def test_calibration_bins_predictions_against_the_bare_rollouts_below_them(fixture_run):
    # each root (p = 0.4) has two Stage-1 leaves: q1 (1, 0), q2 (0, 0), q3 (1, 0); the Stage-2
    # leaves (the second answer under each first turn) are left out: 2 successes in 6 leaves
    table = queries.calibration(fixture_run.engine, "fx")
    assert table.rows == (("0.4-0.5", 3, 6, pytest.approx(0.4), pytest.approx(1 / 3), pytest.approx(1 / 3 - 0.4)),)


def test_a_tree_is_drawn_with_predictions_targets_and_rewards(fixture_run):
    text = queries.draw_tree(fixture_run.engine, 1)
    lines = text.splitlines()
    assert lines[1] == "Q: Where was q1 born?  gold: Varno, New Varno"  # whole answers on every engine
    assert lines[2].startswith("prompt  p=0.4  target=0.3333 (3 leaves)")
    assert "- search: Oskar Lind  p=-  target=0.5 (2 leaves)" in text
    assert sum("reward=1" in line for line in lines) == 1


def test_tables_export_to_csv(fixture_run, tmp_path):
    queries.effective_ratio(fixture_run.engine).to_csv(tmp_path / "er.csv")
    assert (tmp_path / "er.csv").read_text().splitlines()[0] == (
        "run,iteration,trees,mixed_trees,effective_ratio,leaves,mean_reward"
    )


def test_users_sql_reads_and_the_views_serve_any_client(fixture_run):
    table = run_sql(
        fixture_run.url, "SELECT question_id, reward FROM leaf_paths ORDER BY leaf_id", allow_superuser=True
    )
    assert [r[0] for r in table.rows].count("q1") == 3
    anchors = run_sql(
        fixture_run.url,
        "SELECT successes, leaf_count, mixed FROM anchor_outcomes WHERE depth = 1 ORDER BY node_id",
        allow_superuser=True,
    )
    assert [tuple(r) for r in anchors.rows] == [(1, 2, 1), (0, 2, 0), (2, 2, 0)]
    ratios = run_sql(fixture_run.url, "SELECT effective_ratio, mean_reward FROM effective_ratio", allow_superuser=True)
    assert ratios.rows and all(type(v) is float for row in ratios.rows for v in row)  # not Decimal on PostgreSQL


def test_the_headroom_pool_view_shows_each_measured_prompt_with_its_success_rate(store):
    from tests.helpers import make_tree
    from trace_core.method.headroom import PoolSample

    run = store.open_run("hr", {}, "h", "c")
    with store.stage(run, 3) as w:
        w.headroom(
            [make_tree("q1", [1.0]).record, make_tree("q2", [1.0]).record],
            [PoolSample(3, 5, 8, 0.25, 4), PoolSample(0, 0, 8, 0.5, 0)],
        )
    table = run_sql(
        store.url,
        "SELECT run, iteration, question_id, successes, success_rate, predicted, allocated "
        "FROM headroom_pool ORDER BY pool_index",
        allow_superuser=True,
    )
    assert [tuple(r) for r in table.rows] == [("hr", 3, "q1", 8, 0.5, 0.25, 4), ("hr", 3, "q2", 0, 0.0, 0.5, 0)]


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM nodes",
        "UPDATE runs SET status = 'x'",
        "INSERT INTO runs (name) VALUES ('y')",
        "CREATE TABLE evil (x INTEGER)",
        "DROP VIEW leaf_paths",
    ],
)
def test_a_writing_statement_through_sql_is_refused_and_changes_nothing(fixture_run, statement):
    with pytest.raises(ReadOnlyError, match="read-only"):
        run_sql(fixture_run.url, statement)
    with make_engine(fixture_run.url).connect() as conn:
        from sqlalchemy import text

        assert conn.execute(text("SELECT COUNT(*) FROM nodes")).scalar_one() == 15


def test_the_analysis_reads_return_leaves_iteration_metrics_and_stage_timings_by_run(store):
    run = store.open_run("bench-a-s0", {}, "h", "test")
    other = store.open_run("other", {}, "h2", "test")
    save_trees(store, run, 0, [make_tree("q1", [1.0, 0.0])], "trace", stage="back_up")
    save_trees(store, other, 0, [make_tree("q2", [0.0])], "trace", stage="back_up")
    with store.stage(run, 0, "checkpoint", seconds=2.5) as w:
        w.iteration_metrics({"predictor/auc": 0.7})
    leaves = queries.leaf_outcomes(store.engine, "bench-")
    assert {r.run for r in leaves} == {"bench-a-s0"}
    expected = sorted((leaf.origin, leaf.reward) for leaf in make_tree("q1", [1.0, 0.0]).leaves())
    assert sorted((r.origin, r.reward) for r in leaves) == expected
    metrics = queries.iteration_metrics(store.engine, "bench-")
    assert [(r.run, r.iteration) for r in metrics] == [("bench-a-s0", 0)]
    assert [(r.iteration, r.stage, r.seconds) for r in queries.stage_timings(store.engine, "bench-a-s0")] == [
        (0, "back_up", None),
        (0, "checkpoint", 2.5),
    ]
