"""The run report describes the run from the store: its own settings, its ledger, its trees."""

from __future__ import annotations

from tests.helpers import make_tree, save_trees
from trace_core.method.allocators import RootPlan
from trace_core.method.headroom import PoolSample
from trace_rl.config.settings import load_settings
from trace_rl.report.pages import write_report
from trace_rl.store.store import RolloutStore


def test_the_report_labels_a_run_with_the_settings_it_was_trained_with_and_draws_its_ledger(tmp_path):
    trained = load_settings(["trace.allocator=uniform", "trace.budget=16", "predictor.name=mlp"])
    store = RolloutStore(f"sqlite:///{tmp_path / 'rollouts.db'}")
    run = store.open_run("old", trained.snapshot(), "hash", "code")
    save_trees(store, run, 0, [make_tree("q1", [1.0, 0.0]), make_tree("q2", [0.0, 0.0])], "uniform")
    with store.stage(run, 0) as w:
        w.headroom(
            [t.record for t in [make_tree("q1", [1.0]), make_tree("q2", [1.0])]],
            [PoolSample(3, 4, 8, 0.4, 4), PoolSample(0, 1, 8, 0.6, 0)],
        )
        w.iteration_metrics(
            {
                "rollout/effective_ratio": 0.5,
                "headroom/oracle_mixed": 0.9,
                "headroom/uniform_mixed": 0.7,
                "headroom/allocator_mixed": 0.7,
                "headroom/predictor_rule_mixed": 0.8,
            }
        )
    store.close()
    today = load_settings([f"run.output_dir={tmp_path}", "run.name=old"])  # allocator trace, 64 leaves
    page = write_report(today, tmp_path / "report", lambda _: None).read_text()
    assert "allocator <b>uniform</b>, predictor <b>mlp</b>, 16 leaves per iteration" in page
    assert "trace</b>" not in page and "64 leaves" not in page
    assert (tmp_path / "report" / "headroom.png").exists() and "headroom.png" in page


def _planned_run(store, name: str, allocator: str, success: float) -> None:
    trained = load_settings([f"trace.allocator={allocator}"])
    run = store.open_run(name, trained.snapshot(), f"hash-{name}", "code")
    trees = [make_tree("q1", [1.0, 0.0], predicted=0.6), make_tree("q2", [0.0, 1.0], predicted=0.2)]
    with store.stage(run, 0, "allocate_roots") as w:
        w.root_plan([t.record for t in trees], [0.6, 0.2], RootPlan((2, 0), (0.48, 0.0)))
    save_trees(store, run, 0, trees, allocator, stage="back_up")
    with store.stage(run, 0) as w:
        w.iteration_metrics(
            {"rollout/effective_ratio": success, "rollout/nonzero_advantage_share": success, "predictor/root_auc": 0.7}
        )


def test_the_report_draws_the_allocation_the_question_kinds_and_the_compared_runs(tmp_path, capsys):
    from trace_rl.cli.main import main

    store = RolloutStore(f"sqlite:///{tmp_path / 'rollouts.db'}")
    _planned_run(store, "mine", "trace", 0.6)
    _planned_run(store, "baseline", "uniform", 0.4)
    store.close()
    out = tmp_path / "report"
    before = (tmp_path / "rollouts.db").read_bytes()
    assert (
        main(
            [
                "report",
                "--out",
                str(out),
                "--compare",
                "baseline",
                "--set",
                f"run.output_dir={tmp_path}",
                "--set",
                "run.name=mine",
            ]
        )
        == 0
    )
    assert (tmp_path / "rollouts.db").read_bytes() == before  # a report only reads (DVC versions the file)
    page = (out / "index.html").read_text()
    for figure in ("comparison.png", "allocation.png", "kinds.png", "tree.png"):
        assert (out / figure).stat().st_size > 0 and figure in page, figure
    assert (
        main(
            [
                "report",
                "--out",
                str(out),
                "--compare",
                "nosuchrun",
                "--set",
                f"run.output_dir={tmp_path}",
                "--set",
                "run.name=mine",
            ]
        )
        == 1
    )
    assert "no run named 'nosuchrun'" in capsys.readouterr().err


def test_success_per_question_kind_compares_the_first_and_last_third_of_a_run(tmp_path):
    from trace_rl.report.figures import kind_success

    store = RolloutStore(f"sqlite:///{tmp_path / 'rollouts.db'}")
    run = store.open_run("r", {}, "h", "code")
    for it, reward in enumerate([0.0, 0.0, 1.0]):
        save_trees(store, run, it, [make_tree(f"q{it}", [reward])], stage="back_up")
    # make_tree's questions are 2-hop; its bare (Stage-1) leaves: the first turn's reward and a direct failure
    assert kind_success(store, run) == [
        {"kind": "2-hop", "first_success": 0.0, "first_rollouts": 2, "last_success": 0.5, "last_rollouts": 2}
    ]
    store.close()
