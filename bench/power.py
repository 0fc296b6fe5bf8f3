"""Can the bench see an accuracy gain of the size TRACE's extra signal could buy? A power analysis.

    .venv/bin/python bench/power.py [--variant-folder token_matched:trace@trace.budget=83 ...]

Reads committed `trace-rl bench` results (`bench/results/<folder>/runs.jsonl`) and, for each
(folder, variant) paired seed by seed with `uniform` on the same start, reports:
- `test_diff` / `dev_diff`: the per-seed differences in final EM, their mean and standard deviation;
- `mde`: the smallest true mean difference the folder's seed count detects with a two-sided 5% test
  at 80% power, (z_0.975 + z_0.80) * sd / sqrt(seeds) (normal approximation: with 5 seeds a t test
  needs about 1.6 times more, so this is the optimistic figure);
- `uniform_gain`: uniform's own dev EM gain over the run (final minus before);
- `signal_ratio`: the variant's non-zero-advantage share (b) over uniform's, and its leaves over
  uniform's: the extra learning signal per iteration it feeds the update;
- `linear_effect`: the accuracy gain TRACE could expect if accuracy rose in proportion to the
  non-zero-advantage leaves trained on, uniform_gain * (signal leaves ratio - 1): an upper-end guess,
  since more leaves in the same number of optimizer steps lower the gradient's noise but do not
  lengthen the steps;
- `seeds_needed`: seeds for 80% power at that effect with the measured sd.
Writes `bench/results/power.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

RESULTS = Path("bench/results")
DEFAULT = (
    "token_matched:trace@trace.budget=83",
    "late_fresh:trace",
    "v2:trace",
    "signal:uniform@trace.budget=128",
    "signal:uniform@policy.minibatches=4",
)
Z = 1.959964 + 0.841621  # two-sided 5% test, 80% power


def _rows(folder: str) -> list[dict[str, Any]]:
    path = RESULTS / folder / "runs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _signal(row: dict[str, Any]) -> float:
    """Non-zero-advantage leaves per iteration, on average over the run."""
    share = statistics.fmean(row["nonzero_advantage_share"])
    return share * row["leaves"] / row["iterations"]


def paired(folder: str, variant: str) -> list[dict[str, Any]]:
    """Per (regime, seed) where both ran: the variant's and uniform's figures."""
    rows = _rows(folder)
    base = {(r["regime"], r["seed"]): r for r in rows if r["allocator"] == "uniform"}
    out = []
    for r in rows:
        ref = base.get((r["regime"], r["seed"]))
        if r["allocator"] == variant and ref is not None:
            out.append({"regime": r["regime"], "seed": r["seed"], "variant": r, "uniform": ref})
    return out


def analyse(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(pairs)
    test = [p["variant"]["test_em"] - p["uniform"]["test_em"] for p in pairs]
    dev = [p["variant"]["dev_em"] - p["uniform"]["dev_em"] for p in pairs]
    sd = statistics.stdev(test) if n > 1 else math.nan
    gain = statistics.fmean(p["uniform"]["dev_em"] - p["uniform"]["dev_em_before"] for p in pairs)
    signal = statistics.fmean(_signal(p["variant"]) / _signal(p["uniform"]) for p in pairs)
    share = statistics.fmean(
        statistics.fmean(p["variant"]["nonzero_advantage_share"])
        / statistics.fmean(p["uniform"]["nonzero_advantage_share"])
        for p in pairs
    )
    effect = gain * (signal - 1.0)
    return {
        "seeds": n,
        "test_diff": [round(d, 4) for d in test],
        "test_diff_mean": round(statistics.fmean(test), 4),
        "test_diff_sd": round(sd, 4),
        "dev_diff": [round(d, 4) for d in dev],
        "dev_diff_mean": round(statistics.fmean(dev), 4),
        "mde": round(Z * sd / math.sqrt(n), 4),
        "uniform_gain": round(gain, 4),
        "nonzero_share_ratio": round(share, 4),
        "signal_leaves_ratio": round(signal, 4),
        "linear_effect": round(effect, 4),
        "seeds_needed": math.ceil((Z * sd / effect) ** 2) if effect > 0 else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant-folder", nargs="*", default=list(DEFAULT), help="folder:variant pairs")
    args = parser.parse_args()
    out: dict[str, Any] = {"command": "python bench/power.py " + " ".join(args.variant_folder)}
    for item in args.variant_folder:
        folder, _, variant = item.partition(":")
        pairs = paired(folder, variant)
        for regime in sorted({p["regime"] for p in pairs}):
            key = f"{folder}/{regime}/{variant}"
            out[key] = analyse([p for p in pairs if p["regime"] == regime])
            print(key, json.dumps(out[key]))
    (RESULTS / "power.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
