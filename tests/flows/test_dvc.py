"""`dvc repro` rebuilds everything from nothing, does nothing when nothing changed, reruns only the
stages whose settings changed, and two clean reproductions give identical metrics files."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.flows.conftest import write_settings

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
METRICS = ["metrics/warmstart.json", "metrics/train.json", "metrics/train.csv", "metrics/dev.csv", "metrics/eval.json"]


def _copy_repo(target: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in listed:
        source = ROOT / name
        if source.is_file() and not name.startswith(("metrics/", "dvc.lock")):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    (target / "dvc.lock").unlink(missing_ok=True)


def _repro(repo: Path, env: dict[str, str]) -> list[str]:
    result = subprocess.run([str(BIN / "dvc"), "repro"], cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return re.findall(r"Running stage '([\w-]+)'", result.stdout)


@pytest.mark.slow
def test_dvc_repro_is_complete_incremental_and_reproducible(prefect_api, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _copy_repo(repo)
    # the tiny setup, with data and model inside the repository where dvc.yaml expects them
    inside = {"task": {"data_dir": "data/synthetic"}, "model": {"models_dir": "models"}}
    write_settings(repo / "settings.toml", repo, repo / "runs", **inside)
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PREFECT_API_URL": prefect_api,
        "DVC_NO_ANALYTICS": "1",
    }
    env.pop("TRACE_SETTINGS_FILE", None)
    for command in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"],
    ):
        subprocess.run(command, cwd=repo, check=True, env=env)

    assert _repro(repo, env) == ["prepare", "warmstart", "train", "evaluate", "report"]
    first = {m: (repo / m).read_bytes() for m in METRICS}
    assert (repo / "report" / "index.html").exists() and (repo / "report" / "accuracy.png").exists()

    assert _repro(repo, env) == []  # nothing changed, nothing runs

    settings = (repo / "settings.toml").read_text()
    write_settings(repo / "settings.toml", repo, repo / "runs", **inside, policy={"learning_rate": 0.0006})
    assert _repro(repo, env) == ["train", "evaluate", "report"]  # a train-only key: data and model stay

    # a second reproduction from a clean state, with the original settings, gives identical metrics
    (repo / "settings.toml").write_text(settings)
    for path in ["data/synthetic", "models", "results", "report", "metrics", "runs", ".dvc/cache"]:
        shutil.rmtree(repo / path, ignore_errors=True)
    (repo / "dvc.lock").unlink()
    assert _repro(repo, env) == ["prepare", "warmstart", "train", "evaluate", "report"]
    for name, content in first.items():
        assert (repo / name).read_bytes() == content, f"{name} differs between two clean reproductions"
