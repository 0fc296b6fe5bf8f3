import torch

from trace_core.generation.backend import GenerationRequest, SamplingParams
from trace_core.generation.batching import token_logprobs
from trace_core.generation.hf_backend import PrefixKVCache, TransformersBackend, prefix_hashes
from trace_core.method.rollout import Expansion, grow, rollout_batch


def test_greedy_continuation_from_a_stored_prefix_gives_the_tokens_of_the_whole_rollout(
    model, tokenizer, env, small_task
):
    records = small_task.splits["train"][:4]
    greedy = env.config.sampling(temperature=0.0)
    trees = rollout_batch(records, 1, TransformersBackend(model, tokenizer), env, greedy)
    anchors = []
    for i, tree in enumerate(trees):
        path = tree.path(tree.leaves()[0].node_id)
        assert len(path) >= 3, "the fixture's episodes should last at least two turns"
        anchors.append((i, path))
    fresh = TransformersBackend(model, tokenizer, reuse_kv=False)
    grow(trees, [Expansion(i, path[1].node_id, 1) for i, path in anchors], fresh, env, greedy, "stage2")
    for i, path in anchors:
        branch = trees[i].path(next(n for n in trees[i].leaves() if n.origin == "stage2").node_id)
        assert [n.model_ids for n in branch] == [n.model_ids for n in path]


def test_logprobs_of_padded_cached_batches_equal_a_plain_forward_pass(model, tokenizer, env, small_task):
    backend = TransformersBackend(model, tokenizer, seed=1)
    prompts = [env.prompt_ids(r) for r in small_task.splits["train"][:3]]
    first = backend.generate([GenerationRequest(p, 2) for p in prompts], SamplingParams(1.0, 1.0, 6))
    # second round: prefixes of different lengths, partly cached, plus one uncached prompt
    follow = [
        GenerationRequest(prompts[0] + first[0][0].token_ids + (5, 6, 7), 3),
        GenerationRequest(prompts[1] + first[1][1].token_ids, 1),
        GenerationRequest(prompts[2], 2),
    ]
    second = backend.generate(follow, SamplingParams(1.0, 1.0, 6))
    assert backend.stats.reused_tokens > 0
    for req, completions in zip(follow, second):
        for c in completions:
            ids = torch.tensor([req.prefix_ids + c.token_ids])
            expected = token_logprobs(model, ids, torch.ones_like(ids))[0, len(req.prefix_ids) - 1 :]
            assert torch.allclose(torch.tensor(c.logprobs, dtype=torch.float64), expected, atol=1e-9)


def test_siblings_encode_their_shared_prefix_once(model, tokenizer, env, small_task):
    prefix = env.prompt_ids(small_task.splits["train"][0])
    params = SamplingParams(1.0, 1.0, 4)
    shared = TransformersBackend(model, tokenizer, reuse_kv=False)
    shared.generate([GenerationRequest(prefix, 4)], params)
    unshared = TransformersBackend(model, tokenizer, share_prefix=False, reuse_kv=False)
    unshared.generate([GenerationRequest(prefix, 4)], params)
    assert shared.stats.prefill_tokens == len(prefix)
    assert unshared.stats.prefill_tokens == 4 * len(prefix)


def test_the_next_turn_runs_only_its_new_tokens_through_the_model(model, tokenizer, env, small_task):
    backend = TransformersBackend(model, tokenizer)
    prefix = env.prompt_ids(small_task.splits["train"][0])
    [[turn]] = backend.generate([GenerationRequest(prefix, 1)], SamplingParams(0.0, 1.0, 5))
    observation = env.encode("\n<information>Doc 1(Title: X) y</information>\n")
    before = backend.stats.prefill_tokens
    backend.generate([GenerationRequest(prefix + turn.token_ids + observation, 1)], SamplingParams(0.0, 1.0, 5))
    # the last turn token was sampled but never fed, so it runs now with the observation
    assert backend.stats.prefill_tokens - before == 1 + len(observation)


def test_a_turn_stops_at_the_first_stop_string_and_keeps_it(model, tokenizer, env, small_task):
    backend = TransformersBackend(model, tokenizer, seed=3)
    prompts = [env.prompt_ids(r) for r in small_task.splits["train"][:4]]
    params = SamplingParams(1.0, 1.0, 10, stop=("e",))  # a common letter, so both outcomes occur
    outcomes = backend.generate([GenerationRequest(p, 4) for p in prompts], params)
    reasons = set()
    for completion in (c for cs in outcomes for c in cs):
        texts = [tokenizer.decode(completion.token_ids[: i + 1]) for i in range(len(completion.token_ids))]
        reasons.add(completion.finish_reason)
        if completion.finish_reason == "stop":
            assert "e" in texts[-1] and all("e" not in t for t in texts[:-1])
        elif completion.finish_reason == "length":
            assert len(completion.token_ids) == 10 and "e" not in texts[-1]
    assert {"stop", "length"} <= reasons


def test_the_same_seed_samples_the_same_continuations(model, tokenizer, env, small_task):
    prefix = env.prompt_ids(small_task.splits["train"][0])
    runs = [
        TransformersBackend(model, tokenizer, seed=7).generate([GenerationRequest(prefix, 3)], SamplingParams())
        for _ in range(2)
    ]
    assert runs[0] == runs[1]


def test_a_vanishing_nucleus_samples_the_greedy_continuation(model, tokenizer, env, small_task):
    prefix = env.prompt_ids(small_task.splits["train"][0])
    request = [GenerationRequest(prefix, 3)]
    greedy = TransformersBackend(model, tokenizer, seed=0).generate(request, SamplingParams(0.0, 1.0, 8))
    nucleus = TransformersBackend(model, tokenizer, seed=0).generate(request, SamplingParams(1.0, 1e-6, 8))
    assert [c.token_ids for c in nucleus[0]] == [greedy[0][0].token_ids] * 3


def test_prefix_cache_returns_the_longest_stored_prefix_and_evicts_the_oldest():
    kv = [(torch.zeros(1, 3, 2), torch.zeros(1, 3, 2))]  # 48 bytes per entry
    cache = PrefixKVCache(capacity_bytes=100)
    cache.put((1, 2, 3), kv)
    cache.put((1, 2, 3, 4, 5), kv)
    assert cache.lookup((1, 2, 3, 4, 5, 6), 5)[0] == 5
    assert cache.lookup((1, 2, 3, 9), 3)[0] == 3
    assert cache.lookup((7, 2, 3, 4), 4)[0] == 0
    cache.put((8, 8), kv)  # over capacity: the least recently used entry (1, 2, 3, 4, 5) goes
    assert cache.lookup((1, 2, 3, 4, 5, 6), 5)[0] == 3 and len(cache) == 2


def test_prefix_hashes_agree_with_a_loop_reference():
    ids = [5, 0, 17, 3, 3, 900]
    base, mod = 0x9E3779B97F4A7C15, 2**64
    expected, h = [], 0
    for x in ids:
        h = (h * base + x + 1) % mod
        expected.append(h)
    assert [int(v) for v in prefix_hashes(ids)] == expected
