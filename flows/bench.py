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
paired difference of (a), (b), dev and test EM with a bootstrap 95% interval (`paired_vs_uniform`).

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
import statistics
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from flows.settings import load_settings
from trace_core.method.allocators import AllocatorConfig
from trace_core.sim.oracle import oracle_study
from trace_core.sim.simulated import KnownProbabilityTask

Log = Callable[[str], None]
MAIN = ["trace", "uniform", "dynamic_sampling", "prompt_only", "random_branch"]
ABLATION = {
    "uniform/uniform": "random_branch",
    "active roots only": "active_roots",
    "active prefixes only": "active_prefixes",
    "active/active": "trace",
}


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
    from flows.training import trace_training

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
    from flows.report import evaluate_run
    from flows.training import trace_training

    name = f"bench-{regime}-{variant_slug(allocator)}-s{seed}"
    variant = variant_overrides(allocator)
    overrides = [
        *base,
        *extra,
        *variant,
        f"run.name={name}",
        f"run.seed={seed}",
        f"train.iterations={size.iterations}",
        f"train.eval_every={max(1, size.iterations // 2)}",
        f"run.output_dir={out / 'runs'}",
        f"train.eval_samples={size.eval_samples}",
        f"train.eval_questions={size.eval_questions}",
        f"headroom.every={size.headroom_every}",
    ]
    start = time.perf_counter()
    history = trace_training(overrides)
    train_seconds = time.perf_counter() - start
    final = evaluate_run(load_settings(overrides), log, questions=size.eval_questions, greedy=False)
    rows = [h for h in history if h["iteration"] >= 0]

    def series(key: str) -> list[float]:
        return [float(r.get(key) or 0.0) for r in rows]

    def nan_series(key: str) -> list[float]:
        return [float("nan") if r.get(key) is None else float(r[key]) for r in rows]

    return {
        "regime": regime,
        "allocator": allocator,
        "seed": seed,
        "iterations": len(rows),
        "effective_ratio": series("rollout/effective_ratio"),
        "nonzero_advantage_share": series("rollout/nonzero_advantage_share"),
        "mean_reward": series("rollout/mean_reward"),
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
        "dev_em_before": float(history[0].get("eval/em") or 0.0),
        "train_seconds": train_seconds,
    }


def _dev_curve(history: list[dict[str, Any]]) -> list[list[float]]:
    curve, leaves, tokens = [], 0.0, 0.0
    for row in history:
        leaves += float(row.get("rollout/leaves") or 0.0)
        tokens += float(row.get("rollout/generated_tokens") or 0.0)
        if row.get("eval/em") is not None:
            curve.append([float(row["iteration"]), leaves, tokens, float(row["eval/em"])])
    return curve


def pooled_share(runs: list[dict[str, Any]], key: str = "headroom_allocator") -> float:
    """The share of the oracle's Stage-1 gain over uniform that `key` reached, pooled over every
    measured iteration of `runs`: sum(key - uniform) / sum(oracle - uniform). NaN if nothing was
    measured or the oracle gained nothing."""
    gain = reached = 0.0
    for r in runs:
        for o, u, a in zip(r.get("headroom_oracle", []), r.get("headroom_uniform", []), r.get(key, []), strict=True):
            if not any(np.isnan([o, u, a])):
                gain += o - u
                reached += a - u
    return reached / gain if gain > 1e-9 else float("nan")


def _late_mean(runs: list[dict[str, Any]], key: str, start: int = 5) -> float:
    """Mean over runs of the mean of `key` from iteration `start` on (NaN entries skipped)."""
    values = [v for r in runs for v in r.get(key, [])[start:] if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


TINY_FILE = Path(__file__).with_name("tiny.toml")


def tiny_sections() -> dict[str, dict[str, Any]]:
    """The test suite's tiny task and model (flows/tiny.toml), by settings section."""
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
) -> dict[str, Any]:
    """Run (or continue) the benchmark; `overrides` ('section.key=value') apply to every run, under
    each run's own allocator, seed, size and name."""
    size = SIZES[size_name]
    if seeds is not None:
        size = replace(size, seeds=seeds)
    out.mkdir(parents=True, exist_ok=True)
    base = (_tiny_overrides(out / "tiny") if size.tiny else []) + list(overrides or [])
    done_file = out / "runs.jsonl"
    done = [json.loads(line) for line in done_file.read_text().splitlines()] if done_file.exists() else []
    finished = {(r["regime"], r["allocator"], r["seed"]) for r in done}
    start = time.perf_counter()
    for regime, allocator, seed, extra in plan(size, variants, late, warm):
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
    summary = summarise(done, oracle, size_name, time.perf_counter() - start)
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


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}


def summarise(done: list[dict[str, Any]], oracle: dict[str, Any], size: str, seconds: float) -> dict[str, Any]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in done:
        groups.setdefault((r["regime"], r["allocator"]), []).append(r)
    table: dict[str, dict[str, Any]] = {}
    for (regime, allocator), runs in sorted(groups.items()):
        table.setdefault(regime, {})[allocator] = {
            "seeds": len(runs),
            "effective_ratio": _stats([float(np.mean(r["effective_ratio"])) for r in runs]),
            "nonzero_advantage_share": _stats([float(np.mean(r["nonzero_advantage_share"])) for r in runs]),
            "mean_training_reward": _stats([float(np.mean(r["mean_reward"])) for r in runs]),
            "dev_em": _stats([r["dev_em"] for r in runs]),
            "dev_f1": _stats([r["dev_f1"] for r in runs]),
            "test_em": _stats([r["test_em"] for r in runs]),
            "test_f1": _stats([r["test_f1"] for r in runs]),
            "dev_em_before": _stats([r["dev_em_before"] for r in runs]),
            "generated_tokens": _stats([r["generated_tokens"] for r in runs]),
            "leaves": _stats([r["leaves"] for r in runs]),
            "train_seconds": _stats([r["train_seconds"] for r in runs]),
            # the oracle ledger, pooled over measured iterations and seeds; the predictor from iteration 5 on
            "oracle_share": pooled_share(runs),
            "rule_oracle_share": pooled_share(runs, "headroom_rule"),
            "root_auc_from_5": _late_mean(runs, "root_auc"),
            "root_ece_from_5": _late_mean(runs, "root_ece"),
            "pool_auc_from_5": _late_mean(runs, "pool_auc"),
            "pool_ece_from_5": _late_mean(runs, "pool_ece"),
        }
    ablation = {label: table.get("small-groups", {}).get(name) for label, name in ABLATION.items()}
    return {
        "size": size,
        "seconds": seconds,
        "allocators": table,
        "ablation": ablation,
        "oracle": oracle,
        "paired_vs_uniform": paired_vs_uniform(done),
    }


PAIRED = ("effective_ratio", "nonzero_advantage_share", "dev_em", "test_em")


def paired_vs_uniform(done: list[dict[str, Any]], draws: int = 10_000) -> dict[str, dict[str, Any]]:
    """Per regime and variant: the per-seed difference variant - uniform (same seed, same start),
    its mean and a percentile bootstrap 95% interval over seeds (with 3 seeds the interval is crude:
    it can only be as wide as the seeds disagree)."""
    by_key = {(r["regime"], r["allocator"], r["seed"]): r for r in done}
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, Any]] = {}
    for regime, variant in sorted({(r["regime"], r["allocator"]) for r in done if r["allocator"] != "uniform"}):
        seeds = sorted(s for (g, v, s) in by_key if g == regime and v == variant and (g, "uniform", s) in by_key)
        if not seeds:
            continue
        entry: dict[str, Any] = {"seeds": seeds}
        for key in PAIRED:
            diffs = np.array(
                [_final(by_key[(regime, variant, s)], key) - _final(by_key[(regime, "uniform", s)], key) for s in seeds]
            )
            boot = diffs[rng.integers(0, len(diffs), size=(draws, len(diffs)))].mean(axis=1)
            entry[key] = {
                "per_seed": diffs.round(4).tolist(),
                "mean": float(diffs.mean()),
                "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
            }
        out[f"{regime}/{variant}"] = entry
    return out


def _final(run: dict[str, Any], key: str) -> float:
    """A run's figure: accuracy at the end, per-iteration rates averaged over the run."""
    value = run[key]
    return float(np.mean(value)) if isinstance(value, list) else float(value)


def _ratio(value: float, base: float) -> float:
    """value / base; NaN where the base is 0 (uniform mixed no group: no ratio to speak of)."""
    return value / base if base > 0 else float("nan")


def _cell(stats: dict[str, float] | None, digits: int = 3) -> str:
    if not stats:
        return "-"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def markdown_table(summary: dict[str, Any]) -> str:
    lines = []
    for regime, rows in summary["allocators"].items():
        lines += [
            f"### Regime: {regime}",
            "",
            "| allocator | effective ratio (a) | non-zero advantage (b) | training reward | dev EM before | "
            "dev EM | dev F1 | test EM | test F1 | generated tokens | leaves | train s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in rows.items():
            lines.append(
                f"| {name} | {_cell(r['effective_ratio'])} | {_cell(r['nonzero_advantage_share'])} | "
                f"{_cell(r['mean_training_reward'])} | {_cell(r['dev_em_before'])} | "
                f"{_cell(r['dev_em'])} | {_cell(r['dev_f1'])} | {_cell(r['test_em'])} | "
                f"{_cell(r['test_f1'])} | {_cell(r['generated_tokens'], 0)} | {_cell(r['leaves'], 0)} | "
                f"{_cell(r['train_seconds'], 0)} |"
            )
        lines += [
            "",
            "| allocator | (a) / uniform | (b) / uniform | oracle share (Stage 1) | predictor rule's share | "
            "root AUC (it >= 5) | root ECE (it >= 5) | pool AUC (it >= 5) | pool ECE (it >= 5) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        base = rows.get("uniform")
        for name, r in rows.items():
            ratio_a, ratio_b = (
                _ratio(r[k]["mean"], base[k]["mean"] if base else 0.0)
                for k in ("effective_ratio", "nonzero_advantage_share")
            )
            figures = [ratio_a, ratio_b] + [
                r.get(k, float("nan"))
                for k in (
                    "oracle_share",
                    "rule_oracle_share",
                    "root_auc_from_5",
                    "root_ece_from_5",
                    "pool_auc_from_5",
                    "pool_ece_from_5",
                )
            ]
            lines.append(f"| {name} | " + " | ".join("-" if np.isnan(c) else f"{c:.3f}" for c in figures) + " |")
        lines.append("")
    lines += ["### Stage ablation (small groups)", "", "| variant | effective ratio (a) | test EM |", "|---|---|---|"]
    for label, r in summary["ablation"].items():
        lines.append(f"| {label} | {_cell(r['effective_ratio']) if r else '-'} | {_cell(r['test_em']) if r else '-'} |")
    if summary.get("paired_vs_uniform"):
        lines += [
            "",
            "### Paired against uniform (same seed and start): mean difference [bootstrap 95% interval]",
            "",
            "| regime / variant | effective ratio (a) | non-zero advantage (b) | dev EM | test EM |",
            "|---|---|---|---|---|",
        ]
        for name, entry in summary["paired_vs_uniform"].items():
            cells = [
                f"{entry[k]['mean']:+.3f} [{entry[k]['ci95'][0]:+.3f}, {entry[k]['ci95'][1]:+.3f}]" for k in PAIRED
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    share = summary["oracle"]["share_of_oracle_per_iteration"]
    lines += [
        "",
        f"Oracle study (known-probability task): TRACE's expected mixed groups as a share of the oracle's, "
        f"per iteration: {', '.join(f'{s:.2f}' for s in share)}",
        "",
    ]
    return "\n".join(lines)


def plot(done: list[dict[str, Any]], oracle: dict[str, Any], out: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    present = list(dict.fromkeys(r["allocator"] for r in done if r["regime"] == "small-groups"))
    for allocator in [a for a in present if a not in ("active_roots", "active_prefixes")]:
        runs = [r for r in done if r["allocator"] == allocator and r["regime"] == "small-groups"]
        for ax, key in zip(axes[:2], ["effective_ratio", "nonzero_advantage_share"], strict=True):
            ax.plot(np.mean([r[key] for r in runs], axis=0), label=allocator, marker=".")
    axes[0].set_title("(a) effective ratio per iteration")
    axes[1].set_title("(b) share of leaves with non-zero advantage")
    for ax in axes[:2]:
        ax.set_xlabel("iteration")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[2].plot(
        range(len(oracle["share_of_oracle_per_iteration"])), oracle["share_of_oracle_per_iteration"], marker="o"
    )
    axes[2].axhline(0.9, color="#999999", linestyle="--", label="90% of the oracle")
    axes[2].set_ylim(0, 1.05)
    axes[2].set_title("TRACE / oracle expected mixed groups")
    axes[2].set_xlabel("iteration (known-probability task)")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "effective_ratio.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    small = list(dict.fromkeys(r["allocator"] for r in done if r["regime"] == "small-groups"))
    test_em = {a: [r["test_em"] for r in done if r["allocator"] == a and r["regime"] == "small-groups"] for a in small}
    means = [float(np.mean(test_em[a])) for a in small]
    stds = [float(np.std(test_em[a])) for a in small]
    ax.bar(small, means, yerr=stds, capsize=4, color="#4c72b0")
    ax.set_ylabel("test EM (avg@n, T=1)")
    ax.set_title("Final test accuracy at equal budget (mean ± std over seeds)")
    plt.setp(ax.get_xticklabels(), rotation=20)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)


def plot_regimes(done: list[dict[str, Any]], out: Path) -> None:
    """`regimes.png`: one row per regime; per allocator (mean over seeds) the effective ratio (a) and
    the non-zero-advantage share (b) per iteration, dev EM against cumulative generated tokens, and
    the oracle ledger's expected mixed Stage-1 groups at the measured iterations (oracle dashed,
    the allocator solid, uniform's plan on the same pool dotted)."""
    regimes = list(dict.fromkeys(r["regime"] for r in done))
    if not regimes:
        return
    fig, axes = plt.subplots(len(regimes), 4, figsize=(18, 3.8 * len(regimes)), squeeze=False)
    for row, regime in zip(axes, regimes, strict=True):
        allocators = list(dict.fromkeys(r["allocator"] for r in done if r["regime"] == regime))
        for k, allocator in enumerate(allocators):
            runs = [r for r in done if r["regime"] == regime and r["allocator"] == allocator]
            color = f"C{k}"
            for ax, key in zip(row[:2], ["effective_ratio", "nonzero_advantage_share"], strict=True):
                ax.plot(np.mean([r[key] for r in runs], axis=0), label=allocator, marker=".", color=color)
            curves = [r["dev_curve"] for r in runs if r.get("dev_curve")]
            if curves:
                points = np.mean(np.array(curves, dtype=float), axis=0)  # same evaluation points in every run
                row[2].plot(points[:, 2], points[:, 3], marker="o", label=allocator, color=color)
            series = {
                key: np.nanmean([r[key] for r in runs if r.get(key)], axis=0)
                for key in ("headroom_oracle", "headroom_allocator", "headroom_uniform")
                if any(r.get(key) for r in runs)
            }
            if series:
                measured = ~np.isnan(series["headroom_oracle"])
                its = np.arange(len(measured))[measured]
                row[3].plot(
                    its,
                    series["headroom_oracle"][measured],
                    linestyle="--",
                    color=color,
                    label=f"oracle ({allocator}'s Stage-1 budget)",
                )
                row[3].plot(its, series["headroom_allocator"][measured], marker="o", color=color, label=allocator)
                row[3].plot(
                    its,
                    series["headroom_uniform"][measured],
                    linestyle=":",
                    color=color,
                    label=f"uniform on {allocator}'s pool",
                )
        titles = [
            "(a) effective ratio",
            "(b) non-zero advantage share",
            "dev EM vs generated tokens",
            "oracle ledger: expected mixed Stage-1 groups",
        ]
        for ax, title in zip(row, titles, strict=True):
            ax.set_title(f"{regime}: {title}", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        for ax in row[:2]:
            ax.set_ylim(0, 1)
            ax.set_xlabel("iteration")
        row[2].set_xlabel("cumulative generated tokens")
        row[3].set_xlabel("iteration")
    fig.tight_layout()
    fig.savefig(out / "regimes.png", dpi=100)
    plt.close(fig)
