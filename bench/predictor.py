"""Which success predictor to allocate with: every predictor replayed on the same stored rollouts.

    .venv/bin/python bench/predictor.py --db runs/rollouts.db --run pred-uniform [--out bench/results/predictor.json]

For each predictor and each iteration t of a finished run, the predictor is fed iterations
0..t-1 exactly as the training flow feeds it (`add` the backed-up node examples, `fit`), then
predicts iteration t's roots and anchors before looking at them. Those predictions are scored
against the bare (Stage-1) rollouts of iteration t: AUC, Brier and calibration error (ECE),
leaf-weighted, for roots and anchors separately. This is the allocation-time quality, held out by
construction (the future is never seen), on identical data for every predictor.

`--chain` replays several runs one after another as one history (a late-regime run after its
pre-run). `online+history-*` put each root's v from `online` as a Beta prior worth n0 rollouts and
update it with the question's own earlier bare outcomes, weighted decay ** age (the per-question
term of MoPPS / IRT that issue 13 suggests). Measured (bench/results/predictor_history.json, bench
seed 2's pre-run and late uniform run chained, 40 iterations, root figures from iteration 5):
online AUC 0.738 / ECE 0.155 / oracle share 0.24; n0 = 2 or 4, decay 0.9: AUC 0.747 / ECE
0.145-0.151 / share 0.29; decay 0.7 or n0 = 8 less. Not adopted: almost all of that came from the
late run re-drawing the pre-run's pools (every late root had history, a bug since fixed in
trace_rl/flows/context.py `stage_seed`); in the pre-run's own 20 iterations only 6-12% of pool prompts had
been sampled before (64 of 1,500 per iteration), too few for a per-question term to matter:
root AUC over iterations 5-19 was 0.651 (online) against 0.655 / 0.651 (n0 = 4 / 2), over the
repeated iterations 20-39 0.792 against 0.806 / 0.808. The same split shows `online` itself at
0.79 on prompts it had learnt against 0.65 on fresh ones: the late regime's predictor figures
measured before the fix are inflated by the repeats.

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

from trace_core.method.allocation import allocate_roots  # noqa: E402
from trace_core.method.mlp_predictor import SuccessPredictor  # noqa: E402
from trace_core.method.online_predictor import OnlinePredictor  # noqa: E402
from trace_core.method.predictor import PredictorConfig, PredictorQuality, quality  # noqa: E402
from trace_core.method.sampling import node_examples  # noqa: E402
from trace_core.method.tree import stage1_outcomes  # noqa: E402
from trace_core.search_agent.features import SearchAgentFeaturizer, TextEncoder  # noqa: E402
from trace_rl.store.store import RolloutStore  # noqa: E402

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
# name -> (base predictor, n0, decay): the base's root v as a Beta prior worth n0 rollouts, updated
# with the question's own earlier bare outcomes, each weighted decay ** (iterations since)
HISTORY = {
    "online+history-n2-d0.9": ("online", 2.0, 0.9),
    "online+history-n4-d0.9": ("online", 4.0, 0.9),
    "online+history-n4-d0.7": ("online", 4.0, 0.7),
    "online+history-n8-d0.9": ("online", 8.0, 0.9),
}


def history_posterior(
    v: np.ndarray, ids: list[str], seen: dict[str, list[tuple[int, float, int]]], now: int, n0: float, decay: float
) -> tuple[np.ndarray, float]:
    """Each root's v updated with its question's earlier bare outcomes (k of n at iteration i, weight
    decay ** (now - i)): (n0 v + sum w k) / (n0 + sum w n). Also the share of roots with any history."""
    out = v.copy()
    for j, key in enumerate(ids):
        past = seen.get(key, [])
        weights = [decay ** (now - i) for i, _, _ in past]
        successes = sum(w * k for w, (_, k, _) in zip(weights, past, strict=True))
        count = sum(w * n for w, (_, _, n) in zip(weights, past, strict=True))
        out[j] = (n0 * v[j] + successes) / (n0 + count)
    return out, float(np.mean([key in seen for key in ids])) if ids else 0.0


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


def _iterations(store: RolloutStore, runs: list[str]) -> list[list[Any]]:
    """Each iteration's trees, the runs' iterations one after another (a late-regime run after the
    pre-run it started from reads as one history)."""
    out = []
    for run in runs:
        run_id = store.run_id(run)
        iterations = sorted({r["iteration"] for r in store.iteration_metrics(run_id) if r["iteration"] >= 0})
        out += [store.load_trees(run_id, it) for it in iterations]
    return out


def replay(
    store: RolloutStore, runs: list[str], featurizers: dict[str, SearchAgentFeaturizer], names: list[str]
) -> dict[str, Any]:
    trees_by_it = _iterations(store, runs)
    kinds = {PREDICTORS[HISTORY.get(name, (name,))[0]][1] for name in names}
    examples = {kind: [node_examples(trees, featurizers[kind]) for trees in trees_by_it] for kind in kinds}
    out: dict[str, Any] = {}
    bases = {HISTORY.get(name, (name,))[0] for name in names}
    for base in sorted(bases):
        start = time.perf_counter()
        steps = _replay_one(trees_by_it, examples, featurizers, base)
        seconds = time.perf_counter() - start
        for name in [n for n in names if HISTORY.get(n, (n,))[0] == base]:
            _, n0_history, decay = HISTORY.get(name, (base, None, 1.0))
            rows = (
                _with_history(steps, n0_history, decay)
                if n0_history is not None
                else [s["row"] for s in steps if "row" in s]
            )
            out[name] = {"iterations": rows, "seconds": seconds, **_summary(rows)}
            print(f"  {name}: {out[name]['root_auc']} root AUC, {out[name]['share_of_oracle_gain']} share", flush=True)
    return out


def _replay_one(
    trees_by_it: list[list[Any]], examples: dict[str, list[Any]], featurizers: dict[str, Any], name: str
) -> list[dict[str, Any]]:
    """One predictor fed iteration by iteration; per predicted iteration its scored row and what a
    history update needs (root predictions, question ids, the bare outcomes)."""
    factory, kind, n0 = PREDICTORS[name]
    featurizer = featurizers[kind]
    predictor = factory(featurizer.dim)
    steps = []
    for it, all_trees in enumerate(trees_by_it):
        trees = [t for t in all_trees if t.leaves()]
        targets = stage1_outcomes(trees)
        roots, anchors = _roots_and_anchors(trees)
        step: dict[str, Any] = {"iteration": it, "ids": [trees[i].record.id for i, _ in roots], "roots": roots}
        step["targets"] = targets
        if predictor.fitted:
            root_p = predictor.predict(featurizer.features(trees, roots))
            anchor_p = predictor.predict(featurizer.features(trees, anchors)) if anchors else np.zeros(0)
            if n0 is not None:
                anchor_p = group_posterior(anchor_p, anchors, trees, n0)
            step["root_p"] = root_p
            step["row"] = _row(it, root_p, roots, targets)
            step["row"]["anchor"] = _scored(anchor_p, anchors, targets).__dict__
        steps.append(step)
        x, t, w, nodes = examples[kind][it]
        predictor.add(it, x, t, w, [all_trees[i].record.id for i, _ in nodes])
        predictor.fit()
        print(f"    {name} iteration {it}", flush=True)
    return steps


def _row(it: int, root_p: np.ndarray, roots: list[tuple[int, int]], targets: dict) -> dict[str, Any]:
    counts = [(round(targets[r][0] * targets[r][1]), targets[r][1]) for r in roots]
    gain = _stage1_gain(root_p, counts, budget=min(32, 2 * len(roots)))
    return {"iteration": it, "root": _scored(root_p, roots, targets).__dict__, "gain": gain}


def _with_history(steps: list[dict[str, Any]], n0: float, decay: float) -> list[dict[str, Any]]:
    """The rows again, each root's v updated with its question's earlier bare outcomes."""
    seen: dict[str, list[tuple[int, float, int]]] = {}
    rows = []
    for step in steps:
        it, roots, targets = step["iteration"], step["roots"], step["targets"]
        if "root_p" in step:
            root_p, covered = history_posterior(step["root_p"], step["ids"], seen, it, n0, decay)
            rows.append(
                {**_row(it, root_p, roots, targets), "anchor": step["row"]["anchor"], "roots_with_history": covered}
            )
        for key, root in zip(step["ids"], roots, strict=True):
            if root in targets:
                rate, n = targets[root]
                seen.setdefault(key, []).append((it, rate * n, n))
    return rows


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
        "roots_with_history": round(statistics.fmean(r.get("roots_with_history", 0.0) for r in rows), 3)
        if rows
        else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="runs/rollouts.db")
    parser.add_argument("--run", action="append", required=True, help="run(s) to replay")
    parser.add_argument("--chain", action="store_true", help="replay the runs one after another as one history")
    parser.add_argument("--predictor", action="append", choices=sorted([*PREDICTORS, *HISTORY]))
    parser.add_argument("--max-turns", type=int, default=4)
    parser.add_argument("--out", default="bench/results/predictor.json")
    args = parser.parse_args()
    store = RolloutStore(f"sqlite:///{args.db}", create=False)
    encoder = TextEncoder()
    featurizers = {
        "base": SearchAgentFeaturizer(encoder, args.max_turns),
        "words": SearchAgentFeaturizer(encoder, args.max_turns, WORD_BUCKETS),
    }  # only the kinds the chosen predictors use are computed
    names = args.predictor or list(PREDICTORS)
    chains = ["+".join(args.run)] if args.chain else args.run
    results = {chain: replay(store, chain.split("+"), featurizers, names) for chain in chains}
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
