"""What every settings section is built on, and what of the run's settings a task family reads.

A family's own sections live beside it (search_qa.py: `[task]`, `[retriever]`, `[agent]`;
function_calling.py: `[function_calling]`); `trace_rl.config` gathers them into the one `Settings`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

if TYPE_CHECKING:
    from trace_rl.tasks.function_calling import FunctionCallingSection
    from trace_rl.tasks.search_qa import AgentSection, RetrieverSection, TaskSection


class Section(BaseModel):
    # inf and nan are never meaningful settings (a learning rate of inf trains nothing but NaNs)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic reads `true` as 1 for an int field; `train.iterations=true` is a mistake, not 1."""
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and field.annotation in (int, float):
            raise ValueError(f"expected a number, got the boolean {str(value).lower()}")
        if field is not None and field.annotation is Path and isinstance(value, str) and not value.strip():
            # an empty folder would mean the working directory: `--set task.data_dir=$DATA` with DATA unset
            raise ValueError("an empty path (it would mean the current folder); give a folder")
        return value


class TaskSettings(Protocol):
    """The sections a task family reads (`trace_rl.config.Settings` has them all)."""

    @property
    def task(self) -> TaskSection: ...

    @property
    def retriever(self) -> RetrieverSection: ...

    @property
    def agent(self) -> AgentSection: ...

    @property
    def function_calling(self) -> FunctionCallingSection: ...
