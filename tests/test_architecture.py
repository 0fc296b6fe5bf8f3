"""The import direction of the layers: trace_core is pure; in trace_rl each package imports only those
below it (tasks -> config, store -> flows -> report -> bench -> cli), and no module imports itself
back through others."""

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
    "trace_rl",
    "alembic",
}


def _runtime_nodes(tree: ast.AST):
    """Every node, but not those under `if TYPE_CHECKING:` (type hints import nothing at run time)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            continue
        yield node
        yield from _runtime_nodes(node)


def _imported(path: Path) -> set[str]:
    names = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), filename=str(path))):
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
    "sim": {"sim", "method", "generation"},
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


# trace_rl's packages, lowest first: a package imports only those of a lower rank (and itself)
RANKS = {"tasks": 0, "config": 1, "store": 1, "flows": 2, "report": 3, "bench": 4, "cli": 5}


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "trace_rl" else None


def test_trace_rl_is_exactly_its_layered_packages():
    packages = {p.name for p in (ROOT / "trace_rl").iterdir() if (p / "__init__.py").exists()}
    assert packages == set(RANKS)


@pytest.mark.parametrize(
    "path", sorted(p for p in (ROOT / "trace_rl").rglob("*.py") if p.parent.name in RANKS), ids=str
)
def test_a_trace_rl_package_imports_only_the_packages_below_it(path):
    own = path.relative_to(ROOT / "trace_rl").parts[0]
    for module in _imported(path):
        other = _package(module)
        if other is not None and other != own:
            assert RANKS[other] < RANKS[own], f"{own} may not import {module} ({other} is not below it)"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_module_imports_itself_back_through_others():
    """Run-time imports, also those inside functions, between trace_core's and trace_rl's modules."""
    paths = [*(ROOT / "trace_core").rglob("*.py"), *(ROOT / "trace_rl").rglob("*.py")]
    modules = {_module_name(p): p for p in paths}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imported(path):
            # `from pkg import module` names a module or a name in pkg: take the longest known prefix
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_flows_package_is_the_training_flow_only_and_knows_no_task_family():
    flows = sorted(p.stem for p in (ROOT / "trace_rl" / "flows").glob("*.py") if p.stem != "__init__")
    assert len(flows) <= 12, flows
    for package in ("flows", "report", "cli", "config", "bench"):
        for path in (ROOT / "trace_rl" / package).rglob("*.py"):
            assert not any(m.startswith("trace_core.search_agent") for m in _imported(path)), path


# what runs inside a stage: it reads the run's description (run_spec.py), never the settings
STAGE_MODULES = ("stages", "sampling_stages", "learn_stages", "measure_stages", "learner", "run_spec")


@pytest.mark.parametrize("module", STAGE_MODULES)
def test_no_stage_reads_the_settings(module):
    path = ROOT / "trace_rl" / "flows" / f"{module}.py"
    imported = _imported(path)
    if module == "run_spec":  # the one place settings become the description
        assert imported & {"trace_rl.config.settings"}, "run_spec resolves the settings"
        return
    # the settings' error type is fine (a bad `orchestration.fail_once` names the setting)
    assert not any(m.startswith("trace_rl.config") and m != "trace_rl.config.errors" for m in imported), path
    source = path.read_text().replace("SettingsError", "")
    assert "ctx.s." not in source and "Settings" not in source, path


def test_the_context_holds_the_run_description_not_the_settings():
    source = (ROOT / "trace_rl" / "flows" / "context.py").read_text()
    init = source[source.index("class TrainContext") : source.index("# -- shared stage machinery")]
    assert "Settings" not in init and "self.s " not in init and "self.s," not in init
    assert "ctx.s." not in source
