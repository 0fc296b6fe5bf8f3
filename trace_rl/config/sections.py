"""The sections of the `Settings` (settings.py): one pydantic model per `[section]` of settings.toml
(the method's own, `[trace]`, `[predictor]`, `[policy]`, `[headroom]` and `[train]`, are in
method_sections.py; a task family's own, `[task]`, `[retriever]`, `[agent]` and
`[function_calling]`, beside the family in `trace_rl.tasks`), each field with its default and the
description `trace-rl settings --defaults` prints. Validators that need only their own section live
here; checks across sections live on `Settings`."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from trace_core.generation.backend import BACKENDS
from trace_rl.tasks.settings import Section

# a run name becomes a folder under run.output_dir: one path component, never '.', '..' or absolute
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
# placeholders a run name may hold, filled from the flow run's scheduled start (UTC) when it starts, so
# that each tick of a schedule trains a run of its own (`nightly-{date}`); a retry of the same flow run
# gets the same name
RUN_NAME_FIELDS = {"date": "%Y%m%d", "time": "%H%M", "datetime": "%Y%m%d-%H%M%S"}


def expand_run_name(name: str, when: datetime) -> str:
    """`name` with each `{date}`, `{time}` and `{datetime}` filled from `when`."""
    for field, pattern in RUN_NAME_FIELDS.items():
        name = name.replace("{" + field + "}", when.strftime(pattern))
    return name


class RunSection(Section):
    name: str = Field(
        "default",
        min_length=1,
        max_length=200,
        description="Run name; results go to <output_dir>/<name>. Letters, digits, '-', '_' and '.', starting with "
        "a letter or digit; {date}, {time} or {datetime} are filled from the run's (scheduled) start, UTC.",
    )
    seed: int = Field(0, ge=0, description="Seed for every random generator of the run.")
    output_dir: Path = Field(Path("runs"), description="Folder holding one sub-folder per run.")
    init_from: str = Field(
        "",
        description="Start from another run of the same store: its latest policy checkpoint (weights and "
        "optimizer), and a predictor that has learnt from its stored rollouts. Empty: the warm-started model.",
    )

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        filled = expand_run_name(name, datetime(2000, 1, 1, tzinfo=UTC))
        if "{" in filled or "}" in filled:
            fields = ", ".join("{" + f + "}" for f in RUN_NAME_FIELDS)
            raise ValueError(f"{name!r}: a run name may hold only the placeholders {fields}")
        if not RUN_NAME.fullmatch(filled):
            raise ValueError(
                f"{name!r} is not a run name: use letters, digits, '-', '_' and '.', starting with a letter "
                "or digit, without path separators (the name becomes a folder under run.output_dir)"
            )
        return name


class ModelSection(Section):
    preset: Literal["tiny", "smollm2", "path"] = Field(
        "tiny",
        description="'tiny' builds the default model; 'smollm2' converts SmolLM2-135M; 'path' loads `path`.",
    )
    path: str = Field("", description="A local Hugging Face causal-LM directory (preset='path'); empty: none.")
    models_dir: Path = Field(Path("models"), description="Where built or converted models are kept.")
    device: str = Field("cpu", description="Torch device for generation and training, e.g. 'cpu', 'cuda'.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype.")
    vocab_size: int = Field(2048, ge=300, description="Tiny model: BPE vocabulary size (upper bound).")
    hidden_size: int = Field(128, ge=32, description="Tiny model: hidden width.")
    intermediate_size: int = Field(384, ge=32, description="Tiny model: MLP width.")
    num_layers: int = Field(4, ge=1, description="Tiny model: decoder layers.")
    num_heads: int = Field(4, ge=1, description="Tiny model: attention heads.")
    head_dim: int = Field(32, ge=32, description="Tiny model: per-head dimension (vLLM needs >= 32).")
    max_positions: int = Field(
        0,
        ge=0,
        description="Tiny model: context length; 0: the task family's (1,024 search QA, 4,096 function calling).",
    )
    seed: int = Field(0, ge=0, description="Tiny model: seed of its initialisation and warm start.")

    @field_validator("device")
    @classmethod
    def _torch_device(cls, device: str) -> str:
        import torch

        try:
            torch.device(device)
        except RuntimeError:
            raise ValueError(f"{device!r} is not a torch device (e.g. 'cpu', 'cuda', 'cuda:1', 'mps')") from None
        return device

    @model_validator(mode="after")
    def _path_given(self) -> ModelSection:
        if self.preset == "path" and not self.path:
            raise ValueError("preset='path' needs model.path")
        if self.preset != "path" and self.path:
            raise ValueError(
                f"model.path is set but preset={self.preset!r} ignores it: set model.preset=path to load it"
            )
        return self


class WarmStartSection(Section):
    batch_size: int = Field(16, ge=1, description="Expert trajectories per step.")
    learning_rate: float = Field(3e-3, gt=0, description="AdamW peak learning rate.")
    max_steps: int = Field(3000, ge=1, description="Step limit.")
    max_seconds: float = Field(
        3600.0,
        gt=0,
        description="Safety time limit, seconds (the success band, not the clock, should stop it: a limit "
        "hit on a loaded machine makes the model depend on the load).",
    )
    eval_every: int = Field(40, ge=1, description="Steps between sampled success measurements.")
    eval_questions: int = Field(48, ge=8, description="Held-aside training questions measured.")
    eval_samples: int = Field(2, ge=1, description="Samples per measured question.")
    success_low: float = Field(0.35, ge=0, le=1, description="Stop once sampled success reaches this.")
    success_high: float = Field(0.55, ge=0, le=1, description="Upper end of the wanted success band.")

    @model_validator(mode="after")
    def _band(self) -> WarmStartSection:
        if self.success_low >= self.success_high:
            raise ValueError("warmstart.success_low must be below warmstart.success_high")
        return self


class BackendSection(Section):
    name: str = Field("transformers", description="Generation backend registered by this name.")

    @field_validator("name")
    @classmethod
    def _known_backend(cls, name: str) -> str:
        BACKENDS.get(name)
        return name

    kv_cache_mb: int = Field(512, ge=0, description="Memory for cached prefix keys/values, MiB.")
    max_batch_sequences: int = Field(256, ge=1, description="Sequences decoded side by side.")
    share_prefix: bool = Field(True, description="Encode a prefix once for all its siblings.")


class OrchestrationSection(Section):
    retries: int = Field(2, ge=0, le=10, description="Retries of a failed stage task before the run fails.")
    retry_delay_s: float = Field(
        2.0, ge=0, description="Seconds before a failed stage's first retry; each later retry waits twice as long."
    )
    retry_jitter: float = Field(
        0.5, ge=0, le=1, description="Each retry's wait varies by up to this fraction, so processes retry apart."
    )

    def retry_options(self) -> dict[str, Any]:
        """Prefect task options: `retries`, exponential back-off delays and their jitter."""
        delays = [self.retry_delay_s * 2**attempt for attempt in range(max(self.retries, 1))]
        return {"retries": self.retries, "retry_delay_seconds": delays, "retry_jitter_factor": self.retry_jitter}

    deployment: str = Field("default", min_length=1, description="Deployment name for `trace-rl serve`.")
    lease_ttl_s: float = Field(
        60.0,
        ge=5,
        le=3600,
        description="Seconds a run's write lease lasts without a heartbeat (renewed every third of it): a second "
        "process is refused while the lease holds; a crashed writer's lease expires after this long (at once when "
        "it ran on this host).",
    )
    cron: str = Field("", description="Schedule of the deployment (cron syntax); empty: runs only on demand.")

    @field_validator("cron")
    @classmethod
    def _cron_syntax(cls, cron: str) -> str:
        if cron:
            from prefect.client.schemas.schedules import CronSchedule

            try:
                CronSchedule(cron=cron)
            except ValidationError:
                raise ValueError(f"{cron!r} is not a cron schedule (e.g. '0 3 * * *': every day at 03:00)") from None
        return cron

    fail_once: list[str] = Field(
        default_factory=list,
        description="Fault injection: stages that fail once, as 'stage@iteration' (e.g. 'update_policy@1').",
    )
    task_runner: Literal["local", "ray"] = Field(
        "local",
        description="Where rollout shards grow: 'local' (one after another in this process) or 'ray' (one Prefect "
        "task per shard on a Ray cluster; `pip install '.[ray]'`).",
    )
    rollout_shards: int = Field(
        1,
        ge=1,
        le=256,
        description="Fixed shards (1 to 256) each rollout stage is split into, each with its own random stream; "
        "changes what a run computes (not the runner: local and ray give the same trees).",
    )
    ray_address: str = Field(
        "",
        description="Ray cluster to join (task_runner='ray'), e.g. 'ray://head:10001' or 'auto'; empty: start a "
        "local Ray bound to 127.0.0.1, dashboard off.",
    )
    ray_num_cpus: int = Field(
        2, ge=1, le=1024, description="CPUs (1 to 1024) of the local Ray started when ray_address is empty."
    )

    @field_validator("fail_once")
    @classmethod
    def _known_stages(cls, items: list[str]) -> list[str]:
        for item in items:
            stage, sep, iteration = item.partition("@")
            if not sep or not stage or not iteration.lstrip("-").isdigit():
                # which names are stages, the flow's stage table says when a run starts
                raise ValueError(f"{item!r} is not 'stage@iteration' (e.g. 'update_policy@1')")
        return items


class StoreSection(Section):
    url: SecretStr = Field(
        SecretStr(""),
        description="Rollout database URL, e.g. postgresql://user:pass@host/db; empty: "
        "sqlite:///<run.output_dir>/rollouts.db. Kept secret: never printed with its password.",
    )
