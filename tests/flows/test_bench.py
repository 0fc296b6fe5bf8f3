"""`trace-rl bench --quick`: every allocator trains at equal cost and the report is written."""

import json

import numpy as np
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


@pytest.mark.slow
def test_a_benchmark_of_chosen_variants_trains_a_predictor_variant_under_its_own_name(prefect_api, tmp_path):
    summary = run_bench("quick", tmp_path, lambda _: None, variants=["uniform", "trace+online"], seeds=1)
    assert set(summary["allocators"]) == {"small-groups"}
    assert set(summary["allocators"]["small-groups"]) == {"uniform", "trace+online"}
    runs = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    online = next(r for r in runs if r["allocator"] == "trace+online")
    assert len(online["root_auc"]) == online["iterations"] and len(online["anchor_ece"]) == online["iterations"]
    assert {"root_auc_pooled", "root_ece_pooled"} <= set(online)
    assert (tmp_path / "runs" / "bench-small-groups-trace-with-online-s0" / "policy").exists()


def test_the_late_regime_starts_every_variant_of_a_seed_from_the_same_pre_run():
    from flows.bench import SIZES, plan, pre_run_name

    runs = plan(SIZES["quick"], ["uniform", "trace+online"], late=5)
    assert [(r[0], r[1], r[2]) for r in runs] == [("late5", "uniform", 0), ("late5", "trace+online", 0)]
    assert all(f"run.init_from={pre_run_name(5, 0)}" in r[3] for r in runs)


def test_paired_differences_against_uniform_match_each_seeds_difference():
    from flows.bench_summary import paired_vs_uniform

    def row(allocator, seed, test_em, ratios):
        return {
            "regime": "r",
            "allocator": allocator,
            "seed": seed,
            "test_em": test_em,
            "dev_em": 0.5,
            "effective_ratio": ratios,
            "nonzero_advantage_share": ratios,
        }

    done = [
        row("uniform", 0, 0.40, [0.5, 0.7]),
        row("uniform", 1, 0.50, [0.6]),
        row("trace", 0, 0.45, [0.8, 0.8]),
        row("trace", 1, 0.49, [0.6]),
    ]
    entry = paired_vs_uniform(done)["r/trace"]
    # test EM: +0.05 and -0.01; effective ratio: 0.8 - 0.6 = +0.2 and 0.0
    assert entry["test_em"]["per_seed"] == [0.05, -0.01] and entry["test_em"]["mean"] == pytest.approx(0.02)
    assert entry["effective_ratio"]["per_seed"] == [0.2, 0.0]
    low, high = entry["test_em"]["ci95"]
    assert -0.01 - 1e-9 <= low <= 0.02 <= high <= 0.05 + 1e-9


def test_benchmark_v2_runs_both_regimes_seed_by_seed():
    from flows.bench import SIZES, plan

    runs = plan(SIZES["quick"], ["uniform", "trace"], late=5, warm=True)
    assert [(r[0], r[1], r[2]) for r in runs] == [
        ("small-groups", "uniform", 0),
        ("small-groups", "trace", 0),
        ("late5", "uniform", 0),
        ("late5", "trace", 0),
    ]
    assert not any("run.init_from" in o for r in runs[:2] for o in r[3])


def test_the_oracle_share_pools_gains_over_measured_iterations_and_seeds():
    from flows.bench_summary import pooled_share

    nan = float("nan")
    runs = [
        # gains over uniform: oracle 2 and 4 (iteration 1 not measured); allocator 1 and 1
        {
            "headroom_oracle": [5.0, nan, 7.0],
            "headroom_uniform": [3.0, nan, 3.0],
            "headroom_allocator": [4.0, nan, 4.0],
        },
        # a loss of 1 where the oracle gains 2
        {"headroom_oracle": [4.0], "headroom_uniform": [2.0], "headroom_allocator": [1.0]},
    ]
    assert pooled_share(runs) == pytest.approx((1 + 1 - 1) / (2 + 4 + 2))
    assert np.isnan(pooled_share([{"headroom_oracle": [], "headroom_uniform": [], "headroom_allocator": []}]))
    assert np.isnan(pooled_share([{}]))


def test_a_recipe_variant_adds_its_settings_and_names_its_runs_as_folder_names():
    from flows.bench import variant_overrides, variant_slug
    from flows.sections import RUN_NAME

    variant = "trace+online@policy.learning_rate=0.0001;policy.kl_coef=0.1"
    assert variant_overrides(variant) == [
        "trace.allocator=trace",
        "predictor.name=online",
        "policy.learning_rate=0.0001",
        "policy.kl_coef=0.1",
    ]
    assert variant_overrides("uniform") == ["trace.allocator=uniform"]
    assert RUN_NAME.fullmatch(f"bench-small-groups-{variant_slug(variant)}-s0")
    assert variant_slug("uniform@policy.kl_coef=0.1") != variant_slug("uniform@policy.kl_coef=0.2")


def test_bench_settings_are_checked_before_anything_trains(tmp_path, capsys):
    from flows.cli import main

    assert main(["bench", "--quick", "--out", str(tmp_path), "--set", "policy.learning_rate=-1"]) == 2
    assert "policy.learning_rate" in capsys.readouterr().err
    assert not (tmp_path / "runs.jsonl").exists()


def test_the_regime_plot_draws_old_and_new_runs(tmp_path):
    from flows.bench_summary import plot_regimes

    nan = float("nan")
    new = {
        "regime": "late5",
        "allocator": "trace",
        "effective_ratio": [0.5, 0.6],
        "nonzero_advantage_share": [0.6, 0.7],
        "dev_curve": [[-1, 0, 0, 0.4], [1, 128, 9000, 0.5]],
        "headroom_oracle": [6.0, nan],
        "headroom_allocator": [5.0, nan],
        "headroom_uniform": [4.0, nan],
    }
    old = {"regime": "small-groups", "allocator": "uniform", "effective_ratio": [0.5], "nonzero_advantage_share": [0.5]}
    plot_regimes([new, old], tmp_path)
    assert (tmp_path / "regimes.png").stat().st_size > 10_000


def _finished_run(allocator: str, seed: int, by_source: dict[str, float]) -> dict:
    """A `runs.jsonl` row as `_run_figures` writes it, with the given per-source test EM."""
    nan = float("nan")
    return {
        "regime": "small-groups",
        "allocator": allocator,
        "seed": seed,
        "effective_ratio": [0.5],
        "nonzero_advantage_share": [0.5],
        "mean_reward": [0.4],
        "root_auc": [nan],
        "root_ece": [nan],
        "pool_auc": [nan],
        "pool_ece": [nan],
        **{k: 0.3 for k in ("dev_em", "dev_f1", "test_em", "test_f1", "dev_em_before")},
        "generated_tokens": 100.0,
        "leaves": 16.0,
        "train_seconds": 1.0,
        "test_em_by_source": by_source,
    }


def test_the_table_gives_test_em_per_subset_when_the_runs_recorded_it():
    from flows.bench_summary import markdown_table, summarise

    oracle = {"share_of_oracle_per_iteration": [1.0]}
    done = [
        _finished_run("uniform", 0, {"bfcl_v4_base": 0.25, "bfcl_v4_miss_func": 0.0}),
        _finished_run("uniform", 1, {"bfcl_v4_base": 0.75, "bfcl_v4_miss_func": 0.5}),
    ]
    table = markdown_table(summarise(done, oracle, "default", 1.0))
    assert "| allocator | test EM bfcl_v4_base | test EM bfcl_v4_miss_func |" in table
    assert "| uniform | 0.500 ± 0.250 | 0.250 ± 0.250 |" in table
    plain = markdown_table(summarise([_finished_run("uniform", 0, {})], oracle, "default", 1.0))
    assert "test EM bfcl" not in plain  # one data source: no per-source table


def test_the_table_counts_mixed_trees_per_iteration_and_leaves_older_rows_blank():
    from flows.bench import _run_figures
    from flows.bench_summary import markdown_table, summarise

    history = [
        {"iteration": -1, "eval/em": 0.3},
        {"iteration": 0, "rollout/effective_ratio": 0.5, "rollout/trees": 16},
        {"iteration": 1, "rollout/effective_ratio": 0.25, "rollout/trees": 24},
    ]
    final = {split: {"em": 0.4, "f1": 0.5} for split in ("dev", "test")}
    figures = _run_figures(history, final, 1.0)
    assert figures["mixed_trees"] == [8.0, 6.0]
    oracle = {"share_of_oracle_per_iteration": [1.0]}
    new = {**_finished_run("uniform", 0, {}), "mixed_trees": figures["mixed_trees"]}
    table = markdown_table(summarise([new], oracle, "d", 1.0))
    assert "| uniform | 0.500 ± 0.000 | 0.500 ± 0.000 | 7.0 ± 0.0 |" in table
    old = _finished_run("uniform", 0, {})  # recorded before the count existed
    table = markdown_table(summarise([old], oracle, "d", 1.0))
    assert "| uniform | 0.500 ± 0.000 | 0.500 ± 0.000 | - |" in table
    mixed = [new, {**old, "seed": 1}]  # a count from some seeds only would pass for all of them
    assert "| uniform | 0.500 ± 0.000 | 0.500 ± 0.000 | - |" in markdown_table(summarise(mixed, oracle, "d", 1.0))


@pytest.mark.slow
def test_the_benchmark_runs_the_function_calling_family_and_scores_each_subset(prefect_api, tmp_path):
    pytest.importorskip("bfcl_eval", reason="the function-calling task needs bfcl-eval (make install adds it)")
    fc = [
        "task.family=function_calling",
        f"function_calling.split_dir={tmp_path / 'split'}",
        "function_calling.subsets=['base', 'miss_param']",
        "function_calling.max_steps=3",
        "function_calling.max_tokens_per_step=16",
    ]
    resize = {"iterations": 1, "eval_questions": 4, "eval_samples": 1}
    summary = run_bench("quick", tmp_path, lambda _: None, ["uniform", "trace"], 1, overrides=fc, resize=resize)
    rows = summary["allocators"]["small-groups"]
    assert set(rows) == {"uniform", "trace"} and {r["leaves"]["mean"] for r in rows.values()} == {16.0}
    assert all(set(r["test_em_by_source"]) == {"bfcl_v4_base", "bfcl_v4_miss_param"} for r in rows.values())
    assert "test EM bfcl_v4_miss_param" in (tmp_path / "table.md").read_text()


@pytest.mark.parametrize("flag", ["--iterations=0", "--eval-questions=0", "--eval-samples=0", "--headroom-every=-1"])
def test_a_bench_size_flag_out_of_range_is_refused_by_name(flag, tmp_path, capsys):
    from flows.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--out", str(tmp_path), flag])
    assert exit_.value.code == 2 and flag.split("=")[0] in capsys.readouterr().err
    assert not (tmp_path / "runs.jsonl").exists()
