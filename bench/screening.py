"""Could screening rollouts inside the budget buy what the oracle's prompt selection bought? A simulation.

    .venv/bin/python bench/screening.py [--iterations 1500] [--out bench/results/screening.json]

bench/results/oracle_roots found that perfect knowledge of every pool prompt's success pays in
accuracy only through prompt selection with fresh rollouts (`prompt_only` on measured rates: 14.6
mixed groups an iteration against uniform's 10.5, test EM +0.032), at 17 times the rollouts. The
cheap way to that knowledge is to pay for it inside the budget, as DAPO and GRESO do: sample a few
rollouts of many prompts and spend the rest where those first outcomes say a group is still open.

This script scores, on pools of 64 prompts whose true success v ~ Beta(a, b) (the Beta's fitted in
bench/metric_ceiling.py to what `uniform` measured: warm and late, and the flat one), with the
default budget of 64 leaves and at most 8 rollouts per prompt:

- `uniform G` (G = 2, 3, 4, 8): the first 64 / G prompts, G rollouts each;
- `screen n`: 2 rollouts for each of n prompts, then the rest of the budget by greedy marginal
  gains in expected mixed groups, between one more rollout of a prompt whose group is still
  all-same (its posterior under a Beta prior: the pairs' mean success, and their intra-prompt
  correlation rho by the method of moments, 1 - (mixed pairs) / (expected mixed pairs if rho were 0))
  and a fresh pair of a new prompt (worth V(2) under the same prior);
- `oracle selection`: the exact Stage-1 rule (`allocate_roots`) on the true v over the whole budget,
  the allocation `prompt_only` made on measured rates in bench/results/oracle_roots (not equal cost).

For each: mixed groups per iteration (prompts whose rollouts hold both outcomes), leaves with a
non-zero group-relative advantage, prompts sampled, and the bench's shares (a) = mixed / prompts
and (b) = non-zero leaves / 64. Monte Carlo over `--iterations` pools, seed 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from scipy import special

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trace_core.method.allocation import allocate_roots

BUDGET, POOL, CAP = 64, 64, 8
BETAS = {"warm": (1.111, 1.111), "late": (0.925, 0.757), "flat": (1.0, 1.0)}


def all_agree(a: float, b: float, successes: int, failures: int, k: int) -> float:
    """P(k more rollouts all repeat the group's common outcome | its outcomes so far), v ~ Beta(a, b)."""
    a1, b1 = a + successes, b + failures
    if successes:
        return float(np.exp(special.betaln(a1 + k, b1) - special.betaln(a1, b1)))
    return float(np.exp(special.betaln(a1, b1 + k) - special.betaln(a1, b1)))


def pair_prior(outcomes: list[np.ndarray]) -> tuple[float, float]:
    """The Beta prior read off the screening pairs: their mean success and intra-prompt correlation."""
    s = np.array([o.sum() for o in outcomes], dtype=float)
    mu = float(np.clip(s.sum() / (2 * len(s)), 0.02, 0.98))
    mixed = float(np.mean(s == 1))
    rho = float(np.clip(1 - mixed / (2 * mu * (1 - mu)), 0.05, 0.95))
    concentration = 1 / rho - 1
    return mu * concentration, (1 - mu) * concentration


def screen(v: np.ndarray, first: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Pairs for the first `first` prompts, then greedy one-step-ahead gains in mixed groups."""
    groups = [rng.random(2) < v[i] for i in range(first)]
    a, b = pair_prior(groups)
    new_pair = 2 * a * b / ((a + b) * (a + b + 1))  # P(a new prompt's pair is mixed) = 2 E[v (1 - v)]
    extra = [0] * first
    left = BUDGET - 2 * first
    while left > 0:
        best, pick = -1.0, None
        for i, g in enumerate(groups[:first]):
            s = int(g.sum())
            if 0 < s < len(g) or len(g) + extra[i] >= CAP:
                continue
            f, k = len(g) - s, extra[i]
            gain = all_agree(a, b, s, f, k) - all_agree(a, b, s, f, k + 1)
            if gain > best:
                best, pick = gain, i
        if left >= 2 and len(groups) < POOL and new_pair / 2 > best:
            groups.append(rng.random(2) < v[len(groups)])
            left -= 2
        elif pick is not None:
            extra[pick] += 1
            left -= 1
        else:
            break
    return [np.concatenate([g, rng.random(extra[i]) < v[i]]) if i < first else g for i, g in enumerate(groups)]


def score(groups: list[np.ndarray]) -> dict[str, float]:
    mixed = [g for g in groups if 0 < g.sum() < len(g)]
    return {"mixed": len(mixed), "nonzero": sum(len(g) for g in mixed), "prompts": len(groups)}


def run(a: float, b: float, iterations: int, rng: np.random.Generator) -> dict[str, dict[str, float]]:
    sums: dict[str, Counter[str]] = {}
    for _ in range(iterations):
        v = rng.beta(a, b, POOL)
        drawn = {f"uniform G={g}": [rng.random(g) < v[i] for i in range(BUDGET // g)] for g in (2, 3, 4, 8)}
        drawn |= {f"screen {n}": screen(v, n, rng) for n in (16, 24)}
        counts = allocate_roots([float(x) for x in v], BUDGET, CAP)
        drawn["oracle selection"] = [rng.random(m) < v[i] for i, m in enumerate(counts) if m]
        for name, groups in drawn.items():
            for key, value in score(groups).items():
                sums.setdefault(name, Counter())[key] += value / iterations
    return {
        name: {
            "mixed_groups": round(s["mixed"], 2),
            "nonzero_leaves": round(s["nonzero"], 1),
            "prompts": round(s["prompts"], 1),
            "a": round(s["mixed"] / s["prompts"], 3),
            "b": round(s["nonzero"] / BUDGET, 3),
        }
        for name, s in sums.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--out", type=Path, default=Path("bench/results/screening.json"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    result = {"command": " ".join(["python bench/screening.py", *sys.argv[1:]])}
    for pool, (a, b) in BETAS.items():
        result[pool] = {"beta": [a, b], **run(a, b, args.iterations, rng)}
        for name, row in result[pool].items():
            if name != "beta":
                print(f"{pool:5s} {name:18s} {row}")
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
