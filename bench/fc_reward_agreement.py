"""Our function-calling reward against BFCL's verdict, on every episode of the four multi-turn
subsets and perturbations of its ground truth (`trace_core.function_calling.agreement`).

For each episode, the ground truth written as the policy's steps and each perturbation of it
(a call dropped, an argument changed, calls reordered, an extra read call, an extra write call, a
reply instead of a call step, an unknown function added, a non-literal argument, positional
arguments) is scored twice: by `FunctionCallingEnv` (the reward of its final step) and by BFCL's
own decoder and `multi_turn_checker`, called as BFCL's evaluation runner calls them. Reports, per
perturbation, the episodes scored, how many the two agree on and how many each passes, and lists
the disagreements.

    python bench/fc_reward_agreement.py --out bench/results/fc_reward_agreement.json
    python bench/fc_reward_agreement.py --every 10   # every 10th episode of each subset
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from trace_core.function_calling.agreement import agreement, text_env
from trace_core.function_calling.data import SUBSETS, bfcl_data_dir, load_subset


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("bench/results/fc_reward_agreement.json"))
    parser.add_argument("--every", type=int, default=1, help="score every n-th episode of each subset")
    args = parser.parse_args()
    start = time.perf_counter()
    env = text_env(bfcl_data_dir())
    per_subset = {}
    disagreements: list[str] = []
    for subset in SUBSETS:
        records = load_subset(bfcl_data_dir(), subset)[:: args.every]
        counts, disagree = agreement(env, records)
        per_subset[subset] = counts
        disagreements += disagree
        print(subset, json.dumps(counts), flush=True)
    total = {
        name: {key: sum(per_subset[s][name][key] for s in SUBSETS) for key in per_subset[SUBSETS[0]][name]}
        for name in per_subset[SUBSETS[0]]
    }
    result = {
        "command": "python bench/fc_reward_agreement.py" + (f" --every {args.every}" if args.every != 1 else ""),
        "episodes": total["ground_truth"]["episodes"],
        "agreement": total,
        "by_subset": per_subset,
        "disagreements": disagreements,
        "seconds": round(time.perf_counter() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("episodes", "agreement", "disagreements", "seconds")}, indent=2))


if __name__ == "__main__":
    main()
