"""Flow fixtures: one Prefect test server and one tiny task + model for the whole session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import tomlkit
from prefect.logging.configuration import setup_logging

import flows  # noqa: F401  (Prefect's defaults: no analytics, quiet task-run logs)
from flows.bench import tiny_sections

# Prefect's console handler keeps the stream it first sees; configure it now, at collection, so it
# never holds a test's captured (and later closed) stderr
setup_logging()

# the tiny task and model (flows/tiny.toml, shared with `trace-rl bench --quick`) and the tests' sizes
TINY = {
    **tiny_sections(),
    "trace": {"budget": 16, "pool_size": 10, "group_size": 2},
    "train": {"iterations": 2, "eval_every": 1, "eval_questions": 4, "eval_samples": 2},
    "orchestration": {"retries": 1, "retry_delay_s": 0.01},
}


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
    merged["function_calling"]["split_dir"] = str(workspace / "function_calling")
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
