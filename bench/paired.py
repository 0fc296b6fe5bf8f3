"""Paired per-seed differences of a bench's variants against any base variant (not only `uniform`):
the bench's own `paired_vs_uniform` with the base's rows standing in for uniform's. The interval
printed is `paired_vs_uniform`'s `ci95` (the paired Student-t 95% interval).

    PYTHONPATH=. python bench/paired.py bench/results/oracle_roots/runs.jsonl trace
"""

import json
import sys

from trace_rl.bench.summary import paired_vs_uniform

rows = [json.loads(line) for line in open(sys.argv[1])]
base = sys.argv[2] if len(sys.argv) > 2 else "uniform"
done = [
    {**r, "allocator": "uniform" if r["allocator"] == base else r["allocator"]}
    for r in rows
    if base == "uniform" or r["allocator"] != "uniform"
]
for name, entry in paired_vs_uniform(done).items():
    print(f"{name} minus {base}, seeds {entry['seeds']}")
    for key in ("composite_em", "effective_ratio", "nonzero_advantage_share", "dev_em", "test_em"):
        e = entry[key]
        p = f"  p {e['p']:.3f}" if "p" in e else ""
        print(f"  {key}: {e['mean']:+.3f} [{e['ci95'][0]:+.3f}, {e['ci95'][1]:+.3f}]{p}  per seed {e['per_seed']}")
