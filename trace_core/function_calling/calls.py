"""The policy's function calls, decoded as BFCL's runner decodes them, without executing its text.

A step that calls functions writes a Python-style list of calls, BFCL's plain-text format:

    [cd(folder='document'), mkdir(dir_name='temp'), sort(file_name='final_report.pdf')]

`decode_step` mirrors BFCL's `default_decode_execute_prompting` (model_handler/utils.py): the text
is stripped of backticks, newlines and spaces, wrapped in brackets unless already there, stripped
of quotes, parsed with `ast.parse`, and every element must be a call; each call becomes the string
`name(key=value, ...)` that BFCL's checker executes. Like BFCL's decoder it keeps only keyword
arguments (a positional argument is dropped, so `sort('a.pdf')` becomes `sort()`, which then fails
for its missing argument), writes a bare name as its string (`cd(folder=x)` is `cd(folder='x')`), a
call without keyword arguments as its source text, negates any unary operand (`+5` is `-5`),
computes arithmetic (`ls(a=1+1)` is `ls(a=2)`), and renders dicts its own way. A step that does
not decode (not calls, an unsupported expression, bad syntax) raises `CallError`: BFCL skips such a
step, and so does the reward.

`parse_calls` then reads each decoded string into a `Call`: a bare name with literal keyword values
(`ast.literal_eval` on the decoded text; nothing the policy wrote is evaluated). A call that cannot
run is still a call of its step, with `error` set (an unknown function, a keyword value that is
not a literal): it fails on its own, as in BFCL, where the step's other calls still run. `Call.text`
is the decoded string: what BFCL's checker is given, never re-rendered from executed objects.

Deviations (each only where BFCL would run code):
1. BFCL evaluates arithmetic with `eval`; here only arithmetic on literals is computed, with the
   size of every intermediate value capped; anything else in it (a name, a call, string
   formatting, a result over the caps) makes the step undecodable.
2. A call nested with keyword arguments (`f(x=g(y=1))`), a name that is not a bare method of the
   episode's APIs (`os.system(...)`, `open(...)`) and a keyword value that does not read back as a
   literal are not executed: the call's result is an error (BFCL executes them).
3. A step longer than `max_chars` characters is not decoded (BFCL has no limit).
"""

from __future__ import annotations

import ast
import operator
import warnings
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any


class CallError(ValueError):
    """The text does not decode into a list of calls; the message says why."""


@dataclass(frozen=True)
class Call:
    """One decoded call: its name, literal keyword arguments, the decoded text (BFCL's form, what
    its checker executes) and, for a call that cannot run, why (`error`)."""

    name: str
    kwargs: tuple[tuple[str, Any], ...] = ()
    text: str = ""
    error: str | None = None

    def __post_init__(self) -> None:
        if not self.text:
            object.__setattr__(self, "text", self.render())

    def render(self) -> str:
        """`name(key=value, ...)` with every value as its Python literal (`repr`)."""
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.kwargs)})"


# BFCL's decoder, mirrored (model_handler/utils.py: ast_parse, resolve_ast_call, resolve_ast_by_type,
# parse_nested_value, decoded_output_to_execution_list).

MAX_BITS = 100_000  # the largest integer arithmetic may produce, in bits
MAX_SIZE = 100_000  # the largest total size (characters, elements) arithmetic may produce

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.LShift: operator.lshift,
    ast.RShift: operator.rshift,
    ast.BitAnd: operator.and_,
    ast.BitOr: operator.or_,
    ast.BitXor: operator.xor,
    ast.MatMult: operator.matmul,
}
_UNARY: dict[type, Callable[[Any], Any]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Not: operator.not_,
    ast.Invert: operator.invert,
}


def _size(value: Any) -> int:
    if isinstance(value, str | bytes):
        return 1 + len(value)
    if isinstance(value, int):
        return 1 + value.bit_length() // 64
    return 1


def _bits(value: Any) -> int:
    return abs(value).bit_length() if isinstance(value, int) else 64


def _arith(node: ast.expr) -> tuple[Any, int]:
    """(value, size) of an arithmetic expression over literals, as Python computes it, refusing
    (CallError) anything else and any value over the caps before computing it."""
    if isinstance(node, ast.Constant):
        return node.value, _size(node.value)
    if isinstance(node, ast.List | ast.Tuple):
        items = [_arith(e) for e in node.elts]
        values = [v for v, _ in items]
        return (values if isinstance(node, ast.List) else tuple(values)), 1 + sum(s for _, s in items)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        value, size = _arith(node.operand)
        return _checked(_UNARY[type(node.op)](value), size)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        (left, left_size), (right, right_size) = _arith(node.left), _arith(node.right)
        size = left_size + right_size
        op = type(node.op)
        ints = isinstance(left, int) and isinstance(right, int)
        if op is ast.Pow and ints and abs(left) > 1 and right > 0 and right * _bits(left) > MAX_BITS:
            raise CallError("arithmetic: a power too large to compute")
        if op is ast.LShift and ints and right > MAX_BITS:
            raise CallError("arithmetic: a shift too large to compute")
        if op is ast.Mult:
            if ints:
                size = max(size, (_bits(left) + _bits(right)) // 64)
            elif isinstance(left, int) or isinstance(right, int):  # a sequence repeated
                times, seq_size = (left, right_size) if isinstance(left, int) else (right, left_size)
                size = seq_size * max(times, 0)
        if op is ast.Mod and isinstance(left, str | bytes):
            raise CallError("arithmetic: string formatting is not computed")
        if size > MAX_SIZE:
            raise CallError("arithmetic: a value too large to compute")
        return _checked(_BINARY[op](left, right), size)
    raise CallError(f"arithmetic over {type(node).__name__} is not computed")


def _checked(value: Any, size: int) -> tuple[Any, int]:
    if _bits(value) > MAX_BITS or size > MAX_SIZE:
        raise CallError("arithmetic: a value too large to compute")
    return value, size


def _resolve(node: ast.expr | None) -> Any:
    """BFCL's `resolve_ast_by_type`, with arithmetic computed by `_arith` instead of `eval`."""
    if isinstance(node, ast.Constant):
        return "..." if node.value is Ellipsis else node.value
    if isinstance(node, ast.UnaryOp):  # BFCL negates the operand's value whatever the operator
        if not isinstance(node.operand, ast.Constant):
            raise CallError(f"unsupported operand of {type(node.op).__name__}")
        operand: Any = node.operand.value
        try:
            return -operand
        except TypeError as err:
            raise CallError(str(err)) from None
    if isinstance(node, ast.List):
        return [_resolve(v) for v in node.elts]
    if isinstance(node, ast.Dict):
        return {_resolve(k): _resolve(v) for k, v in zip(node.keys, node.values, strict=True)}
    if isinstance(node, ast.BinOp):
        try:
            return _arith(node)[0]
        except CallError:
            raise
        except Exception as err:  # what `eval` raises, BFCL's decoder raises too
            raise CallError(f"arithmetic: {type(err).__name__}") from None
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Call):
        return ast.unparse(node) if not node.keywords else _resolve_call(node)
    if isinstance(node, ast.Tuple):
        return tuple(_resolve(v) for v in node.elts)
    if isinstance(node, ast.Subscript):
        return ast.unparse(node.value) + "[" + ast.unparse(node.slice) + "]"
    raise CallError(f"unsupported argument type {type(node).__name__}")


def _resolve_call(node: ast.Call) -> dict[str, dict[Any, Any]]:
    """BFCL's `resolve_ast_call`: {dotted name: {keyword: value}}; positional arguments are dropped."""
    parts = []
    func: ast.expr = node.func
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return {".".join(reversed(parts)): {k.arg: _resolve(k.value) for k in node.keywords}}


def _nested(value: Any) -> str:
    """BFCL's `parse_nested_value`: a dict whose values are all dicts is written as a call."""
    if isinstance(value, dict):
        if all(isinstance(v, dict) for v in value.values()):
            if not value:
                raise CallError("an empty dict argument")  # BFCL's decoder fails on it (IndexError)
            name = next(iter(value))
            return f"{name}({', '.join(f'{k}={_nested(v)}' for k, v in value[name].items())})"
        return "{" + ", ".join(f"'{k}': {_nested(v)}" for k, v in value.items()) + "}"
    return repr(value)


def decode_step(text: str, max_chars: int = 20_000) -> list[str]:
    """The call strings BFCL's decoder makes of a step's text (`default_decode_execute_prompting`);
    raises `CallError` where BFCL's decoder raises. Nothing in `text` is executed."""
    if len(text) > max_chars:
        raise CallError(f"the call text is longer than {max_chars} characters")
    source = text.strip("`\n ")
    if not source.startswith("["):
        source = "[" + source
    if not source.endswith("]"):
        source = source + "]"
    try:
        with warnings.catch_warnings():  # the policy's text is data: its oddities are not warnings to print
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(source.strip().strip("'"), mode="eval")
        body = tree.body
        if isinstance(body, ast.Call):
            nodes: list[ast.expr] = [body]
        elif isinstance(body, ast.List | ast.Tuple | ast.Set):
            nodes = list(body.elts)
        else:
            raise CallError(f"not a list of function calls ({type(body).__name__})")
        out = []
        for node in nodes:
            if not isinstance(node, ast.Call):
                raise CallError(f"expected a function call, found {type(node).__name__.lower()}")
            for name, args in _resolve_call(node).items():
                out.append(f"{name}({', '.join(f'{k}={_nested(v)}' for k, v in args.items())})")
        return out
    except CallError:
        raise
    except Exception as err:  # whatever BFCL's decoder raises, it skips the step
        raise CallError(f"not a list of function calls ({type(err).__name__})") from None


def read_call(text: str, allowed: Collection[str]) -> Call:
    """A decoded call string as a `Call`: a bare allowed name with literal keyword values, or a call
    with `error` set (it is not executed)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            node = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError) as err:
        return Call(text.split("(", 1)[0], (), text, f"{type(err).__name__}: not a valid call")
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        return Call(text.split("(", 1)[0], (), text, "a call must name one of the functions directly")
    name = node.func.id
    if name not in allowed:
        return Call(name, (), text, f"name {name!r} is not defined")
    if node.args or any(k.arg is None for k in node.keywords):
        return Call(name, (), text, "only keyword arguments are supported")
    kwargs = []
    for k in node.keywords:
        try:
            kwargs.append((str(k.arg), ast.literal_eval(k.value)))
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return Call(name, (), text, f"{name}({k.arg}=...): only literal values are supported")
    return Call(name, tuple(kwargs), text)


def parse_calls(text: str, allowed: Collection[str], max_chars: int = 20_000) -> list[Call]:
    """The calls of one step, decoded as BFCL decodes them (`decode_step`), each read by `read_call`;
    raises `CallError` for a step BFCL's decoder refuses or one with no call."""
    decoded = decode_step(text, max_chars)
    if not decoded:
        raise CallError("an empty list of calls")
    return [read_call(t, allowed) for t in decoded]
