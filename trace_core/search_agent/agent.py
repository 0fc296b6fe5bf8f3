"""The ReAct search agent's protocol: prompts, parsing a turn, observations and the terminal reward.

Search-R1 tags: the policy writes `<think>...</think>` and then either `<search>query</search>`, to
which the environment appends `<information>...</information>` with the retrieved passages, or
`<answer>...</answer>`, which ends the episode with reward EM(answer, gold) (see `reward.py`).
A turn is the policy's text up to the first closing `</search>` or `</answer>` plus the
observation appended after it. Turn t (1-based) is the node at depth t of the rollout tree.

Malformed output never raises. It becomes one of:
- a format-error observation, and the episode goes on: no closing tag before the token limit or the
  end-of-sequence token, a closing tag without its opening tag, an empty query;
- a terminal reward of 0: text after the answer's closing tag, an empty answer, or any turn
  that is not an answer once the turn limit `max_turns` is reached.

Deviations:
1. Search-R1 asks for a final answer after the turn limit; here the episode simply ends unsolved,
   so every leaf's reward comes from a turn the policy wrote under the same rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from trace_core.generation.backend import FinishReason
from trace_core.method.environment import StepResult, TextEnvironment, TurnConfig
from trace_core.search_agent.data import QARecord
from trace_core.search_agent.retrieval import Retriever, format_passages
from trace_core.search_agent.reward import exact_match

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

STOP_STRINGS = ("</search>", "</answer>")
DEFAULT_INSTRUCTION = "Answer the question. Search with <search> query </search>, answer with <answer> name </answer>."
FORMAT_ERROR = "Invalid action. Write <search> query </search> to search or <answer> name </answer> to answer."

Action = Literal["search", "answer", "invalid"]


@dataclass(frozen=True)
class AgentConfig(TurnConfig):
    """The turn limits and sampling (`TurnConfig`), plus topk: passages per search; instruction:
    the prompt's first line."""

    topk: int = 2
    instruction: str = DEFAULT_INSTRUCTION
    STOP: ClassVar[tuple[str, ...]] = STOP_STRINGS


@dataclass(frozen=True)
class ParsedTurn:
    """What a turn asked for: `argument` is the query or answer; `error` says why it is invalid."""

    action: Action
    argument: str
    error: str | None = None
    terminal_error: bool = False  # invalid in a way that ends the episode with reward 0


def parse_turn(text: str, finish_reason: FinishReason = "stop") -> ParsedTurn:
    """Parse the policy's text for one turn; never raises."""
    cut = [(text.find(tag), tag) for tag in STOP_STRINGS if tag in text]
    if not cut:
        why = "no closing tag before the token limit" if finish_reason == "length" else "no closing tag"
        return ParsedTurn("invalid", "", why)
    end, closing = min(cut)
    opening = closing.replace("/", "")
    start = text.rfind(opening, 0, end)
    if start < 0:
        return ParsedTurn("invalid", "", f"{closing} without {opening}")
    argument = text[start + len(opening) : end].strip()
    trailing = text[end + len(closing) :].strip()
    if closing == "</answer>":
        if trailing:
            return ParsedTurn("invalid", argument, "text after the answer", terminal_error=True)
        if not argument:
            return ParsedTurn("invalid", "", "empty answer", terminal_error=True)
        return ParsedTurn("answer", argument)
    if not argument:
        return ParsedTurn("invalid", "", "empty query")
    return ParsedTurn("search", argument)


def information(text: str) -> str:
    return f"\n\n<information>{text}</information>\n\n"


class SearchEnv(TextEnvironment):
    """Prompts and observations for the search agent over one retriever and tokenizer."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, retriever: Retriever, config: AgentConfig) -> None:
        if config.max_turns < 1:
            raise ValueError("max_turns must be >= 1")
        super().__init__(tokenizer)
        self.retriever = retriever
        self.config = config
        self._format_error_ids = self.encode(information(FORMAT_ERROR))

    def prompt_text(self, record: QARecord) -> str:
        return self.as_user_message(f"{self.config.instruction}\nQuestion: {record.question}\n")

    def step(
        self,
        records: Sequence[QARecord],
        texts: Sequence[str],
        depths: Sequence[int],
        finish_reasons: Sequence[FinishReason],
        histories: Sequence[Sequence[str]] | None = None,
    ) -> list[StepResult[ParsedTurn]]:
        """Apply a batch of turns (turn `depths[i]` of the episode on `records[i]`; a search turn
        needs no history, so `histories` is not read).

        All searches of the batch go to the retriever in one call.
        """
        parsed = [parse_turn(t, f) for t, f in zip(texts, finish_reasons, strict=True)]
        searching = [i for i, p in enumerate(parsed) if p.action == "search" and depths[i] < self.config.max_turns]
        hits = self.retriever.search([parsed[i].argument for i in searching], self.config.topk)
        found = dict(zip(searching, hits, strict=True))
        results = []
        for i, p in enumerate(parsed):
            last_turn = depths[i] >= self.config.max_turns
            if p.action == "answer":
                reward = exact_match(p.argument, records[i].golden_answers)
                results.append(StepResult(p, "", (), True, reward))
            elif p.terminal_error or last_turn:
                results.append(StepResult(p, "", (), True, 0.0))
            elif p.action == "search":
                obs = information(format_passages(found[i]))
                results.append(StepResult(p, obs, self.encode(obs), False, None))
            else:
                results.append(StepResult(p, information(FORMAT_ERROR), self._format_error_ids, False, None))
        return results
