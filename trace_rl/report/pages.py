"""The run report (plots and an HTML page).

`write_report` draws, from the rollout database: accuracy and mean reward per iteration, the
effective ratio per iteration, the predictor's reliability diagram, the oracle ledger where the run
measured it (`headroom.every`), one rollout tree with each turn's predicted and realised success, the
last iteration's allocation and the success per question kind (figures.py), and, with `compare`,
other runs of the same store beside it on one panel per metric; it ties them together in
`index.html`.

`headroom_table` is the oracle ledger of a run (trace_core/method/headroom.py), recomputed from its
stored measurement rollouts with the group size and cap the run was trained with.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from sqlalchemy import Engine

from trace_core.method.headroom import ledger
from trace_rl.config.settings import Settings
from trace_rl.flows.pipeline import Log
from trace_rl.report.figures import kind_success, plot_allocation, plot_comparison, plot_kinds
from trace_rl.store import queries
from trace_rl.store.db import check_connection, make_engine
from trace_rl.store.store import RolloutStore


def _line(ax: Any, rows: list[dict[str, Any]], key: str, label: str, **style: Any) -> None:
    points = [(r["iteration"], r[key]) for r in rows if r.get(key) is not None]
    if points:
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, label=label, **style)


def plot_progress(rows: list[dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    _line(ax, rows, "rollout/mean_reward", "mean training reward", color="#999999")
    _line(ax, rows, "eval/em", "dev EM (avg@n, T=1)", marker="o", color="#1f77b4")
    _line(ax, rows, "eval/f1", "dev F1", marker=".", linestyle="--", color="#2ca02c")
    ax.set_xlabel("iteration")
    ax.set_ylabel("accuracy / reward")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("Accuracy and reward per iteration")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_effective_ratio(rows: list[dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    _line(ax, rows, "rollout/effective_ratio", "effective ratio (trees with both outcomes)", marker="o")
    _line(ax, rows, "rollout/nonzero_advantage_share", "leaves with non-zero advantage", marker=".", linestyle="--")
    ax.set_xlabel("iteration")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("Effective ratio per iteration")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_predictor_quality(rows: list[dict[str, Any]], path: Path) -> None:
    """AUC and calibration error of the predictions made at allocation time, scored on the bare
    rollouts that followed, for roots (Stage 1) and anchors (Stage 2) apart."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    _line(ax, rows, "predictor/root_auc", "root AUC", marker="o", color="#1f77b4")
    _line(ax, rows, "predictor/anchor_auc", "anchor AUC", marker=".", color="#2ca02c")
    _line(ax, rows, "predictor/root_ece", "root calibration error", linestyle="--", color="#1f77b4")
    _line(ax, rows, "predictor/anchor_ece", "anchor calibration error", linestyle="--", color="#2ca02c")
    ax.axhline(0.5, color="#bbbbbb", linewidth=0.8)
    ax.set_xlabel("iteration")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="center right", fontsize=8)
    ax.set_title("Predictor at allocation time (held out)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


HEADROOM_COLUMNS = (
    "iteration",
    "stage1_leaves",
    "oracle_mixed",
    "allocator_mixed",
    "rule_mixed",
    "uniform_mixed",
    "share_of_gain",
    "oracle_nonzero",
    "allocator_nonzero",
    "uniform_nonzero",
    "pool_success",
)


def headroom_table(store: RolloutStore, run: str) -> queries.Table:
    """One row per measured iteration: expected mixed groups (and non-zero-advantage leaves) of the
    oracle's, the run's allocator's, the predictor's rule's and uniform's Stage 1 on the same pool
    and budget, and the allocator's share of the oracle's gain over uniform. Empty for a run whose
    Stage 1 the measurement itself steered (`trace.oracle_samples`): its allocator's plan was chosen
    on those samples, so there is no unbiased ledger to score."""
    run_id = store.run_id(run)
    trace = store.run_settings(run_id)["trace"]
    if trace.get("oracle_samples", 0):
        return queries.Table(HEADROOM_COLUMNS, ())
    rows = []
    for iteration, pool in store.headroom(run_id).items():
        book = ledger(pool, trace["group_size"], trace["max_per_prompt"])
        success = sum(p.successes_first + p.successes_second for p in pool) / sum(2 * p.half for p in pool)
        rows.append(
            (
                iteration,
                book.budget,
                book.oracle.mixed,
                book.allocator.mixed,
                book.predictor_rule.mixed,
                book.uniform.mixed,
                book.share_of_gain,
                book.oracle.nonzero_leaves,
                book.allocator.nonzero_leaves,
                book.uniform.nonzero_leaves,
                success,
            )
        )
    return queries.Table(HEADROOM_COLUMNS, tuple(rows))


def plot_headroom(rows: list[dict[str, Any]], path: Path) -> bool:
    """Expected mixed Stage-1 groups per measured iteration: oracle, the run's allocator, the
    predictor's rule and uniform on the same pool and budget. False when nothing was measured."""
    if not any(r.get("headroom/oracle_mixed") is not None for r in rows):
        return False
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    _line(ax, rows, "headroom/oracle_mixed", "oracle (measured success)", marker="o", color="#2ca02c")
    _line(ax, rows, "headroom/allocator_mixed", "this run's allocator", marker="o", color="#1f77b4")
    _line(
        ax,
        rows,
        "headroom/predictor_rule_mixed",
        "TRACE rule on the predictor's v",
        marker=".",
        linestyle="--",
        color="#9467bd",
    )
    _line(ax, rows, "headroom/uniform_mixed", "uniform (GRPO)", marker="s", color="#7f7f7f")
    ax.set_xlabel("iteration")
    ax.set_ylabel("expected mixed groups (Stage 1)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Oracle ledger: same pool, same Stage-1 budget")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_calibration(table: queries.Table, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    ax.plot([0, 1], [0, 1], color="#bbbbbb", linestyle="--", label="perfect calibration")
    if table.rows:
        predicted = [float(r[3]) for r in table.rows]
        realised = [float(r[4]) for r in table.rows]
        leaves = [float(r[2]) for r in table.rows]
        top = max(leaves)
        ax.scatter(predicted, realised, s=[30 + 300 * n / top for n in leaves], alpha=0.7, label="bins (size: leaves)")
        ax.plot(predicted, realised, alpha=0.5)
    ax.set_xlabel("predicted success at allocation")
    ax.set_ylabel("realised success of the bare rollouts below")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    ax.set_title("Predictor reliability")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_tree(engine: Engine, tree_id: int, path: Path) -> None:
    """Layered drawing: x by depth, leaves spread on y; colour = predicted p, edge colour = stage."""
    question, nodes = queries.tree_nodes(engine, tree_id)
    children: dict[int, list[Any]] = {}
    for n in nodes:
        if n.parent_index is not None:
            children.setdefault(n.parent_index, []).append(n)
    y: dict[int, float] = {}
    counter = [0.0]

    def place(node: Any) -> float:
        kids = children.get(node.node_index, [])
        if not kids:
            y[node.node_index] = counter[0]
            counter[0] += 1
        else:
            y[node.node_index] = sum(place(k) for k in kids) / len(kids)
        return y[node.node_index]

    place(nodes[0])
    cmap = plt.get_cmap("RdYlGn")
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.35 * counter[0] + 1.5)))
    for n in nodes[1:]:
        color = "#d62728" if n.origin == "stage2" else "#555555"
        ax.plot([n.depth - 1, n.depth], [y[n.parent_index], y[n.node_index]], color=color, lw=1.2, zorder=1)
    for n in nodes:
        face = cmap(n.predicted) if n.predicted is not None else "#dddddd"
        ax.scatter([n.depth], [y[n.node_index]], s=160, color=face, edgecolors="black", zorder=2)
        label = f"t={n.target:.2f}" if n.target is not None else ""
        if n.reward is not None:
            label = "success" if n.reward > 0 else "fail"
        ax.annotate(label, (n.depth, y[n.node_index]), xytext=(7, -3), textcoords="offset points", fontsize=7)
    ax.set_xlabel("turn depth (0 = prompt)")
    ax.set_xticks(range(max(n.depth for n in nodes) + 1))
    ax.set_yticks([])
    scale = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, 1))
    fig.colorbar(scale, ax=ax, label="predicted success at allocation", fraction=0.04)
    ax.set_title(
        f"Tree {tree_id}: {question[:70]}\nnode colour: predicted success at allocation (red 0, green 1; "
        "grey: not predicted)\nt: realised success below; red edges: Stage-2 continuations",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _label(engine: Engine, run: str) -> str:
    trained = queries.run_snapshot(engine, run)
    return f"{run} ({trained.get('trace', {}).get('allocator')}, {trained.get('predictor', {}).get('name')})"


def write_report(s: Settings, out_dir: Path, log: Log, compare: list[str] | None = None) -> Path:
    """Plots and an HTML page for run `run.name` (see the module docstring); `compare` names other
    runs of the same store to draw beside it."""
    engine = make_engine(s.store_url(), read_only=True)
    check_connection(engine)
    for run in [s.run.name, *(compare or [])]:
        queries.require_run(engine, run)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = queries.iteration_table(engine, s.run.name)
    if not rows:
        raise FileNotFoundError(f"no iterations of run {s.run.name!r} in the rollout database")
    figures = _draw_metric_figures(engine, s.run.name, rows, out_dir)
    figures += _draw_plan_figures(s, rows, out_dir)
    if compare:
        series = {_label(engine, run): queries.iteration_table(engine, run) for run in [s.run.name, *compare]}
        plot_comparison(series, out_dir / "comparison.png")
        figures.insert(0, "comparison.png")
    trained = queries.run_snapshot(engine, s.run.name)  # the run as it was trained, not today's settings
    (out_dir / "index.html").write_text(_index_page(s.run.name, trained, rows, figures))
    engine.dispose()
    log(f"report written to {out_dir / 'index.html'}")
    return out_dir / "index.html"


def _draw_metric_figures(engine: Engine, run: str, rows: list[dict[str, Any]], out_dir: Path) -> list[str]:
    """The figures drawn from the run's metrics, calibration and one tree; the names of those drawn."""
    plot_progress(rows, out_dir / "accuracy.png")
    plot_effective_ratio(rows, out_dir / "effective_ratio.png")
    plot_calibration(queries.calibration(engine, run), out_dir / "calibration.png")
    plot_predictor_quality(rows, out_dir / "predictor.png")
    figures = ["accuracy.png", "effective_ratio.png", "calibration.png", "predictor.png"]
    if plot_headroom(rows, out_dir / "headroom.png"):
        figures.append("headroom.png")
    tree_id = queries.pick_tree(engine, run)
    if tree_id is not None:
        plot_tree(engine, tree_id, out_dir / "tree.png")
        figures.append("tree.png")
    return figures


def _draw_plan_figures(s: Settings, rows: list[dict[str, Any]], out_dir: Path) -> list[str]:
    """The last iteration's allocation and the success per question kind, where the store has them."""
    figures = []
    store = RolloutStore(s.store_url(), create=False, read_only=True)
    try:
        run_id = store.run_id(s.run.name)
        planned = [r["iteration"] for r in rows if r["iteration"] >= 0]
        if planned and plot_allocation(store, run_id, planned[-1], out_dir / "allocation.png"):
            figures.append("allocation.png")
        if plot_kinds(kind_success(store, run_id), out_dir / "kinds.png"):
            figures.append("kinds.png")
    finally:
        store.close()
    return figures


def _index_page(run: str, trained: dict[str, Any], rows: list[dict[str, Any]], figures: list[str]) -> str:
    """`index.html`: the run's stored allocator, predictor and budget, its last iteration's figures
    and the plots."""
    trace, predictor = trained.get("trace", {}), trained.get("predictor", {})
    summary = {k: v for k, v in rows[-1].items() if k.startswith(("eval/", "rollout/", "predictor/", "headroom/"))}
    table = "".join(
        f"<tr><td><code>{html.escape(k)}</code></td><td>{v:.4g}</td></tr>"
        for k, v in sorted(summary.items())
        if isinstance(v, (int, float))
    )
    images = "".join(f'<figure><img src="{f}" alt="{f}"><figcaption>{f}</figcaption></figure>' for f in figures)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>trace-rl run {html.escape(run)}</title>"
        "<style>body{font-family:sans-serif;max-width:900px;margin:auto}img{max-width:100%}"
        "td{padding:2px 12px}</style></head><body>"
        f"<h1>trace-rl run <code>{html.escape(run)}</code></h1>"
        f"<p>allocator <b>{html.escape(str(trace.get('allocator')))}</b>, predictor "
        f"<b>{html.escape(str(predictor.get('name')))}</b>, {trace.get('budget')} leaves per iteration, "
        f"{len(rows) - 1} iterations (as stored with the run).</p><h2>Last iteration</h2><table>{table}</table>"
        f"<h2>Figures</h2>{images}</body></html>"
    )
