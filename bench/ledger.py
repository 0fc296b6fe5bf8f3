"""Stage-1 rules replayed on the oracle ledger's measured pools: what would each have bought?

    .venv/bin/python bench/ledger.py --db bench/results/v2/runs/rollouts.db [--out bench/results/v2/ledger.json]

Every run of the database that measured its pools (`headroom.every`) left, per measured iteration,
each pool prompt's successes in 2 x half measurement rollouts of the policy of that iteration and
the predictor's v for it at allocation time (trace_core/method/headroom.py). On those pools, at the run's
Stage-1 budget (so per regime and allocator: `uniform` spends its whole budget in Stage 1), this
scores (unbiased; the oracles cross-fitted) the expected mixed groups (a) and the expected leaves
with a non-zero group-relative advantage (b) of:
- `uniform`: G rollouts for each of the first prompts (GRPO);
- `allocator`: what the run actually allocated;
- `rule/mixed`: TRACE's Stage 1 (maximise sum V_root(v, m)) on the predictor's v;
- `rule/leaves`: the same knapsack maximising the expected non-zero-advantage leaves sum m V_root(v, m);
- `rule/mixed-shrunk`: TRACE's Stage 1 on v shrunk halfway to the pool's mean prediction (is the
  predictor over-confident?);
- `oracle/mixed`, `oracle/leaves`: both objectives fed the measured success (cross-fitted halves).
Only the measurement rollouts are used: nothing here was trained on, and the predictor's v is what
it predicted before it saw the pool's outcomes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trace_core.method.allocation import allocate_roots, nonzero_leaves_value  # noqa: E402
from trace_core.method.allocators import uniform_counts  # noqa: E402
from trace_core.method.headroom import PoolSample, cross_fitted_oracle, score_plan  # noqa: E402
from trace_rl.store.store import RolloutStore  # noqa: E402


def _rules(pool: list[PoolSample], budget: int, group: int, cap: int) -> dict[str, tuple[int, ...] | None]:
    v = [p.predicted for p in pool]
    mean = float(np.mean(v))
    shrunk = [0.5 * x + 0.5 * mean for x in v]
    return {
        "uniform": tuple(uniform_counts(len(pool), budget, group)),
        "allocator": tuple(p.allocated for p in pool),
        "rule/mixed": allocate_roots(v, budget, cap),
        "rule/leaves": allocate_roots(v, budget, cap, nonzero_leaves_value),
        "rule/mixed-shrunk": allocate_roots(shrunk, budget, cap),
        "oracle/mixed": None,
        "oracle/leaves": None,
    }


def replay_pool(pool: list[PoolSample], group: int, cap: int) -> dict[str, dict[str, float]]:
    budget = sum(p.allocated for p in pool)
    half = pool[0].half
    successes = [p.successes_first + p.successes_second for p in pool]
    samples = [2 * half] * len(pool)
    first, second = [p.successes_first for p in pool], [p.successes_second for p in pool]
    out = {}
    for name, plan in _rules(pool, budget, group, cap).items():
        if plan is None:
            score, _ = cross_fitted_oracle(first, second, half, budget, cap, leaves=name == "oracle/leaves")
        else:
            score = score_plan(successes, samples, plan)
        out[name] = {"mixed": score.mixed, "nonzero_leaves": score.nonzero_leaves}
    return out


def regime_of(run: str) -> str:
    """bench-<regime>-<variant>-s<seed> -> regime (small-groups, lateK, ...); other runs: their name."""
    if not run.startswith("bench-"):
        return run
    rest = run[len("bench-") :]
    return "small-groups" if rest.startswith("small-groups-") else rest.split("-")[0]


def replay(db: Path) -> dict[str, Any]:
    store = RolloutStore(f"sqlite:///{db}", create=False)
    rows: list[dict[str, Any]] = []
    try:
        for run in [r.name for r in store.runs()]:
            run_id = store.run_id(run)
            trace = store.run_settings(run_id)["trace"]
            for iteration, pool in store.headroom(run_id).items():
                scores = replay_pool(pool, trace["group_size"], trace["max_per_prompt"])
                rows.append(
                    {
                        "run": run,
                        "regime": regime_of(run),
                        "allocator": trace["allocator"],
                        "iteration": iteration,
                        "scores": scores,
                    }
                )
    finally:
        store.close()
    summary: dict[str, Any] = {}
    for regime, allocator in sorted({(r["regime"], r["allocator"]) for r in rows}):
        chosen = [r for r in rows if r["regime"] == regime and r["allocator"] == allocator]
        names = list(chosen[0]["scores"])
        entry = {}
        for name in names:
            mixed = [r["scores"][name]["mixed"] for r in chosen]
            leaves = [r["scores"][name]["nonzero_leaves"] for r in chosen]
            entry[name] = {"mixed": float(np.mean(mixed)), "nonzero_leaves": float(np.mean(leaves))}
        gain = entry["oracle/mixed"]["mixed"] - entry["uniform"]["mixed"]
        for name in names:
            entry[name]["share_of_oracle_gain"] = (
                (entry[name]["mixed"] - entry["uniform"]["mixed"]) / gain if gain > 1e-9 else float("nan")
            )
        summary[f"{regime} / {allocator}"] = {"pools": len(chosen), "rules": entry}
    return {"pools": rows, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="a rollout database whose runs measured headroom")
    parser.add_argument("--out", help="write the replay to this JSON file")
    args = parser.parse_args()
    result = replay(Path(args.db))
    for regime, entry in result["summary"].items():
        print(f"\n{regime}: {entry['pools']} measured pools (means per pool)")
        print(f"{'rule':>20} {'mixed (a)':>10} {'non-zero leaves (b)':>20} {'share of oracle gain':>21}")
        for name, r in entry["rules"].items():
            print(f"{name:>20} {r['mixed']:>10.2f} {r['nonzero_leaves']:>20.2f} {r['share_of_oracle_gain']:>21.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
