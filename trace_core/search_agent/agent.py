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
from typing import Literal

from transformers import PreTrainedTokenizerBase

from trace_core.generation.backend import FinishReason, SamplingParams
from trace_core.search_agent.data import QARecord
from trace_core.search_agent.retrieval import Retriever, format_passages
from trace_core.search_agent.reward import exact_match

STOP_STRINGS = ("</search>", "</answer>")
DEFAULT_INSTRUCTION = "Answer the question. Search with <search> query </search>, answer with <answer> name </answer>."
FORMAT_ERROR = "Invalid action. Write <search> query </search> to search or <answer> name </answer> to answer."

Action = Literal["search", "answer", "invalid"]


@dataclass(frozen=True)
class AgentConfig:
    """max_turns: policy turns per episode (>= 1); max_tokens_per_turn: a turn's token limit;
    topk: passages per search; temperature/top_p: sampling of every turn."""

    max_turns: int = 4
    max_tokens_per_turn: int = 48
    topk: int = 2
    temperature: float = 1.0
    top_p: float = 1.0
    instruction: str = DEFAULT_INSTRUCTION

    def sampling(self, temperature: float | None = None) -> SamplingParams:
        t = self.temperature if temperature is None else temperature
        return SamplingParams(t, self.top_p, self.max_tokens_per_turn, STOP_STRINGS)


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


@dataclass(frozen=True)
class StepResult:
    """The environment's answer to one turn: the observation to append, and whether it ended."""

    parsed: ParsedTurn
    observation: str
    observation_ids: tuple[int, ...]
    terminal: bool
    reward: float | None


def information(text: str) -> str:
    return f"\n\n<information>{text}</information>\n\n"


class SearchEnv:
    """Prompts and observations for the search agent over one retriever and tokenizer."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, retriever: Retriever, config: AgentConfig) -> None:
        if config.max_turns < 1:
            raise ValueError("max_turns must be >= 1")
        self.tokenizer = tokenizer
        self.retriever = retriever
        self.config = config
        self._format_error_ids = self.encode(information(FORMAT_ERROR))

    def encode(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=False))

    def prompt_text(self, record: QARecord) -> str:
        user = f"{self.config.instruction}\nQuestion: {record.question}\n"
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
            )
            return str(text)
        return user

    def prompt_ids(self, record: QARecord) -> tuple[int, ...]:
        bos = self.tokenizer.bos_token_id
        ids = self.encode(self.prompt_text(record))
        if bos is not None and not getattr(self.tokenizer, "chat_template", None) and (not ids or ids[0] != bos):
            ids = (bos, *ids)
        return ids

    def step(
        self,
        records: Sequence[QARecord],
        texts: Sequence[str],
        depths: Sequence[int],
        finish_reasons: Sequence[FinishReason],
    ) -> list[StepResult]:
        """Apply a batch of turns (turn `depths[i]` of the episode on `records[i]`).

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
