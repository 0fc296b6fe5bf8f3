"""The import direction of the layers: trace_core is pure; flows may use everything."""

import ast
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


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", sorted((ROOT / "trace_core").rglob("*.py")), ids=lambda p: p.name)
def test_trace_core_never_imports_orchestration_storage_or_settings(path):
    assert not _imported_roots(path) & FORBIDDEN_IN_CORE


@pytest.mark.parametrize("path", sorted((ROOT / "trace_core").rglob("*.py")), ids=lambda p: p.name)
def test_every_trace_core_module_opens_with_a_docstring_listing_its_deviations(path):
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert doc, f"{path.name} has no module docstring"
    if path.name not in {"__init__.py", "registry.py", "batching.py", "generation.py"}:
        assert "Deviations" in doc, f"{path.name}: the docstring should list deviations (or say none)"
