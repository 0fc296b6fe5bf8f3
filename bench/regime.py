"""Which regime does a task put uniform GRPO in? A probe of the warm-started policy, before training.

    .venv/bin/python bench/regime.py [--set section.key=value ...] [--questions 240] [--samples 8]

Builds (or reuses) the configured task and warm-started model, samples `--samples` rollouts of each
of the first `--questions` training questions with the policy at temperature 1, and reports:
- the success rate per hop count (the generator's label, read here for the report only: the
  policy and the predictor never see it);
- the share of questions never, sometimes and always solved;
- the expected share of uniform's groups of G rollouts that are mixed, E[1 - s^G - (1 - s)^G] over
  the questions, with s estimated without bias from each question's n samples
  (E[s^G] = C(k, G) / C(n, G) for k successes in n >= G samples), for G = 2, 4 and 8.
This is the regime at iteration 0; the bench's `uniform` rows give it over training. Writes a JSON
file (`--out`).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from trace_core.method.evaluation import evaluate_policy
from trace_core.search_agent.reward import answer_f1
from trace_rl.config.settings import load_settings
from trace_rl.flows.pipeline import load_runtime


def unbiased_mixed(successes: int, n: int, group: int) -> float:
    """Unbiased estimate of 1 - s^G - (1 - s)^G from k successes in n Bernoulli(s) samples (n >= G)."""
    if n < group:
        raise ValueError(f"{n} samples cannot estimate a group of {group}")
    total = math.comb(n, group)
    return 1.0 - math.comb(successes, group) / total - math.comb(n - successes, group) / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--questions", type=int, default=240)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("bench/results/regime.json"))
    args = parser.parse_args()
    s = load_settings(args.set)
    rt = load_runtime(s, print)
    records = rt.data.train[s.warmstart.eval_questions : s.warmstart.eval_questions + args.questions]
    torch.manual_seed(s.run.seed)
    rt.backend.reseed(s.run.seed)
    report = evaluate_policy(records, rt.backend, rt.env, n=args.samples, temperature=s.agent.temperature, f1=answer_f1)
    by_hops: dict[int, list[float]] = defaultdict(list)
    for record, rate in zip(records, report.success, strict=True):
        by_hops[int(getattr(record, "hops", 0))].append(rate)
    wins = [round(rate * args.samples) for rate in report.success]
    out: dict[str, Any] = {
        "settings": args.set,
        "questions": len(records),
        "samples": args.samples,
        "success": report.em,
        "never": report.never / len(records),
        "always": report.always / len(records),
        "success_by_hops": {h: sum(v) / len(v) for h, v in sorted(by_hops.items())},
        "questions_by_hops": {h: len(v) for h, v in sorted(by_hops.items())},
        "uniform_mixed": {
            g: sum(unbiased_mixed(k, args.samples, g) for k in wins) / len(wins) for g in (2, 4, 8) if g <= args.samples
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
