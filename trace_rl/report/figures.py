"""The report's comparison and allocation figures, drawn from the rollout database.

- `plot_comparison`: several runs on one panel per metric (effective ratio (a), leaves with a
  non-zero advantage (b), dev EM, the predictor's root AUC at allocation time), each run labelled
  with the allocator and predictor it was trained with (from its stored settings).
- `plot_allocation`: who got the budget in one iteration: Stage 1's bare rollouts m_i against
  each pool prompt's predicted success v (coloured by the success its bare rollouts then had), and
  Stage 2's continuations k_j against each anchor's predicted p (coloured by its rollout's reward r).
- `kind_success` / `plot_kinds`: the success of bare rollouts per question kind (the hop count
  where the data has one, otherwise its `data_source`) in the first and last third of a run, i.e.
  which kinds training moved, up or down.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from trace_core.method.allocators import PrefixPlan
from trace_core.method.tree import stage1_outcomes
from trace_rl.store.store import RolloutStore

COMPARED = (
    ("rollout/effective_ratio", "effective ratio (a)"),
    ("rollout/nonzero_advantage_share", "non-zero advantage (b)"),
    ("eval/em", "dev EM"),
    ("predictor/root_auc", "root AUC at allocation"),
)


def plot_comparison(series: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """series: label -> the run's per-iteration metric rows (trace_rl.store.queries.iteration_table)."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
    for ax, (key, title) in zip(axes.flat, COMPARED, strict=True):
        for label, rows in series.items():
            # only dev EM has a value for the starting policy (iteration -1), and it belongs on its panel
            points = [(r["iteration"], r[key]) for r in rows if r.get(key) is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o" if key == "eval/em" else None, markersize=3, label=label)
        ax.set_title(title)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("iteration")
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.suptitle("Runs compared (same store)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_allocation(store: RolloutStore, run_id: int, iteration: int, path: Path) -> bool:
    """Stage 1's m_i against v and Stage 2's k_j against p in `iteration`; False when the run stored
    no Stage-1 plan there."""
    pool, predicted, plan = store.load_root_plan(run_id, iteration)
    if not pool:
        return False
    outcome = stage1_outcomes(store.load_trees(run_id, iteration))
    success = [outcome.get((i, 0), (np.nan, 0))[0] for i in range(len(pool))]
    prefixes = store.load_prefix_plan(run_id, iteration)
    rng = np.random.default_rng(0)  # jitter only, so equal counts do not hide each other
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    _stage1_panel(fig, left, np.asarray(predicted), np.asarray(plan.counts, dtype=float), np.asarray(success), rng)
    left.set_title(f"Stage 1, iteration {iteration}")
    _stage2_panel(right, prefixes, rng)
    right.set_title(f"Stage 2, iteration {iteration}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _jitter(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(-0.1, 0.1, n)


def _stage1_panel(
    fig: Any, ax: Any, predicted: np.ndarray, m: np.ndarray, success: np.ndarray, rng: np.random.Generator
) -> None:
    """Bare rollouts m_i against predicted success v: unsampled prompts grey, sampled ones coloured
    by the success of their bare rollouts."""
    chosen = m > 0
    ax.scatter(
        predicted[~chosen], m[~chosen] + _jitter(rng, (~chosen).sum()), s=14, color="#cccccc", label="not sampled"
    )
    shown = ax.scatter(
        predicted[chosen],
        m[chosen] + _jitter(rng, chosen.sum()),
        s=28,
        c=success[chosen],
        cmap="RdYlGn",
        vmin=0,
        vmax=1,
        edgecolors="black",
    )
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("predicted success v")
    ax.set_ylabel("bare rollouts m_i")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8, loc="upper left")
    fig.colorbar(shown, ax=ax, label="success of its bare rollouts")


def _stage2_panel(ax: Any, prefixes: PrefixPlan, rng: np.random.Generator) -> None:
    """Continuations k_j against each anchor's predicted p, split by its rollout's reward r."""
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if prefixes.anchors:
        p = np.array([a.p for a in prefixes.anchors])
        r = np.array([a.r for a in prefixes.anchors])
        k = np.asarray(prefixes.counts, dtype=float) + _jitter(rng, len(p))
        for value, colour, name in ((1.0, "#2ca02c", "rollout succeeded (r = 1)"), (0.0, "#d62728", "failed (r = 0)")):
            ax.scatter(p[r == value], k[r == value], s=20, color=colour, label=name, alpha=0.8)
        ax.legend(fontsize=8, loc="upper center")
    else:
        ax.text(0.5, 0.5, "no Stage 2 in this iteration", ha="center", transform=ax.transAxes)
    ax.set_xlabel("predicted success p of the anchor prefix")
    ax.set_ylabel("continuations k_j")
    ax.set_xlim(0, 1)


def question_kind(record: Any) -> str:
    """A synthetic question's hop count (for analysis only), else the record's data source (a BFCL subset)."""
    hops = getattr(record, "hops", None)
    return f"{hops}-hop" if hops is not None else str(record.data_source)


def kind_success(store: RolloutStore, run_id: int) -> list[dict[str, Any]]:
    """Per question kind: the success of bare (Stage-1) rollouts in the first and the last third of
    the run's iterations, with their counts."""
    iterations = store.backed_up_iterations(run_id)
    if not iterations:
        return []
    third = max(1, len(iterations) // 3)
    parts = {"first": iterations[:third], "last": iterations[-third:]}
    sums: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for part, its in parts.items():
        for it in its:
            trees = store.load_trees(run_id, it)
            for (t, node), (rate, count) in stage1_outcomes(trees).items():
                if node == 0:
                    acc = sums[(question_kind(trees[t].record), part)]
                    acc[0] += rate * count
                    acc[1] += count
    kinds = sorted({k for k, _ in sums})
    rows = []
    for kind in kinds:
        row: dict[str, Any] = {"kind": kind}
        for part in parts:
            total, n = sums.get((kind, part), [0.0, 0.0])
            row[f"{part}_success"] = total / n if n else None
            row[f"{part}_rollouts"] = int(n)
        rows.append(row)
    return rows


def plot_kinds(rows: list[dict[str, Any]], path: Path) -> bool:
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    x = np.arange(len(rows))
    for offset, part, colour in ((-0.2, "first", "#aaaaaa"), (0.2, "last", "#1f77b4")):
        values = [r[f"{part}_success"] if r[f"{part}_success"] is not None else 0.0 for r in rows]
        ax.bar(x + offset, values, width=0.4, color=colour, label=f"{part} third of the run")
    ax.set_xticks(x, [f"{r['kind']}\n(n={r['first_rollouts']}/{r['last_rollouts']})" for r in rows], fontsize=8)
    ax.set_ylabel("success of bare rollouts")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("Training success per question kind")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
