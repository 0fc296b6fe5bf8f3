"""Turn generation with a Hugging Face causal LM, reusing prefix keys/values across siblings and turns.

Computes, for each request (a prefix of token ids and a count n), n sampled continuations of one
turn with their per-token log-probabilities, in one padded batch over all requests:

1. Prefix reuse across turns. After a turn, the keys/values of `prefix + turn[:-1]` are kept in an
   LRU `PrefixKVCache` (`prefix_cache.py`) keyed by the exact token ids. The next turn's prefix
   (that plus the last turn token plus the observation) finds it and only its new suffix is run
   through the model.
   Without this, every turn would re-encode the whole context, which dominated generation time on
   CPU (a turn writes a few tokens against a context many times longer).
2. Siblings share their prefix. The prefix of a request is encoded once, in one batch row; its
   keys/values are then repeated n times and the n siblings decode side by side.
3. Rows of different lengths share one batch. Cached states and new suffixes are left-padded
   separately, so a row reads `[pad][cached][pad][suffix][generated...]`; a 4-D additive attention
   mask hides the pads (a pad query attends to itself only, so no softmax row is empty) and
   explicit position ids keep the rotary positions of every real token exact.

Log-probabilities are those of the model's own distribution (temperature 1, no top-p), which is
what the policy-gradient loss needs; the sampling transform only decides which token is drawn.
A turn ends at an end-of-sequence token or a stop string (`stopping.py`), or at the length limit.

Deviations: models with sliding-window or recurrent layers are refused (their caches cannot be
padded this way); they can run through the vLLM backend instead.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase
from transformers.generation.logits_process import TopPLogitsWarper

from trace_core.generation.backend import (
    BACKENDS,
    BackendSpec,
    BackendStats,
    Completion,
    FinishReason,
    GenerationRequest,
    SamplingParams,
)
from trace_core.generation.batching import at_least_fp32
from trace_core.generation.prefix_cache import KV, PrefixKVCache
from trace_core.generation.prefix_cache import prefix_hashes as prefix_hashes  # re-exported
from trace_core.generation.stopping import TurnEnd, eos_ids


@dataclass
class _Row:
    """One prefill row: a prefix, the part of it already cached, and how many siblings it feeds."""

    request: int
    prefix: tuple[int, ...]
    cached_len: int
    cached_kv: KV | None
    copies: int


_Finished = tuple[int, FinishReason, str | None]  # (row, finish reason, stop string)


@dataclass
class _Decoding:
    """The sequences of a chunk still being decoded, one entry per batch row."""

    owners: list[int]  # the request each row samples for
    slots: list[int]  # its index among that request's siblings
    prefixes: list[tuple[int, ...]]
    tokens: list[list[int]]  # sampled so far
    logps: list[list[float]]
    valid: torch.Tensor  # (rows, columns) bool: True where the column holds a real token
    lengths: torch.Tensor  # (rows,) position of the next token


class TransformersBackend:
    """Generation backend over a transformers (optionally peft-wrapped) causal LM.

    model: the policy; generation runs under `torch.inference_mode()` in eval mode and restores the
        model's training flag afterwards, so the trainer can share the same object.
    share_prefix: encode a request's prefix once for its n siblings (False encodes it n times; kept
        for measuring what sharing saves).
    reuse_kv: keep prefix states across calls (see `PrefixKVCache`); call `reset_cache` whenever the
        weights change, or the cached states would belong to the old policy.
    max_batch_sequences: most sequences decoded side by side; larger requests lists are chunked.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        seed: int = 0,
        share_prefix: bool = True,
        reuse_kv: bool = True,
        kv_cache_bytes: int = 512 * 2**20,
        max_batch_sequences: int = 256,
    ) -> None:
        config = model.config.get_text_config(decoder=True)
        layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
        if layer_types != {"full_attention"} or getattr(config, "use_sliding_window", False):
            raise ValueError(
                f"the transformers backend supports full-attention models only; "
                f"{type(model).__name__} has layer types {sorted(layer_types)}"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.share_prefix = share_prefix
        self.reuse_kv = reuse_kv
        self.max_batch_sequences = max_batch_sequences
        self.cache = PrefixKVCache(kv_cache_bytes)
        self.stats = BackendStats()
        self.device = next(model.parameters()).device
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.eos_ids = eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._turn_end = TurnEnd(tokenizer, self.eos_ids)

    def reset_cache(self) -> None:
        self.cache.clear()

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def sync_weights(self, model: PreTrainedModel) -> None:
        """Sample from `model` from now on; cached prefix states of the old weights are dropped."""
        self.model = model
        self.reset_cache()

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[list[Completion]]:
        start = time.perf_counter()
        results: list[list[Completion]] = [[] for _ in requests]
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for chunk in self._chunks(requests):
                    self._generate_chunk(requests, chunk, params, results)
        finally:
            self.model.train(was_training)
        self.stats.requests += len(requests)
        self.stats.seconds += time.perf_counter() - start
        return results

    # -- batching ---------------------------------------------------------------------------------

    def _chunks(self, requests: Sequence[GenerationRequest]) -> list[list[int]]:
        chunks: list[list[int]] = [[]]
        size = 0
        for i, req in enumerate(requests):
            if chunks[-1] and size + req.n > self.max_batch_sequences:
                chunks.append([])
                size = 0
            chunks[-1].append(i)
            size += req.n
        return [c for c in chunks if c]

    def _rows(self, requests: Sequence[GenerationRequest], chunk: list[int]) -> list[_Row]:
        rows: list[_Row] = []
        for i in chunk:
            prefix = requests[i].prefix_ids
            # at least the last prefix token must run through the model to give next-token logits
            cached_len, kv = self.cache.lookup(prefix, len(prefix) - 1) if self.reuse_kv else (0, None)
            copies = [requests[i].n] if self.share_prefix else [1] * requests[i].n
            rows.extend(_Row(i, prefix, cached_len, kv, c) for c in copies)
        return rows

    def _prefill(self, rows: list[_Row]) -> tuple[DynamicCache, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run every row's uncached suffix; returns (cache, last logits, valid mask, lengths).

        valid: (rows, cached_max + suffix_max) bool, True where the column holds a real token.
        """
        dev = self.device
        n_rows = len(rows)
        l_max = max(r.cached_len for r in rows)
        suffixes = [r.prefix[r.cached_len :] for r in rows]
        s_max = max(len(s) for s in suffixes)
        input_ids = torch.full((n_rows, s_max), self.pad_id, dtype=torch.long)
        positions = torch.zeros((n_rows, s_max), dtype=torch.long)
        valid = torch.zeros((n_rows, l_max + s_max), dtype=torch.bool)
        for b, (row, suffix) in enumerate(zip(rows, suffixes, strict=True)):
            s = len(suffix)
            input_ids[b, s_max - s :] = torch.tensor(suffix, dtype=torch.long)
            positions[b, s_max - s :] = torch.arange(row.cached_len, row.cached_len + s)
            valid[b, l_max - row.cached_len : l_max] = True
            valid[b, l_max + s_max - s :] = True
        cache = DynamicCache(config=self.model.config)
        if l_max > 0:
            cache = DynamicCache(ddp_cache_data=self._stack_cached(rows, l_max), config=self.model.config)
        q = torch.arange(s_max)[:, None]
        k = torch.arange(l_max + s_max)[None, :]
        allowed = valid[:, None, :] & (k <= l_max + q)[None]
        allowed |= (k == l_max + q)[None]  # a pad query sees itself, so no attention row is empty
        valid, input_ids, positions = valid.to(dev), input_ids.to(dev), positions.to(dev)
        out = self.model(
            input_ids=input_ids,
            attention_mask=self._additive(allowed.to(dev)[:, None]),
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        lengths = torch.tensor([len(r.prefix) for r in rows], device=dev)
        self.stats.prefill_tokens += sum(len(s) for s in suffixes)
        self.stats.reused_tokens += sum(r.cached_len for r in rows)
        return out.past_key_values, out.logits[:, -1, :], valid, lengths

    def _stack_cached(self, rows: list[_Row], l_max: int) -> KV:
        """Left-pad each row's cached states to l_max: per layer (rows, heads, l_max, head_dim)."""
        template = next(r.cached_kv for r in rows if r.cached_kv is not None)
        stacked = []
        for layer, (k0, v0) in enumerate(template):
            keys = k0.new_zeros((len(rows), k0.shape[0], l_max, k0.shape[2]))
            values = v0.new_zeros((len(rows), v0.shape[0], l_max, v0.shape[2]))
            for b, row in enumerate(rows):
                if row.cached_kv is not None:
                    keys[b, :, l_max - row.cached_len :] = row.cached_kv[layer][0]
                    values[b, :, l_max - row.cached_len :] = row.cached_kv[layer][1]
            stacked.append((keys, values))
        return stacked

    def _additive(self, allowed: torch.Tensor) -> torch.Tensor:
        dtype = self.model.dtype
        zero = torch.zeros((), dtype=dtype, device=allowed.device)
        return torch.where(allowed, zero, torch.finfo(dtype).min)

    # -- decoding ---------------------------------------------------------------------------------

    def _generate_chunk(
        self,
        requests: Sequence[GenerationRequest],
        chunk: list[int],
        params: SamplingParams,
        results: list[list[Completion]],
    ) -> None:
        rows = self._rows(requests, chunk)
        cache, logits, valid, lengths = self._prefill(rows)
        state, logits = self._expand_siblings(rows, cache, logits, valid, lengths)
        slotted: dict[int, list[Completion | None]] = {i: [None] * requests[i].n for i in chunk}
        max_pos = getattr(self.model.config.get_text_config(decoder=True), "max_position_embeddings", None)
        for step in range(params.max_new_tokens):
            next_ids, next_logps = self._sample(logits, params)
            at_limit = step == params.max_new_tokens - 1
            finished = self._append_sampled(state, next_ids, next_logps, params, at_limit, max_pos)
            self._store_finished(state, finished, slotted, cache)
            if len(finished) == len(state.owners):
                break
            if finished:
                next_ids = self._drop_rows(state, {b for b, _, _ in finished}, cache, next_ids)
            logits = self._decode_step(state, cache, next_ids)
        for i in chunk:
            results[i] = [c for c in slotted[i] if c is not None]

    def _expand_siblings(
        self, rows: list[_Row], cache: DynamicCache, logits: torch.Tensor, valid: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[_Decoding, torch.Tensor]:
        """Repeat every prefill row (and its cache) once per sibling; returns (the decoding state, its logits)."""
        expand = torch.repeat_interleave(
            torch.arange(len(rows), device=self.device),
            torch.tensor([r.copies for r in rows], device=self.device),
        )
        cache.reorder_cache(cast(torch.LongTensor, expand))
        picked = expand.tolist()
        owners = [rows[i].request for i in picked]
        state = _Decoding(
            owners=owners,
            slots=_sibling_slots(owners),
            prefixes=[rows[i].prefix for i in picked],
            tokens=[[] for _ in owners],
            logps=[[] for _ in owners],
            valid=valid[expand],
            lengths=lengths[expand],
        )
        return state, logits[expand]

    def _append_sampled(
        self,
        state: _Decoding,
        next_ids: torch.Tensor,
        next_logps: torch.Tensor,
        params: SamplingParams,
        at_limit: bool,
        max_pos: int | None,
    ) -> list[_Finished]:
        """Append each row's sampled token; returns (row, finish reason, stop string) of the rows done."""
        finished: list[_Finished] = []
        for b, (tok, lp) in enumerate(zip(next_ids.tolist(), next_logps.tolist(), strict=True)):
            tokens = state.tokens[b]
            tokens.append(tok)
            state.logps[b].append(lp)
            reason, stop = self._turn_end(tokens, params)
            if reason is None and (at_limit or (max_pos and len(state.prefixes[b]) + len(tokens) >= max_pos)):
                reason = "length"
            if reason is not None:
                finished.append((b, reason, stop))
        return finished

    def _store_finished(
        self,
        state: _Decoding,
        finished: list[_Finished],
        slotted: dict[int, list[Completion | None]],
        cache: DynamicCache,
    ) -> None:
        """Put each finished row's completion in its request's sibling slot and keep its states."""
        for b, reason, stop in finished:
            tokens = state.tokens[b]
            slotted[state.owners[b]][state.slots[b]] = Completion(tuple(tokens), tuple(state.logps[b]), reason, stop)
            self.stats.generated_tokens += len(tokens)
            self.stats.sequences += 1
            if self.reuse_kv:
                self._remember(cache, state.valid, b, state.prefixes[b] + tuple(tokens[:-1]))

    def _drop_rows(self, state: _Decoding, done: set[int], cache: DynamicCache, next_ids: torch.Tensor) -> torch.Tensor:
        """Remove the rows in `done` from the state and the cache; returns the kept rows' next_ids."""
        kept = [b for b in range(len(state.owners)) if b not in done]
        keep = torch.tensor(kept, device=self.device)
        cache.reorder_cache(cast(torch.LongTensor, keep))
        state.valid, state.lengths = state.valid[keep], state.lengths[keep]
        state.owners = [state.owners[b] for b in kept]
        state.slots = [state.slots[b] for b in kept]
        state.prefixes = [state.prefixes[b] for b in kept]
        state.tokens = [state.tokens[b] for b in kept]
        state.logps = [state.logps[b] for b in kept]
        return next_ids[keep]

    def _decode_step(self, state: _Decoding, cache: DynamicCache, next_ids: torch.Tensor) -> torch.Tensor:
        """Run each row's sampled token through the model; returns the logits of the next token."""
        state.valid = torch.cat([state.valid, state.valid.new_ones((state.valid.shape[0], 1))], dim=1)
        out = self.model(
            input_ids=next_ids[:, None],
            attention_mask=self._additive(state.valid[:, None, None, :]),
            position_ids=state.lengths[:, None],
            past_key_values=cache,
            use_cache=True,
        )
        state.lengths = state.lengths + 1
        return out.logits[:, -1, :]

    def _sample(self, logits: torch.Tensor, params: SamplingParams) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw one token per row; returns (ids, their log-probs at temperature 1), each (rows,)."""
        logits = at_least_fp32(logits)
        logp = torch.log_softmax(logits, dim=-1)
        if params.temperature == 0:
            ids = torch.argmax(logits, dim=-1)
        else:
            scores = logits / params.temperature
            if params.top_p < 1.0:  # transformers' nucleus filter: the smallest set holding top_p of the mass
                scores = TopPLogitsWarper(params.top_p)(None, scores)  # type: ignore[arg-type]
            probs = torch.softmax(scores, dim=-1)
            ids = torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)
        return ids, logp.gather(-1, ids[:, None]).squeeze(-1)

    def _remember(self, cache: DynamicCache, valid: torch.Tensor, row: int, ids: tuple[int, ...]) -> None:
        cols = valid[row].nonzero().squeeze(-1)
        kv = []
        for layer in cache.layers:  # full-attention layers only (checked in __init__)
            keys: torch.Tensor = layer.keys  # type: ignore[union-attr,assignment]
            values: torch.Tensor = layer.values  # type: ignore[union-attr,assignment]
            kv.append((keys[row].index_select(1, cols).clone(), values[row].index_select(1, cols).clone()))
        if kv[0][0].shape[1] != len(ids):
            raise AssertionError(f"cached {kv[0][0].shape[1]} positions for {len(ids)} tokens")
        self.cache.put(ids, kv)


def _sibling_slots(owners: list[int]) -> list[int]:
    """Index of each expanded row among the rows of the same request, in order."""
    seen: dict[int, int] = {}
    slots = []
    for owner in owners:
        slots.append(seen.get(owner, 0))
        seen[owner] = slots[-1] + 1
    return slots


@BACKENDS.register("transformers")
def _transformers_backend(spec: BackendSpec) -> TransformersBackend:
    return TransformersBackend(
        spec.model,
        spec.tokenizer,
        seed=spec.seed,
        share_prefix=spec.share_prefix,
        kv_cache_bytes=spec.kv_cache_bytes,
        max_batch_sequences=spec.max_batch_sequences,
    )
