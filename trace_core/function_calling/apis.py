"""BFCL v4's executable multi-turn APIs, run in memory per rollout, and its official checker.

`ScenarioState` holds one episode's API instances (file system, math, messaging, posting, ticket,
trading, travel, vehicle control; BFCL's `func_source_code`), loaded from the scenario's
`initial_config` exactly as BFCL loads them. It executes parsed calls (`calls.Call`) by looking the
method up among the instances' public methods and calling it with the literal arguments: no text
is evaluated. Results are formatted as BFCL formats them (a string as is, a dict as JSON, anything
else with `str`), an exception as `Error during execution: ...`.

Branching a tree node is exact by replay: every API here is deterministic given its scenario (the
two that draw random ids seed their own generator from the scenario), so the state after a node
is the initial state with every call on the root-to-node path executed in order. `replay` does
that; `digest` hashes the public state (BFCL's checker compares the same attributes), so a stored
node's state can be compared with a from-scratch replay. Replay rather than keeping copies: the
tree (and the store) stays the only record of an episode, any worker or a resumed run rebuilds a
node's state from it, and it costs what a copy costs. Measured on every ground-truth prefix of the
four subsets (4,625; `python bench/fc_branching.py`, bench/results/fc_branching.json): replay and
deep copy both equal the live state in 4,625 of 4,625; replay median 0.32 ms (p95 4.7, max 12.8),
deep copy median 0.38 ms (p95 4.7, max 10.3).

`official_check` runs BFCL's `multi_turn_checker` on the canonical text of parsed calls (never the
policy's own text; see calls.py). That checker keeps instances in its module's globals, keyed by
model name and test id, and never frees them; each check gets its own unique name and removes its
instances afterwards, so checks never see each other's state.

Deviations:
1. The memory and web-search APIs (BFCL's agentic categories, not the multi-turn ones) are not
   offered: they write files or reach the network.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import inspect
import itertools
import json
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from trace_core.function_calling.calls import Call

BACKEND_PACKAGE = "bfcl_eval.eval_checker.multi_turn_eval.func_source_code"
# the multi-turn categories' classes, by the module that defines them
API_MODULES = {
    "GorillaFileSystem": "gorilla_file_system",
    "MathAPI": "math_api",
    "MessageAPI": "message_api",
    "TwitterAPI": "posting_api",
    "TicketAPI": "ticket_api",
    "TradingBot": "trading_bot",
    "TravelAPI": "travel_booking",
    "VehicleControlAPI": "vehicle_control",
}
STATELESS = frozenset({"MathAPI"})
ERROR_PREFIX = "Error during execution: "


def _bfcl_home() -> None:
    """BFCL's configuration writes result folders under BFCL_PROJECT_ROOT (default: inside its own
    package) when imported; point it at a scratch folder first, unless the user chose one."""
    os.environ.setdefault("BFCL_PROJECT_ROOT", os.path.join(os.path.expanduser("~"), ".cache", "trace-rl", "bfcl"))


def api_class(name: str) -> type:
    if name not in API_MODULES:
        raise KeyError(f"unknown BFCL API class {name!r}; valid: {', '.join(sorted(API_MODULES))}")
    _bfcl_home()
    try:
        module = importlib.import_module(f"{BACKEND_PACKAGE}.{API_MODULES[name]}")
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            f"{err}: the function-calling task needs BFCL's APIs: pip install --no-deps bfcl-eval==2026.3.23 mpmath"
        ) from None
    cls: type = getattr(module, name)
    return cls


def public_methods(class_names: Sequence[str]) -> dict[str, str]:
    """Method name -> the class that owns it, over the public methods of `class_names` (the names a
    scenario's calls may use). Two classes never share a method name in BFCL's multi-turn set."""
    out: dict[str, str] = {}
    for name in class_names:
        for method, _ in inspect.getmembers(api_class(name), predicate=inspect.isfunction):
            if not method.startswith("_"):
                out.setdefault(method, name)
    return out


def format_result(value: Any) -> str:
    """A call's result as BFCL's harness shows it to the model."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        try:
            return json.dumps(value)
        except (TypeError, ValueError):
            return str(value)
    return str(value)


class ScenarioState:
    """The API instances of one episode, at some point of it."""

    def __init__(self, initial_config: Mapping[str, Any], classes: Sequence[str], long_context: bool = False) -> None:
        self.instances: dict[str, Any] = {}
        for name in classes:
            instance = api_class(name)()
            if name not in STATELESS:
                instance._load_scenario(copy.deepcopy(dict(initial_config.get(name, {}))), long_context=long_context)
            self.instances[name] = instance
        self.methods = public_methods(classes)

    def execute(self, call: Call) -> str:
        owner = self.methods.get(call.name)
        if owner is None:  # parse_calls allows only these names; a second line of defence
            return f"{ERROR_PREFIX}unknown function {call.name!r}"
        try:
            return format_result(getattr(self.instances[owner], call.name)(*call.args, **dict(call.kwargs)))
        except Exception as err:  # the API's own errors are observations, as in BFCL
            return f"{ERROR_PREFIX}{err}"

    def public_state(self) -> dict[str, dict[str, Any]]:
        return {
            name: {k: v for k, v in vars(instance).items() if not k.startswith("_")}
            for name, instance in sorted(self.instances.items())
        }

    def digest(self) -> str:
        """SHA-256 (first 16 hex digits) of the public state, the attributes BFCL's checker compares
        (objects such as the file system's files and folders by their content-based `repr`)."""
        text = json.dumps(_canonical(self.public_state()))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _canonical(value: Any) -> Any:
    """A JSON-able form of an API state that does not depend on insertion order or key types."""
    if isinstance(value, dict):
        return sorted([repr(k), _canonical(v)] for k, v in value.items())
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(repr(v) for v in value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


def replay(
    initial_config: Mapping[str, Any], classes: Sequence[str], calls: Sequence[Call], long_context: bool = False
) -> tuple[ScenarioState, list[str]]:
    """The state after executing `calls` in order from the initial state, and their results."""
    state = ScenarioState(initial_config, classes, long_context)
    return state, [state.execute(c) for c in calls]


_check_ids = itertools.count()
_check_lock = threading.Lock()


def official_check(
    turns: Sequence[Sequence[Sequence[Call]]],
    ground_truth: Sequence[Sequence[str]],
    entry: Mapping[str, Any],
) -> tuple[bool, str]:
    """BFCL's multi-turn checker on one episode: `turns[t]` is the list of steps of user turn t, each
    the calls of one model step. Returns (valid, BFCL's error type, empty when valid)."""
    _bfcl_home()
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker

    with _check_lock:
        name = f"trace_rl_check_{os.getpid()}_{next(_check_ids)}"
    decoded = [[[c.render() for c in step] for step in turn] for turn in turns]
    category = str(entry["id"]).rsplit("_", 1)[0]
    try:
        result = multi_turn_checker(decoded, [list(t) for t in ground_truth], dict(entry), category, name)
    finally:
        cached = [k for k in vars(multi_turn_utils) if k.startswith(name)]
        for key in cached:
            delattr(multi_turn_utils, key)
    return bool(result.get("valid")), "" if result.get("valid") else str(result.get("error_type", "invalid"))
