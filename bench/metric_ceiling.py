"""What would a perfect success predictor score on issue 13's allocation-time targets? A simulation.

    .venv/bin/python bench/metric_ceiling.py [--iterations 2000] [--db runs/rollouts.db ...] [--out FILE]

The bench's "root AUC / ECE (it >= 5)" is computed per iteration, by `quality` on the roots Stage 1
chose and the bare rollouts they then got (`allocation_outcomes(trees, "root")`: about 32 leaves),
and averaged over iterations. This script measures the same statistic for predictors whose quality
is known, on pools of 64 prompts whose true success v ~ Beta(a, b), with the defaults of
`settings.toml` (budget 64, Stage 1 half of it, at most 8 rollouts per prompt, uniform groups of 4):

- `perfect`: the predictor returns the true v;
- `noisy, sigma s`: it sees logit(v) + N(0, s^2) and returns the posterior mean of v given that
  signal under the pool's Beta (calibrated by construction, and less sharp as s grows).

Each is scored as the bench scores it (per-iteration AUC and ECE, then the mean) on the prompts the
`trace` rule picks with its own predictions (`trace_*`); and, for comparison, on uniform groups of 4
drawn at random (`random_*`: no selection), on one rollout of every pool prompt (`pool_*`), and on
the `trace` picks of 15 iterations pooled before scoring (`trace_*_pooled`: one run's iterations 5
to 19 as one sample, which removes most of the per-iteration noise floor of ECE). The Beta's are
fitted, by mean success and the share of mixed groups of 4, to what `uniform` measured in
`bench/results/vine` (warm: reward 0.50, (a) 0.62) and `bench/results/vine_late` (late: 0.55,
0.56), plus the flat Beta(1, 1).

`--db` scores the real runs of rollout databases the same two ways: per iteration then averaged
(the bench's figure) and pooled over iterations 5 to 19, for every run whose roots were predicted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import optimize, special, stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trace_core.method.allocators import AllocatorConfig, make_allocator, uniform_counts
from trace_core.method.predictor import pooled_quality, quality
from trace_rl.bench.runner import root_outcomes
from trace_rl.store.store import RolloutStore

GRID = np.linspace(0.0005, 0.9995, 2000)
POOLED = 15  # iterations 5 to 19 of a 20-iteration bench run


def mixed_share(a: float, b: float, m: int = 4) -> float:
    """P(a group of m rollouts holds a success and a failure) when v ~ Beta(a, b)."""
    all_succeed = np.exp(special.betaln(a + m, b) - special.betaln(a, b))
    all_fail = np.exp(special.betaln(a, b + m) - special.betaln(a, b))
    return float(1 - all_succeed - all_fail)


def fit_beta(mean: float, mixed: float) -> tuple[float, float]:
    """The Beta(a, b) with this mean success and this share of mixed groups of 4."""

    def gap(log_conc: float) -> float:
        conc = np.exp(log_conc)
        return mixed_share(mean * conc, (1 - mean) * conc) - mixed

    conc = float(np.exp(optimize.brentq(gap, -6, 8)))
    return mean * conc, (1 - mean) * conc


class NoisyCalibrated:
    """Sees logit(v) + N(0, sigma^2); predicts E[v | signal] under the pool's Beta prior."""

    def __init__(self, a: float, b: float, sigma: float) -> None:
        self.sigma = sigma
        self.logit = special.logit(GRID)
        self.prior = stats.beta.pdf(GRID, a, b)

    def __call__(self, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.sigma == 0:
            return v
        signal = special.logit(np.clip(v, 1e-6, 1 - 1e-6)) + rng.normal(0, self.sigma, size=len(v))
        like = stats.norm.pdf(signal[:, None], loc=self.logit[None, :], scale=self.sigma) * self.prior[None, :]
        return (like * GRID[None, :]).sum(1) / like.sum(1)


def outcomes(
    predicted: np.ndarray, v: np.ndarray, counts: list[int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The chosen prompts' predictions, the success rate of their sampled rollouts, and their counts."""
    chosen = np.array([i for i, m in enumerate(counts) if m > 0])
    m = np.array([counts[i] for i in chosen], dtype=np.float64)
    return predicted[chosen], rng.binomial(m.astype(int), v[chosen]) / m, m


def simulate(a: float, b: float, sigma: float, iterations: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    config = AllocatorConfig()
    trace = make_allocator("trace")
    predictor = NoisyCalibrated(a, b, sigma)
    got: dict[str, list[float]] = {}
    window: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for it in range(iterations):
        v = rng.beta(a, b, size=64)
        predicted = predictor(v, rng)
        plans = {
            "trace": list(trace.roots(predicted.tolist(), config, rng).counts),
            "random": list(rng.permutation(uniform_counts(64, config.stage1_budget, 4))),
            "pool": [1] * 64,
        }
        for name, counts in plans.items():
            scored = outcomes(predicted, v, counts, rng)
            q = quality(*scored)
            got.setdefault(f"{name}_auc", []).append(q.auc)
            got.setdefault(f"{name}_ece", []).append(q.ece)
            if name == "trace":
                window.append(scored)
        if (it + 1) % POOLED == 0:  # one run's iterations 5 to 19, pooled before scoring
            q = pooled_quality(window)
            got.setdefault("trace_auc_pooled", []).append(q.auc)
            got.setdefault("trace_ece_pooled", []).append(q.ece)
            window = []
    return {k: float(np.nanmean(x)) for k, x in got.items()}


def real_runs(db: str) -> dict[str, dict[str, float]]:
    """Allocation-time root AUC and ECE of each predicted run in `db`: per-iteration mean and pooled."""
    store = RolloutStore(f"sqlite:///{db}", create=False, read_only=True)
    out = {}
    for run in store.runs():
        per_it = root_outcomes(store, run.name, 5, 5 + POOLED)
        if per_it:
            each = [quality(*x) for x in per_it]
            pooled = pooled_quality(per_it)
            out[f"{db}:{run.name}"] = {
                "iterations": len(per_it),
                "trace_auc": float(np.nanmean([q.auc for q in each])),
                "trace_ece": float(np.nanmean([q.ece for q in each])),
                "trace_auc_pooled": pooled.auc,
                "trace_ece_pooled": pooled.ece,
            }
            print(run.name, {k: round(v, 3) for k, v in out[f"{db}:{run.name}"].items()})
    store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000, help="simulated iterations per setting")
    parser.add_argument("--db", nargs="*", default=[], help="rollout databases whose runs to score too")
    parser.add_argument("--out", help="write the results to this JSON file")
    args = parser.parse_args()
    pools = {"warm": fit_beta(0.50, 0.62), "late": fit_beta(0.55, 0.56), "flat": (1.0, 1.0)}
    results: dict[str, object] = {"command": " ".join(["python", *sys.argv])}
    for pool, (a, b) in pools.items():
        for label, sigma in (("perfect", 0.0), ("noisy, sigma 1", 1.0), ("noisy, sigma 2", 2.0)):
            r = simulate(a, b, sigma, args.iterations, seed=7)
            results[f"{pool} / {label}"] = {"beta": [round(a, 3), round(b, 3)], "sigma": sigma, **r}
            print(f"{pool:5s} Beta({a:.2f},{b:.2f}) {label:15s}", {k: round(v, 3) for k, v in r.items()})
    for db in args.db:
        results.update(real_runs(db))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
