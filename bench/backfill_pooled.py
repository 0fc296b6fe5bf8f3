"""Add root_auc_pooled / root_ece_pooled (iterations >= 5) to a bench's runs.jsonl from its rollout
database, for runs finished before trace_rl/bench/runner.py recorded them (the same `pooled_quality`).

    PYTHONPATH=. python bench/backfill_pooled.py <bench folder>
"""

import json
import sys
from pathlib import Path

from trace_core.method.predictor import pooled_quality
from trace_rl.bench.runner import root_outcomes, variant_slug
from trace_rl.store.store import RolloutStore

out = Path(sys.argv[1])
store = RolloutStore(f"sqlite:///{out / 'runs' / 'rollouts.db'}", create=False, read_only=True)
rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
for row in rows:
    q = pooled_quality(root_outcomes(store, f"bench-{row['regime']}-{variant_slug(row['allocator'])}-s{row['seed']}"))
    row["root_auc_pooled"], row["root_ece_pooled"] = q.auc, q.ece
(out / "runs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
