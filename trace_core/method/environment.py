"""What the method needs from a task family: a prompt with an identity, and an environment that turns
a prompt into token ids and answers the policy's turns.

The method (trees, rollouts, allocation, predictor, advantages, loss) is written against these
protocols only, so a second task family (a function-calling environment, say) plugs in without
touching it; `trace_core.search_agent.agent.SearchEnv` is the search-QA implementation.

- `Prompt`: what a tree's root carries; `id` and `data_source` identify it (the store keys prompts
  by both). Everything else on the record is the environment's business.
- `Environment.step(records, texts, depths, finish_reasons, histories)`: one batch of turns, turn
  `depths[i]` of the episode on `records[i]`, the policy's decoded text, why its generation stopped
  and the texts of the policy's earlier turns on the path (a stateful environment rebuilds its
  state from them; the search environment needs none); returns
  for each the parsed action (`action`, `argument`), the observation to append (text and token ids),
  whether the episode ended and, if it did, the reward (and, optionally, `details` kept with the node).

`TextEnvironment` is the shared base of the tokenizer-based environments (token ids of prompts and
observations, chat template).

Deviations: none (the paper describes a ReAct loop, not an interface).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from trace_core.generation.backend import FinishReason, SamplingParams

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class Prompt(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def data_source(self) -> str: ...


class ParsedAction(Protocol):
    @property
    def action(self) -> str: ...

    @property
    def argument(self) -> str: ...


class TurnOutcome(Protocol):
    @property
    def parsed(self) -> ParsedAction: ...

    @property
    def observation(self) -> str: ...

    @property
    def observation_ids(self) -> tuple[int, ...]: ...

    @property
    def terminal(self) -> bool: ...

    @property
    def reward(self) -> float | None: ...


P = TypeVar("P", bound=Prompt, contravariant=True)
A = TypeVar("A", bound=ParsedAction)


@dataclass(frozen=True)
class StepResult(Generic[A]):
    """An environment's answer to one turn: the parsed turn, the observation to append (text and
    token ids), whether the episode ended and, if it did, the reward; `details`: what the
    environment wants kept with the node (JSON-able: a stateful environment's calls, their outputs
    and a digest of its state), or None."""

    parsed: A
    observation: str
    observation_ids: tuple[int, ...]
    terminal: bool
    reward: float | None
    details: Mapping[str, Any] | None = None


class Environment(Protocol[P]):
    def prompt_ids(self, record: P) -> tuple[int, ...]: ...

    def prompt_text(self, record: P) -> str: ...

    def decode(self, ids: Sequence[int]) -> str:
        """The policy's tokens as text, special tokens kept (the parser sees what was generated)."""
        ...

    def step(
        self,
        records: Sequence[P],
        texts: Sequence[str],
        depths: Sequence[int],
        finish_reasons: Sequence[FinishReason],
        histories: Sequence[Sequence[str]] | None = None,
    ) -> Sequence[TurnOutcome]: ...


@dataclass(frozen=True)
class TurnConfig:
    """max_turns: policy turns per episode (>= 1); max_tokens_per_turn: a turn's token limit;
    temperature/top_p: sampling of every turn; `STOP` (per family): the strings that end a turn."""

    max_turns: int = 4
    max_tokens_per_turn: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    STOP: ClassVar[tuple[str, ...]] = ()

    def sampling(self, temperature: float | None = None) -> SamplingParams:
        t = self.temperature if temperature is None else temperature
        return SamplingParams(t, self.top_p, self.max_tokens_per_turn, self.STOP)


class TextEnvironment:
    """What a text environment over a Hugging Face tokenizer shares: encoding and decoding turns, and
    the prompt's token ids from its text (`prompt_text`, each family's own), wrapped in the
    tokenizer's chat template when it has one, else preceded by the BOS token."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer

    def encode(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=False))

    def as_user_message(self, text: str) -> str:
        """`text` as the user's message in the chat template, or as it is without one."""
        if getattr(self.tokenizer, "chat_template", None):
            wrapped = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
            return str(wrapped)
        return text

    def as_next_message(self, role: str, text: str) -> str:
        """What follows the policy's step when the environment answers in its own chat message: the
        end of the assistant's message, `text` as a `role` message ("tool", or "user" where the
        template knows no tool role), and the start of the assistant's next message, exactly as the
        chat template renders that conversation; `text` as it is without a template."""
        if not getattr(self.tokenizer, "chat_template", None):
            return text
        mark = "\x00STEP\x00"  # stands for the policy's step, found again in the rendered conversation
        for speaker in (role, "user"):
            messages = [{"role": "user", "content": "."}, {"role": "assistant", "content": mark}]
            try:
                rendered = str(
                    self.tokenizer.apply_chat_template(
                        [*messages, {"role": speaker, "content": text}], tokenize=False, add_generation_prompt=True
                    )
                )
            except Exception:  # a template that refuses the role (jinja raises its own errors)
                continue
            if mark in rendered:
                return rendered[rendered.index(mark) + len(mark) :]
        return text

    def prompt_text(self, record: Any) -> str:
        raise NotImplementedError

    def prompt_ids(self, record: Any) -> tuple[int, ...]:
        bos = self.tokenizer.bos_token_id
        ids = self.encode(self.prompt_text(record))
        if bos is not None and not getattr(self.tokenizer, "chat_template", None) and (not ids or ids[0] != bos):
            ids = (bos, *ids)
        return ids
