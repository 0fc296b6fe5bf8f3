"""Shared fixtures: a small synthetic task, its retriever and a tiny randomly initialised policy."""

from __future__ import annotations

import pytest
import torch

from trace_core.models.default_model import TinyModelSpec, build_model, train_tokenizer
from trace_core.search_agent.agent import AgentConfig, SearchEnv, information
from trace_core.search_agent.retrieval import BM25Retriever, format_passages
from trace_core.search_agent.synthetic_qa import SyntheticTask, SyntheticTaskSpec, generate_task
from trace_core.search_agent.warmstart import expert_turns

SMALL_TASK = SyntheticTaskSpec(
    seed=3, n_people=24, n_orgs=8, n_cities=8, n_countries=3, n_train=60, n_dev=10, n_test=10
)


@pytest.fixture(scope="session")
def small_task() -> SyntheticTask:
    return generate_task(SMALL_TASK)


@pytest.fixture(scope="session")
def retriever(small_task: SyntheticTask) -> BM25Retriever:
    return BM25Retriever(small_task.corpus)


@pytest.fixture(scope="session")
def tokenizer(small_task: SyntheticTask, retriever: BM25Retriever):
    texts = [information(format_passages(retriever.search([d.title], 2)[0])) for d in small_task.corpus]
    texts += [r.question for r in small_task.splits["train"]]
    texts += [t for r in small_task.splits["train"] for t in expert_turns(r)]
    return train_tokenizer(texts, 600)


@pytest.fixture(scope="session")
def tiny_spec() -> TinyModelSpec:
    return TinyModelSpec(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, head_dim=32)


@pytest.fixture()
def model(tokenizer, tiny_spec):
    """A random tiny Llama in float64: greedy decoding is then free of near-tie flips."""
    m = build_model(tokenizer, tiny_spec)
    with torch.no_grad():  # peaky logits, so greedy choices are clear-cut
        for p in m.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.15)
    return m.to(torch.float64).eval()


@pytest.fixture()
def env(tokenizer, retriever) -> SearchEnv:
    return SearchEnv(tokenizer, retriever, AgentConfig(max_turns=3, max_tokens_per_turn=12, topk=2))
