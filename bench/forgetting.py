"""Does training forget? Per-question-kind dev success of a bench's final policies against their start.

    .venv/bin/python bench/forgetting.py --bench bench/results/recipe [--samples 8]

Issue 13 found that 40 iterations of the default recipe moved whole question kinds of the synthetic
task (one relation rose from 0.43 to 0.87, every chain through another fell from 0.35 to 0.08) and
that a trained question's success correlates only r = 0.44 with its warm-start success. This script
measures that for every finished run of a `trace-rl bench` output folder (its `runs.jsonl` and
`runs/`): the start policy (the warm-started model, or the late regime's pre-run checkpoint) and the
run's final policy each answer the first `--questions` dev questions `--samples` times at
temperature 1, with the same seed, and it reports per run:
- `dev_em`: avg@samples EM of the final policy (and `dev_em_start` of its start);
- `kinds`: success per question kind, start and final. A kind is the question's relation chain
  (e.g. `works_for>based_in`), read from the synthetic generator's gold chain: measurement only,
  never an input to training or to the predictor;
- `forgetting`: the mean over kinds of max(0, start - final) (each kind counts once);
  `kinds_fallen`: kinds whose success fell by more than 0.10; `worst_drop`: the largest fall;
- `question_r`: Pearson's r between each question's start and final success;
- `entropy`: the mean negative log-probability per generated token at temperature 1 (an estimate
  of the policy's per-token entropy along its own samples), start and final;
- `invalid_share`: the share of turns that were neither a search nor an answer.
Sampling alone moves these figures: each start is measured a second time with another sampling
seed and compared with itself (the `noise floor` rows), so a recipe's forgetting reads against it.
Then per variant the means over seeds, and per seed the difference from `uniform` (the base recipe).
Writes `forgetting.json` in the bench folder.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trace_core.method.rollout import rollout_batch
from trace_core.method.tree import RolloutTree
from trace_core.search_agent.synthetic_qa import RELATIONS
from trace_rl.bench.runner import pre_run_name, variant_slug
from trace_rl.config.settings import load_settings
from trace_rl.flows.pipeline import Runtime, load_runtime
from trace_rl.report.evaluation import use_policy

FALL = 0.10
NOISE = "noise floor"  # the start measured twice, with two sampling seeds
RESAMPLE = 10_000
_FACTS = {
    rel: re.compile("^" + re.escape(sentence).replace(r"\{s\}", ".+").replace(r"\{o\}", ".+") + "$")
    for rel, (_, _, sentence) in RELATIONS.items()
}


def relation_chain(record: Any) -> str:
    """The relation chain of a synthetic question ('mentor>born_in'), from its gold facts."""
    rels = [next((r for r, pattern in _FACTS.items() if pattern.match(step.fact)), "?") for step in record.chain]
    return ">".join(rels) if rels else f"{record.hops}-hop"


def measure(rt: Runtime, policy_dir: Path | None, questions: int, samples: int, seed: int) -> dict[str, Any]:
    """Per-question success, kind, entropy estimate and invalid-turn share of one policy on dev
    (`policy_dir` None: the runtime's own model, the warm start)."""
    if policy_dir is None:
        rt.backend.sync_weights(rt.model.eval())
    else:
        use_policy(rt, policy_dir, str(rt.model.device))
    torch.manual_seed(seed)
    rt.backend.reseed(seed)
    records = rt.data.dev[:questions]
    trees = rollout_batch(records, samples, rt.backend, rt.env, rt.env.config.sampling(1.0))
    return _figures(trees)


def _figures(trees: list[RolloutTree]) -> dict[str, Any]:
    nll, tokens, turns, invalid = 0.0, 0, 0, 0
    success, kinds = [], []
    for tree in trees:
        rewards = [leaf.reward or 0.0 for leaf in tree.leaves()]
        success.append(sum(rewards) / len(rewards))
        kinds.append(relation_chain(tree.record))
        for node in tree:
            if node.depth > 0:
                nll -= sum(node.model_logprobs)
                tokens += len(node.model_logprobs)
                turns += 1
                invalid += node.action == "invalid"
    return {
        "success": success,
        "kinds": kinds,
        "em": statistics.fmean(success),
        "entropy": nll / max(tokens, 1),
        "invalid_share": invalid / max(turns, 1),
    }


def compare(start: dict[str, Any], final: dict[str, Any]) -> dict[str, Any]:
    """Forgetting figures of `final` against `start` (same questions, same order)."""
    by_kind: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for kind, a, b in zip(start["kinds"], start["success"], final["success"], strict=True):
        by_kind[kind].append((a, b))
    kinds = {
        k: {"questions": len(v), "start": statistics.fmean(a for a, _ in v), "final": statistics.fmean(b for _, b in v)}
        for k, v in sorted(by_kind.items())
    }
    drops = [row["start"] - row["final"] for row in kinds.values()]
    r = np.corrcoef(start["success"], final["success"])[0, 1]
    return {
        "dev_em_start": round(start["em"], 4),
        "dev_em": round(final["em"], 4),
        "forgetting": round(statistics.fmean(max(0.0, d) for d in drops), 4),
        "kinds_fallen": sum(d > FALL for d in drops),
        "worst_drop": round(max(drops), 4),
        "question_r": round(float(r), 4),
        "entropy_start": round(start["entropy"], 4),
        "entropy": round(final["entropy"], 4),
        "invalid_share_start": round(start["invalid_share"], 4),
        "invalid_share": round(final["invalid_share"], 4),
        "kinds": {k: {key: round(val, 4) for key, val in row.items()} for k, row in kinds.items()},
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Means per (regime, variant) over seeds, and per seed the difference from `uniform`."""
    keys = ("dev_em", "forgetting", "kinds_fallen", "worst_drop", "question_r", "entropy", "invalid_share")
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[f"{run['regime']}/{run['variant']}"].append(run)
    means = {
        g: {k: round(statistics.fmean(r[k] for r in rows), 4) for k in keys} | {"seeds": len(rows)}
        for g, rows in groups.items()
    }
    base = {(r["regime"], r["seed"]): r for r in runs if r["variant"] == "uniform"}
    paired: dict[str, list[dict[str, float]]] = defaultdict(list)
    for run in runs:
        ref = base.get((run["regime"], run["seed"]))
        if ref is not None and run is not ref and run["variant"] != NOISE:
            diff = {k: round(run[k] - ref[k], 4) for k in keys}
            paired[f"{run['regime']}/{run['variant']}"].append({"seed": run["seed"], **diff})
    return {"means": means, "paired_vs_uniform": paired}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", type=Path, required=True, help="a `trace-rl bench` output folder")
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--samples", type=int, default=8)
    args = parser.parse_args()
    done = [json.loads(line) for line in (args.bench / "runs.jsonl").read_text().splitlines() if line.strip()]
    rt = load_runtime(load_settings([f"run.output_dir={args.bench / 'runs'}"]), print)
    starts: dict[tuple[str, int], dict[str, Any]] = {}
    runs = []
    for row in done:
        regime, variant, seed = row["regime"], row["allocator"], row["seed"]
        key = (regime, seed)
        if key not in starts:
            pre = regime.removeprefix("late")
            start_dir = args.bench / "runs" / pre_run_name(int(pre), seed) / "policy" if pre != regime else None
            starts[key] = measure(rt, start_dir, args.questions, args.samples, seed)
            again = measure(rt, start_dir, args.questions, args.samples, seed + RESAMPLE)
            runs.append({"regime": regime, "variant": NOISE, "seed": seed, **compare(starts[key], again)})
        policy = args.bench / "runs" / f"bench-{regime}-{variant_slug(variant)}-s{seed}" / "policy"
        final = measure(rt, policy, args.questions, args.samples, seed)
        figures = compare(starts[key], final)
        runs.append({"regime": regime, "variant": variant, "seed": seed, **figures})
        print(f"{regime} / {variant} / seed {seed}: " + json.dumps({k: v for k, v in figures.items() if k != "kinds"}))
    command = f"python bench/forgetting.py --bench {args.bench} --questions {args.questions} --samples {args.samples}"
    out = {"command": command, "fall": FALL, **summarise(runs), "runs": runs}
    (args.bench / "forgetting.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["means"], indent=2))


if __name__ == "__main__":
    main()
