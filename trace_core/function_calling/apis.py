"""BFCL v4's executable multi-turn APIs, run in memory per rollout, and its official checker.

`ScenarioState` holds one episode's API instances (file system, math, messaging, posting, ticket,
trading, travel, vehicle control; BFCL's `func_source_code`), loaded from the scenario's
`initial_config` as BFCL loads them. It executes decoded calls (`calls.Call`) as BFCL's runner does
(`execute_multi_turn_func_call`): the method is looked up among the instances' public methods and
called with the call's keyword arguments (fresh copies: the API may keep and later change what it
is given, and the call must stay what the policy wrote); the result is formatted as BFCL formats
it (a string as is, a dict as JSON, anything else with `str`), an exception as
`Error during execution: ...`. A call that cannot run (`Call.error`) gets that error and runs
nothing, and the step's other calls still run.

Isolation. BFCL's classes share state between instances: `post_tweet`'s `tags` and `mentions`
default to one list for the whole process (a later `mention()` extends it), and in long-context
episodes the travel API's cards and bookings are the module's own dicts (a refund changes every
later episode's starting balance). `api_class` patches each class once, in this process, for us
and for BFCL's checker alike: a missing list, dict or set argument gets a fresh copy of the
pristine default, and `_load_scenario` ends by deep-copying the instance's dicts, lists and sets,
so every instance starts from its own copy of its scenario. The math API's `decimal` and `mpmath` precision
settings are restored after each call and each check.

Bounds. A call whose work has no bound is refused before it runs (`bounded`): the math API's
`power` with an integer result of more digits than Python will print (BFCL's run ends in the same
error, after a long computation), `logarithm` and `square_root` with `precision` over
`MAX_PRECISION`; `round_number` of an integer to a large negative number of places is computed
by an equal, cheap call (the result is 0 either way).

Branching a tree node is exact by replay: every API here is deterministic given its scenario (the
ones that draw random ids seed their own generator from the scenario), so the state after a node
is the initial state with every call on the root-to-node path executed in order. `replay` does
that; `digest` hashes the public state (BFCL's checker compares the same attributes), so a stored
node's state can be compared with a from-scratch replay (`bench/fc_branching.py`). Replay rather
than keeping copies: the tree (and the store) stays the only record of an episode, and any worker
or a resumed run rebuilds a node's state from it.

`official_check` runs BFCL's `multi_turn_checker` on the decoded text of the policy's calls
(`Call.text`, as BFCL's decoder writes them). That checker keeps instances in its module's globals,
keyed by model name and test id, and never frees them; each check gets its own unique name and
removes its instances afterwards, so checks never see each other's state.

Deviations:
1. The memory and web-search APIs (BFCL's agentic categories, not the multi-turn ones) are not
   offered: they write files or reach the network.
2. A call that cannot run (`Call.error`) or is refused by `bounded` reaches the checker as a call
   of an undefined function, which fails without side effects (BFCL would run it, or hang).
3. Mutable default arguments are fresh per call (see Isolation): in BFCL one list is shared by all
   calls in the process, so a `mention()` can change tweets of other instances and episodes.
4. A check that raises inside BFCL's checker (say, a state its comparison cannot recurse through)
   is a failure here; BFCL's run would stop.
"""

from __future__ import annotations

import copy
import decimal
import functools
import hashlib
import importlib
import inspect
import itertools
import json
import math
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
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
# what the checker is given for a call that must not run: an undefined name, an error without side effects
REFUSED_CALL = "trace_rl_refused_call()"
MAX_PRECISION = 10_000  # digits: `logarithm` and `square_root` take well under a second up to here


def _bfcl_home() -> None:
    """BFCL's configuration writes result folders under BFCL_PROJECT_ROOT (default: inside its own
    package) when imported; point it at a scratch folder first, unless the user chose one."""
    os.environ.setdefault("BFCL_PROJECT_ROOT", os.path.join(os.path.expanduser("~"), ".cache", "trace-rl", "bfcl"))


_patch_lock = threading.Lock()
_PATCHED = "_trace_rl_isolated"


def _fresh_defaults(func: Callable[..., Any]) -> Callable[..., Any]:
    """`func`, but a missing argument whose default is a list, dict or set gets a fresh copy of the
    default as it was when patched (BFCL's defaults are shared, and some methods keep them)."""
    signature = inspect.signature(func)
    pristine = {
        name: copy.deepcopy(p.default)
        for name, p in signature.parameters.items()
        if isinstance(p.default, list | dict | set)
    }
    if not pristine:
        return func

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            given = signature.bind(*args, **kwargs).arguments
        except TypeError:  # let the method raise its own error for bad arguments
            return func(*args, **kwargs)
        for name, default in pristine.items():
            if name not in given:
                kwargs[name] = copy.deepcopy(default)
        return func(*args, **kwargs)

    return wrapper


def _own_state(load: Callable[..., None]) -> Callable[..., None]:
    """`_load_scenario`, then the instance's dict, list and set attributes deep-copied together (so
    none of them shares a container with the module or another instance, and references among them
    are kept). Its other attributes (a random generator, the file system's folders) are built by
    the load itself."""

    @functools.wraps(load)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        load(self, *args, **kwargs)
        memo: dict[int, Any] = {}
        for name, value in list(vars(self).items()):
            if isinstance(value, dict | list | set):
                setattr(self, name, copy.deepcopy(value, memo))

    return wrapper


def _isolate(cls: type) -> None:
    with _patch_lock:
        if vars(cls).get(_PATCHED):
            return
        for name, member in list(vars(cls).items()):
            if inspect.isfunction(member) and not name.startswith("__"):
                patched = _own_state(member) if name == "_load_scenario" else _fresh_defaults(member)
                if patched is not member:
                    setattr(cls, name, patched)
        setattr(cls, _PATCHED, True)


_classes: dict[str, type] = {}


def api_class(name: str) -> type:
    """BFCL's class `name`, isolated (see the module's docstring)."""
    if name in _classes:
        return _classes[name]
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
    _isolate(cls)
    _classes[name] = cls
    return cls


def public_methods(class_names: Sequence[str]) -> dict[str, str]:
    """Method name -> the class that owns it, over the public methods of `class_names` (the names a
    scenario's calls may use). Two classes never share a method name in BFCL's multi-turn set."""
    out: dict[str, str] = {}
    for name in class_names:
        for method in _methods_of(name):
            out.setdefault(method, name)
    return out


@functools.cache
def _methods_of(name: str) -> tuple[str, ...]:
    return tuple(
        m for m, _ in inspect.getmembers(api_class(name), predicate=inspect.isfunction) if not m.startswith("_")
    )


def signature(class_names: Sequence[str], method: str) -> inspect.Signature:
    """The parameters of `method` (without `self`), as BFCL's class defines them."""
    owner = public_methods(class_names)[method]
    params = list(inspect.signature(getattr(api_class(owner), method)).parameters.values())
    return inspect.Signature(params[1:])


def format_result(value: Any) -> str:
    """A call's result as BFCL's harness shows it to the model (it tests the exact type)."""
    if type(value) is str:
        return value
    if type(value) is dict:
        try:
            return json.dumps(value)
        except Exception:
            return str(value)
    return str(value)


@contextmanager
def numeric_context() -> Iterator[None]:
    """The math API sets `decimal`'s and `mpmath`'s precision for the process (the thread, for
    decimal); put both back afterwards."""
    mpmath = sys.modules.get("mpmath")
    prec = mpmath.mp.prec if mpmath is not None else None
    try:
        with decimal.localcontext():
            yield
    finally:
        if mpmath is not None and prec is not None:
            mpmath.mp.prec = prec


def _number(value: Any) -> float | int | None:
    """A numeric argument as the API would read it (`mpmath` reads a numeric string too)."""
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _power_digits(base: int, exponent: int) -> float:
    """Decimal digits of base**exponent (|base| > 1, exponent > 0), roughly; inf when huge."""
    if exponent.bit_length() > 60:
        return math.inf
    return exponent * math.log10(abs(base))


def bounded(call: Call) -> Call | str:
    """`call`, an equal call that is cheap to run, or why it is refused (its result would take
    unbounded time or memory); only the math API has such calls."""
    kwargs = dict(call.kwargs)
    if call.name == "power":
        base, exponent = kwargs.get("base"), kwargs.get("exponent")
        if isinstance(base, int) and isinstance(exponent, int) and abs(base) > 1 and exponent > 0:
            digits = _power_digits(base, exponent)
            limit = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 0
            if limit and digits > limit + 2:  # what BFCL's run ends in, after computing the power
                return (
                    f"Exceeds the limit ({limit} digits) for integer string conversion; "
                    "use sys.set_int_max_str_digits() to increase the limit"
                )
            if digits > 100_000:
                return "power: the result is too large to compute"
    elif call.name in ("logarithm", "square_root"):
        precision = _number(kwargs.get("precision"))
        if precision is not None and not precision <= MAX_PRECISION:
            return f"{call.name}: a precision over {MAX_PRECISION} digits is not supported"
    elif call.name == "round_number":
        number, places = kwargs.get("number"), kwargs.get("decimal_places")
        if isinstance(number, int) and isinstance(places, int):
            enough = -(abs(number).bit_length() + 2)  # 10**-enough > 2*|number|: rounds to 0, as any fewer does
            if places < enough:
                # Python computes 10**-places to round an int: an equal call with fewer places
                kwargs["decimal_places"] = enough
                return Call(call.name, tuple(kwargs.items()))
    return call


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
        """The call's result as BFCL shows it; a call that cannot run, or is refused, gets an error."""
        if call.error is not None:
            return f"{ERROR_PREFIX}{call.error}"
        owner = self.methods.get(call.name)
        if owner is None:  # parse_calls marks these; a second line of defence
            return f"{ERROR_PREFIX}name {call.name!r} is not defined"
        run = bounded(call)
        if isinstance(run, str):
            return f"{ERROR_PREFIX}{run}"
        method = getattr(self.instances[owner], run.name)
        with numeric_context():
            try:
                return format_result(method(**copy.deepcopy(dict(run.kwargs))))
            except Exception as err:  # the API's own errors are observations, as in BFCL
                return f"{ERROR_PREFIX}{err}"

    def public_state(self) -> dict[str, dict[str, Any]]:
        return {
            name: {k: v for k, v in vars(instance).items() if not k.startswith("_")}
            for name, instance in sorted(self.instances.items())
        }

    def digest(self) -> str:
        """SHA-256 (first 16 hex digits) of the public state, the attributes BFCL's checker compares
        (objects such as the file system's files and folders by their content-based `repr`); a
        state that cannot be written out (a folder inside itself) digests as such."""
        try:
            text = json.dumps(_canonical(self.public_state()))
        except (RecursionError, ValueError):
            text = "unrepresentable:" + json.dumps(sorted(self.instances))
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


def checker_text(call: Call, methods: Mapping[str, str]) -> str:
    """What BFCL's checker is given for `call`: its decoded text, an equal bounded call, or
    `REFUSED_CALL` for a call that must not run."""
    if call.error is not None or call.name not in methods:
        return REFUSED_CALL
    run = bounded(call)
    if isinstance(run, str):
        return REFUSED_CALL
    return call.text if run is call else run.text


_check_ids = itertools.count()
_check_lock = threading.Lock()


def official_check(
    turns: Sequence[Sequence[Sequence[Call]]],
    ground_truth: Sequence[Sequence[str]],
    entry: Mapping[str, Any],
) -> tuple[bool, str]:
    """BFCL's multi-turn checker on one episode: `turns[t]` is the list of steps of user turn t, each
    the calls of one model step. Returns (valid, BFCL's error type, empty when valid)."""
    methods = public_methods(entry["involved_classes"])  # also isolates the classes the checker runs
    decoded = [[[checker_text(c, methods) for c in step] for step in turn] for turn in turns]
    return run_checker(decoded, ground_truth, entry)


def run_checker(
    decoded: Sequence[Sequence[Sequence[str]]], ground_truth: Sequence[Sequence[str]], entry: Mapping[str, Any]
) -> tuple[bool, str]:
    """BFCL's `multi_turn_checker` on call strings (which it executes: pass only what may run), as
    BFCL's runner calls it, under a model name of its own, and its instances removed afterwards."""
    _bfcl_home()
    for name in entry["involved_classes"]:
        api_class(name)
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker

    with _check_lock:
        name = f"trace_rl_check_{os.getpid()}_{next(_check_ids)}"
    category = str(entry["id"]).rsplit("_", 1)[0]
    try:
        with numeric_context():
            result = multi_turn_checker(
                [[list(step) for step in turn] for turn in decoded],
                [list(t) for t in ground_truth],
                dict(entry),
                category,
                name,
            )
    except Exception as err:  # BFCL's run would stop here; a failure for us
        return False, f"checker_error:{type(err).__name__}"
    finally:
        cached = [k for k in vars(multi_turn_utils) if k.startswith(f"{name}_")]
        for key in cached:
            delattr(multi_turn_utils, key)
    return bool(result.get("valid")), "" if result.get("valid") else str(result.get("error_type", "invalid"))
