"""Which success predictor to allocate with: every predictor replayed on the same stored rollouts.

    .venv/bin/python bench/predictor.py --db runs/rollouts.db --run pred-uniform [--out bench/results/predictor.json]

For each predictor and each iteration t of a finished run, the predictor is fed iterations
0..t-1 exactly as the training flow feeds it (`add` the backed-up node examples, `fit`), then
predicts iteration t's roots and anchors before looking at them. Those predictions are scored
against the bare (Stage-1) rollouts of iteration t: AUC, Brier and calibration error (ECE),
leaf-weighted, for roots and anchors separately. This is the allocation-time quality, held out by
construction (the future is never seen), on identical data for every predictor.

Use a run of the `uniform` allocator: its choice of prompts does not depend on any predictor, so
no predictor is scored on data its own allocations selected.
Also reports, per iteration, the expected mixed Stage-1 groups of allocating by the predictor's v
against uniform groups and a plug-in oracle (see `_stage1_gain`), and the predictor's share of the
oracle's gain over uniform.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from store.store import RolloutStore  # noqa: E402
from trace_core.method.allocation import allocate_roots  # noqa: E402
from trace_core.method.online_predictor import OnlinePredictor  # noqa: E402
from trace_core.method.predictor import PredictorConfig, PredictorQuality, SuccessPredictor, quality  # noqa: E402
from trace_core.method.sampling import node_examples  # noqa: E402
from trace_core.method.tree import stage1_outcomes  # noqa: E402
from trace_core.search_agent.features import SearchAgentFeaturizer, TextEncoder  # noqa: E402

# name -> (predictor factory, featurizer: "base" or "words", anchor prior strength n0 or None)
PREDICTORS = {
    # today's predictor with today's settings (window 2, as settings.toml has it)
    "mlp": (lambda dim: SuccessPredictor(dim, PredictorConfig(window=2)), "base", None),
    "mlp-window30": (lambda dim: SuccessPredictor(dim, PredictorConfig(window=30)), "base", None),
    "online": (lambda dim: OnlinePredictor(dim, PredictorConfig()), "base", None),
    "online-words": (lambda dim: OnlinePredictor(dim, PredictorConfig()), "words", None),
    "online-words-group2": (lambda dim: OnlinePredictor(dim, PredictorConfig()), "words", 2.0),
    "online-words-group4": (lambda dim: OnlinePredictor(dim, PredictorConfig()), "words", 4.0),
}
WORD_BUCKETS = 512


def group_posterior(p: np.ndarray, anchors: list[tuple[int, int]], trees: list[Any], n0: float) -> np.ndarray:
    """Each anchor's p as a Beta prior worth n0 rollouts, updated with the bare outcomes of the
    *other* rollouts of its prompt (leave-one-out: its own rollout's reward is what it is scored on)."""
    out = p.copy()
    for j, (i, node_id) in enumerate(anchors):
        tree = trees[i]
        own = {leaf.node_id for leaf in tree.leaves() if node_id in {n.node_id for n in tree.path(leaf.node_id)}}
        others = [leaf.reward or 0.0 for leaf in tree.leaves() if leaf.origin == "stage1" and leaf.node_id not in own]
        out[j] = (n0 * p[j] + sum(others)) / (n0 + len(others))
    return out


def _roots_and_anchors(trees: list[Any]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    roots = [(i, 0) for i, t in enumerate(trees) if t.leaves()]
    anchors = []
    for i, tree in enumerate(trees):
        for leaf in tree.leaves():
            if leaf.origin == "stage1":
                anchors += [(i, n.node_id) for n in tree.path(leaf.node_id)[1:-1]]
    return roots, sorted(set(anchors))


def _stage1_rates(trees: list[Any]) -> np.ndarray:
    return np.array([np.mean([leaf.reward or 0.0 for leaf in t.leaves() if leaf.origin == "stage1"]) for t in trees])


def unbiased_root_value(k: int, n: int, m: int) -> float:
    """Unbiased estimate of 1 - v^m - (1 - v)^m from k successes in n Bernoulli(v) draws (m <= n):
    C(k, m) / C(n, m) estimates v^m without bias."""
    return 1.0 - math.comb(k, m) / math.comb(n, m) - math.comb(n - k, m) / math.comb(n, m) if m >= 2 else 0.0


def _stage1_gain(v: np.ndarray, counts: list[tuple[int, int]], budget: int) -> dict[str, float]:
    """Expected mixed Stage-1 groups of allocating `budget` leaves (at most n = 4 per prompt, the
    bare group size, so the estimate stays unbiased) by the predicted v, by the plug-in rates k/n
    (an optimistic oracle: it allocates on the outcomes it is scored on) and uniformly (groups of 4
    on random prompts, 20 draws); each scored by the unbiased estimate from the observed outcomes."""
    cap = min(n for _, n in counts)

    def value(alloc: Sequence[int]) -> float:
        return float(sum(unbiased_root_value(k, n, m) for (k, n), m in zip(counts, alloc, strict=True)))

    rates = [k / n for k, n in counts]
    picks = [
        np.random.default_rng(seed).choice(len(counts), min(budget // cap, len(counts)), replace=False)
        for seed in range(20)
    ]
    uniform = float(np.mean([value([cap if j in set(p) else 0 for j in range(len(counts))]) for p in picks]))
    return {
        "predicted": value(allocate_roots([float(x) for x in v], budget, cap)),
        "oracle": value(allocate_roots(rates, budget, cap)),
        "uniform": uniform,
    }


def replay(
    store: RolloutStore, run: str, featurizers: dict[str, SearchAgentFeaturizer], names: list[str]
) -> dict[str, Any]:
    run_id = store.run_id(run)
    iterations = sorted({r["iteration"] for r in store.iteration_metrics(run_id) if r["iteration"] >= 0})
    trees_by_it = {it: store.load_trees(run_id, it) for it in iterations}
    examples = {kind: {it: node_examples(trees_by_it[it], f) for it in iterations} for kind, f in featurizers.items()}
    out: dict[str, Any] = {}
    for name in names:
        factory, kind, n0 = PREDICTORS[name]
        featurizer = featurizers[kind]
        predictor = factory(featurizer.dim)
        rows = []
        start = time.perf_counter()
        for it in iterations:
            trees = [t for t in trees_by_it[it] if t.leaves()]
            if predictor.fitted:
                roots, anchors = _roots_and_anchors(trees)
                targets = stage1_outcomes(trees)
                root_p = predictor.predict(featurizer.features(trees, roots))
                anchor_p = predictor.predict(featurizer.features(trees, anchors)) if anchors else np.zeros(0)
                if n0 is not None:
                    anchor_p = group_posterior(anchor_p, anchors, trees, n0)
                counts = [(round(targets[r][0] * targets[r][1]), targets[r][1]) for r in roots]
                gain = _stage1_gain(root_p, counts, budget=min(32, 2 * len(roots)))
                rows.append(
                    {
                        "iteration": it,
                        "root": _scored(root_p, roots, targets).__dict__,
                        "anchor": _scored(anchor_p, anchors, targets).__dict__,
                        "gain": gain,
                    }
                )
            x, t, w, nodes = examples[kind][it]
            predictor.add(it, x, t, w, [trees_by_it[it][i].record.id for i, _ in nodes])
            predictor.fit()
        out[name] = {"iterations": rows, "seconds": time.perf_counter() - start, **_summary(rows)}
    return out


def _scored(predicted: np.ndarray, nodes: list[tuple[int, int]], targets: dict) -> PredictorQuality:
    keep = [k for k, node in enumerate(nodes) if node in targets]
    t = np.array([targets[nodes[k]][0] for k in keep])
    w = np.array([targets[nodes[k]][1] for k in keep], dtype=np.float64)
    return quality(predicted[keep], t, w)


def _summary(rows: list[dict[str, Any]], later: int = 5) -> dict[str, Any]:
    def mean(key: str, field: str, start: int = 0) -> float | None:
        values = [r[key][field] for r in rows[start:] if r[key][field] == r[key][field]]
        return round(statistics.fmean(values), 4) if values else None

    gains = [r["gain"] for r in rows]
    share = [
        (g["predicted"] - g["uniform"]) / (g["oracle"] - g["uniform"]) for g in gains if g["oracle"] > g["uniform"]
    ]
    return {
        "root_auc": mean("root", "auc"),
        "root_brier": mean("root", "brier"),
        "root_ece": mean("root", "ece"),
        "root_auc_from_5": mean("root", "auc", later),
        "root_ece_from_5": mean("root", "ece", later),
        "anchor_auc": mean("anchor", "auc"),
        "anchor_brier": mean("anchor", "brier"),
        "anchor_ece": mean("anchor", "ece"),
        "stage1_expected_mixed": round(statistics.fmean(g["predicted"] for g in gains), 3) if gains else None,
        "stage1_expected_mixed_oracle": round(statistics.fmean(g["oracle"] for g in gains), 3) if gains else None,
        "stage1_expected_mixed_uniform": round(statistics.fmean(g["uniform"] for g in gains), 3) if gains else None,
        "share_of_oracle_gain": round(statistics.fmean(share), 3) if share else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="runs/rollouts.db")
    parser.add_argument("--run", action="append", required=True, help="run(s) to replay")
    parser.add_argument("--predictor", action="append", choices=sorted(PREDICTORS))
    parser.add_argument("--max-turns", type=int, default=4)
    parser.add_argument("--out", default="bench/results/predictor.json")
    args = parser.parse_args()
    store = RolloutStore(f"sqlite:///{args.db}", create=False)
    encoder = TextEncoder()
    featurizers = {
        "base": SearchAgentFeaturizer(encoder, args.max_turns),
        "words": SearchAgentFeaturizer(encoder, args.max_turns, WORD_BUCKETS),
    }
    names = args.predictor or list(PREDICTORS)
    results = {run: replay(store, run, featurizers, names) for run in args.run}
    store.close()
    command = "python bench/predictor.py " + " ".join(sys.argv[1:])
    Path(args.out).write_text(json.dumps({"command": command, "runs": results}, indent=2) + "\n")
    for run, per in results.items():
        for name, r in per.items():
            print(
                f"{run:24s} {name:14s} root AUC {r['root_auc']}  ECE {r['root_ece']}  Brier {r['root_brier']}  "
                f"anchor AUC {r['anchor_auc']}  ECE {r['anchor_ece']}  "
                f"oracle-gain share {r['share_of_oracle_gain']}"
            )


if __name__ == "__main__":
    main()
