"""The policy's function calls, parsed without ever executing its text.

A turn that calls functions writes a Python-style list of calls, BFCL's plain-text format:

    [cd(folder='document'), mkdir(dir_name='temp'), sort('final_report.pdf')]

(a single call without brackets is accepted too). `parse_calls` reads it with `ast.parse` in
expression mode and accepts only this shape: a list (or tuple) of calls, each to a bare name from
the allowed set (the public methods of the scenario's API classes), with positional and keyword
arguments that are literals (`ast.literal_eval`: strings, numbers, booleans, None, and lists,
tuples, dicts and sets of them, negative numbers included). Anything else (attribute access,
subscripts, names, nested calls, lambdas, comprehensions, `**kwargs`, f-strings, an unknown
function) is refused with `CallError`, whose message becomes the turn's observation; nothing the
policy wrote is evaluated. `Call.render` writes a parsed call back in canonical form, the only
text of a call that ever reaches BFCL's checker.

Deviations:
1. BFCL's own harness executes the model's text with `eval` behind a small blocklist; we parse
   and allow-list instead, so a call BFCL would run through an expression (say `mv(source=x)`
   with a variable) is a format error here.
"""

from __future__ import annotations

import ast
import warnings
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any


class CallError(ValueError):
    """The text is not a list of allowed calls with literal arguments; the message says why."""


@dataclass(frozen=True)
class Call:
    """One function call: its name and literal arguments."""

    name: str
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()

    def render(self) -> str:
        """`name(arg, key=value)` with every value as its Python literal (`repr`)."""
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs]
        return f"{self.name}({', '.join(parts)})"


def _literal(node: ast.expr, where: str) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as err:
        raise CallError(f"{where}: only literal values are allowed ({type(err).__name__})") from None


def _call(node: ast.expr, allowed: Collection[str]) -> Call:
    if not isinstance(node, ast.Call):
        raise CallError(f"expected a function call, found {type(node).__name__.lower()}")
    if not isinstance(node.func, ast.Name):
        raise CallError("a call must name a function directly (no attributes or expressions)")
    name = node.func.id
    if name not in allowed:
        raise CallError(f"unknown function {name!r}")
    if any(k.arg is None for k in node.keywords):
        raise CallError(f"{name}: '**' arguments are not allowed")
    if any(isinstance(a, ast.Starred) for a in node.args):
        raise CallError(f"{name}: '*' arguments are not allowed")
    args = tuple(_literal(a, name) for a in node.args)
    kwargs = tuple((str(k.arg), _literal(k.value, f"{name}({k.arg}=...)")) for k in node.keywords)
    if len({k for k, _ in kwargs}) != len(kwargs):
        raise CallError(f"{name}: an argument is given twice")
    return Call(name, args, kwargs)


def parse_calls(text: str, allowed: Collection[str], max_chars: int = 20_000) -> list[Call]:
    """The calls in `text` (a list of calls, or one call), each to a name in `allowed` with literal
    arguments; raises `CallError` for anything else. Nothing in `text` is executed."""
    source = text.strip()
    if not source:
        raise CallError("no function call")
    if len(source) > max_chars:
        raise CallError(f"the call text is longer than {max_chars} characters")
    try:
        with warnings.catch_warnings():  # the policy's text is data: its oddities are not warnings to print
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as err:
        raise CallError(f"not a list of function calls ({type(err).__name__})") from None
    body = tree.body
    nodes = list(body.elts) if isinstance(body, ast.List | ast.Tuple) else [body]
    if not nodes:
        raise CallError("an empty list of calls")
    return [_call(node, allowed) for node in nodes]
