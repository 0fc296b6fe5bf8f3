"""The benchmark's figures from its finished runs (`runs.jsonl`): summary statistics, TRACE's share
of the oracle's gain, the paired comparison with `uniform`, the markdown table and the plots.
`trace_rl/bench/runner.py` runs the benchmark; this module only reads what it recorded.

The primary endpoint, fixed in advance, is the composite EM: the mean of a run's final dev EM and
test EM (both avg@n). A variant is compared with `uniform` seed by seed (same seed, same start) with
a paired Student-t 95% interval over seeds (`paired_t`), its two-sided p-value and the minimal
detectable effect at 80% power (`mde`, from the noncentral t); `verdict` turns the composite entry
into a decision. The percentile bootstrap interval is kept as a secondary figure only: with 5 seeds
it covers the true mean difference only about 83% of the time instead of 95%.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from scipy import stats as sps
from scipy.optimize import brentq

ABLATION = {
    "uniform/uniform": "random_branch",
    "active roots only": "active_roots",
    "active prefixes only": "active_prefixes",
    "active/active": "trace",
}


# the fewest paired seeds a verdict is given on: with fewer, a t interval that happens to clear 0 on 2 or 3
# seeds would "adopt" a variant before the pre-registered seeds are in
MIN_SEEDS = 5


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


def _mean_of(runs: list[dict[str, Any]], key: str) -> float:
    """Mean over runs of a per-run figure (NaN where no run recorded it)."""
    values = [float(r[key]) for r in runs if r.get(key) is not None and not np.isnan(r[key])]
    return float(np.mean(values)) if values else float("nan")


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}


def _stats_if_all(runs: list[dict[str, Any]], key: str) -> dict[str, float] | None:
    """Mean and std over runs of a per-iteration series, or None unless every run recorded it (rows
    written before a figure existed have none, and a mean over some of the seeds would pass for all)."""
    if not all(r.get(key) for r in runs):
        return None
    return _stats([float(np.mean(r[key])) for r in runs])


def summarise(
    done: list[dict[str, Any]], oracle: dict[str, Any], size: str, seconds: float, min_seeds: int = MIN_SEEDS
) -> dict[str, Any]:
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
            "mixed_trees": _stats_if_all(runs, "mixed_trees"),
            "nonzero_advantage_leaves": _stats([nonzero_advantage_leaves(r) for r in runs]),
            "composite_em": _stats([composite_em(r) for r in runs]),
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
            "root_auc_pooled_from_5": _mean_of(runs, "root_auc_pooled"),
            "root_ece_pooled_from_5": _mean_of(runs, "root_ece_pooled"),
            "pool_auc_from_5": _late_mean(runs, "pool_auc"),
            "pool_ece_from_5": _late_mean(runs, "pool_ece"),
            "test_em_by_source": _source_stats(runs, "test_em_by_source"),
        }
    ablation = {label: table.get("small-groups", {}).get(name) for label, name in ABLATION.items()}
    paired = paired_vs_uniform(done, min_seeds=min_seeds)
    return {
        "size": size,
        "seconds": seconds,
        "allocators": table,
        "ablation": ablation,
        "oracle": oracle,
        "paired_vs_uniform": paired,
        # the decision per (regime, variant) on the primary endpoint (composite EM), see `verdict`
        "verdicts": {name: entry["verdict"] for name, entry in paired.items()},
    }


def _source_stats(runs: list[dict[str, Any]], key: str) -> dict[str, dict[str, float]]:
    """Per data source (where the runs recorded several), the mean and std over runs."""
    sources = sorted({source for r in runs for source in r.get(key) or {}})
    return {source: _stats([r[key][source] for r in runs if source in (r.get(key) or {})]) for source in sources}


def composite_em(run: dict[str, Any]) -> float:
    """The primary endpoint: the mean of a run's final dev EM and test EM (both avg@n)."""
    return (float(run["dev_em"]) + float(run["test_em"])) / 2


def nonzero_advantage_leaves(run: dict[str, Any]) -> float:
    """Leaves with a non-zero advantage per iteration, on average over the run: the mean non-zero
    advantage share times the leaves per iteration (`leaves` is the run's total)."""
    shares = run["nonzero_advantage_share"]
    iterations = run.get("iterations") or len(shares)
    return float(np.mean(shares)) * float(run["leaves"]) / iterations if iterations else float("nan")


def t_power(effect: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """The power of a two-sided paired t test at level `alpha` with `n` pairs whose differences have
    standard deviation `sd`, when the true mean difference is `effect`: under that effect the
    statistic follows a noncentral t with n - 1 degrees of freedom and noncentrality
    effect / (sd / sqrt(n)); the power is its mass beyond +-t_{1-alpha/2, n-1}."""
    if n < 2 or not sd > 0:
        return float("nan")
    return _power_at(abs(effect) * math.sqrt(n) / sd, n - 1, alpha)


def _power_at(noncentrality: float, df: int, alpha: float) -> float:
    critical = float(sps.t.ppf(1 - alpha / 2, df))
    upper = float(sps.nct.sf(critical, df, noncentrality))
    lower = float(sps.nct.cdf(-critical, df, noncentrality))  # negligible; scipy returns NaN far out
    return upper + (lower if math.isfinite(lower) else 0.0)


def mde(sd: float, n: int, alpha: float = 0.05, power: float = 0.80) -> float:
    """The minimal detectable effect: the smallest true mean difference a two-sided paired t test at
    level `alpha` with `n` pairs detects with probability `power`, given the differences' standard
    deviation `sd`. Exact under normal differences: the noncentrality at which the noncentral t
    (n - 1 degrees of freedom) puts `power` beyond +-t_{1-alpha/2, n-1}, times sd / sqrt(n). (The
    common approximation (t_{1-alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n) is a little smaller,
    i.e. optimistic, at small n.) NaN with fewer than 2 pairs; 0 where the differences do not vary."""
    if n < 2 or math.isnan(sd):
        return float("nan")
    if sd == 0:
        return 0.0
    df, high = n - 1, 1.0
    while _power_at(high, df, alpha) < power:
        high *= 2
    noncentrality = float(brentq(lambda nc: _power_at(nc, df, alpha) - power, 0.0, high, xtol=1e-10))
    return noncentrality * sd / math.sqrt(n)


def seeds_needed(effect: float, sd: float, alpha: float = 0.05, power: float = 0.80) -> int | None:
    """The fewest pairs (seeds) at which a two-sided paired t test at level `alpha` detects a true
    mean difference `effect` with probability `power`, given the differences' standard deviation
    `sd`: found by stepping n up, each n with its own t_{1-alpha/2, n-1} and noncentral t
    (`t_power`), from the normal approximation's ((z_{1-alpha/2} + z_power) * sd / effect)^2, below
    which the t test never has the power. None for no positive effect or an unknown sd."""
    if not effect > 0 or math.isnan(sd):
        return None
    if sd == 0:
        return 2
    z = float(sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power))
    n = max(2, math.ceil((z * sd / effect) ** 2))
    while t_power(effect, sd, n, alpha) < power:
        n += 1
    return n


def paired_t(diffs: list[float] | np.ndarray, alpha: float = 0.05) -> dict[str, Any]:
    """The paired Student-t figures of per-seed differences: n, mean, sd (n - 1 in the denominator),
    the 100(1 - alpha)% interval mean +- t_{1-alpha/2, n-1} * sd / sqrt(n) (`ci95` at the default),
    the two-sided p-value of the t test of a zero mean, and the minimal detectable effect at 80% power
    (`mde`). With one seed nothing but the mean is defined (NaN elsewhere); with differences that do
    not vary the interval is the mean itself and p is 0 (1 if the mean is 0)."""
    values = np.asarray(diffs, dtype=float)
    n = len(values)
    mean = float(values.mean()) if n else float("nan")
    if n < 2:
        nan = float("nan")
        return {"n": n, "mean": mean, "sd": nan, "ci95": [nan, nan], "p": nan, "mde": nan}
    sd = float(values.std(ddof=1))
    se = sd / math.sqrt(n)
    half = float(sps.t.ppf(1 - alpha / 2, n - 1)) * se
    if se > 0:
        p = float(2 * sps.t.sf(abs(mean) / se, n - 1))
    else:
        p = 0.0 if mean != 0 else 1.0
    return {"n": n, "mean": mean, "sd": sd, "ci95": [mean - half, mean + half], "p": p, "mde": mde(sd, n, alpha)}


def verdict(entry: dict[str, Any], threshold: float = 0.01, min_seeds: int = MIN_SEEDS) -> str:
    """The decision on a paired composite-EM entry (`paired_vs_uniform(...)[name]["composite_em"]`, or
    the whole `[name]` entry): with fewer than `min_seeds` seeds, "interim (n of min_seeds seeds): no
    verdict"; else "adopt" if the paired t interval's lower bound is above 0; "does not pay off" if
    its upper bound is below +`threshold` (any gain it allows is too small to matter); otherwise
    "inconclusive, detectable effect X" with X the minimal detectable effect (undefined with one
    seed: "inconclusive, detectable effect undefined (1 seed)")."""
    entry = entry.get("composite_em", entry)
    n = int(entry.get("n", 1))
    if n < min_seeds:
        return f"interim ({n} of {min_seeds} seeds): no verdict"
    low, high = entry["ci95"]
    if low > 0:
        return "adopt"
    if high < threshold:
        return "does not pay off"
    if math.isnan(entry["mde"]):
        return f"inconclusive, detectable effect undefined ({entry.get('n', 1)} seed)"
    return f"inconclusive, detectable effect {entry['mde']:.3f}"


# the paired endpoints: the primary (composite EM) first
PAIRED = ("composite_em", "effective_ratio", "nonzero_advantage_share", "dev_em", "test_em")
# the order the bootstrap draws from its generator, as before the composite existed (so the secondary
# intervals of the other endpoints stay those the project reported); the composite draws from its own
_BOOTSTRAP_ORDER = ("effective_ratio", "nonzero_advantage_share", "dev_em", "test_em")


def paired_vs_uniform(
    done: list[dict[str, Any]], draws: int = 10_000, min_seeds: int = MIN_SEEDS
) -> dict[str, dict[str, Any]]:
    """Per regime and variant: the per-seed difference variant - uniform (same seed, same start) of
    each endpoint in PAIRED, with the paired Student-t figures (`paired_t`: n, mean, sd, `ci95` the
    t interval, two-sided p, mde) and, secondary, a percentile bootstrap 95% interval over seeds
    (`bootstrap_ci95`; too narrow with few seeds: it can only be as wide as the seeds disagree).
    `verdict` is the decision on the composite EM."""
    by_key = {(r["regime"], r["allocator"], r["seed"]): r for r in done}
    rng = np.random.default_rng(0)
    composite_rng = np.random.default_rng(1)
    out: dict[str, dict[str, Any]] = {}
    for regime, variant in sorted({(r["regime"], r["allocator"]) for r in done if r["allocator"] != "uniform"}):
        seeds = sorted(s for (g, v, s) in by_key if g == regime and v == variant and (g, "uniform", s) in by_key)
        if not seeds:
            continue
        figures: dict[str, Any] = {}
        for key in (*_BOOTSTRAP_ORDER, "composite_em"):
            diffs = np.array(
                [_final(by_key[(regime, variant, s)], key) - _final(by_key[(regime, "uniform", s)], key) for s in seeds]
            )
            gen = composite_rng if key == "composite_em" else rng
            boot = diffs[gen.integers(0, len(diffs), size=(draws, len(diffs)))].mean(axis=1)
            figures[key] = {
                "per_seed": diffs.round(4).tolist(),
                **paired_t(diffs),
                "bootstrap_ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
            }
        entry: dict[str, Any] = {"seeds": seeds, "interval": "paired Student-t 95%", **{k: figures[k] for k in PAIRED}}
        entry["verdict"] = verdict(entry, min_seeds=min_seeds)
        out[f"{regime}/{variant}"] = entry
    return out


def _final(run: dict[str, Any], key: str) -> float:
    """A run's figure: accuracy at the end, per-iteration rates averaged over the run."""
    if key == "composite_em":
        return composite_em(run)
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
    """`table.md`: per regime the allocators' figures and their ratios to uniform, then the stage
    ablation, the paired comparison with uniform (when there is one) and the oracle study."""
    lines = []
    for regime, rows in summary["allocators"].items():
        lines += _regime_lines(regime, rows)
    lines += _ablation_lines(summary["ablation"])
    if summary.get("paired_vs_uniform"):
        lines += _paired_lines(summary["paired_vs_uniform"])
    share = summary["oracle"]["share_of_oracle_per_iteration"]
    lines += [
        "",
        f"Oracle study (known-probability task): TRACE's expected mixed groups as a share of the oracle's, "
        f"per iteration: {', '.join(f'{s:.2f}' for s in share)}",
        "",
    ]
    return "\n".join(lines)


# a regime's second table: figures of the oracle ledger and of the predictor, after the ratios to uniform
_LEDGER_COLUMNS = (
    "oracle_share",
    "rule_oracle_share",
    "root_auc_from_5",
    "root_ece_from_5",
    "root_auc_pooled_from_5",
    "root_ece_pooled_from_5",
    "pool_auc_from_5",
    "pool_ece_from_5",
)


def _regime_lines(regime: str, rows: dict[str, Any]) -> list[str]:
    """One regime's two tables: the allocators' figures (mean ± std; composite EM = (dev EM + test
    EM) / 2, the primary endpoint; generated tokens, leaves and train seconds per run), then their
    ratios to uniform with the oracle ledger and the predictor's quality."""
    lines = [
        f"### Regime: {regime}",
        "",
        "| allocator | effective ratio (a) | non-zero advantage (b) | mixed trees / it. | "
        "non-zero-advantage leaves / it. | training reward | dev EM before | composite EM | dev EM | dev F1 | "
        "test EM | test F1 | generated tokens | leaves | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {_cell(r['effective_ratio'])} | {_cell(r['nonzero_advantage_share'])} | "
            f"{_cell(r.get('mixed_trees'), 1)} | {_cell(r.get('nonzero_advantage_leaves'), 1)} | "
            f"{_cell(r['mean_training_reward'])} | {_cell(r['dev_em_before'])} | {_cell(r.get('composite_em'))} | "
            f"{_cell(r['dev_em'])} | {_cell(r['dev_f1'])} | {_cell(r['test_em'])} | "
            f"{_cell(r['test_f1'])} | {_cell(r['generated_tokens'], 0)} | {_cell(r['leaves'], 0)} | "
            f"{_cell(r['train_seconds'], 0)} |"
        )
    lines += [
        "",
        "| allocator | (a) / uniform | (b) / uniform | oracle share (Stage 1) | predictor rule's share | "
        "root AUC (it >= 5) | root ECE (it >= 5) | root AUC, pooled | root ECE, pooled | "
        "pool AUC (it >= 5) | pool ECE (it >= 5) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = rows.get("uniform")
    for name, r in rows.items():
        figures = [
            _ratio(r[k]["mean"], base[k]["mean"] if base else 0.0)
            for k in ("effective_ratio", "nonzero_advantage_share")
        ]
        figures += [r.get(k, float("nan")) for k in _LEDGER_COLUMNS]
        lines.append(f"| {name} | " + " | ".join("-" if np.isnan(c) else f"{c:.3f}" for c in figures) + " |")
    lines.append("")
    return lines + _source_lines(rows)


def _source_lines(rows: dict[str, Any]) -> list[str]:
    """Test EM per data source (BFCL's subsets), when the runs recorded it."""
    sources = sorted({source for r in rows.values() for source in r.get("test_em_by_source") or {}})
    if not sources:
        return []
    lines = ["| allocator | " + " | ".join(f"test EM {s}" for s in sources) + " |", "|---" * (len(sources) + 1) + "|"]
    for name, r in rows.items():
        by_source = r.get("test_em_by_source") or {}
        lines.append(f"| {name} | " + " | ".join(_cell(by_source.get(s)) for s in sources) + " |")
    return [*lines, ""]


def _ablation_lines(ablation: dict[str, Any]) -> list[str]:
    lines = ["### Stage ablation (small groups)", "", "| variant | effective ratio (a) | test EM |", "|---|---|---|"]
    for label, r in ablation.items():
        lines.append(f"| {label} | {_cell(r['effective_ratio']) if r else '-'} | {_cell(r['test_em']) if r else '-'} |")
    return lines


_PAIRED_HEADERS = ("composite EM", "effective ratio (a)", "non-zero advantage (b)", "dev EM", "test EM")


def _interval_cell(figure: dict[str, Any], key: str = "ci95") -> str:
    """`mean [lo, hi]` of a paired figure, with the interval under `key`."""
    low, high = figure[key]
    return f"{figure['mean']:+.3f} [{low:+.3f}, {high:+.3f}]"


def _paired_lines(paired: dict[str, dict[str, Any]]) -> list[str]:
    """The paired comparison with uniform: mean difference and paired Student-t 95% interval per
    endpoint, the composite's p-value and minimal detectable effect, each variant's verdict, then the
    percentile bootstrap intervals as a secondary table."""
    header = " | ".join(_PAIRED_HEADERS)
    lines = [
        "",
        "### Paired against uniform (same seed and start): mean difference [paired Student-t 95% interval]",
        "",
        f"| regime / variant | n | {header} | composite p (t test) | composite mde (80% power) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in paired.items():
        composite = entry["composite_em"]
        cells = [_interval_cell(entry[k]) for k in PAIRED]
        cells += [_p_value(composite["p"]), _number(composite["mde"])]
        lines.append(f"| {name} | {len(entry['seeds'])} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Verdict on the composite EM (adopt: the t interval's lower bound above 0; does not pay off: its "
        "upper bound below +0.010; otherwise inconclusive, with the smallest effect these seeds detect at "
        "80% power):",
        "",
    ]
    lines += [f"- {name}: {entry.get('verdict') or verdict(entry)}" for name, entry in paired.items()]
    lines += [
        "",
        "#### Secondary: mean difference [percentile bootstrap 95% interval] (bootstrap 95%, secondary; "
        "too narrow with few seeds)",
        "",
        f"| regime / variant | n | {header} |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in paired.items():
        cells = [_interval_cell(entry[k], "bootstrap_ci95") for k in PAIRED]
        lines.append(f"| {name} | {len(entry['seeds'])} | " + " | ".join(cells) + " |")
    return lines


def _number(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def _p_value(p: float) -> str:
    return "-" if math.isnan(p) else "< 0.001" if p < 0.001 else f"{p:.3f}"


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
            _plot_allocator(row, runs, allocator, f"C{k}")
        _style_regime_row(row, regime)
    fig.tight_layout()
    fig.savefig(out / "regimes.png", dpi=100)
    plt.close(fig)


def _plot_allocator(row: Any, runs: list[dict[str, Any]], allocator: str, color: str) -> None:
    """One allocator's curves (means over its runs) on the four panels of a regime's row."""
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
        _plot_ledger(row[3], series, allocator, color)


def _plot_ledger(ax: Any, series: dict[str, Any], allocator: str, color: str) -> None:
    """The oracle ledger at the measured iterations: oracle dashed, the allocator solid, uniform dotted."""
    measured = ~np.isnan(series["headroom_oracle"])
    its = np.arange(len(measured))[measured]
    ax.plot(
        its,
        series["headroom_oracle"][measured],
        linestyle="--",
        color=color,
        label=f"oracle ({allocator}'s Stage-1 budget)",
    )
    ax.plot(its, series["headroom_allocator"][measured], marker="o", color=color, label=allocator)
    ax.plot(
        its, series["headroom_uniform"][measured], linestyle=":", color=color, label=f"uniform on {allocator}'s pool"
    )


def _style_regime_row(row: Any, regime: str) -> None:
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
