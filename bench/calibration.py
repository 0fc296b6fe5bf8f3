"""Which recalibration lets TRACE's rule use the predictor: replayed on runs that measured headroom.

    .venv/bin/python bench/calibration.py --db bench/results/targets-ab/runs/rollouts.db \
        --run bench-small-groups-trace-s0 [--run ...] [--out bench/results/calibration.json]

For each run, each `online` predictor variant is fed iterations 0..t-1 of the run's trees exactly
as training feeds it (`add` the node examples with the run's own `predictor.targets`, `fit`), then
predicts the roots of iteration t's candidate pool. Where the run measured that pool (the oracle
ledger, `headroom.every`), the predictions are scored against the pool's measured success: AUC,
calibration error, the spread of v, and the expected mixed Stage-1 groups of TRACE's rule on v
against uniform groups and the cross-fitted oracle at the run's Stage-1 budget (share of the
oracle's gain, pooled: sum of gains over sum of the oracle's gains). The data are what the run's
own allocations collected, so this is the regime TRACE's predictor lives in. Also: how well v ranks
the measured success (Spearman), how well the mixedness TRACE's rule reads from v, V_root(v, 3),
ranks the measured chance that 3 rollouts are mixed, and the share when v is read as the mean of a
Beta(v kappa, (1 - v) kappa) success (one kappa for every prompt: it changes group sizes, never
which prompts rank first, so it cannot repair a ranking).

The `+mixedness` variants add the mixedness model (trace_core/method/mixedness.py), fed each iteration's
bare groups as training feeds it, and value Stage 1 by V_mix(v, d, m); their "rule" is that plan,
and their mixed rank correlation reads 3 d / 2 instead of V_root(v, 3). Every variant is also
scored on the run's own bare groups, every iteration, before they are learnt: the forecast chance
that each group of n would be mixed (V_root(v, n), or V_mix(v, d, n)) against whether it was (AUC,
Brier). Those groups were chosen by the run's allocator, so they are range-restricted; the pools
are not, but are measured only every `headroom.every` iterations.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trace_core.method.allocation import allocate_by_table, mixed_value, root_value  # noqa: E402
from trace_core.method.glm import logit  # noqa: E402
from trace_core.method.headroom import ledger, score_plan, unbiased_mixed  # noqa: E402
from trace_core.method.mixedness import MixednessConfig, MixednessModel  # noqa: E402
from trace_core.method.online_predictor import OnlineConfig, OnlinePredictor  # noqa: E402
from trace_core.method.predictor import PredictorConfig, quality  # noqa: E402
from trace_core.method.sampling import bare_groups, node_examples  # noqa: E402
from trace_core.method.tree import RolloutTree  # noqa: E402
from trace_core.search_agent.features import SearchAgentFeaturizer, TextEncoder  # noqa: E402
from trace_rl.store.store import RolloutStore  # noqa: E402

KAPPAS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


def rank_corr(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either side is constant."""

    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for value in np.unique(x):  # ties share their mean rank
            r[x == value] = r[x == value].mean()
        return r

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def beta_mixed(v: float, m: int, kappa: float) -> float:
    """P(m rollouts mixed) when the prompt's success s ~ Beta(v kappa, (1 - v) kappa): 1 - E[s^m] - E[(1-s)^m]."""
    a, b = max(v, 1e-6) * kappa, max(1 - v, 1e-6) * kappa
    es = ef = 1.0
    for j in range(m):
        es *= (a + j) / (a + b + j)
        ef *= (b + j) / (a + b + j)
    return 1.0 - es - ef if m >= 2 else 0.0


VARIANTS = {
    "carried": OnlineConfig(),
    "refit": OnlineConfig(calibration="refit"),
    "none": OnlineConfig(calibration="none"),
}
# the carried predictor's v, Stage 1 valued by V_mix(v, d, m) (trace_core/method/mixedness.py): d regressed directly on
# the prompt's features, z and z^2 (or on z and z^2 alone), or as a learnt share of 2 v (1 - v) (the default)
MIXED = {
    "carried+mixedness(direct)": MixednessConfig(form="direct"),
    "carried+mixedness(direct, z only)": MixednessConfig(form="direct", features=False),
    "carried+mixedness(ratio)": MixednessConfig(form="ratio"),
}


def replay(
    store: RolloutStore, run: str, featurizer: SearchAgentFeaturizer, only: list[str] | None = None
) -> dict[str, Any]:
    run_id = store.run_id(run)
    settings = store.run_settings(run_id)
    targets = settings.get("predictor", {}).get("targets", "subtree")
    trace = settings["trace"]
    measured = store.headroom(run_id)
    iterations = store.backed_up_iterations(run_id)
    trees = {it: store.load_trees(run_id, it) for it in iterations}
    examples = {it: node_examples(trees[it], featurizer, targets) for it in iterations}
    groups = {it: bare_groups(trees[it], featurizer) for it in iterations}
    pools = {}
    for it in measured:
        records = store.load_root_plan(run_id, it)[0]
        fresh = [RolloutTree(r, ()) for r in records]
        pools[it] = featurizer.features(fresh, [(i, 0) for i in range(len(fresh))])
    out: dict[str, Any] = {"targets": targets}
    for name, online in [*VARIANTS.items(), *((m, VARIANTS["carried"]) for m in MIXED)]:
        if only and name not in only:
            continue
        predictor = OnlinePredictor(featurizer.dim, PredictorConfig(), online)
        mixedness = MixednessModel(featurizer.dim, MIXED[name]) if name in MIXED else None
        rows: list[dict[str, Any]] = []
        forecast: list[float] = []
        realised: list[float] = []
        for it in iterations:
            if it in measured and predictor.fitted:
                v = predictor.predict(pools[it])
                d = mixedness.predict(pools[it], logit(v)) if mixedness is not None else None
                pool = [replace(p, predicted=float(x)) for p, x in zip(measured[it], v, strict=True)]
                book = ledger(pool, trace["group_size"], trace["max_per_prompt"])
                s = np.array([(p.successes_first + p.successes_second) / (2 * p.half) for p in pool])
                q = quality(v, s, np.full(len(s), 2.0 * pool[0].half))
                samples = [2 * pool[0].half] * len(pool)
                budget = int(sum(p.allocated for p in pool))
                successes = [p.successes_first + p.successes_second for p in pool]
                mixed = np.array([unbiased_mixed(k, samples[0], 3) for k in successes])
                implied = np.array([root_value(float(x), 3) for x in v])
                by_kappa = {}
                for kappa in KAPPAS:
                    table = [[beta_mixed(float(x), m, kappa) for m in range(trace["max_per_prompt"] + 1)] for x in v]
                    plan = allocate_by_table(table, budget, trace["max_per_prompt"])
                    by_kappa[str(kappa)] = score_plan(
                        [p.successes_first + p.successes_second for p in pool], samples, plan
                    ).mixed
                rule = book.predictor_rule.mixed
                if d is not None:
                    table = [
                        [mixed_value(float(a), float(b), m) for m in range(trace["max_per_prompt"] + 1)]
                        for a, b in zip(v, d, strict=True)
                    ]
                    plan = allocate_by_table(table, budget, trace["max_per_prompt"])
                    rule = score_plan(successes, samples, plan).mixed
                    implied = 1.5 * d
                rows.append(
                    {
                        "iteration": it,
                        "rule": rule,
                        "oracle": book.oracle.mixed,
                        "uniform": book.uniform.mixed,
                        "auc": q.auc,
                        "ece": q.ece,
                        "v_std": float(v.std()),
                        "platt": list(predictor.platt),
                        "kappa": by_kappa,
                        "success_rank_corr": rank_corr(v, s),
                        "mixed_rank_corr": rank_corr(implied, mixed),
                    }
                )
            # the run's own bare groups of this iteration, before they are learnt: how well the Stage-1
            # value (V_root(v, n), or V_mix(v, d, n)) forecast which came out mixed
            xr, k, n = groups[it]
            if predictor.fitted and len(n):
                v = predictor.predict(xr)
                d = mixedness.predict(xr, logit(v)) if mixedness is not None else None
                if d is None:
                    forecast += [root_value(float(a), int(m)) for a, m in zip(v, n, strict=True)]
                else:
                    forecast += [mixed_value(float(a), float(b), int(m)) for a, b, m in zip(v, d, n, strict=True)]
                realised += [float(0 < a < m) for a, m in zip(k, n, strict=True)]
            if mixedness is not None and len(n):
                mixedness.add(it, xr, logit(predictor.predict(xr)), k, n)
            x, t, w, nodes = examples[it]
            if len(t):
                predictor.add(it, x, t, w, [trees[it][i].record.id for i, _ in nodes])
                predictor.fit()
            if mixedness is not None:
                mixedness.fit()
        group_quality = quality(np.array(forecast), np.array(realised), np.ones(len(realised)))
        gain = sum(r["oracle"] - r["uniform"] for r in rows)
        out[name] = {
            "iterations": rows,
            "share_of_oracle_gain": sum(r["rule"] - r["uniform"] for r in rows) / gain if gain else None,
            "auc": float(np.mean([r["auc"] for r in rows])),
            "ece": float(np.mean([r["ece"] for r in rows])),
            "v_std": float(np.mean([r["v_std"] for r in rows])),
            "success_rank_corr": float(np.nanmean([r["success_rank_corr"] for r in rows])),
            "mixed_rank_corr": float(np.nanmean([r["mixed_rank_corr"] for r in rows])),
            "group_mixed_auc": group_quality.auc,
            "group_mixed_brier": group_quality.brier,
            "group_mixed_forecast": float(np.mean(forecast)),
            "group_mixed_rate": float(np.mean(realised)),
            "groups": len(realised),
            "share_by_kappa": {
                k: sum(r["kappa"][k] - r["uniform"] for r in rows) / gain if gain else None for k in map(str, KAPPAS)
            },
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True)
    parser.add_argument("--run", action="append", required=True)
    parser.add_argument("--max-turns", type=int, default=4)
    parser.add_argument("--out", default="bench/results/calibration.json")
    parser.add_argument("--only", action="append", help="replay only this variant (repeatable)")
    args = parser.parse_args()
    store = RolloutStore(f"sqlite:///{args.db}", create=False, read_only=True)
    featurizer = SearchAgentFeaturizer(TextEncoder(), args.max_turns)
    results = {run: replay(store, run, featurizer, args.only) for run in args.run}
    store.close()
    command = "python bench/calibration.py " + " ".join(sys.argv[1:])
    Path(args.out).write_text(json.dumps({"command": command, "runs": results}, indent=2) + "\n")
    for run, per in results.items():
        for name in [n for n in [*VARIANTS, *MIXED] if n in per]:
            r = per[name]
            print(
                f"{run:60s} {name:8s} share {r['share_of_oracle_gain']:+.3f}  pool AUC {r['auc']:.3f}  "
                f"ECE {r['ece']:.3f}  v std {r['v_std']:.3f}  rank corr v~s {r['success_rank_corr']:.2f}  "
                f"V_root(v)~mixed {r['mixed_rank_corr']:.2f}  groups: mixed AUC {r['group_mixed_auc']:.3f} "
                f"Brier {r['group_mixed_brier']:.3f} forecast {r['group_mixed_forecast']:.2f} "
                f"rate {r['group_mixed_rate']:.2f}  by kappa "
                + " ".join(f"{k}:{x:+.2f}" for k, x in r["share_by_kappa"].items())
            )


if __name__ == "__main__":
    main()
