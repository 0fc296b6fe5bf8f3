"""Can the bench see an accuracy gain of the size TRACE's extra signal could buy? A power analysis.

    .venv/bin/python bench/power.py [--variant-folder token_matched:trace@trace.budget=83 ...]

Reads committed `trace-rl bench` results (`bench/results/<folder>/runs.jsonl`) and, for each
(folder, variant) paired seed by seed with `uniform` on the same start, reports two endpoints: the
composite EM (the primary one, fixed in advance: the mean of a run's final dev EM and test EM,
`trace_rl.bench.summary.composite_em`) and test EM:
- `composite_diff` / `test_diff` / `dev_diff`: the per-seed differences variant - uniform, their mean,
  for composite and test EM also their standard deviation sd (n - 1 in the denominator), the paired
  Student-t 95% interval mean +- t_{0.975, n-1} * sd / sqrt(n) and the two-sided t test's p-value;
- `composite_mde` / `mde` (test EM): the smallest true mean difference the folder's n seeds detect
  with a two-sided 5% paired t test at 80% power: the noncentrality delta at which the noncentral t
  with n - 1 degrees of freedom puts 80% of its mass beyond +-t_{0.975, n-1}, times sd / sqrt(n)
  (`trace_rl.bench.summary.mde`);
- `uniform_gain`: uniform's own dev EM gain over the run (final minus before);
- `signal_ratio`: the variant's non-zero-advantage share (b) over uniform's, and its leaves over
  uniform's: the extra learning signal per iteration it feeds the update;
- `linear_effect`: the accuracy gain TRACE could expect if accuracy rose in proportion to the
  non-zero-advantage leaves trained on, uniform_gain * (signal leaves ratio - 1): an upper-end guess,
  since more leaves in the same number of optimizer steps lower the gradient's noise but do not
  lengthen the steps; it is set against both endpoints;
- `composite_seeds_needed` / `seeds_needed` (test EM): the fewest seeds n at which that effect is
  detected with 80% power by the two-sided 5% paired t test, given the measured sd: n is stepped up,
  each n with its own t_{0.975, n-1} and noncentral t (`trace_rl.bench.summary.seeds_needed`), from the
  normal approximation's ((z_0.975 + z_0.80) * sd / effect)^2, below which the t test never has the
  power; null when the expected effect is not positive.
Deviations from an exact analysis: the t figures assume normally distributed, independent per-seed
differences; the sd is itself estimated from the few seeds at hand, so the mde and the seeds needed
are only as good as that estimate; a composite's dev and test halves are correlated, so its sd is not
the mean of theirs. Earlier versions used the normal approximation (z in place of t), which is
optimistic at a handful of seeds.
Writes `bench/results/power.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from trace_rl.bench.summary import composite_em, nonzero_advantage_leaves, paired_t, seeds_needed

RESULTS = Path("bench/results")
DEFAULT = (
    "token_matched:trace@trace.budget=83",
    "late_fresh:trace",
    "v2:trace",
    "signal:uniform@trace.budget=128",
    "signal:uniform@policy.minibatches=4",
)


def _rows(folder: str) -> list[dict[str, Any]]:
    path = RESULTS / folder / "runs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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


def _t_figures(name: str, diffs: list[float]) -> dict[str, Any]:
    """The per-seed differences of one endpoint with their paired Student-t figures."""
    t = paired_t(diffs)
    return {
        f"{name}_diff": [round(d, 4) for d in diffs],
        f"{name}_diff_mean": round(t["mean"], 4),
        f"{name}_diff_sd": round(t["sd"], 4),
        f"{name}_diff_ci95": [round(b, 4) for b in t["ci95"]],
        f"{name}_diff_p": round(t["p"], 4),
    }


def analyse(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    composite = [composite_em(p["variant"]) - composite_em(p["uniform"]) for p in pairs]
    test = [p["variant"]["test_em"] - p["uniform"]["test_em"] for p in pairs]
    dev = [p["variant"]["dev_em"] - p["uniform"]["dev_em"] for p in pairs]
    t_composite, t_test = paired_t(composite), paired_t(test)
    gain = statistics.fmean(p["uniform"]["dev_em"] - p["uniform"]["dev_em_before"] for p in pairs)
    signal = statistics.fmean(
        nonzero_advantage_leaves(p["variant"]) / nonzero_advantage_leaves(p["uniform"]) for p in pairs
    )
    share = statistics.fmean(
        statistics.fmean(p["variant"]["nonzero_advantage_share"])
        / statistics.fmean(p["uniform"]["nonzero_advantage_share"])
        for p in pairs
    )
    effect = gain * (signal - 1.0)
    return {
        "seeds": len(pairs),
        **_t_figures("composite", composite),
        **_t_figures("test", test),
        "dev_diff": [round(d, 4) for d in dev],
        "dev_diff_mean": round(statistics.fmean(dev), 4),
        "composite_mde": round(t_composite["mde"], 4),
        "mde": round(t_test["mde"], 4),
        "uniform_gain": round(gain, 4),
        "nonzero_share_ratio": round(share, 4),
        "signal_leaves_ratio": round(signal, 4),
        "linear_effect": round(effect, 4),
        "composite_seeds_needed": seeds_needed(effect, t_composite["sd"]),
        "seeds_needed": seeds_needed(effect, t_test["sd"]),
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
