"""Whether our reward is BFCL's verdict: episodes written as the policy's steps, perturbed, scored
both by the environment and by BFCL's own runner code.

`bfcl_verdict` scores call-step texts the way BFCL's evaluation runner does
(`_evaluate_single_multi_turn_entry`): each step decoded by BFCL's own decoder
(`default_decode_execute_prompting`, its source loaded from the installed package; the module it
lives in also imports parsers for other languages, not installed here), a step that fails to decode
or decodes to nothing left out, then `multi_turn_checker` on the result. BFCL's decoder evaluates
arithmetic with `eval` and its checker executes the decoded strings: give it only texts written
here (`perturbations`), never a policy's.

`env_reward` plays the same steps through `FunctionCallingEnv` (each step after the earlier ones as
its history, each user turn ended by a reply) and returns the reward of the final step.

`perturbations` writes, for one episode, its ground truth as steps (one call per step, arguments by
keyword: `env.expert_steps`) and variants of it, each deterministic given the episode:

- ground_truth: as written;
- drop_call: one call left out;
- change_argument: one argument's value changed;
- reorder: one turn's calls in one step, in reverse order;
- extra_read: a call that reads state, added as a step of the first turn with calls;
- extra_write: a call that changes state, added likewise (no such call for the math API alone);
- reply_instead: one call step replaced by prose (a step that does not decode);
- unknown_function: a call of a function that does not exist, added to a step;
- non_literal: one argument written as an expression (a bare name, arithmetic, concatenation);
- positional: every call's leading arguments written positionally, in the signature's order.

A variant that does not apply to an episode (no call has an argument, no turn has two calls) is
left out.

Deviations:
1. BFCL's decoder functions are compiled from its source alone, without the rest of their module
   (whose imports need tree-sitter parsers for other languages); the code run is BFCL's own.
2. The runner's check for an episode cut short (fewer turns than the ground truth) is left out:
   every variant here reaches every turn.
"""

from __future__ import annotations

import ast
import random
import re
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from trace_core.function_calling.apis import run_checker, signature
from trace_core.function_calling.data import FCRecord
from trace_core.function_calling.env import FCConfig, FunctionCallingEnv, keyword_call

# the functions of BFCL's decoder, by name, from bfcl_eval/model_handler/utils.py
DECODER_FUNCTIONS = (
    "ast_parse",
    "resolve_ast_call",
    "resolve_ast_by_type",
    "parse_nested_value",
    "decoded_output_to_execution_list",
    "default_decode_execute_prompting",
)
PERTURBATIONS = (
    "ground_truth",
    "drop_call",
    "change_argument",
    "reorder",
    "extra_read",
    "extra_write",
    "reply_instead",
    "unknown_function",
    "non_literal",
    "positional",
)
READ_CALLS = {
    "GorillaFileSystem": "pwd()",
    "MathAPI": "absolute_value(number=-2)",
    "MessageAPI": "list_users()",
    "TwitterAPI": "posting_get_login_status()",
    "TicketAPI": "ticket_get_login_status()",
    "TradingBot": "get_current_time()",
    "TravelAPI": "list_all_airports()",
    "VehicleControlAPI": "check_tire_pressure()",
}
WRITE_CALLS = {
    "GorillaFileSystem": "mkdir(dir_name='trace_extra')",
    "MessageAPI": "add_contact(user_name='trace_extra')",
    "TwitterAPI": "post_tweet(content='trace extra')",
    "TicketAPI": "create_ticket(title='trace extra')",
    "TradingBot": "add_to_watchlist(stock='ZZZZ')",
    "TravelAPI": "set_budget_limit(access_token='trace', budget_limit=1.0)",
    "VehicleControlAPI": "setHeadlights(mode='on')",
}
PROSE = "I have done what you asked."

Steps = list[list[str]]  # per user turn, the call steps' texts (what is inside <call>...</call>)


@cache
def bfcl_decoder() -> Callable[[str], list[str]]:
    """BFCL's `default_decode_execute_prompting`, compiled from the installed package's source."""
    import bfcl_eval
    from bfcl_eval.constants.enums import ReturnFormat

    path = Path(bfcl_eval.__file__).parent / "model_handler" / "utils.py"
    tree = ast.parse(path.read_text())
    wanted: list[ast.stmt] = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in DECODER_FUNCTIONS]
    if len(wanted) != len(DECODER_FUNCTIONS):
        raise RuntimeError(f"{path}: expected the functions {', '.join(DECODER_FUNCTIONS)}")
    namespace: dict[str, Any] = {"ast": ast, "re": re, "ReturnFormat": ReturnFormat}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), str(path), "exec"), namespace)
    decode: Callable[[str], list[str]] = namespace["default_decode_execute_prompting"]
    return decode


def bfcl_verdict(record: FCRecord, steps: Steps) -> bool:
    """BFCL's verdict on the call steps `steps`, decoded and checked as its runner does."""
    decode = bfcl_decoder()
    decoded: list[list[list[str]]] = []
    for turn in steps:
        kept = []
        for text in turn:
            try:
                calls = decode(text)
            except Exception:  # BFCL's runner skips a step it cannot decode
                continue
            if calls and not (len(calls) == 1 and not calls[0]):
                kept.append(calls)
        decoded.append(kept)
    return run_checker(decoded, record.ground_truth, record.entry())[0]


def step_texts(steps: Steps, reply: str = "done") -> list[str]:
    """The policy's texts: each call step in `<call>` tags, each user turn ended by a reply."""
    return [t for turn in steps for t in [*(f"<call>{s}</call>" for s in turn), f"<reply>{reply}</reply>"]]


def env_reward(env: FunctionCallingEnv, record: FCRecord, steps: Steps) -> float:
    """The environment's reward for the policy writing `steps` (step by step, each with the earlier
    steps as its history)."""
    texts = step_texts(steps)
    for depth, text in enumerate(texts, 1):
        _, _, terminal, reward, _ = env.respond(record, text, depth, "stop", texts[: depth - 1])
        if terminal:
            return float(reward or 0.0)
    raise RuntimeError(f"{record.id}: the episode did not end after {len(texts)} steps")


def text_env(data_dir: Path) -> FunctionCallingEnv:
    """An environment for `env_reward` (texts only, no tokenizer; no step limit in the way: BFCL's
    checker, called directly, has none either)."""
    return FunctionCallingEnv(None, data_dir, FCConfig(max_turns=10_000, max_steps_per_turn=10_000))


def expert(record: FCRecord) -> Steps:
    return [[f"[{keyword_call(c, record.classes)}]" for c in turn] for turn in record.ground_truth]


def _call_node(text: str) -> ast.Call:
    node = ast.parse(text.strip().strip("[]"), mode="eval").body
    assert isinstance(node, ast.Call)
    return node


def _with_keyword(text: str, index: int, source: str) -> str:
    """The one-call step `text` with its `index`-th keyword argument's value written as `source`."""
    node = _call_node(text)
    inner = text.strip().strip("[]")
    parts = [
        f"{k.arg}={source if i == index else ast.get_source_segment(inner, k.value)}"
        for i, k in enumerate(node.keywords)
    ]
    return f"[{ast.unparse(node.func)}({', '.join(parts)})]"


def _changed(value: Any) -> str | None:
    if isinstance(value, bool):
        return repr(not value)
    if isinstance(value, int | float):
        return repr(value + 1)
    if isinstance(value, str):
        return repr(value + "_x")
    if isinstance(value, list):
        return repr(value[:-1] if value else ["trace_x"])
    return None


def _expression(value: Any) -> str | None:
    """`value` written as an expression BFCL's decoder reduces to it (or nearly: see `_resolve`)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return f"{value - 1} + 1"
    if isinstance(value, str):
        if value.isidentifier() and value not in ("True", "False", "None"):
            return value  # a bare name: BFCL's decoder takes its text
        if len(value) > 1:
            return f"{value[: len(value) // 2]!r} + {value[len(value) // 2 :]!r}"
    return None


def _positional(record: FCRecord, text: str) -> str:
    """The one-call step `text` with the leading arguments that follow the signature's order
    written positionally."""
    node = _call_node(text)
    inner = text.strip().strip("[]")
    name = ast.unparse(node.func)
    params = list(signature(record.classes, name).parameters)
    parts = []
    leading = True
    for i, k in enumerate(node.keywords):
        value = ast.get_source_segment(inner, k.value)
        leading = leading and i < len(params) and k.arg == params[i]
        parts.append(str(value) if leading else f"{k.arg}={value}")
    return f"[{name}({', '.join(parts)})]"


def _first_argument(steps: Steps, fits: Callable[[Any], str | None]) -> tuple[int, int, int, str] | None:
    """(turn, step, keyword index, new source) of the first argument that `fits` rewrites."""
    for t, turn in enumerate(steps):
        for s, text in enumerate(turn):
            for i, k in enumerate(_call_node(text).keywords):
                try:
                    value = ast.literal_eval(k.value)
                except ValueError:
                    continue
                new = fits(value)
                if new is not None:
                    return t, s, i, new
    return None


def perturbations(record: FCRecord) -> dict[str, Steps]:
    """The ground truth as steps and its variants, by name (see the module's docstring)."""
    truth = expert(record)
    rng = random.Random(record.id)
    with_calls = [t for t, turn in enumerate(truth) if turn]
    out: dict[str, Steps] = {"ground_truth": truth}
    if not with_calls:
        return out
    first = with_calls[0]

    def copy_steps() -> Steps:
        return [list(turn) for turn in truth]

    t = rng.choice(with_calls)
    dropped = copy_steps()
    del dropped[t][rng.randrange(len(dropped[t]))]
    out["drop_call"] = dropped

    found = _first_argument(truth, _changed)
    if found is not None:
        t, s, i, new = found
        changed = copy_steps()
        changed[t][s] = _with_keyword(changed[t][s], i, new)
        out["change_argument"] = changed

    several = [t for t in with_calls if len(truth[t]) > 1]
    if several:
        t = rng.choice(several)
        reordered = copy_steps()
        reordered[t] = ["[" + ", ".join(s.strip("[]") for s in reversed(truth[t])) + "]"]
        out["reorder"] = reordered

    read = next((READ_CALLS[c] for c in record.classes if c in READ_CALLS), None)
    if read is not None:
        extra = copy_steps()
        extra[first].insert(rng.randrange(len(extra[first]) + 1), f"[{read}]")
        out["extra_read"] = extra
    write = next((WRITE_CALLS[c] for c in record.classes if c in WRITE_CALLS), None)
    if write is not None:
        extra = copy_steps()
        extra[first].insert(rng.randrange(len(extra[first]) + 1), f"[{write}]")
        out["extra_write"] = extra

    t = rng.choice(with_calls)
    prose = copy_steps()
    prose[t][rng.randrange(len(prose[t]))] = PROSE
    out["reply_instead"] = prose

    unknown = copy_steps()
    s = rng.randrange(len(unknown[first]))
    unknown[first][s] = unknown[first][s][:-1] + ", no_such_function(x=1)]"
    out["unknown_function"] = unknown

    found = _first_argument(truth, _expression)
    if found is not None:
        t, s, i, new = found
        expression = copy_steps()
        expression[t][s] = _with_keyword(expression[t][s], i, new)
        out["non_literal"] = expression

    out["positional"] = [[_positional(record, s) for s in turn] for turn in truth]
    return out


def score(env: FunctionCallingEnv, record: FCRecord) -> dict[str, tuple[bool, bool]]:
    """Per perturbation of `record`: (our reward is 1, BFCL's verdict is valid)."""
    return {
        name: (env_reward(env, record, steps) == 1.0, bfcl_verdict(record, steps))
        for name, steps in perturbations(record).items()
    }


def agreement(env: FunctionCallingEnv, records: Sequence[FCRecord]) -> tuple[dict[str, dict[str, int]], list[str]]:
    """Per perturbation: episodes scored, how many our reward agrees with BFCL's verdict on, and how
    many each side passes; and the disagreements ("<id> <perturbation>")."""
    counts = {p: {"episodes": 0, "agree": 0, "ours": 0, "bfcl": 0} for p in PERTURBATIONS}
    disagree = []
    for record in records:
        for name, (ours, theirs) in score(env, record).items():
            c = counts[name]
            c["episodes"] += 1
            c["agree"] += ours == theirs
            c["ours"] += ours
            c["bfcl"] += theirs
            if ours != theirs:
                disagree.append(f"{record.id} {name}")
    return counts, disagree
