"""Shared fixtures: a small synthetic task, its retriever and a tiny randomly initialised policy; the rollout
store on SQLite and PostgreSQL; a Prefect test server and a warm-started tiny workspace."""

from __future__ import annotations

import os
import uuid

import pytest
import torch
from prefect.logging.configuration import setup_logging
from sqlalchemy import create_engine, text

import trace_rl  # noqa: F401  (Prefect's defaults: no analytics, quiet task-run logs)
from tests.helpers import PG_ENV, write_settings
from trace_core.models.default_model import TinyModelSpec, build_model, train_tokenizer
from trace_core.search_agent.agent import AgentConfig, SearchEnv, information
from trace_core.search_agent.expert import expert_turns
from trace_core.search_agent.retrieval import BM25Retriever, format_passages
from trace_core.search_agent.synthetic_qa import SyntheticTask, SyntheticTaskSpec, generate_task
from trace_rl.store.db import parse_url
from trace_rl.store.store import RolloutStore

# Prefect's console handler keeps the stream it first sees; configure it now, at collection, so it
# never holds a test's captured (and later closed) stderr
setup_logging()

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


# -- the rollout store: SQLite, and PostgreSQL when TRACE_TEST_POSTGRES_URL is set ----------------------
# Each PostgreSQL test gets its own schema (dropped afterwards), so tests never see each other's rows.
# If the variable is set but the server cannot be reached, the PostgreSQL tests fail: CI sets it.


def _pg_schema_url(base: str, schema: str) -> str:
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'rollouts.db'}"
        return
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"{PG_ENV} is not set")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(parse_url(base))
    with admin.begin() as conn:  # fails (not skips) when the server is unreachable
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield _pg_schema_url(base, schema)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture()
def store(db_url):
    s = RolloutStore(db_url)
    yield s
    s.close()


# -- the pipeline: one Prefect test server, one tiny task and model for the session --------------------


@pytest.fixture(scope="session")
def prefect_api():
    """A temporary Prefect server for the session; yields its API URL for subprocesses."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        temporary_settings({PREFECT_SERVER_ANALYTICS_ENABLED: False}),
        prefect_test_harness(server_startup_timeout=120),
    ):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    """The tiny task and a tiny warm-started model, built once."""
    from trace_rl.config.settings import SETTINGS_FILE_ENV, load_settings
    from trace_rl.flows.pipeline import load_runtime

    root = tmp_path_factory.mktemp("workspace")
    settings_file = write_settings(root / "settings.toml", root, root / "runs")
    previous = os.environ.get(SETTINGS_FILE_ENV)
    os.environ[SETTINGS_FILE_ENV] = str(settings_file)
    try:
        load_runtime(load_settings(), lambda _: None)
    finally:
        if previous is None:
            del os.environ[SETTINGS_FILE_ENV]
        else:
            os.environ[SETTINGS_FILE_ENV] = previous
    return root
