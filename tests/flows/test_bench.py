"""`trace-rl bench --quick`: every allocator trains at equal cost and the report is written."""

import json

import pytest

from flows.bench import MAIN, run_bench


@pytest.mark.slow
def test_the_quick_benchmark_compares_every_allocator_at_equal_cost(prefect_api, tmp_path):
    summary = run_bench("quick", tmp_path, lambda _: None)
    small = summary["allocators"]["small-groups"]
    assert set(small) == {*MAIN, "active_roots", "active_prefixes"}
    assert set(summary["allocators"]["large-groups"]) == {"trace", "uniform"}
    leaves = {r["leaves"]["mean"] for r in small.values()}
    assert leaves == {16.0}  # the same budget of leaves for every allocator
    for r in small.values():
        assert 0.0 <= r["effective_ratio"]["mean"] <= 1.0 and r["generated_tokens"]["mean"] > 0
    assert set(summary["ablation"]) == {"uniform/uniform", "active roots only", "active prefixes only", "active/active"}
    assert len(summary["oracle"]["share_of_oracle_per_iteration"]) == 4
    for name in ["summary.json", "table.md", "runs.jsonl", "effective_ratio.png", "accuracy.png"]:
        assert (tmp_path / name).exists(), name
    assert json.loads((tmp_path / "summary.json").read_text())["size"] == "quick"
    # an interrupted benchmark continues: a second call finds every run done and trains nothing new
    runs_before = (tmp_path / "runs.jsonl").read_text()
    run_bench("quick", tmp_path, lambda _: None)
    assert (tmp_path / "runs.jsonl").read_text() == runs_before
