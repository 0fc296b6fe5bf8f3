"""Benchmark: the default policy's sampled success and rollout throughput on this machine.

Run after `trace-rl prepare` (or `make run`):  .venv/bin/python bench/rollout.py
Writes bench/results/rollout.json and prints a table. Quoted figures are medians of `--repeats`
runs made in one process, so they are comparable with each other but not across machines.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from trace_core.generation.hf_backend import TransformersBackend
from trace_core.method.evaluation import evaluate_policy
from trace_core.method.rollout import rollout_batch
from trace_core.models.default_model import count_parameters
from trace_core.search_agent.reward import answer_f1
from trace_rl.config.settings import load_settings
from trace_rl.flows.pipeline import load_runtime

VARIANTS = {
    "shared prefix + kv reuse across turns": {"share_prefix": True, "reuse_kv": True},
    "kv reuse across turns, prefix per sibling": {"share_prefix": False, "reuse_kv": True},
    "no reuse (whole context every turn)": {"share_prefix": False, "reuse_kv": False},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--questions", type=int, default=100, help="questions per split for the success figures")
    parser.add_argument("--samples", type=int, default=8, help="samples per question")
    parser.add_argument("--prompts", type=int, default=32, help="prompts per throughput batch")
    parser.add_argument("--n", type=int, default=8, help="rollouts per prompt in a throughput batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/rollout.json"))
    args = parser.parse_args()

    s = load_settings()
    rt = load_runtime(s, print)
    build = json.loads((rt.model_dir / "build.json").read_text())
    result: dict = {
        "command": "python bench/rollout.py " + " ".join(sys.argv[1:]),
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "model": {
            "dir": str(rt.model_dir),
            "parameters": count_parameters(rt.model),
            "warmstart_seconds": build.get("seconds"),
            "warmstart_chosen": build.get("chosen"),
        },
        "success_at_temperature_1": {},
        "throughput": {},
    }
    for split in ("train", "dev"):
        records = getattr(rt.data, split)[: args.questions]
        report = evaluate_policy(records, rt.backend, rt.env, n=args.samples, temperature=1.0, f1=answer_f1)
        result["success_at_temperature_1"][split] = {
            "questions": len(records),
            "samples": args.samples,
            "em": report.em,
            "f1": report.f1,
            **report.histogram(),
        }
    prompts = random.Random(0).sample(rt.data.train, args.prompts)
    params = rt.env.config.sampling()
    for name, flags in VARIANTS.items():
        rates = []
        for repeat in range(args.repeats):
            backend = TransformersBackend(rt.model, rt.env.tokenizer, seed=repeat, **flags)
            start = time.perf_counter()
            trees = rollout_batch(prompts, args.n, backend, rt.env, params)
            seconds = time.perf_counter() - start
            tokens = sum(node.generated_tokens for tree in trees for node in tree)
            rates.append(
                {
                    "tokens_per_s": tokens / seconds,
                    "prefill_tokens": backend.stats.prefill_tokens,
                    "generated_tokens": tokens,
                    "seconds": seconds,
                }
            )
        result["throughput"][name] = {
            "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in rates),
            "median_prefill_tokens": statistics.median(r["prefill_tokens"] for r in rates),
            "runs": rates,
        }
    base = result["throughput"]["no reuse (whole context every turn)"]["median_tokens_per_s"]
    for entry in result["throughput"].values():
        entry["speedup_vs_no_reuse"] = entry["median_tokens_per_s"] / base
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "throughput"}, indent=2))
    for name, entry in result["throughput"].items():
        print(
            f"{name:45s} {entry['median_tokens_per_s']:8.0f} tok/s  x{entry['speedup_vs_no_reuse']:.2f}  "
            f"prefill {entry['median_prefill_tokens']:.0f} tokens"
        )


if __name__ == "__main__":
    main()
