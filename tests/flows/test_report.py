"""The run report describes the run from the store: its own settings, its ledger, its trees."""

from __future__ import annotations

from flows.report import write_report
from flows.settings import load_settings
from store.store import RolloutStore
from tests.store.conftest import make_tree, save_trees
from trace_core.headroom import PoolSample


def test_the_report_labels_a_run_with_the_settings_it_was_trained_with_and_draws_its_ledger(tmp_path):
    trained = load_settings(["trace.allocator=uniform", "trace.budget=16", "predictor.name=mlp"])
    store = RolloutStore(f"sqlite:///{tmp_path / 'rollouts.db'}")
    run = store.open_run("old", trained.snapshot(), "hash", "code")
    save_trees(store, run, 0, [make_tree("q1", [1.0, 0.0]), make_tree("q2", [0.0, 0.0])], "uniform")
    with store.stage(run, 0) as w:
        w.headroom([t.record for t in [make_tree("q1", [1.0]), make_tree("q2", [1.0])]],
                   [PoolSample(3, 4, 8, 0.4, 4), PoolSample(0, 1, 8, 0.6, 0)])  # fmt: skip
        w.iteration_metrics({"rollout/effective_ratio": 0.5, "headroom/oracle_mixed": 0.9,
                             "headroom/uniform_mixed": 0.7, "headroom/allocator_mixed": 0.7,
                             "headroom/predictor_rule_mixed": 0.8})  # fmt: skip
    store.close()
    today = load_settings([f"run.output_dir={tmp_path}", "run.name=old"])  # allocator trace, 64 leaves
    page = write_report(today, tmp_path / "report", lambda _: None).read_text()
    assert "allocator <b>uniform</b>, predictor <b>mlp</b>, 16 leaves per iteration" in page
    assert "trace</b>" not in page and "64 leaves" not in page
    assert (tmp_path / "report" / "headroom.png").exists() and "headroom.png" in page
