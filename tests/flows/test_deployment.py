"""The README's deployment sequence against a real local Prefect server.

    prefect server start --host 127.0.0.1 --port P
    trace-rl serve                                   (PREFECT_API_URL=http://127.0.0.1:P/api)
    prefect deployment run 'trace-training/<name>'

Both long-running processes are started in their own process groups and stopped, children
included, by process id.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.helpers import write_settings
from trace_rl.config.settings import SETTINGS_FILE_ENV

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


def _wait(predicate, timeout: float, what: str, procs: list[subprocess.Popen]) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for proc in procs:
            assert proc.poll() is None, f"{proc.args} exited with {proc.returncode} while waiting for {what}"
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


def _run_done(db: Path, name: str) -> bool:
    if not db.exists():
        return False
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            status = conn.execute(text("SELECT status FROM runs WHERE name = :n"), {"n": name}).scalar()
        return status == "done"
    except Exception:
        return False
    finally:
        engine.dispose()


def _start_server(tmp_path: Path, settings: Path) -> tuple[str, dict[str, str], subprocess.Popen]:
    """A Prefect server on a free local port with its own home; the environment that reaches it."""
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api,
        SETTINGS_FILE_ENV: str(settings),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    log = (tmp_path / "server.log").open("w")
    command = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"]
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return api, env, server


@pytest.mark.slow
def test_a_deployment_run_against_a_local_server_trains_and_writes_the_store(workspace, tmp_path):
    settings = write_settings(
        tmp_path / "settings.toml",
        workspace,
        tmp_path / "runs",
        run={"name": "deployed"},
        train={"iterations": 2},
        orchestration={"deployment": "test-deploy"},
    )
    api, env, server = _start_server(tmp_path, settings)
    serve = None
    try:
        _wait(lambda: _healthy(api), 180, "the Prefect server", [server])
        serve_log = (tmp_path / "serve.log").open("w")
        # the store URL given on the command line must reach the runs, but never Prefect's parameters
        db_url = f"store.url=sqlite:///{tmp_path / 'runs' / 'rollouts.db'}"
        # served settings: every run of the deployment trains 1 iteration (the file says 2)
        serve = subprocess.Popen(
            [str(BIN / "trace-rl"), "serve", "--set", db_url, "--set", "train.iterations=1"],
            env=env,
            cwd=tmp_path,
            stdout=serve_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def triggered() -> bool:
            result = subprocess.run(
                [str(BIN / "prefect"), "deployment", "run", "trace-training/test-deploy"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            return result.returncode == 0

        _wait(triggered, 180, "the deployment to be registered", [server, serve])
        _wait(
            lambda: _run_done(tmp_path / "runs" / "rollouts.db", "deployed"), 400, "the deployed run", [server, serve]
        )
        # a run's own parameters merge over the served settings: the served iteration count holds
        started = subprocess.run(
            [
                str(BIN / "prefect"),
                "deployment",
                "run",
                "trace-training/test-deploy",
                "--param",
                "run_name=deployed-uniform",
                "--param",
                "allocator=uniform",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert started.returncode == 0, started.stdout + started.stderr
        _wait(
            lambda: _run_done(tmp_path / "runs" / "rollouts.db", "deployed-uniform"),
            400,
            "the second run",
            [server, serve],
        )
        shown = subprocess.run(
            [str(BIN / "prefect"), "deployment", "inspect", "trace-training/test-deploy"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shown.returncode == 0 and "parameters" in shown.stdout
        assert "store.url" not in shown.stdout and "rollouts.db" not in shown.stdout
    finally:
        if serve is not None:
            _stop(serve)
        _stop(server)
    engine = create_engine(f"sqlite:///{tmp_path / 'runs' / 'rollouts.db'}")
    with engine.connect() as conn:
        trees = conn.execute(
            text(
                "SELECT COUNT(*) FROM trees t JOIN runs r ON t.run_id = r.id "
                "WHERE r.name = 'deployed' AND t.iteration = 0"
            )
        ).scalar_one()
        second = conn.execute(text("SELECT settings FROM runs WHERE name = 'deployed-uniform'")).scalar_one()
    assert trees > 0
    second = json.loads(second) if isinstance(second, str) else second
    assert second["trace"]["allocator"] == "uniform" and second["train"]["iterations"] == 1
    assert (tmp_path / "runs" / "deployed-uniform" / "metrics.jsonl").exists()  # deployment runs write it too


@pytest.mark.slow
def test_a_cron_schedule_makes_the_server_start_and_finish_a_run_on_its_own(workspace, tmp_path):
    # the scheduler must create the flow run from `orchestration.cron`, with no `prefect deployment run`
    # (Prefect 3.7.7's scheduler failed every tick on SQLAlchemy 2.1: an active schedule that never fired)
    settings = write_settings(
        tmp_path / "settings.toml",
        workspace,
        tmp_path / "runs",
        run={"name": "scheduled"},
        train={"iterations": 1},
        orchestration={"deployment": "cron-deploy", "cron": "* * * * *"},
    )
    api, env, server = _start_server(tmp_path, settings)
    serve = None
    try:
        _wait(lambda: _healthy(api), 180, "the Prefect server", [server])
        db_url = f"store.url=sqlite:///{tmp_path / 'runs' / 'rollouts.db'}"
        serve = subprocess.Popen(
            [str(BIN / "trace-rl"), "serve", "--set", db_url],
            env=env,
            cwd=tmp_path,
            stdout=(tmp_path / "serve.log").open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        # the next minute's tick, the scheduler's loop and one tiny iteration: well inside 6 minutes
        _wait(
            lambda: _run_done(tmp_path / "runs" / "rollouts.db", "scheduled"), 360, "a scheduled run", [server, serve]
        )
    finally:
        if serve is not None:
            _stop(serve)
        _stop(server)
