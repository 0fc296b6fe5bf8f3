"""Where an iteration's time goes: model compute per stage, and what orchestration plus store cost.

    .venv/bin/python bench/orchestration.py --run default [--db runs/rollouts.db]

Reads a finished run from the rollout database. A stage's recorded `seconds` is its compute (from
loading its inputs to the end of its work, before the store commit). An iteration's wall time is
the time between the commits of its last stage and of the previous iteration's last stage, so
wall - sum(stage seconds) is what Prefect task orchestration and the store writes cost.
Writes bench/results/orchestration.json and prints medians over the run's iterations.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from sqlalchemy import create_engine

from trace_rl.store.queries import stage_timings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", default="default")
    parser.add_argument("--db", default="runs/rollouts.db")
    parser.add_argument("--out", type=Path, default=Path("bench/results/orchestration.json"))
    args = parser.parse_args()
    engine = create_engine(f"sqlite:///{args.db}")
    rows = stage_timings(engine, args.run)
    if not rows:
        raise SystemExit(f"no stages recorded for run {args.run!r} in {args.db}")
    by_iteration: dict[int, list] = {}
    for it, stage, seconds, finished in rows:
        by_iteration.setdefault(it, []).append((stage, seconds or 0.0, finished))
    per_stage: dict[str, list[float]] = {}
    walls, computes = [], []
    previous_end = None
    for it in sorted(by_iteration):
        stages = by_iteration[it]
        end = max(f for _, _, f in stages)
        if it >= 0 and previous_end is not None:
            wall = _ts(end) - _ts(previous_end)
            compute = sum(s for _, s, _ in stages)
            walls.append(wall)
            computes.append(compute)
            for stage, seconds, _ in stages:
                per_stage.setdefault(stage, []).append(seconds)
        previous_end = end
    shares = [(w - c) / w for w, c in zip(walls, computes, strict=True) if w > 0]
    result = {
        "command": f"python bench/orchestration.py --run {args.run} --db {args.db}",
        "iterations": len(walls),
        "median_iteration_wall_s": statistics.median(walls),
        "median_stage_compute_s": {k: statistics.median(v) for k, v in per_stage.items()},
        "median_outside_compute_share": statistics.median(shares),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _ts(value: object) -> float:
    from datetime import datetime

    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.timestamp()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
