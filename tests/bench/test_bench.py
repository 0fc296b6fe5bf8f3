"""`trace-rl bench --quick`: every allocator trains at equal cost and the report is written."""

import json

import numpy as np
import pytest

from trace_rl.bench.runner import MAIN, run_bench


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
    # a benchmark cut short is summarised from the runs it holds, training nothing
    first = runs_before.splitlines(keepends=True)[: len(MAIN)]
    (tmp_path / "runs.jsonl").write_text("".join(first))
    partial = run_bench("quick", tmp_path, lambda _: None, train=False)
    assert (tmp_path / "runs.jsonl").read_text() == "".join(first)
    assert set(partial["allocators"]["small-groups"]) == {json.loads(line)["allocator"] for line in first}


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
    from trace_rl.bench.runner import SIZES, plan, pre_run_name

    runs = plan(SIZES["quick"], ["uniform", "trace+online"], late=5)
    assert [(r[0], r[1], r[2]) for r in runs] == [("late5", "uniform", 0), ("late5", "trace+online", 0)]
    assert all(f"run.init_from={pre_run_name(5, 0)}" in r[3] for r in runs)


def test_paired_differences_against_uniform_match_each_seeds_difference():
    from trace_rl.bench.summary import paired_vs_uniform

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
    # the bootstrap (secondary) can only be as wide as the seeds disagree
    low, high = entry["test_em"]["bootstrap_ci95"]
    assert -0.01 - 1e-9 <= low <= 0.02 <= high <= 0.05 + 1e-9
    # the primary interval is the paired t one: sd = 0.06 / sqrt(2), half-width t_{0.975,1} * sd / sqrt(2)
    # = 12.706 * 0.03 = 0.381
    assert entry["test_em"]["ci95"] == pytest.approx([0.02 - 0.38118, 0.02 + 0.38118], abs=1e-4)
    # composite EM: (0.5 + 0.45) / 2 - (0.5 + 0.40) / 2 = +0.025 and (0.5 + 0.49) / 2 - (0.5 + 0.50) / 2 = -0.005
    assert entry["composite_em"]["per_seed"] == [0.025, -0.005] and entry["composite_em"]["n"] == 2
    assert list(entry)[:3] == ["seeds", "interval", "composite_em"]


def test_the_paired_t_interval_matches_the_hand_computed_case():
    from trace_rl.bench.summary import paired_t

    # diffs 0.01, 0.03, -0.02, 0.04, 0.02: mean 0.08 / 5 = 0.016; squared deviations 0.000036, 0.000196,
    # 0.001296, 0.000576, 0.000016 sum to 0.00212, sd = sqrt(0.00212 / 4) = 0.023022; se = sd / sqrt(5)
    # = 0.010296; half-width t_{0.975,4} * se = 2.776 * 0.010296 = 0.028586: [-0.012586, +0.044586];
    # t = 0.016 / 0.010296 = 1.554, two-sided p = 2 * P(T_4 > 1.554) = 0.195
    t = paired_t([0.01, 0.03, -0.02, 0.04, 0.02])
    assert t["n"] == 5 and t["mean"] == pytest.approx(0.016) and t["sd"] == pytest.approx(0.023022, abs=1e-6)
    assert t["ci95"] == pytest.approx([-0.012586, 0.044586], abs=1e-5)
    assert t["p"] == pytest.approx(0.195, abs=1e-3)
    # 80% power: at least the approximation (t_{0.975,4} + t_{0.80,4}) * se = (2.776 + 0.941) * 0.010296
    # = 0.0383, and the power at the mde is 80%
    assert 0.0383 < t["mde"] < 0.0400
    from trace_rl.bench.summary import seeds_needed, t_power

    assert t_power(t["mde"], t["sd"], 5) == pytest.approx(0.80, abs=1e-6)
    needed = seeds_needed(t["mde"], t["sd"])
    assert needed == 5 and t_power(t["mde"], t["sd"], 4) < 0.80
    one = paired_t([0.03])  # one seed: no interval, no test
    assert one["mean"] == 0.03 and np.isnan(one["ci95"][0]) and np.isnan(one["p"]) and np.isnan(one["mde"])


def test_the_verdict_adopts_rejects_or_names_the_detectable_effect():
    from trace_rl.bench.summary import verdict

    def entry(low, high, mde=0.04):
        return {"composite_em": {"mean": (low + high) / 2, "ci95": [low, high], "mde": mde, "n": 5}}

    assert verdict(entry(0.001, 0.05)) == "adopt"  # lower bound above 0
    assert verdict(entry(-0.06, 0.009)) == "does not pay off"  # upper bound below +0.01
    assert verdict(entry(-0.02, 0.03)) == "inconclusive, detectable effect 0.040"
    assert verdict(entry(-0.02, 0.009)["composite_em"]) == "does not pay off"  # the composite entry itself
    assert verdict(entry(-0.02, 0.015), threshold=0.02) == "does not pay off"


def test_no_verdict_is_given_on_fewer_seeds_than_the_minimum_however_clear_the_interval():
    from trace_rl.bench.summary import verdict

    clear = {"mean": 0.03, "ci95": [0.005, 0.055], "mde": 0.02, "n": 3}
    assert verdict(clear) == "interim (3 of 5 seeds): no verdict"
    assert verdict(clear, min_seeds=3) == "adopt"


def test_benchmark_v2_runs_both_regimes_seed_by_seed():
    from trace_rl.bench.runner import SIZES, plan

    runs = plan(SIZES["quick"], ["uniform", "trace"], late=5, warm=True)
    assert [(r[0], r[1], r[2]) for r in runs] == [
        ("small-groups", "uniform", 0),
        ("small-groups", "trace", 0),
        ("late5", "uniform", 0),
        ("late5", "trace", 0),
    ]
    assert not any("run.init_from" in o for r in runs[:2] for o in r[3])


def test_the_oracle_share_pools_gains_over_measured_iterations_and_seeds():
    from trace_rl.bench.summary import pooled_share

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
    from trace_rl.bench.runner import variant_overrides, variant_slug
    from trace_rl.config.sections import RUN_NAME

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
    from trace_rl.cli.main import main

    assert main(["bench", "--quick", "--out", str(tmp_path), "--set", "policy.learning_rate=-1"]) == 2
    assert "policy.learning_rate" in capsys.readouterr().err
    assert not (tmp_path / "runs.jsonl").exists()


def test_the_regime_plot_draws_old_and_new_runs(tmp_path):
    from trace_rl.bench.summary import plot_regimes

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
    from trace_rl.bench.summary import markdown_table, summarise

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
    from trace_rl.bench.runner import _run_figures
    from trace_rl.bench.summary import markdown_table, summarise

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


def test_the_table_leads_with_composite_em_and_pairs_it_with_a_t_interval_and_a_verdict():
    from trace_rl.bench.summary import markdown_table, summarise

    oracle = {"share_of_oracle_per_iteration": [1.0]}
    done = []
    # per seed: trace's dev and test EM above uniform's by +0.02/+0.04, +0.03/+0.05, +0.01/+0.03
    for seed, (dev, test) in enumerate([(0.02, 0.04), (0.03, 0.05), (0.01, 0.03)]):
        done.append({**_finished_run("uniform", seed, {}), "iterations": 2, "nonzero_advantage_share": [0.25, 0.75]})
        trace = {**_finished_run("trace", seed, {}), "dev_em": 0.3 + dev, "test_em": 0.3 + test}
        done.append({**trace, "iterations": 2, "nonzero_advantage_share": [0.5, 1.0]})
    assert summarise(done, oracle, "d", 1.0)["verdicts"] == {"small-groups/trace": "interim (3 of 5 seeds): no verdict"}
    summary = summarise(done, oracle, "d", 1.0, min_seeds=3)
    rows = summary["allocators"]["small-groups"]
    assert rows["trace"]["composite_em"]["mean"] == pytest.approx(0.33)  # ((0.32 + 0.34) + ...) / 6
    # non-zero-advantage leaves per iteration: mean share x 16 leaves / 2 iterations
    assert rows["uniform"]["nonzero_advantage_leaves"]["mean"] == pytest.approx(0.5 * 16 / 2)
    assert rows["trace"]["nonzero_advantage_leaves"]["mean"] == pytest.approx(0.75 * 16 / 2)
    table = markdown_table(summary)
    assert "| dev EM before | composite EM | dev EM |" in table and "| non-zero-advantage leaves / it. |" in table
    # (a), (b), mixed trees (not recorded), non-zero-advantage leaves, reward, dev EM before, composite EM
    uniform = "| uniform | 0.500 ± 0.000 | 0.500 ± 0.000 | - | 4.0 ± 0.0 | 0.400 ± 0.000 | 0.300 ± 0.000 | 0.300 ± 0"
    assert uniform in table
    # composite differences +0.03, +0.04, +0.02: mean +0.03, sd 0.01, t interval 0.03 +- 4.303 * 0.01 / sqrt(3)
    composite = summary["paired_vs_uniform"]["small-groups/trace"]["composite_em"]
    assert composite["ci95"] == pytest.approx([0.03 - 0.024841, 0.03 + 0.024841], abs=1e-5)
    assert "### Paired against uniform (same seed and start): mean difference [paired Student-t 95% interval]" in table
    assert "| regime / variant | n | composite EM | effective ratio (a) |" in table
    assert "| small-groups/trace | 3 | +0.030 [+0.005, +0.055] |" in table
    assert summary["verdicts"] == {"small-groups/trace": "adopt"}
    assert "- small-groups/trace: adopt" in table
    secondary = table.split("bootstrap 95%, secondary")[1]
    assert "| small-groups/trace | 3 | +0.030 [" in secondary


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
    from trace_rl.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--out", str(tmp_path), flag])
    assert exit_.value.code == 2 and flag.split("=")[0] in capsys.readouterr().err
    assert not (tmp_path / "runs.jsonl").exists()
