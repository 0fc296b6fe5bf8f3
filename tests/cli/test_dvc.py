"""`dvc repro` rebuilds everything from nothing, does nothing when nothing changed, reruns only the
stages whose settings changed, and two clean reproductions give identical metrics files."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.helpers import write_settings
from trace_rl.report.metrics_files import HEADLINE

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
    _git_repo(repo, env)

    assert _repro(repo, env) == ["prepare", "warmstart", "train", "evaluate", "report"]
    first = {m: (repo / m).read_bytes() for m in METRICS}
    evaluation = json.loads(first["metrics/eval.json"])
    assert {split: sorted(f) for split, f in evaluation.items()} == {s: list(HEADLINE) for s in ("dev", "test")}
    assert {"never", "mixed", "always"} <= set(json.loads((repo / "metrics/eval_detail.json").read_text())["dev"])
    assert (repo / "report" / "index.html").exists() and (repo / "report" / "accuracy.png").exists()

    assert _repro(repo, env) == []  # nothing changed, nothing runs

    settings = (repo / "settings.toml").read_text()
    write_settings(repo / "settings.toml", repo, repo / "runs", **inside, policy={"learning_rate": 0.0006})
    assert _repro(repo, env) == ["train", "evaluate", "report"]  # a train-only key: data and model stay
    write_settings(repo / "settings.toml", repo, repo / "runs", **inside, backend={"kv_cache_mb": 256})
    assert _repro(repo, env) == ["train", "evaluate", "report"]  # a memory knob: no warm start
    # a key the warm start's stage lists but this family's model does not depend on: DVC reruns the stage,
    # which keeps the model (the folder persists, its build marker matches) instead of warm-starting again
    model = {p.relative_to(repo): p.read_bytes() for p in (repo / "models").rglob("*") if p.is_file()}
    write_settings(repo / "settings.toml", repo, repo / "runs", **inside, function_calling={"max_steps": 7})
    assert _repro(repo, env) == ["warmstart", "train", "evaluate", "report"]
    assert {p.relative_to(repo): p.read_bytes() for p in (repo / "models").rglob("*") if p.is_file()} == model

    # a second reproduction from a clean state, with the original settings, gives identical metrics
    (repo / "settings.toml").write_text(settings)
    for path in ["data", "models", "results", "report", "metrics", "runs", ".dvc/cache"]:
        shutil.rmtree(repo / path, ignore_errors=True)
    (repo / "dvc.lock").unlink()
    assert _repro(repo, env) == ["prepare", "warmstart", "train", "evaluate", "report"]
    for name, content in first.items():
        assert (repo / name).read_bytes() == content, f"{name} differs between two clean reproductions"


def _git_repo(repo: Path, env: dict[str, str]) -> None:
    for command in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"],
    ):
        subprocess.run(command, cwd=repo, check=True, env=env)


def test_dvc_prepares_the_function_calling_split_under_data(tmp_path):
    pytest.importorskip("bfcl_eval", reason="the function-calling task needs bfcl-eval (make install adds it)")
    repo = tmp_path / "repo"
    repo.mkdir()
    _copy_repo(repo)
    fc = {"task": {"family": "function_calling"}, "function_calling": {"split_dir": "data/function_calling"}}
    write_settings(repo / "settings.toml", repo, repo / "runs", model={"models_dir": "models"}, **fc)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    env.pop("TRACE_SETTINGS_FILE", None)
    _git_repo(repo, env)
    result = subprocess.run(
        [str(BIN / "dvc"), "repro", "prepare"], cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sides = {
        side: (repo / "data/function_calling" / f"{side}.jsonl").read_text().count("\n")
        for side in ("train", "dev", "test")
    }
    assert sides == {"train": 560, "dev": 80, "test": 160}
    assert "data" in (repo / "dvc.lock").read_text()


def _readme_deps_regex() -> re.Pattern[str]:
    found = re.search(r"^DEPS='(.+)'$", (ROOT / "README.md").read_text(), re.MULTILINE)
    assert found, "README.md defines DEPS for `dvc exp show --drop`"
    return re.compile(found.group(1))


def test_readme_exp_show_drop_regex_removes_every_dependency_column_and_no_setting_or_metric():
    import yaml

    settings = tomllib.loads((ROOT / "settings.toml").read_text())

    def resolved(path: str) -> str:  # dvc.yaml's ${section.key} from settings.toml, as DVC fills them in
        return re.sub(r"\$\{(\w+)\.(\w+)\}", lambda m: str(settings[m[1]][m[2]]), path)

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    deps = {resolved(dep) for stage in stages.values() for dep in stage.get("deps", [])}
    pattern = _readme_deps_regex()
    assert deps and all(pattern.search(dep) for dep in deps), sorted(d for d in deps if not pattern.search(d))
    params = {
        key
        for stage in stages.values()
        for entry in stage.get("params", [])
        for keys in (entry.values() if isinstance(entry, dict) else [[entry]])
        for key in keys
    }
    metrics = ["dev.em", "test.greedy_f1", "eval/em", "rollout/mean_effective_ratio", "chosen_step"]
    assert not [name for name in [*params, *metrics] if pattern.search(name)]


def test_evaluation_metrics_file_holds_the_accuracy_figures_and_the_detail_file_the_rest():
    from trace_rl.report.metrics_files import headline_figures

    result = {
        "policy": "runs/x/policy",
        "samples": 4,
        "dev": {
            "questions": 200,
            "em": 0.5,
            "f1": 0.55,
            "never": 3,
            "mixed": 5,
            "always": 2,
            "greedy_em": 0.6,
            "greedy_f1": 0.6,
        },
        "test": {"questions": 200, "em": 0.4, "f1": 0.45, "never": 4, "mixed": 4, "always": 2},
    }
    assert headline_figures(result) == {
        "dev": {"em": 0.5, "f1": 0.55, "greedy_em": 0.6, "greedy_f1": 0.6},
        "test": {"em": 0.4, "f1": 0.45},
    }


def test_the_warm_start_stage_lists_every_function_calling_key_the_built_model_depends_on():
    """A key in the family's identity (what the tiny model's build digest hashes) that the stage does
    not list would leave `dvc repro` reusing a model built for other settings."""
    import yaml

    from trace_rl.config.settings import load_settings
    from trace_rl.tasks.family import family

    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["warmstart"]
    listed = set(stage["params"][0]["settings.toml"])
    s = load_settings(["task.family=function_calling"])
    needed = {f"function_calling.{key}" for key in family(s).identity(s)["function_calling"]}
    assert not needed - listed, sorted(needed - listed)


def test_dvc_plots_show_draws_the_declared_charts_from_a_page_that_needs_no_network(tmp_path):
    """The page `dvc plots show` writes carries Vega inline (.dvc/plots/offline.html, set in .dvc/config):
    nothing is loaded from a CDN, and only the two charts dvc.yaml declares are drawn."""
    from trace_rl.report.metrics_files import export_metrics

    for name in ("dvc.yaml", "settings.toml", ".dvc/config", ".dvc/plots/offline.html"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tmp_path / name)
    history = [
        {"iteration": -1, "eval/em": 0.3, "eval/f1": 0.4},
        {"iteration": 0, "rollout/effective_ratio": 0.5, "rollout/nonzero_advantage_share": 0.6},
        {"iteration": 1, "rollout/effective_ratio": 0.7, "rollout/nonzero_advantage_share": 0.8, "eval/em": 0.4,
         "eval/f1": 0.5},
    ]  # fmt: skip
    export_metrics(tmp_path / "metrics", history)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    shown = subprocess.run(
        [str(BIN / "dvc"), "plots", "show"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0, shown.stdout + shown.stderr
    page = (tmp_path / "dvc_plots" / "index.html").read_text()
    assert "cdn.jsdelivr" not in page and "<script src=" not in page
    assert "vegaEmbed" in page and page.count("vegaEmbed(") == 2, page.count("vegaEmbed(")


def test_the_committed_dvc_lock_holds_every_stage_with_the_settings_of_settings_toml():
    """dvc.lock is committed (a fresh clone's `dvc exp show` has a baseline, `dvc status` says what is
    stale): every stage of dvc.yaml is in it, and the settings each stage ran with are today's."""
    import yaml

    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(lock) == set(stages)
    settings = tomllib.loads((ROOT / "settings.toml").read_text())
    for name, stage in lock.items():
        for key, value in stage.get("params", {}).get("settings.toml", {}).items():
            current = settings
            for part in key.split("."):
                current = current[part]
            assert current == value, f"dvc.lock's {name} ran with {key}={value!r}, settings.toml has {current!r}"
