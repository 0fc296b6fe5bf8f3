"""Branching a BFCL episode at a turn prefix: replay from the initial state against a deep copy of
the live state, on every ground-truth prefix of the four multi-turn subsets.

For each episode, the ground truth is written as the policy's steps (`env.expert_steps`: one call
per step) and its calls are executed one by one on a live state; after call k the state is
(a) replayed from `initial_config` with the calls read anew from the texts of steps 1..k (as the
environment rebuilds a node's state from its path: never the live state's call objects, which an
API may have changed) and (b) deep-copied from the live state; both are compared with the live
state by digest. Reports agreement counts, median / p95 / max times and the machine's load average
at the start and the end (times from a busy machine are not comparable with an idle one's).

    python bench/fc_branching.py --out bench/results/fc_branching.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

from trace_core.function_calling.apis import ScenarioState, replay
from trace_core.function_calling.data import SUBSETS, bfcl_data_dir, load_subset
from trace_core.function_calling.env import expert_steps, follow


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median_ms": round(1000 * statistics.median(ordered), 3),
        "p95_ms": round(1000 * ordered[int(0.95 * (len(ordered) - 1))], 3),
        "max_ms": round(1000 * ordered[-1], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("bench/results/fc_branching.json"))
    args = parser.parse_args()
    replay_s: list[float] = []
    copy_s: list[float] = []
    same_replay = same_copy = prefixes = 0
    load_start = round(os.getloadavg()[0], 2)
    for subset in SUBSETS:
        for record in load_subset(bfcl_data_dir(), subset):
            texts = expert_steps(record)
            live = ScenarioState(record.config(), record.classes, record.long_context)
            for k, text in enumerate(texts):
                if not text.startswith("<call>"):
                    continue
                for call in follow(record, texts[k : k + 1]).calls():
                    live.execute(call)
                start = time.perf_counter()
                calls = follow(record, texts[: k + 1]).calls()  # read from the texts, as a node's path
                replayed, _ = replay(record.config(), record.classes, calls, record.long_context)
                replay_s.append(time.perf_counter() - start)
                start = time.perf_counter()
                copied = copy.deepcopy(live)
                copy_s.append(time.perf_counter() - start)
                prefixes += 1
                same_replay += replayed.digest() == live.digest()
                same_copy += copied.digest() == live.digest()
    result = {
        "command": "python bench/fc_branching.py",
        "prefixes": prefixes,
        "replay_equals_live": same_replay,
        "copy_equals_live": same_copy,
        "replay": _ms(replay_s),
        "deepcopy": _ms(copy_s),
        "load_average_1min": {"start": load_start, "end": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
