"""Registries: names listed and validated at once; a declared name's module imported only when used."""

import subprocess
import sys

import pytest

from trace_core.registry import Registry, UnknownNameError


def test_a_declared_name_is_listed_at_once_and_its_module_imported_on_first_use():
    probe = (
        "import sys\n"
        "from trace_core.generation.backend import BACKENDS\n"
        "from trace_core.method.predictor import PREDICTORS\n"
        "listed = 'transformers' in BACKENDS and 'online' in PREDICTORS and 'mlp' in PREDICTORS.names()\n"
        "before = 'torch' in sys.modules\n"
        "factory = PREDICTORS.get('mlp')\n"
        "print(listed, before, 'torch' in sys.modules, factory.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False", "True", "SuccessPredictor"]


def test_a_declared_module_that_does_not_register_its_name_is_an_error_naming_both():
    registry: Registry[object] = Registry("thing")
    registry.declare("ghost", "json")  # importable, registers nothing
    assert registry.names() == ["ghost"]
    with pytest.raises(RuntimeError, match="json did not register thing 'ghost'"):
        registry.get("ghost")


def test_an_unknown_name_lists_registered_and_declared_names_and_a_name_is_taken_once():
    registry: Registry[object] = Registry("thing")
    registry.register("a")(object())
    registry.declare("b", "json")
    with pytest.raises(UnknownNameError, match="unknown thing 'c'; valid names: a, b"):
        registry.get("c")
    with pytest.raises(ValueError, match="already registered"):
        registry.declare("a", "json")
