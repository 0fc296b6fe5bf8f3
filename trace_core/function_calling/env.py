"""The multi-turn function-calling agent's protocol over BFCL's executable APIs.

An episode is a BFCL multi-turn entry: the user speaks turn by turn; within a user turn the policy
takes steps. Each step either calls functions, `<call>[cd(folder='a'), ls()]</call>`, to which the
environment appends `<result>...</result>` with each call's output (truncated to
`max_output_chars`), or replies to the user, `<reply>...</reply>`, which ends the user turn: the
environment appends the next user turn, `<user>...</user>` (with the functions that become
available at it, for `miss_func`), or, after the last one, ends the episode with the reward.
A step is one tree node (one thought-action-observation turn of the method).

State: the API state before a step is the initial state with every call of the earlier steps on
the path executed in order (`apis.replay`), rebuilt from the path's texts (`history`), so a
continuation from any stored prefix sees exactly the state a from-scratch episode would
(`bench/fc_branching.py` compares both). Replay, not a copy kept per node: a copy per node would
hold every tree's backend objects in memory and could not cross a process or a crash (the store
keeps texts, not Python objects). Each step's `details` (kept with its node in the store) are its
calls (as decoded), their outputs as the policy saw them, and the digest of the API state after
the step (`ScenarioState.digest`).

Reward (binary, the paper's): BFCL's official multi-turn checker on the episode's calls, turn by
turn (state and execution-result checks after every user turn), given the calls as BFCL's runner
gives them: each call step's text decoded by BFCL's decoder (`calls.decode_step`: keyword
arguments only, so a positional argument is dropped), a step that does not decode left out. Any
public method of the episode's APIs may be called, as in BFCL (the prompt documents only those
BFCL offers at the turn: one `miss_func` ground truth itself calls a function before it is
offered). Within a step each call runs on its own: one that cannot run (an unknown function, a
non-literal argument) gets an error as its output and the others run, as in BFCL. A step that does
not decode calls nothing and gets the decoder's message as its observation; the policy's text is
never executed. A step that does not decode, or decodes to no call, ends the user turn (BFCL takes
it as the model's answer), and a user turn's 21st call step ends the episode (BFCL's force quit
after its 20-step limit, `max_steps_per_turn`). An episode that reaches either limit, or
`max_turns` steps in all, ends there and is checked as it stands (the turns it did not reach have
no calls, so it fails unless they needed none).

Warm start: `expert_steps` writes the ground truth as steps, one call each, every argument by
keyword (BFCL's ground truth passes some positionally, which its own decoder would drop).

Prompts: the instruction, the functions of the episode's APIs, then the first user turn; with
`docs="compact"` (default) one line per function (name, parameters, `?` marking optional ones,
and the first sentence of its own description); `docs="official"` gives BFCL's JSON documentation
(for long-context models); `docs="names"` only the names, on one line (for a small policy trained
from scratch: it learns the signatures from the warm start's expert steps, and its prompt is a
seventh as long). With a tokenizer that has a chat template, the episode is the chat an
instruct model was tuned on: the prompt is the first user message, each step an assistant message,
each step's results a `tool` message and each later user turn a `user` message, rendered by the
template itself (`TextEnvironment.as_next_message`); without one, the texts follow each other.

Deviations:
1. BFCL shows the model its documentation as a system prompt in the model's native tool format
   and lets it answer in several formats; one plain-text format with tags here, so a small model
   trained from scratch can learn it.
2. As in BFCL, a step that does not decode (or decodes to no call) ends the user turn like a reply,
   and a turn's 21st call step ends the episode (BFCL's 20-step limit); here the policy is also
   told why a step did not decode, before the next user turn (BFCL shows nothing). Neither the
   notice nor the text counts for the reward.
3. `max_turns` also caps the steps of a whole episode (the tree's depth; BFCL has no such cap).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from trace_core.function_calling.apis import API_MODULES, ScenarioState, official_check, public_methods, signature
from trace_core.function_calling.calls import Call, CallError, parse_calls
from trace_core.function_calling.data import FCRecord
from trace_core.generation.backend import FinishReason
from trace_core.method.environment import StepResult, TextEnvironment, TurnConfig

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

STOP_STRINGS = ("</call>", "</reply>")
DEFAULT_INSTRUCTION = (
    "You operate the functions below for the user. To call functions write <call>[name(arg=value), ...]</call>; "
    "when the request is done, answer with <reply> text </reply>."
)
FORMAT_ERROR = "Invalid step. Write <call>[name(arg=value)]</call> to call functions or <reply> text </reply> to reply."
Docs = Literal["compact", "official", "names"]
StepAction = Literal["call", "reply", "invalid"]


@dataclass(frozen=True)
class FCConfig(TurnConfig):
    """The step limits and sampling (`TurnConfig`: max_turns counts the policy's steps in the whole
    episode, a bound on the tree's depth), plus max_steps_per_turn: call steps in one user turn
    before the episode is forced to end, as BFCL forces it; max_output_chars: each call's output is
    cut to this many characters (0: never cut, as in BFCL); docs: 'compact', 'official' or 'names'
    function documentation in the prompt; instruction: the prompt's first line."""

    max_turns: int = 16
    max_tokens_per_turn: int = 64
    max_steps_per_turn: int = 20  # BFCL's MAXIMUM_STEP_LIMIT
    max_output_chars: int = 0
    docs: Docs = "compact"
    instruction: str = DEFAULT_INSTRUCTION
    STOP: ClassVar[tuple[str, ...]] = STOP_STRINGS


@dataclass(frozen=True)
class FCTurn:
    """A parsed step: `argument` is the call list's text or the reply; `calls` the parsed calls."""

    action: StepAction
    argument: str
    calls: tuple[Call, ...] = ()
    error: str | None = None


def _tagged(text: str, finish_reason: FinishReason) -> tuple[str, str] | str:
    """(tag, body) of the step's first closed tag, or why there is none."""
    cut = [(text.find(f"</{tag}>"), tag) for tag in ("call", "reply") if f"</{tag}>" in text]
    if not cut:
        return "no closing tag before the token limit" if finish_reason == "length" else "no closing tag"
    end, tag = min(cut)
    start = text.rfind(f"<{tag}>", 0, end)
    if start < 0:
        return f"</{tag}> without <{tag}>"
    return tag, text[start + len(tag) + 2 : end].strip()


def parse_step(text: str, allowed: set[str] | frozenset[str], finish_reason: FinishReason = "stop") -> FCTurn:
    """Parse one step of the policy; never raises and never executes anything."""
    tagged = _tagged(text, finish_reason)
    if isinstance(tagged, str):
        return FCTurn("invalid", "", error=tagged)
    tag, body = tagged
    if tag == "reply":
        return FCTurn("reply", body)
    try:
        return FCTurn("call", body, tuple(parse_calls(body, allowed)))
    except CallError as err:
        return FCTurn("invalid", body, error=str(err))


def keyword_call(text: str, classes: Sequence[str]) -> str:
    """A ground-truth call (BFCL's text, literal arguments) with every argument by keyword: a
    positional one gets its parameter's name from the method's signature."""
    node = ast.parse(text.strip(), mode="eval").body
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ValueError(f"not a call of a function by name: {text!r}")
    params = list(signature(classes, node.func.id).parameters)
    if len(node.args) > len(params):
        raise ValueError(f"{text!r}: more positional arguments than {node.func.id} has parameters")
    parts = [f"{params[i]}={ast.get_source_segment(text.strip(), a)}" for i, a in enumerate(node.args)]
    parts += [f"{k.arg}={ast.get_source_segment(text.strip(), k.value)}" for k in node.keywords]
    return f"{node.func.id}({', '.join(parts)})"


def expert_steps(record: FCRecord, reply: str = "done", steps_per_turn: int = 20) -> list[str]:
    """The ground truth as the policy's steps: one `<call>` step per ground-truth call (arguments by
    keyword, `keyword_call`), then a reply ending each user turn (the warm start's trajectories).
    A turn of more calls than `steps_per_turn` (BFCL's step limit) packs them into that many steps,
    in order, so the expert is never forced to quit."""
    out = []
    for turn in record.ground_truth:
        calls = [keyword_call(c, record.classes) for c in turn]
        size = -(-len(calls) // steps_per_turn) if calls else 1
        out += [f"<call>[{', '.join(calls[i : i + size])}]</call>" for i in range(0, len(calls), size)]
        out.append(f"<reply>{reply}</reply>")
    return out


def longest_expert_step(records: Sequence[FCRecord], tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokens of the longest step of the ground truth written as the policy's steps
    (`expert_steps`) over `records`: a step-token limit below it makes some episode unsolvable."""
    texts = sorted({text for r in records for text in expert_steps(r)})
    if not texts:
        return 1
    return max(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])


def turn_pass_rate(leaf: Any, record: FCRecord) -> float:
    """The share of the episode's user turns BFCL's checker passes before the first it fails (a
    finished rollout's partial credit; 1.0 exactly when the reward is 1)."""
    details = leaf.details or {}
    return float(details.get("turns_passed", len(record.turns) * (leaf.reward or 0.0))) / len(record.turns)


def _cut(output: str, limit: int) -> str:
    return output[:limit] if limit > 0 else output


@dataclass
class Episode:
    """Where an episode stands after some steps: the user turn it is in, and the calls of every step
    so far, by user turn (`steps[t]`: one list of calls per call step of turn t)."""

    turn: int
    steps: list[list[list[Call]]]

    def calls(self) -> list[Call]:
        return [c for turn in self.steps for step in turn for c in step]


def allowed_functions(record: FCRecord) -> frozenset[str]:
    """What a step may call: every public method of the episode's APIs, as BFCL executes them."""
    return frozenset(public_methods(record.classes))


def documented_functions(record: FCRecord, turn: int) -> frozenset[str]:
    """What the prompt documents up to user turn `turn`: BFCL's offer, without its excluded
    functions and those held back to a later turn."""
    return allowed_functions(record) - set(record.excluded) - record.unavailable(turn)


def ends_turn(step: FCTurn) -> bool:
    """Whether the step ends the user turn, as in BFCL's runner: a reply, a step that does not decode,
    or one that decodes to no call (only a step with calls continues the turn)."""
    return step.action != "call" or not step.calls


def follow(record: FCRecord, history: Sequence[str]) -> Episode:
    """The episode after the policy's earlier steps `history` (their texts, oldest first)."""
    episode = Episode(0, [[] for _ in record.turns])
    for text in history:
        step = parse_step(text, allowed_functions(record))
        if ends_turn(step):
            episode.turn += 1
        else:
            episode.steps[episode.turn].append(list(step.calls))
    return episode


@cache
def _doc_entries(data_dir: str, class_name: str) -> tuple[dict[str, Any], ...]:
    path = Path(data_dir) / "multi_turn_func_doc" / f"{API_MODULES[class_name]}.json"
    return tuple(json.loads(line) for line in path.read_text().splitlines() if line.strip())


def _short_description(text: str) -> str:
    tail = text.split("Tool description:", 1)[-1].strip()
    return tail.split(". ")[0].rstrip(".")


def function_docs(data_dir: Path, record: FCRecord, names: frozenset[str], docs: Docs) -> str:
    """The documentation of the functions `names` of the episode's APIs."""
    entries = [e for c in record.classes for e in _doc_entries(str(data_dir), c) if e["name"] in names]
    if docs == "official":
        return "\n".join(json.dumps(e, indent=4) for e in entries)
    if docs == "names":
        return ", ".join(e["name"] for e in entries)
    lines = []
    for e in entries:
        required = set(e["parameters"].get("required", []))
        params = ", ".join(p if p in required else f"{p}?" for p in e["parameters"].get("properties", {}))
        lines.append(f"{e['name']}({params}): {_short_description(e['description'])}")
    return "\n".join(lines)


class FunctionCallingEnv(TextEnvironment):
    """Prompts and observations for the function-calling agent over one tokenizer (None: texts
    only, for `transcript`); `data_dir` is BFCL's data folder (for the function documentation)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase | None, data_dir: Path, config: FCConfig) -> None:
        if config.max_turns < 1:
            raise ValueError("max_turns must be >= 1")
        super().__init__(tokenizer)  # type: ignore[arg-type]  # None: for `transcript`, which never encodes
        self.data_dir = data_dir
        self.config = config

    def prompt_text(self, record: FCRecord) -> str:
        docs = function_docs(self.data_dir, record, documented_functions(record, 0), self.config.docs)
        return self.as_user_message(f"{self.config.instruction}\nFunctions:\n{docs}\n<user>{record.turns[0]}</user>\n")

    def _user_turn(self, record: FCRecord, turn: int) -> str:
        newly = record.unavailable(turn - 1) - record.unavailable(turn)
        added = ""
        if newly:
            docs = function_docs(self.data_dir, record, frozenset(newly), self.config.docs)
            added = f"\nNew functions:\n{docs}"
        return f"\n<user>{record.turns[turn]}{added}</user>\n"

    def _verdict(self, record: FCRecord, episode: Episode) -> tuple[float, int]:
        """(the reward, the user turns passed): BFCL's checker on the whole episode, and where it
        fails, on its first 1, 2, ... turns until one fails (the turns passed before the first failure)."""
        valid, _ = official_check(episode.steps, record.ground_truth, record.entry())
        if valid:
            return 1.0, len(record.turns)
        passed = 0
        while passed + 1 < len(record.turns):
            head, _ = official_check(episode.steps[: passed + 1], record.ground_truth[: passed + 1], record.entry())
            if not head:
                break
            passed += 1
        return 0.0, passed

    def respond(
        self, record: FCRecord, text: str, depth: int, finish: FinishReason, history: Sequence[str]
    ) -> tuple[FCTurn, str, bool, float | None, dict[str, Any]]:
        """Step `depth` of the episode on `record` after the steps `history`, as text: (the parsed
        step, the observation, whether the episode ended, its reward if it did, the step's details)."""
        episode = follow(record, history)
        step = parse_step(text, allowed_functions(record), finish)
        state = ScenarioState(record.config(), record.classes, record.long_context)
        for call in episode.calls():
            state.execute(call)
        outputs: list[str] = []
        forced = False
        if ends_turn(step):
            episode.turn += 1
        else:
            episode.steps[episode.turn].append(list(step.calls))
            outputs = [_cut(state.execute(c), self.config.max_output_chars) for c in step.calls]
            forced = len(episode.steps[episode.turn]) > self.config.max_steps_per_turn  # BFCL's force quit
        details: dict[str, Any] = {"calls": [c.text for c in step.calls], "outputs": outputs, "state": state.digest()}
        if forced or episode.turn >= len(record.turns) or depth >= self.config.max_turns:
            reward, details["turns_passed"] = self._verdict(record, episode)
            return step, "", True, reward, details
        if step.action == "call" and step.calls:
            observation = self._said("tool", "\n<result>" + "\n".join(outputs) + "</result>\n")
        else:
            notice = (
                ""
                if step.action == "reply"
                else f"\n<result>{FORMAT_ERROR} ({step.error or 'no call'}) The turn ends.</result>"
            )
            observation = self._said("user", notice + self._user_turn(record, episode.turn))
        return step, observation, False, None, details

    def _said(self, role: str, text: str) -> str:
        """An observation: in its own chat message (`role`) when the tokenizer has a template."""
        return text if self.tokenizer is None else self.as_next_message(role, text)

    def transcript(self, record: FCRecord, steps: Sequence[str]) -> list[str]:
        """The prompt, then each of `steps` with the observation it gets (texts only: no tokenizer
        is needed, so a new tokenizer can be trained on them)."""
        out = [self.prompt_text(record)]
        for depth, text in enumerate(steps, 1):
            _, observation, terminal, _, _ = self.respond(record, text, depth, "stop", steps[: depth - 1])
            out += [text, observation]
            if terminal:
                break
        return out

    def step(
        self,
        records: Sequence[FCRecord],
        texts: Sequence[str],
        depths: Sequence[int],
        finish_reasons: Sequence[FinishReason],
        histories: Sequence[Sequence[str]] | None = None,
    ) -> list[StepResult[FCTurn]]:
        """Apply a batch of steps (step `depths[i]` of the episode on `records[i]`, after the steps
        `histories[i]` on its path)."""
        past = histories if histories is not None else [()] * len(records)
        out = []
        for r, t, d, f, h in zip(records, texts, depths, finish_reasons, past, strict=True):
            step, observation, terminal, reward, details = self.respond(r, t, d, f, h)
            out.append(StepResult(step, observation, self.encode(observation), terminal, reward, details))
        return out
