"""Restate the project's paired comparisons with `uniform` under the paired Student-t interval.

    .venv/bin/python bench/restate.py

Reads every committed `bench/results/*/runs.jsonl` and the top-level `bench/results/runs.jsonl`, and
for each folder, regime and variant paired with `uniform` on the same seeds writes to
`bench/results/paired_t.md`: n, the mean difference variant - uniform of the composite EM (the
primary endpoint: the mean of the final dev and test EM), dev EM and test EM, each with its paired
Student-t 95% interval and two-sided p-value, beside the percentile bootstrap 95% interval the
project reported until now; the composite's minimal detectable effect and verdict; then which
earlier "the interval excludes 0" readings the t interval keeps and which it loses, for the three
accuracy endpoints and for (a) and (b).

Every figure comes from `trace_rl.bench.summary` (`paired_vs_uniform`, whose bootstrap draws as it always
did, so its secondary interval is the one the folders' `summary.json` recorded; the file says where
one differs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trace_rl.bench.summary import paired_vs_uniform

RESULTS = Path("bench/results")
OUT = RESULTS / "paired_t.md"
TOP = "(top level)"
ACCURACY = ("composite_em", "dev_em", "test_em")
RATES = ("effective_ratio", "nonzero_advantage_share")
LABELS = {
    "composite_em": "composite EM",
    "dev_em": "dev EM",
    "test_em": "test EM",
    "effective_ratio": "effective ratio (a)",
    "nonzero_advantage_share": "non-zero advantage (b)",
}


def folders() -> dict[str, Path]:
    """Every results folder with a `runs.jsonl`, the top-level one first."""
    found = {TOP: RESULTS} if (RESULTS / "runs.jsonl").exists() else {}
    found |= {p.parent.name: p.parent for p in sorted(RESULTS.glob("*/runs.jsonl"))}
    return found


def _rows(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "runs.jsonl").read_text().splitlines() if line.strip()]


def _recorded(folder: Path) -> dict[str, Any]:
    """The paired comparison the folder's committed `summary.json` holds (its `ci95` was the bootstrap)."""
    path = folder / "summary.json"
    return (json.loads(path.read_text()).get("paired_vs_uniform") or {}) if path.exists() else {}


def _interval(figure: dict[str, Any], key: str) -> str:
    low, high = figure[key]
    if low != low:  # NaN: fewer than 2 seeds
        return "-"
    return f"[{low:+.3f}, {high:+.3f}]"


def _p(p: float) -> str:
    return "-" if p != p else "< 0.001" if p < 0.001 else f"{p:.3f}"


def _same(old: list[float], new: list[float]) -> bool:
    """Whether two intervals agree to the 3 decimals the tables print."""
    return all(abs(a - b) < 5e-4 for a, b in zip(old, new, strict=True))


def _excludes_zero(interval: list[float]) -> int:
    """+1 if the interval lies above 0, -1 below, 0 if it covers 0 (or is undefined)."""
    low, high = interval
    return 1 if low > 0 else -1 if high < 0 else 0


def restate() -> str:
    rows_md: list[str] = []
    kept: list[str] = []
    lost: list[str] = []
    gained: list[str] = []
    unpaired: list[str] = []
    matched = compared = 0
    for name, folder in folders().items():
        paired = paired_vs_uniform(_rows(folder))
        if not paired:
            unpaired.append(name)
            continue
        recorded = _recorded(folder)
        for key, entry in paired.items():
            cells = [name, key, str(len(entry["seeds"]))]
            for m in ACCURACY:
                f = entry[m]
                cells += [f"{f['mean']:+.3f} {_interval(f, 'ci95')}", _p(f["p"]), _interval(f, "bootstrap_ci95")]
            mde = entry["composite_em"]["mde"]
            cells += ["-" if mde != mde else f"{mde:.3f}", entry["verdict"]]
            rows_md.append("| " + " | ".join(cells) + " |")
            for m in (*ACCURACY, *RATES):
                f = entry[m]
                if m in recorded.get(key, {}):
                    compared += 1
                    # summaries written since the t interval became primary keep the bootstrap beside it
                    old = recorded[key][m]
                    matched += _same(old.get("bootstrap_ci95", old["ci95"]), f["bootstrap_ci95"])
                boot, t = _excludes_zero(f["bootstrap_ci95"]), _excludes_zero(f["ci95"])
                line = (
                    f"{name} {key}, {LABELS[m]} (n = {len(entry['seeds'])}): {f['mean']:+.3f}, t "
                    f"{_interval(f, 'ci95')} p {_p(f['p'])}, bootstrap {_interval(f, 'bootstrap_ci95')}"
                )
                if boot and t == boot:
                    kept.append(line)
                elif boot:
                    lost.append(line)
                elif t:
                    gained.append(line)
    return _document(rows_md, kept, lost, gained, unpaired, matched, compared)


def _document(
    rows_md: list[str],
    kept: list[str],
    lost: list[str],
    gained: list[str],
    unpaired: list[str],
    matched: int,
    compared: int,
) -> str:
    def measures(lines: list[str], which: tuple[str, ...]) -> list[str]:
        return [f"- {line}" for line in lines if any(f", {LABELS[m]} (" in line for m in which)] or ["- none"]

    head = " | ".join(f"{LABELS[m]}: mean [t 95%] | p | bootstrap 95% (old)" for m in ACCURACY)
    lines = [
        "# Paired comparisons with uniform, restated with the paired Student-t interval",
        "",
        "Written by `bench/restate.py` from every committed `bench/results/*/runs.jsonl` (and the top-level",
        "`bench/results/runs.jsonl`, as `(top level)`), with `trace_rl.bench.summary.paired_vs_uniform`. Each",
        "row: a variant against `uniform` on the seeds both ran (same seed, same start); the mean per-seed",
        "difference variant - uniform, its paired Student-t 95% interval mean ± t_{0.975, n-1} · sd / √n,",
        "the two-sided t test's p-value, and the percentile bootstrap 95% interval reported until now",
        "(secondary: with 5 seeds it covers the true difference only about 83% of the time). Composite EM",
        "= (dev EM + test EM) / 2, the primary endpoint. mde: the smallest true composite difference these",
        "seeds detect at 5% two-sided with 80% power (noncentral t). Verdict: adopt if the composite's t",
        "interval lies above 0, does not pay off if its upper bound is below +0.010, inconclusive otherwise.",
        "With 1 seed no t interval exists (`-`); the bootstrap interval then is the single difference.",
        "",
        f"The recomputed bootstrap intervals equal those in the folders' committed `summary.json` in "
        f"{matched} of {compared} comparisons (to 0.0005).",
        "",
        f"| folder | regime / variant | n | {head} | composite mde | verdict |",
        "|---" * 14 + "|",
        *rows_md,
        "",
        '## Earlier readings "the interval excludes 0" (bootstrap) under the t interval',
        "",
        "### Accuracy (composite, dev, test EM): kept (the t interval excludes 0 on the same side)",
        "",
        *measures(kept, ACCURACY),
        "",
        "### Accuracy: lost (the t interval covers 0, or does not exist with 1 seed)",
        "",
        *measures(lost, ACCURACY),
        "",
        "### Effective ratio (a) and non-zero advantage (b): kept",
        "",
        *measures(kept, RATES),
        "",
        "### (a) and (b): lost",
        "",
        *measures(lost, RATES),
    ]
    if gained:
        lines += ["", "### The t interval excludes 0 where the bootstrap did not", "", *[f"- {g}" for g in gained]]
    if unpaired:
        lines += ["", f"Folders with no `uniform` run to pair with: {', '.join(unpaired)}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    OUT.write_text(restate())
    print(f"written to {OUT}")


if __name__ == "__main__":
    main()
