"""`trace-rl bench`: does TRACE beat its baselines at equal sampling cost?

Trains every allocator on the same task with the same budget of leaves per iteration, the same
number of iterations and the same seeds, then evaluates each final policy on dev and test. Runs:
- regime "small-groups" (the paper's): all allocators, uniform groups of G = 4 (TRACE gives 2 to 4
  bare rollouts per chosen prompt), a candidate pool twice what the budget covers at 2 each;
- regime "large-groups": `trace` against `uniform` with G = 8, where uniform already mixes often
  (TRACE's allocation does not take G, so its runs here repeat its small-group runs: identical
  figures, which double as a check that a run is reproducible);
- the stage ablation: uniform/uniform (`random_branch`), active roots only (`active_roots`),
  active prefixes only (`active_prefixes`), active/active (`trace`), in the small-groups regime;
- the oracle study on the known-probability task (`trace_core.sim.oracle`).
The effective ratio is reported in two forms: (a) the paper's, the share of an iteration's trees
whose leaves hold both a success and a failure, and (b) the share of leaves whose advantage is not
zero, the signal that actually reaches the gradient.

`--variants` runs only the named variants (an allocator, optionally with a predictor,
`trace+online`, and settings, `uniform@policy.learning_rate=0.0001;policy.kl_coef=0.1`) in the
small-groups ("warm") regime; with `--late K` they run in the late regime
instead, every variant of a seed starting from the same checkpoint of K iterations of `uniform`
training (its predictor first learns from that pre-run's rollouts, as a resumed deployment could);
`--regimes warm,late` runs both. Every variant is also compared with `uniform` seed by seed: the
paired difference of the composite EM ((dev EM + test EM) / 2, the primary endpoint), (a), (b),
dev and test EM with a paired Student-t 95% interval, p-value and minimal detectable effect, a
verdict on the composite, and a percentile bootstrap interval as a secondary figure
(`paired_vs_uniform`, `verdict`).

Every run measures the oracle ledger (trace_core/method/headroom.py) at iteration 0 and every
`headroom_every` iterations: the share of the oracle's Stage-1 gain over uniform its allocator
reached, pooled over the measured iterations and seeds (sum of gains over sum of the oracle's
gains), and the predictor's AUC and calibration on the whole measured pool. Dev EM is evaluated
twice per run (half-way and at the end), against cumulative leaves and generated tokens.

Every finished run is appended to `runs.jsonl` in the output folder, so an interrupted benchmark
continues where it stopped; `summary.json`, `table.md` and the plots are rebuilt from it.
"""

from __future__ import annotations

import json
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import numpy as np

from trace_core.method.allocators import AllocatorConfig
from trace_core.method.predictor import pooled_quality
from trace_core.method.tree import allocation_outcomes
from trace_core.sim.oracle import oracle_study
from trace_core.sim.simulated import KnownProbabilityTask
from trace_rl.bench.summary import MIN_SEEDS, markdown_table, plot, plot_regimes, summarise
from trace_rl.config.settings import Settings, load_settings
from trace_rl.store.store import RolloutStore

Log = Callable[[str], None]
MAIN = ["trace", "uniform", "dynamic_sampling", "prompt_only", "random_branch"]


@dataclass(frozen=True)
class BenchSize:
    """seeds: training seeds per allocator; iterations: training iterations per run;
    eval_questions / eval_samples: final dev and test evaluation of each run, on the first
    questions of each split, avg@samples at temperature 1; tiny: the CI size (the tests' tiny
    task and model)."""

    seeds: int
    iterations: int
    eval_questions: int
    eval_samples: int
    tiny: bool
    headroom_every: int = 0  # iterations between oracle-ledger measurements (0: none)


SIZES = {
    "default": BenchSize(seeds=3, iterations=20, eval_questions=200, eval_samples=4, tiny=False, headroom_every=5),
    "quick": BenchSize(seeds=1, iterations=1, eval_questions=8, eval_samples=1, tiny=True, headroom_every=1),
}


def plan(
    size: BenchSize, variants: list[str] | None = None, late: int = 0, warm: bool | None = None
) -> list[tuple[str, str, int, list[str]]]:
    """(regime, variant, seed, settings overrides) of every run. A variant is an allocator name,
    optionally with a predictor (`trace+online`); `variants` runs only those, in the small-groups
    ("warm") regime, instead of the whole comparison. With `late` = K, they run in the late regime
    instead (also in the warm one when `warm` is True): every variant of a seed starts from the
    same checkpoint, K iterations of `uniform` training (`pre_run_name`), and its predictor first
    learns from that pre-run's rollouts. Seed by seed, so a benchmark cut short has whole seeds."""
    runs = []
    if variants:
        warm = not late if warm is None else warm
        for seed in range(size.seeds):
            if warm:
                runs += [("small-groups", v, seed, ["trace.group_size=4"]) for v in variants]
            if late:
                runs += [
                    (f"late{late}", v, seed, ["trace.group_size=4", f"run.init_from={pre_run_name(late, seed)}"])
                    for v in variants
                ]
        return runs
    for seed in range(size.seeds):
        for allocator in MAIN:
            runs.append(("small-groups", allocator, seed, ["trace.group_size=4"]))
        for allocator in ("trace", "uniform"):
            runs.append(("large-groups", allocator, seed, ["trace.group_size=8"]))
        for allocator in ("active_roots", "active_prefixes"):
            runs.append(("small-groups", allocator, seed, ["trace.group_size=4"]))
    return runs


def variant_overrides(variant: str) -> list[str]:
    """'allocator[+predictor][@section.key=value;...]' -> settings overrides, e.g.
    'uniform@policy.learning_rate=0.0001' (a recipe variant, every other setting as the bench's)."""
    head, _, recipe = variant.partition("@")
    allocator, _, predictor = head.partition("+")
    out = [f"trace.allocator={allocator}"] + ([f"predictor.name={predictor}"] if predictor else [])
    return out + [item for item in recipe.split(";") if item]


def variant_slug(variant: str) -> str:
    """A variant as part of a run name (letters, digits, '-', '_', '.')."""
    slug = variant.replace("+", "-with-").replace("@", "-at-").replace(";", "-").replace("=", "-")
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in slug)


def pre_run_name(iterations: int, seed: int) -> str:
    return f"bench-pre{iterations}-uniform-s{seed}"


def _pre_run(iterations: int, seed: int, size: BenchSize, out: Path, base: list[str], log: Log) -> None:
    """The late regime's shared start: `uniform` for `iterations` (resumed if it exists)."""
    from trace_rl.flows.training import trace_training

    log(f"bench: pre-run of {iterations} uniform iterations, seed {seed}")
    name = pre_run_name(iterations, seed)
    trace_training(
        [
            *base,
            "trace.group_size=4",
            "trace.allocator=uniform",
            f"run.name={name}",
            f"run.seed={seed}",
            f"train.iterations={iterations}",
            f"train.eval_every={iterations}",
            f"run.output_dir={out / 'runs'}",
            f"train.eval_samples={size.eval_samples}",
            f"train.eval_questions={size.eval_questions}",
        ]
    )


def _one_run(
    regime: str, allocator: str, seed: int, extra: list[str], size: BenchSize, out: Path, base: list[str], log: Log
) -> dict[str, Any]:
    from trace_rl.flows.training import trace_training
    from trace_rl.report.evaluation import evaluate_run

    overrides = _run_overrides(regime, allocator, seed, extra, size, out, base)
    start = time.perf_counter()
    history = trace_training(overrides)
    train_seconds = time.perf_counter() - start
    settings = load_settings(overrides)
    final = evaluate_run(settings, log, questions=size.eval_questions, greedy=False)
    record: dict[str, Any] = {"regime": regime, "allocator": allocator, "seed": seed}
    return record | _run_figures(history, final, train_seconds) | pooled_root_quality(settings)


def root_outcomes(
    store: RolloutStore, run: str, start: int = 5, stop: int | None = None
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per backed-up iteration in [start, stop), the run's root predictions at allocation time
    against their bare rollouts (`allocation_outcomes`); iterations with no predicted root left out."""
    run_id = store.run_id(run)
    iterations = [it for it in store.backed_up_iterations(run_id) if it >= start and (stop is None or it < stop)]
    scored = [allocation_outcomes(store.load_trees(run_id, it), "root") for it in iterations]
    return [part for part in scored if len(part[0])]


def pooled_root_quality(s: Settings, start: int = 5) -> dict[str, float]:
    """The predictor's allocation-time root AUC and ECE over iterations `start` and later, pooled
    before scoring (`pooled_quality`). Per iteration (`root_auc`, `root_ece`) even a perfect
    predictor scores only about 0.55 and 0.10 on the prompts TRACE picks (bench/metric_ceiling.py);
    pooled, its ECE falls to about 0.03. NaN where no root was predicted."""
    store = RolloutStore(s.store_url(), create=False, read_only=True)
    try:
        q = pooled_quality(root_outcomes(store, s.run.name, start))
    finally:
        store.close()
    return {"root_auc_pooled": q.auc, "root_ece_pooled": q.ece}


def _run_overrides(
    regime: str, allocator: str, seed: int, extra: list[str], size: BenchSize, out: Path, base: list[str]
) -> list[str]:
    """The settings overrides of one bench run: the shared base, the regime's, the variant's, then
    the run's own name, seed, size and output folder."""
    return [
        *base,
        *extra,
        *variant_overrides(allocator),
        f"run.name=bench-{regime}-{variant_slug(allocator)}-s{seed}",
        f"run.seed={seed}",
        f"train.iterations={size.iterations}",
        f"train.eval_every={max(1, size.iterations // 2)}",
        f"run.output_dir={out / 'runs'}",
        f"train.eval_samples={size.eval_samples}",
        f"train.eval_questions={size.eval_questions}",
        f"headroom.every={size.headroom_every}",
    ]


def _run_figures(history: list[dict[str, Any]], final: dict[str, Any], train_seconds: float) -> dict[str, Any]:
    """What `runs.jsonl` keeps of a finished run, from its training history and final evaluation."""
    rows = [h for h in history if h["iteration"] >= 0]

    def series(key: str) -> list[float]:
        return [float(r.get(key) or 0.0) for r in rows]

    def nan_series(key: str) -> list[float]:
        return [float("nan") if r.get(key) is None else float(r[key]) for r in rows]

    return {
        "iterations": len(rows),
        "effective_ratio": series("rollout/effective_ratio"),
        "nonzero_advantage_share": series("rollout/nonzero_advantage_share"),
        "mean_reward": series("rollout/mean_reward"),
        # how many trees held both outcomes (the effective ratio is their share: it hides the count)
        "mixed_trees": [r * n for r, n in zip(series("rollout/effective_ratio"), series("rollout/trees"), strict=True)],
        # the predictor at allocation time, scored on the bare rollouts that followed (NaN: not predicted)
        "root_auc": nan_series("predictor/root_auc"),
        "root_ece": nan_series("predictor/root_ece"),
        "anchor_auc": nan_series("predictor/anchor_auc"),
        "anchor_ece": nan_series("predictor/anchor_ece"),
        # the oracle ledger at the measured iterations (NaN: not measured)
        "headroom_oracle": nan_series("headroom/oracle_mixed"),
        "headroom_uniform": nan_series("headroom/uniform_mixed"),
        "headroom_allocator": nan_series("headroom/allocator_mixed"),
        "headroom_rule": nan_series("headroom/predictor_rule_mixed"),
        "pool_auc": nan_series("headroom/pool_auc"),
        "pool_ece": nan_series("headroom/pool_ece"),
        # dev EM against cost: (iteration, cumulative leaves, cumulative generated tokens, dev EM)
        "dev_curve": _dev_curve(history),
        "generated_tokens": sum(series("rollout/generated_tokens")),
        "leaves": sum(series("rollout/leaves")),
        "dev_em": final["dev"]["em"],
        "dev_f1": final["dev"]["f1"],
        "test_em": final["test"]["em"],
        "test_f1": final["test"]["f1"],
        # accuracy per data source, where a split has several (BFCL's subsets: the paper's Table 5)
        "dev_em_by_source": _by_source(final["dev"]),
        "test_em_by_source": _by_source(final["test"]),
        "dev_em_before": float(history[0].get("eval/em") or 0.0),
        "train_seconds": train_seconds,
    }


def _by_source(split: dict[str, Any]) -> dict[str, float]:
    return {key.removeprefix("em_"): float(value) for key, value in split.items() if key.startswith("em_")}


def _dev_curve(history: list[dict[str, Any]]) -> list[list[float]]:
    curve, leaves, tokens = [], 0.0, 0.0
    for row in history:
        leaves += float(row.get("rollout/leaves") or 0.0)
        tokens += float(row.get("rollout/generated_tokens") or 0.0)
        if row.get("eval/em") is not None:
            curve.append([float(row["iteration"]), leaves, tokens, float(row["eval/em"])])
    return curve


TINY_FILE = Path(__file__).with_name("tiny.toml")


def tiny_sections() -> dict[str, dict[str, Any]]:
    """The test suite's tiny task and model (trace_rl/bench/tiny.toml), by settings section."""
    return tomllib.loads(TINY_FILE.read_text())


def _tiny_overrides(workdir: Path) -> list[str]:
    """The tiny task and model (for the CI size), kept under `workdir`, with the bench's budget."""
    tiny = [f"{section}.{key}={value}" for section, values in tiny_sections().items() for key, value in values.items()]
    return [
        f"task.data_dir={workdir / 'data'}",
        f"model.models_dir={workdir / 'models'}",
        *tiny,
        "trace.budget=16",
        "trace.pool_size=10",
        "trace.max_per_prompt=8",
        "train.eval_questions=4",
    ]


def run_bench(
    size_name: str,
    out: Path,
    log: Log,
    variants: list[str] | None = None,
    seeds: int | None = None,
    late: int = 0,
    warm: bool | None = None,
    overrides: list[str] | None = None,
    resize: dict[str, int] | None = None,
    train: bool = True,
    min_seeds: int = MIN_SEEDS,
) -> dict[str, Any]:
    """Run (or continue) the benchmark; `overrides` ('section.key=value') apply to every run, under
    each run's own allocator, seed, size and name; `resize` changes fields of the size (seeds,
    iterations, eval_questions, eval_samples, headroom_every; None keeps the size's). Without
    `train`, only the summary, table and plots are written, from the runs `out` already holds (a
    benchmark cut short, read while its remaining runs are still to come). `min_seeds`: the fewest paired
    seeds a verdict is given on (`summary.verdict`)."""
    changes = {k: v for k, v in {**(resize or {}), "seeds": seeds}.items() if v is not None}
    size = replace(SIZES[size_name], **changes)  # type: ignore[arg-type]
    out.mkdir(parents=True, exist_ok=True)
    base = (_tiny_overrides(out / "tiny") if size.tiny else []) + list(overrides or [])
    done_file = out / "runs.jsonl"
    done = [json.loads(line) for line in done_file.read_text().splitlines()] if done_file.exists() else []
    finished = {(r["regime"], r["allocator"], r["seed"]) for r in done}
    start = time.perf_counter()
    for regime, allocator, seed, extra in plan(size, variants, late, warm) if train else []:
        if (regime, allocator, seed) in finished:
            continue
        if regime.startswith("late"):
            _pre_run(late, seed, size, out, base, log)
        log(f"bench: {regime} / {allocator} / seed {seed}")
        result = _one_run(regime, allocator, seed, extra, size, out, base, log)
        done.append(result)
        with done_file.open("a") as handle:
            handle.write(json.dumps(result) + "\n")
    oracle = _oracle(size)
    summary = summarise(done, oracle, size_name, time.perf_counter() - start, min_seeds)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "table.md").write_text(markdown_table(summary))
    plot(done, oracle, out)
    plot_regimes(done, out)
    return summary


def _oracle(size: BenchSize) -> dict[str, Any]:
    task = KnownProbabilityTask(seed=0)
    config = AllocatorConfig(budget=64, stage1_share=0.5, group_size=4)
    iterations = 4 if size.tiny else 12
    shares = [[r.share for r in oracle_study("trace", task, config, iterations, 64, seed=s)] for s in range(size.seeds)]
    mean = np.mean(shares, axis=0)
    return {"iterations": iterations, "seeds": size.seeds, "share_of_oracle_per_iteration": mean.round(4).tolist()}
