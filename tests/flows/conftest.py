"""Flow fixtures: one Prefect test server and one tiny task + model for the whole session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import tomlkit
from prefect.logging.configuration import setup_logging

import flows  # noqa: F401  (Prefect's defaults: no analytics, quiet task-run logs)

# Prefect's console handler keeps the stream it first sees; configure it now, at collection, so it
# never holds a test's captured (and later closed) stderr
setup_logging()

TINY = {
    "task": {"n_people": 24, "n_orgs": 8, "n_cities": 8, "n_countries": 3, "n_train": 40, "n_dev": 8, "n_test": 8,
             "max_hops": 1},
    "model": {"vocab_size": 600, "hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 2,
              "head_dim": 32},
    # 300 warm-start steps (~7 s) on one-hop questions: the tiny policy then solves most training
    # questions but not all, so groups mix and the policy gets a gradient
    "warmstart": {"max_steps": 300, "eval_every": 50, "eval_questions": 8, "batch_size": 8, "eval_samples": 2,
                  "learning_rate": 0.005, "success_low": 0.05, "success_high": 0.95},
    "agent": {"max_tokens_per_turn": 24},
    "trace": {"budget": 16, "pool_size": 10, "group_size": 2},
    "train": {"iterations": 2, "eval_every": 1, "eval_questions": 4, "eval_samples": 2},
    "orchestration": {"retries": 1},
}  # fmt: skip


def write_settings(path: Path, workspace: Path, run_dir: Path, **sections: dict) -> Path:
    """A complete settings file (every key, as DVC needs) for the tiny setup, sharing the session's
    data and model."""
    import tomllib

    from flows.settings import defaults_toml

    merged = tomllib.loads(defaults_toml())
    for name, values in TINY.items():
        merged[name].update(values)
    merged["task"]["data_dir"] = str(workspace / "data")
    merged["model"]["models_dir"] = str(workspace / "models")
    merged["run"]["output_dir"] = str(run_dir)
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    path.write_text(tomlkit.dumps(merged))
    return path


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
    from flows.pipeline import load_runtime
    from flows.settings import SETTINGS_FILE_ENV, load_settings

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
