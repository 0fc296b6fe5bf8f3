"""Does TRACE's own selection starve its predictor, and does an exploration share repair it?

    .venv/bin/python bench/selection.py --db <bench out>/runs/rollouts.db --run bench-small-groups-uniform-s0 \
        [--run ...] [--seeds 5] [--out bench/results/selection/replay.json]

Benchmark v2 found the `online` predictor of a `trace` run the weaker one: TRACE's Stage-1 rule fed
the predictor of a `uniform` run reached about half of the oracle's gain over uniform groups, fed
its own 10 to 28%. Two explanations fit: TRACE labels fewer prompts (2 to 3 rollouts each on about
11 prompts instead of 4 on 16), or it labels the wrong ones for learning (it picks prompts whose v
sits near 0.5, so the predictor never learns where it is wrong with confidence). This replay
separates them on one `uniform` run, whose every iteration holds an unselected sample: 16 prompts
of 4 bare rollouts each. One `online` predictor per strategy is taught iteration by iteration from
a subset of those rollouts, exactly as training teaches it (node examples with `launched` targets,
then a refit), and each strategy chooses its subset with its own predictor's v:

- `all`: every rollout (what a `uniform` run's predictor learns from; 64 leaves);
- `selected`: TRACE's Stage-1 rule over the 16 prompts with a budget of 16 leaves (TRACE's ratio of
  one leaf per pool candidate), each chosen prompt keeping its first m <= 4 rollouts;
- `selected+explore`: the same with `trace.explore_share` = `--explore-share` (default 0.25: 4 of the
  16 leaves on prompts drawn at random, 2 rollouts each), the rule spending the rest on the others;
- `random`: the same number of prompts and leaves as `selected`, on prompts drawn at random (the
  data volume of `selected` without its selection).

Each strategy is scored, before an iteration's rollouts are learnt, on the things TRACE uses the
predictor for: (1) all 16 groups of that iteration (an unselected sample, every iteration): AUC,
Brier and ECE of v against each prompt's success rate, and the expected mixed groups TRACE's rule
on v buys there at a budget of one leaf per prompt, less what uniform groups of 4 buy (unbiased
estimates from each prompt's 4 rollouts, which the rule did not see); (2) the measured pools of the run (the
oracle ledger, every `headroom.every` iterations, 16 measurement rollouts per prompt): the
expected mixed groups of TRACE's rule on v at a Stage-1 budget of 32 leaves (a `trace` run's),
against uniform groups of 4 and the cross-fitted oracle, pooled as a share of the oracle's gain.
The random strategies are replayed under `--seeds` random streams (0, 1, ...) and reported as means
(their draws move the figures a lot: one run of 20 iterations is a small sample). Rollouts are
never invented: a strategy can only keep rollouts the `uniform` run sampled, so a prompt gets at
most 4.

Measured (bench/results/selection, the two `uniform` runs of bench/results/ablation; run s0 / s1):

    strategy            group ECE       Stage-1 gain on groups   pools: share of oracle gain
    all (64 leaves)     0.128 / 0.142   +0.40 / +1.07            +0.09 / +0.54
    selected            0.171 / 0.177   +0.29 / +0.67            +0.32 / +0.45
    selected+explore    0.152 / 0.150   +0.41 / +0.56            +0.22 / +0.37
    random              0.140 / 0.156   +0.38 / +0.63            -0.08 / +0.40

Selection costs calibration in both runs; the Stage-1 gain moves either way (single draws spread by
about 0.3). Live, an exploration share of 0.25 lowered the effective ratio (`trace.explore_share`).
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

from trace_core.method.allocation import allocate_roots  # noqa: E402
from trace_core.method.allocators import AllocatorConfig, make_allocator, uniform_counts  # noqa: E402
from trace_core.method.headroom import ledger, unbiased_mixed  # noqa: E402
from trace_core.method.online_predictor import OnlineConfig, OnlinePredictor  # noqa: E402
from trace_core.method.predictor import PredictorConfig, quality  # noqa: E402
from trace_core.method.sampling import node_examples  # noqa: E402
from trace_core.method.tree import RolloutTree, backup  # noqa: E402
from trace_core.search_agent.features import SearchAgentFeaturizer, TextEncoder  # noqa: E402
from trace_rl.store.store import RolloutStore  # noqa: E402

STRATEGIES = ("all", "selected", "selected+explore", "random")
RANDOM = {"selected+explore", "random"}  # replayed once per seed; the others draw nothing
STAGE1_BUDGET = 32  # a `trace` run's Stage-1 leaves (64 * stage1_share 0.5), for the pool ledger
CAP = 4  # the rollouts a `uniform` run holds per prompt


def keep_rollouts(tree: RolloutTree, m: int) -> RolloutTree:
    """A copy of a tree of bare rollouts holding only its first `m` (by first turn), backed up."""
    out = RolloutTree(tree.record, tree.root.observation_ids, tree.root.observation)
    for first in tree.children(0)[:m]:
        stack = [(first, 0)]
        while stack:
            node, parent = stack.pop()
            added = out.add(replace(node, parent_id=parent))
            stack += [(child, added.node_id) for child in reversed(tree.children(node.node_id))]
    backup(out)
    return out


def choose(strategy: str, v: np.ndarray, budget: int, explore_share: float, rng: np.random.Generator) -> list[int]:
    """Rollouts kept per prompt (0, or 2..CAP) under `strategy`, from the predictor's v; `selected`
    and `selected+explore` are the `trace` allocator's Stage 1 (with `explore_share` for the latter)."""
    n = len(v)
    if strategy == "all":
        return [CAP] * n
    share = explore_share if strategy == "selected+explore" else 0.0
    config = AllocatorConfig(budget=2 * budget, stage1_share=0.5, max_per_prompt=CAP, explore_share=share)
    plan = list(make_allocator("trace").roots(v.tolist(), config, rng).counts)
    if strategy in ("selected", "selected+explore"):
        return plan
    if strategy == "random":  # the multiset of group sizes `selected` would use, on random prompts
        counts = [0] * n
        for i, m in zip(rng.permutation(n), [m for m in plan if m], strict=False):
            counts[int(i)] = m
        return counts
    raise ValueError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")


def replay(
    store: RolloutStore, run: str, featurizer: SearchAgentFeaturizer, explore_share: float, seeds: int
) -> dict[str, Any]:
    run_id = store.run_id(run)
    trace = store.run_settings(run_id)["trace"]
    if trace["allocator"] != "uniform":
        raise SystemExit(f"{run}: the replay needs a `uniform` run (unselected groups), not {trace['allocator']!r}")
    measured = store.headroom(run_id)
    iterations = store.backed_up_iterations(run_id)
    trees = {it: [t for t in store.load_trees(run_id, it) if t.leaves()] for it in iterations}
    roots = {it: featurizer.features(ts, [(i, 0) for i in range(len(ts))]) for it, ts in trees.items()}
    rates = {it: np.array([t.root.target for t in ts]) for it, ts in trees.items()}
    sizes = {it: np.array([t.root.leaf_count for t in ts], dtype=np.float64) for it, ts in trees.items()}
    pools = {}
    for it in measured:
        records = store.load_root_plan(run_id, it)[0]
        fresh = [RolloutTree(r, ()) for r in records]
        pools[it] = featurizer.features(fresh, [(i, 0) for i in range(len(fresh))])
    out: dict[str, Any] = {}
    for strategy, seed in [(s, k) for s in STRATEGIES for k in range(seeds if s in RANDOM else 1)]:
        rng = np.random.default_rng(seed)
        predictor = OnlinePredictor(featurizer.dim, PredictorConfig(), OnlineConfig())
        groups, pooled, leaves = [], [], []
        for it in iterations:
            fitted = predictor.fitted
            v = predictor.predict(roots[it]) if fitted else np.full(len(trees[it]), 0.5)
            if fitted:
                q = quality(v, rates[it], sizes[it])
                k = [round(r * n) for r, n in zip(rates[it], sizes[it], strict=True)]
                n_ = [int(n) for n in sizes[it]]
                plan = allocate_roots(v.tolist(), len(v), min(n_))
                rule = sum(unbiased_mixed(a, b, m) for a, b, m in zip(k, n_, plan, strict=True))
                # uniform groups of 4 on a quarter of the prompts, in expectation over which quarter
                uniform = float(np.mean([unbiased_mixed(a, b, CAP) for a, b in zip(k, n_, strict=True)])) * len(v) / CAP
                groups.append(
                    {"iteration": it, "auc": q.auc, "brier": q.brier, "ece": q.ece, "rule": rule, "uniform": uniform}
                )
            if fitted and it in measured:
                vp = predictor.predict(pools[it])
                counts = uniform_counts(len(vp), STAGE1_BUDGET, trace["group_size"])
                pool = [
                    replace(p, predicted=float(x), allocated=c)
                    for p, x, c in zip(measured[it], vp, counts, strict=True)
                ]
                book = ledger(pool, trace["group_size"], trace["max_per_prompt"])
                pooled.append(
                    {
                        "iteration": it,
                        "rule": book.predictor_rule.mixed,
                        "uniform": book.uniform.mixed,
                        "oracle": book.oracle.mixed,
                    }
                )
            kept = choose(strategy, v, len(trees[it]), explore_share, rng)
            subset = [keep_rollouts(t, m) for t, m in zip(trees[it], kept, strict=True) if m]
            leaves.append(sum(kept))
            x, t, w, nodes = node_examples(subset, featurizer, "launched")
            if len(t):
                predictor.add(it, x, t, w, [subset[i].record.id for i, _ in nodes])
                predictor.fit()
        gain = sum(r["oracle"] - r["uniform"] for r in pooled)
        out.setdefault(strategy, []).append(
            {
                "seed": seed,
                "leaves_per_iteration": float(np.mean(leaves)),
                "group_auc": float(np.nanmean([g["auc"] for g in groups])),
                "group_brier": float(np.nanmean([g["brier"] for g in groups])),
                "group_ece": float(np.nanmean([g["ece"] for g in groups])),
                "group_rule_gain": float(np.mean([g["rule"] - g["uniform"] for g in groups])),
                "share_of_oracle_gain": sum(r["rule"] - r["uniform"] for r in pooled) / gain if gain else None,
                "groups": groups,
                "pools": pooled,
            }
        )
    return {name: summarise(runs) for name, runs in out.items()}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean of each figure over a strategy's seeds, and the seeds' own results."""
    keys = ["leaves_per_iteration", "group_auc", "group_brier", "group_ece", "group_rule_gain", "share_of_oracle_gain"]
    mean = {k: float(np.mean([r[k] for r in runs if r[k] is not None])) for k in keys}
    return {**mean, "per_seed": {k: [r[k] for r in runs] for k in keys}, "seeds": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True)
    parser.add_argument("--run", action="append", required=True, help="a `uniform` run (repeatable)")
    parser.add_argument("--explore-share", type=float, default=0.25, help="`trace.explore_share` of `selected+explore`")
    parser.add_argument("--seeds", type=int, default=5, help="random draws of the random strategies")
    parser.add_argument("--max-turns", type=int, default=4)
    parser.add_argument("--out", default="bench/results/selection/replay.json")
    args = parser.parse_args()
    store = RolloutStore(f"sqlite:///{args.db}", create=False, read_only=True)
    featurizer = SearchAgentFeaturizer(TextEncoder(), args.max_turns)
    results = {run: replay(store, run, featurizer, args.explore_share, args.seeds) for run in args.run}
    store.close()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python bench/selection.py " + " ".join(sys.argv[1:])
    out.write_text(json.dumps({"command": command, "runs": results}, indent=2) + "\n")
    for run, per in results.items():
        for name, r in per.items():
            share = r["share_of_oracle_gain"]
            print(
                f"{run:40s} {name:18s} leaves/it {r['leaves_per_iteration']:5.1f}  groups: AUC {r['group_auc']:.3f} "
                f"Brier {r['group_brier']:.3f} ECE {r['group_ece']:.3f} rule gain {r['group_rule_gain']:+.2f}  "
                "pools: share of oracle gain "
                f"{share if share is None else f'{share:+.2f}'}"
            )


if __name__ == "__main__":
    main()
