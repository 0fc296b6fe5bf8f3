"""How close is the oracle ledger's cross-fitted oracle to the true one? A simulation.

    .venv/bin/python bench/oracle_sim.py [--out bench/results/oracle_simulation.json]

Pools of 64 prompts with true success v ~ Beta(a, b); each prompt is sampled 8 + 8 times; the
cross-fitted oracle (trace_core/method/headroom.py) allocates Stage 1 on the plug-in rates of one half.
Its plan is scored by the *true* expected mixed groups, against the true oracle (allocated on v)
and uniform groups of 4, over 30 pools per setting (fixed seeds).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trace_core.method.allocation import allocate_roots, root_value
from trace_core.method.allocators import uniform_counts
from trace_core.method.headroom import cross_fitted_oracle


def simulate(a: float, b: float, budget: int, pools: int = 30, seed: int = 2) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    got = {"cross_fitted_oracle": 0.0, "true_oracle": 0.0, "uniform": 0.0}
    for _ in range(pools):
        v = rng.beta(a, b, size=64)
        first, second = rng.binomial(8, v).tolist(), rng.binomial(8, v).tolist()
        plans = {
            "cross_fitted_oracle": cross_fitted_oracle(first, second, 8, budget, 8)[1],
            "true_oracle": allocate_roots(v.tolist(), budget, 8),
            "uniform": uniform_counts(64, budget, 4),
        }
        for name, plan in plans.items():
            got[name] += sum(root_value(float(x), m) for x, m in zip(v, plan, strict=True)) / pools
    got["share_of_true_oracle"] = got["cross_fitted_oracle"] / got["true_oracle"]
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the results to this JSON file")
    args = parser.parse_args()
    results = {
        f"beta({a},{b}) budget {budget}": simulate(a, b, budget)
        for budget in (32, 64)
        for a, b in ((0.5, 0.5), (1.0, 1.0), (2.0, 2.0), (0.3, 0.3))
    }
    for name, r in results.items():
        print(name, {k: round(v, 3) for k, v in r.items()})
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
