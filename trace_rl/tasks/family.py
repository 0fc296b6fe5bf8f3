"""Task families, by name (`task.family`): what turns settings into a family's data, tools,
environment and scoring. Everything above the environment (flows, allocators, predictor, store, DVC
stages, bench) is the same for every family.

- `search_qa` (default, search_qa.py): Search-R1-style multi-hop QA over a corpus, the synthetic
  task or files (`[task]`, `[retriever]`, `[agent]`).
- `function_calling` (function_calling.py): BFCL v4 multi-turn episodes over its executable APIs
  (`[function_calling]`).

A family gives: `prepare` (the data, read or generated once), `tools` (what its environment uses:
the retriever, BFCL's data folder), `environment` (over a tokenizer), `featurizer` (the predictor's
inputs from a prefix), `f1` (a rollout's F1 for evaluation; None: the reward), `tokenizer_texts`
(what the tiny model's tokenizer is trained on), `expert_plan` (a training record's expert turns,
for the warm start), `max_turns`, `max_positions` (the context the tiny model is built for),
`identity` (what a built tiny model depends on), `preflight` (its inputs checked before a run
starts) and `errors` (what its tools raise that a user fixes). A third family is a module here that
registers itself in `FAMILIES`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from trace_core.registry import Registry
from trace_rl.tasks.settings import TaskSettings

if TYPE_CHECKING:  # torch: the settings and the analysis commands import no model code
    from trace_core.method.evaluation import LeafF1

Log = Callable[[str], None]


@dataclass(frozen=True)
class TaskData:
    """A family's records by split (QARecord or FCRecord), its corpus (search QA only) and folder."""

    train: list[Any]
    dev: list[Any]
    test: list[Any]
    corpus: Sequence[Any] = ()
    directory: Path = Path(".")


class TaskFamily(Protocol):
    max_positions: int

    @property
    def f1(self) -> LeafF1 | None: ...

    @property
    def errors(self) -> tuple[type[Exception], ...]:  # what its tools raise that the user fixes (one line)
        ...

    def prepare(self, s: TaskSettings, log: Log) -> TaskData: ...

    def tools(self, s: TaskSettings, data: TaskData) -> Any: ...

    def environment(self, s: TaskSettings, tools: Any, tokenizer: Any) -> Any: ...

    def featurizer(self, s: TaskSettings, device: str) -> Any: ...

    def tokenizer_texts(self, s: TaskSettings, data: TaskData, tools: Any) -> list[str]: ...

    def expert_plan(self, record: Any) -> list[str]: ...

    def max_turns(self, s: TaskSettings) -> int: ...

    def identity(self, s: TaskSettings) -> dict[str, Any]: ...

    def preflight(self, s: TaskSettings) -> None: ...


FAMILIES: Registry[TaskFamily] = Registry("task family")
FAMILIES.declare("search_qa", "trace_rl.tasks.search_qa")
FAMILIES.declare("function_calling", "trace_rl.tasks.function_calling")


def family(s: TaskSettings) -> TaskFamily:
    return FAMILIES.get(s.task.family)


def family_errors() -> tuple[type[Exception], ...]:
    """Every family's `errors`."""
    return tuple(error for name in FAMILIES.names() for error in FAMILIES.get(name).errors)
