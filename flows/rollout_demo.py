"""The main job until training lands: build everything, then sample one batch of rollout trees.

Writes the trees to `<output_dir>/<run>/rollouts.jsonl` (one tree per line, nodes with their
tokens, text, observation and reward) and returns a summary of the batch.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict
from typing import Any

from flows.pipeline import Log, load_runtime
from flows.settings import Settings
from trace_core.rollout import rollout_batch


def run_rollout_batch(s: Settings, log: Log) -> dict[str, Any]:
    start = time.perf_counter()
    rt = load_runtime(s, log)
    prompts = random.Random(s.run.seed).sample(rt.data.train, min(s.rollout.prompts, len(rt.data.train)))
    log(f"rolling out {len(prompts)} prompts x {s.rollout.n} with {rt.model_dir}")
    gen_start = rt.backend.stats.seconds
    trees = rollout_batch(prompts, s.rollout.n, rt.backend, rt.env, rt.env.config.sampling())
    gen_seconds = rt.backend.stats.seconds - gen_start
    run_dir = s.run.output_dir / s.run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / "rollouts.jsonl"
    with out.open("w") as handle:
        for tree in trees:
            handle.write(json.dumps({"question": asdict(tree.record), "nodes": [asdict(n) for n in tree]}) + "\n")
    leaves = [leaf for tree in trees for leaf in tree.leaves()]
    tokens = sum(n.generated_tokens for tree in trees for n in tree)
    return {
        "prompts": len(trees),
        "rollouts": len(leaves),
        "success rate": sum(leaf.reward or 0.0 for leaf in leaves) / len(leaves),
        "mixed prompts (effective ratio)": sum(t.is_mixed() for t in trees) / len(trees),
        "mean turns per rollout": sum(leaf.depth for leaf in leaves) / len(leaves),
        "generated tokens": tokens,
        "generation tokens/s": tokens / gen_seconds if gen_seconds else 0.0,
        "wall time (s)": time.perf_counter() - start,
        "trees written to": str(out),
    }
