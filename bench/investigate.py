"""Why does (or doesn't) TRACE beat uniform? Measurements over a finished `trace-rl bench`.

    .venv/bin/python bench/investigate.py [--db bench/results/runs/rollouts.db]

Reads the benchmark's rollout database and writes bench/results/investigation.json with, per
regime and allocator (means over seeds and iterations):
- `predictor`: the predictor's quality at allocation time (Brier, AUC, calibration error of the
  predictions made before the bare rollouts, scored on those rollouts), and the expected share of
  mixed Stage-1 groups the allocator planned for against the share it got;
- `stage1`: the bare groups: mean size, and the share that were all-success, all-failure or mixed;
- `stage2`: of the trees whose bare rollouts were all-same, the share the continuations made mixed;
- `difficulty`: per hop count, the success rate of bare rollouts and the share of all-same bare
  groups (the task's difficulty spread as the training policy saw it).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine

from trace_rl.store.queries import iteration_metrics, leaf_outcomes


def _variant(run: str) -> str:
    """'bench-small-groups-trace-s0' -> 'small-groups/trace'."""
    body = run.removeprefix("bench-").rsplit("-s", 1)[0]
    regime = "-".join(body.split("-")[:2])
    return f"{regime}/{body[len(regime) + 1 :]}"


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 4) if values else None


def group_outcomes(rows: list[Any]) -> dict[str, dict[str, Any]]:
    trees: dict[tuple[str, int], dict[str, Any]] = {}
    for r in rows:
        t = trees.setdefault((r.run, r.tree), {"hops": r.hops, "stage1": [], "all": []})
        t["all"].append(r.reward or 0.0)
        if r.origin == "stage1":
            t["stage1"].append(r.reward or 0.0)
    out: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (run, _), t in trees.items():
        v, s1 = out[_variant(run)], t["stage1"]
        if not s1:
            continue
        same = min(s1) == max(s1)
        v["size"].append(len(s1))
        v["all_success"].append(float(same and s1[0] == 1.0))
        v["all_failure"].append(float(same and s1[0] == 0.0))
        v["mixed"].append(float(not same))
        v[f"hops{t['hops']}_success"].extend(s1)
        v[f"hops{t['hops']}_all_same"].append(float(same))
        if same and len(t["all"]) > len(s1):
            v["stage2_rescued"].append(float(min(t["all"]) != max(t["all"])))
    result = {}
    for name, v in out.items():
        hops = sorted({k.split("_")[0] for k in v if k.startswith("hops")})
        result[name] = {
            "stage1": {
                "groups": len(v["size"]),
                "mean_size": _mean(v["size"]),
                "all_success": _mean(v["all_success"]),
                "all_failure": _mean(v["all_failure"]),
                "mixed": _mean(v["mixed"]),
            },
            "stage2": {"all_same_trees_continued": len(v["stage2_rescued"]), "made_mixed": _mean(v["stage2_rescued"])},
            "difficulty": {
                h: {"bare_success": _mean(v[f"{h}_success"]), "all_same_groups": _mean(v[f"{h}_all_same"])}
                for h in hops
            },
        }
    return result


def predictor_quality(rows: list[Any]) -> dict[str, dict[str, Any]]:
    acc: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        m = json.loads(r.metrics) if isinstance(r.metrics, str) else r.metrics
        v = acc[_variant(r.run)]
        for key in ("brier", "auc", "ece"):
            if m.get(f"predictor/{key}") is not None and r.iteration > 0:  # iteration 0 predicts the prior
                v[key].append(m[f"predictor/{key}"])
        if m.get("alloc/stage1_prompts"):
            v["planned_mixed"].append(m["alloc/expected_mixed_stage1"] / m["alloc/stage1_prompts"])
    return {name: {k: _mean(x) for k, x in v.items()} for name, v in acc.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", default="bench/results/runs/rollouts.db")
    parser.add_argument("--out", type=Path, default=Path("bench/results/investigation.json"))
    args = parser.parse_args()
    engine = create_engine(f"sqlite:///file:{args.db}?mode=ro&uri=true")
    groups = group_outcomes(leaf_outcomes(engine, "bench-"))
    quality = predictor_quality(iteration_metrics(engine, "bench-"))
    result = {"command": f"python bench/investigate.py --db {args.db}"}
    for name in sorted(groups):
        result[name] = {"predictor": quality.get(name, {}), **groups[name]}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
