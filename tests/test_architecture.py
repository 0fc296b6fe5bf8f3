"""The import direction of the layers: trace_core is pure; flows may use everything."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_CORE = {
    "prefect",
    "prefect_ray",
    "ray",
    "sqlalchemy",
    "pydantic_settings",
    "dvc",
    "flows",
    "store",
    "alembic",
}


def _imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _imported_roots(path: Path) -> set[str]:
    return {name.split(".")[0] for name in _imported(path)}


def _imported_groups(path: Path) -> set[str]:
    """The trace_core sub-packages `path` imports from (`trace_core.method.tree` -> 'method')."""
    return {name.split(".")[1] for name in _imported(path) if name.startswith("trace_core.") and name.count(".") >= 1}


# which trace_core groups each group may import (itself and the top-level helpers always)
ALLOWED_GROUPS = {
    "generation": {"generation"},
    "models": {"models"},
    "method": {"method", "generation"},
    "search_agent": {"search_agent", "method", "generation"},
    "function_calling": {"function_calling", "method", "generation"},
    "sim": {"sim", "method", "generation", "search_agent"},
}
HELPERS = {"registry", "atomic"}


@pytest.mark.parametrize("path", sorted((ROOT / "trace_core").rglob("*.py")), ids=lambda p: p.name)
def test_trace_core_never_imports_orchestration_storage_or_settings(path):
    assert not _imported_roots(path) & FORBIDDEN_IN_CORE


@pytest.mark.parametrize("path", sorted((ROOT / "trace_core").rglob("*.py")), ids=lambda p: p.name)
def test_every_trace_core_module_opens_with_a_docstring_listing_its_deviations(path):
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert doc, f"{path.name} has no module docstring"
    if path.name not in {"__init__.py", "registry.py", "batching.py", "backend.py"}:
        assert "Deviations" in doc, f"{path.name}: the docstring should list deviations (or say none)"


def test_trace_core_is_grouped_by_concern_with_only_helpers_at_the_top():
    top = {p.stem for p in (ROOT / "trace_core").glob("*.py")} - {"__init__"}
    groups = {p.name for p in (ROOT / "trace_core").iterdir() if (p / "__init__.py").exists()}
    assert top == HELPERS
    assert groups == set(ALLOWED_GROUPS)


@pytest.mark.parametrize(
    "path", sorted(p for p in (ROOT / "trace_core").rglob("*.py") if p.parent.name in ALLOWED_GROUPS), ids=str
)
def test_the_method_never_imports_a_task_family_and_backends_never_import_the_method(path):
    group = path.parent.name
    assert _imported_groups(path) - HELPERS <= ALLOWED_GROUPS[group], f"{group} may import only {ALLOWED_GROUPS[group]}"


def test_the_image_gives_any_uid_a_writable_home_for_prefect_and_the_model_cache():
    """`docker run --user "$(id -u):$(id -g)"` runs as a uid the image does not know: HOME would be `/`
    and Prefect's temporary server could not create its database. HOME, PREFECT_HOME and HF_HOME lie
    in a folder every uid may write (sticky, like /tmp)."""
    text = (ROOT / "Dockerfile").read_text()
    env = dict(re.findall(r"^\s*(HOME|PREFECT_HOME|HF_HOME)=(\S+?)\s*\\?$", text, re.M))
    assert set(env) == {"HOME", "PREFECT_HOME", "HF_HOME"}
    assert all(path.startswith(env["HOME"]) for path in env.values())
    assert re.search(rf"chmod 1777 {re.escape(env['HOME'])}\b", text)
