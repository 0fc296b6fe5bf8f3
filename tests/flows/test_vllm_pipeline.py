"""backend.name = "vllm" in the product: refused with full fine-tuning, built from the model directory."""

from __future__ import annotations

import importlib.util
import os

import pytest

from tests.helpers import write_settings
from trace_rl.config.settings import SETTINGS_FILE_ENV, SettingsError, load_settings


@pytest.fixture()
def _defaults(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith("TRACE_"):
            monkeypatch.delenv(key)


@pytest.mark.usefixtures("_defaults")
@pytest.mark.parametrize("weights", ["auto", "full"])
def test_vllm_with_full_fine_tuning_is_refused_naming_both_keys(weights):
    with pytest.raises(SettingsError) as err:
        load_settings(["backend.name=vllm", f"policy.weights={weights}"])  # auto: the tiny model trains all weights
    assert "backend.name='vllm'" in str(err.value) and f"policy.weights='{weights}'" in str(err.value)
    assert load_settings(["backend.name=vllm", "policy.weights=lora"]).uses_lora()


@pytest.mark.usefixtures("_defaults")
def test_without_its_model_directory_the_vllm_backend_is_not_built(tokenizer, model):
    from trace_rl.flows.pipeline import make_backend

    s = load_settings(["backend.name=vllm", "policy.weights=lora"])
    with pytest.raises(ValueError, match="model_dir"):
        make_backend(s, model, tokenizer, 0)
    assert type(make_backend(s, model, tokenizer, 0, name="transformers")).__name__ == "TransformersBackend"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_the_runtime_generates_on_vllm_and_follows_the_lora_policy(workspace, monkeypatch, tmp_path):
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from trace_core.generation.vllm_backend import VLLMBackend
    from trace_core.method.loss import PolicyConfig, wrap_policy
    from trace_core.method.rollout import rollout_batch
    from trace_rl.flows.pipeline import load_runtime

    settings_file = write_settings(
        tmp_path / "settings.toml",
        workspace,
        tmp_path / "runs",
        backend={"name": "vllm", "kv_cache_mb": 48},
        policy={"weights": "lora"},
    )
    monkeypatch.setenv(SETTINGS_FILE_ENV, str(settings_file))
    s = load_settings()
    rt = load_runtime(s, lambda _: None)
    assert isinstance(rt.backend, VLLMBackend)
    assert rt.backend.llm.llm_engine.vllm_config.cache_config.kv_cache_memory_bytes == 48 * 2**20
    trees = rollout_batch(rt.data.train[:2], 3, rt.backend, rt.env, rt.env.config.sampling())
    assert all(len(t.leaves()) == 3 for t in trees)
    assert rt.backend.stats.generated_tokens > 0
    rt.backend.sync_weights(wrap_policy(rt.model, PolicyConfig(lora=True, lora_rank=s.policy.lora_rank)))
    assert rt.backend.adapter_version == 1
