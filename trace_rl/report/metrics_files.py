"""The metrics files `dvc.yaml` declares: train.json, train.csv and dev.csv from a run's history,
eval.json (the accuracy figures) from an evaluation. Wall times are left out so that two
reproductions of the same run give identical files."""

from __future__ import annotations

import csv
import json
from pathlib import Path


def write_json(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


HEADLINE = ("em", "f1", "greedy_em", "greedy_f1")
PER_SOURCE = "em_"  # accuracy per data source (BFCL subset), where a split has several


def headline_figures(result: dict) -> dict:
    """The accuracy figures of an evaluation, per split: what `dvc metrics show` and `dvc exp show`
    tabulate (one column each), without the counts and histograms of the detail file."""
    return {
        split: {k: v for k, v in figures.items() if k in HEADLINE or k.startswith(PER_SOURCE)}
        for split, figures in result.items()
        if isinstance(figures, dict)
    }


def export_metrics(directory: Path, history: list[dict]) -> None:
    """For DVC, with wall times left out so that two reproductions of the same run give identical
    files: train.json (final figures); train.csv (one row per training iteration, only the series
    every iteration has, so no plot draws a blank as 0); dev.csv (the dev evaluations: before
    training and every train.eval_every iterations)."""
    rows = [{k: v for k, v in row.items() if not k.startswith("time/")} for row in history]
    iterations = [r for r in rows if r["iteration"] >= 0]
    keys: set[str] = set().union(*iterations) if iterations else set()
    complete = sorted(k for k in keys if all(r.get(k) is not None for r in iterations))
    evaluated = [r for r in rows if r.get("eval/em") is not None]
    dev_columns = sorted({k for r in evaluated for k in r if k.startswith(("eval/", "predictor/dev_"))})
    directory.mkdir(parents=True, exist_ok=True)
    for name, chosen, columns in (
        ("train.csv", iterations, [c for c in complete if c != "iteration"]),
        ("dev.csv", evaluated, dev_columns),
    ):
        with (directory / name).open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["iteration", *columns])
            writer.writerows([r["iteration"], *(_cell(r.get(c)) for c in columns)] for r in chosen)
    final = {k: v for k, v in rows[-1].items() if k.startswith(("eval/", "predictor/dev"))}
    final["eval/em_before"] = rows[0].get("eval/em")
    final["rollout/mean_effective_ratio"] = sum(r.get("rollout/effective_ratio", 0) for r in iterations) / max(
        len(iterations), 1
    )
    final["rollout/generated_tokens"] = sum(r.get("rollout/generated_tokens", 0) for r in iterations)
    write_json(directory / "train.json", final)


def _cell(value: object) -> str:
    return "" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)
