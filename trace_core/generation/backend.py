"""The generation-backend interface: sample n continuations of one turn from a prefix of token ids.

A backend receives prefixes as token ids (never text, so a branch continues from exactly the tokens
its prefix holds) and returns, per continuation, the generated token ids, their log-probabilities
under the policy (temperature 1, before any sampling transform) and why generation stopped.
Generation stops at the first stop string (the closing `</search>` or `</answer>` tag), at the
end-of-sequence token, or after `max_new_tokens`.

Backends are registered by name in `BACKENDS` as factories taking one `BackendSpec` (everything a
backend may need; each uses what it needs) and built only through `make_backend`; the transformers
one lives in `hf_backend.py`, the vLLM one in `vllm_backend.py`.

Deviations: none from the usual interface of vLLM's `generate` (prompt token ids in, n samples out).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from trace_core.registry import Registry

FinishReason = Literal["stop", "eos", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one turn.

    temperature: 0 means greedy decoding; otherwise logits are divided by it before sampling.
    top_p: nucleus sampling mass in (0, 1]; 1 disables it.
    max_new_tokens: the turn's token limit.
    stop: strings that end the turn; the tokens that complete one are kept in the output.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass(frozen=True)
class GenerationRequest:
    """n continuations of the prefix `prefix_ids` (the full context so far, prompt included)."""

    prefix_ids: tuple[int, ...]
    n: int = 1

    def __post_init__(self) -> None:
        if not self.prefix_ids:
            raise ValueError("a generation request needs a non-empty prefix")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")


@dataclass(frozen=True)
class Completion:
    """One sampled turn.

    token_ids: generated ids, the stop string's tokens included.
    logprobs: log-probability of each generated id under the model at temperature 1, same length.
    finish_reason: "stop" (a stop string), "eos" (end-of-sequence token) or "length" (token limit).
    stop: the stop string that ended the turn, when finish_reason is "stop".
    """

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: FinishReason
    stop: str | None = None


@dataclass
class BackendStats:
    """Counters a backend accumulates; read them to report throughput and cache reuse."""

    requests: int = 0
    sequences: int = 0
    prefill_tokens: int = 0  # prefix tokens actually run through the model
    reused_tokens: int = 0  # prefix tokens whose keys/values came from the cache
    generated_tokens: int = 0
    seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0

    def prefix_counts(self) -> tuple[int, int]:
        """(reused, prefilled) prefix tokens so far; pass to `prefix_hit_rate_since` later."""
        return self.reused_tokens, self.prefill_tokens

    def prefix_hit_rate_since(self, earlier: tuple[int, int]) -> float | None:
        """Share of the prefix tokens handled since `earlier` whose keys/values came from the cache
        (None when no prefix was handled here, e.g. when the work ran in other processes)."""
        reused, prefilled = self.reused_tokens - earlier[0], self.prefill_tokens - earlier[1]
        return reused / (reused + prefilled) if reused + prefilled > 0 else None


class GenerationBackend(Protocol):
    """What every backend offers. `generate` returns, per request, its n completions in order."""

    stats: BackendStats

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[list[Completion]]: ...

    def reset_cache(self) -> None:
        """Forget cached prefix states."""
        ...

    def reseed(self, seed: int) -> None:
        """Restart the sampling random stream, so a stage can be replayed exactly."""
        ...

    def sync_weights(self, model: Any) -> None:
        """Make every later generation sample from `model`'s current weights (call after each
        policy update): the transformers backend adopts the object, others load its adapter."""
        ...


@dataclass(frozen=True)
class BackendSpec:
    """What a backend factory is given. model: the policy (a transformers model; an in-process
    backend samples from it). model_dir: the directory of its base weights (a backend with its own
    engine loads them from there; None when the model was never written). kv_cache_bytes: memory
    for cached prefix keys and values. max_batch_sequences: most sequences decoded side by side.
    max_lora_rank: the largest adapter `sync_weights` may bring. dtype / device: the weights' dtype
    name and the torch device the policy lives on."""

    model: Any
    tokenizer: Any
    seed: int = 0
    model_dir: Path | None = None
    share_prefix: bool = True
    kv_cache_bytes: int = 512 * 2**20
    max_batch_sequences: int = 256
    max_lora_rank: int = 16
    dtype: str = "float32"
    device: str = "cpu"


BackendFactory = Callable[[BackendSpec], GenerationBackend]
BACKENDS: Registry[BackendFactory] = Registry("generation backend")
BACKENDS.declare("transformers", "trace_core.generation.hf_backend")
BACKENDS.declare("vllm", "trace_core.generation.vllm_backend")


def make_backend(name: str, spec: BackendSpec) -> GenerationBackend:
    """The backend registered as `name`, built from `spec`; an unknown name lists the valid ones."""
    return BACKENDS.get(name)(spec)
