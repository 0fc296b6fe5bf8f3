"""What the method needs from a task family: a prompt with an identity, and an environment that turns
a prompt into token ids and answers the policy's turns.

The method (trees, rollouts, allocation, predictor, advantages, loss) is written against these
protocols only, so a second task family (a function-calling environment, say) plugs in without
touching it; `trace_core.search_agent.agent.SearchEnv` is the search-QA implementation.

- `Prompt`: what a tree's root carries; `id` and `data_source` identify it (the store keys prompts
  by both). Everything else on the record is the environment's business.
- `Environment.step(records, texts, depths, finish_reasons)`: one batch of turns, turn `depths[i]`
  of the episode on `records[i]`, the policy's decoded text and why its generation stopped; returns
  for each the parsed action (`action`, `argument`), the observation to append (text and token ids),
  whether the episode ended and, if it did, the reward.

Deviations: none (the paper describes a ReAct loop, not an interface).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from trace_core.generation.backend import FinishReason


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


class Environment(Protocol[P]):
    def prompt_ids(self, record: P) -> tuple[int, ...]: ...

    def prompt_text(self, record: P) -> str: ...

    def decode(self, ids: Sequence[int]) -> str:
        """The policy's tokens as text, special tokens kept (the parser sees what was generated)."""
        ...

    def step(
        self, records: Sequence[P], texts: Sequence[str], depths: Sequence[int], finish_reasons: Sequence[FinishReason]
    ) -> Sequence[TurnOutcome]: ...
