"""The one `Settings` object: read from settings.toml, overridable by environment variables.

Precedence, highest first: explicit overrides (`trace-rl run --set section.key=value`), environment
variables (`TRACE_<SECTION>__<KEY>`, e.g. `TRACE_AGENT__MAX_TURNS=5`), the TOML file
(`settings.toml` in the working directory, or the file named by `TRACE_SETTINGS_FILE`), and the
defaults below, which are the embedded default run (CPU, SQLite, the tiny model, the synthetic
task). Unknown keys, wrong types and impossible combinations are errors that name the key.
"""

from __future__ import annotations

import os
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import (
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from trace_rl.config.errors import SettingsError
from trace_rl.config.method_sections import HeadroomSection, PolicySection, PredictorSection, TraceSection, TrainSection
from trace_rl.config.sections import (
    BackendSection,
    ModelSection,
    OrchestrationSection,
    RunSection,
    StoreSection,
    WarmStartSection,
    expand_run_name,
)
from trace_rl.tasks.function_calling import FunctionCallingSection
from trace_rl.tasks.search_qa import AgentSection, RetrieverSection, TaskSection

SETTINGS_FILE_ENV = "TRACE_SETTINGS_FILE"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TRACE_", env_nested_delimiter="__", extra="forbid", frozen=True, toml_file="settings.toml"
    )

    run: RunSection = RunSection()
    task: TaskSection = TaskSection()
    function_calling: FunctionCallingSection = FunctionCallingSection()
    retriever: RetrieverSection = RetrieverSection()
    agent: AgentSection = AgentSection()
    model: ModelSection = ModelSection()
    warmstart: WarmStartSection = WarmStartSection()
    backend: BackendSection = BackendSection()
    trace: TraceSection = TraceSection()
    predictor: PredictorSection = PredictorSection()
    policy: PolicySection = PolicySection()
    train: TrainSection = TrainSection()
    headroom: HeadroomSection = HeadroomSection()
    store: StoreSection = StoreSection()
    orchestration: OrchestrationSection = OrchestrationSection()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = Path(os.environ.get(SETTINGS_FILE_ENV, "settings.toml"))
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=toml_file))

    def named_at(self, when: datetime) -> Settings:
        """These settings with `run.name`'s placeholders ({date}, {time}, {datetime}) filled from `when`."""
        name = expand_run_name(self.run.name, when.astimezone(UTC))
        return (
            self
            if name == self.run.name
            else self.model_copy(update={"run": self.run.model_copy(update={"name": name})})
        )

    def snapshot(self) -> dict[str, Any]:
        """All values, JSON-ready (paths as strings, secrets masked)."""
        return self.model_dump(mode="json")

    def uses_lora(self) -> bool:
        """policy.weights resolved: LoRA unless asked for full, or auto with the tiny model."""
        return self.policy.weights == "lora" or (self.policy.weights == "auto" and self.model.preset != "tiny")

    @model_validator(mode="after")
    def _vllm_follows_lora_only(self) -> Settings:
        if self.backend.name == "vllm" and not self.uses_lora():
            resolved = " (auto: all weights of the tiny model)" if self.policy.weights == "auto" else ""
            raise ValueError(
                f"backend.name='vllm' follows LoRA adapters only, but policy.weights='{self.policy.weights}'"
                f"{resolved} trains all weights; set policy.weights='lora'"
            )
        return self

    @model_validator(mode="after")
    def _headroom_halves_cover_the_cap(self) -> Settings:
        if self.headroom.every and self.headroom.samples // 2 < self.trace.max_per_prompt:
            raise ValueError(
                f"headroom.samples={self.headroom.samples}: half of them must be at least "
                f"trace.max_per_prompt={self.trace.max_per_prompt} (the oracle is cross-fitted on two halves)"
            )
        if self.headroom.every and self.trace.oracle_samples:
            raise ValueError(
                "headroom.every and trace.oracle_samples both measure the pool into the same rows: set one of them"
            )
        return self

    def identity(self) -> dict[str, Any]:
        """The settings that decide what a run computes. A run restarted under the same name must
        match them; where results go, retries, fault injection, the task runner, the iteration
        count (so a finished run can be extended) and the headroom measurement (which trains nothing
        and draws from its own random stream) may change, the number of rollout shards may not."""
        snapshot = self.snapshot()
        for section in ("orchestration", "store", "headroom"):  # headroom: measurement only, see measure_headroom
            snapshot.pop(section)
        if self.orchestration.rollout_shards != 1:  # each shard has its own random stream; the runner is free
            snapshot["orchestration"] = {"rollout_shards": self.orchestration.rollout_shards}
        snapshot["run"] = {"seed": self.run.seed}
        if self.run.init_from:  # only when set, so that runs started before the key existed keep their identity
            snapshot["run"]["init_from"] = self.run.init_from
        for section, key in _LATER_KEYS:  # at their neutral value, they compute what runs from before them did
            if getattr(getattr(self, section), key) == _LATER_KEYS[section, key]:
                snapshot[section].pop(key)
        snapshot["train"] = {k: v for k, v in snapshot["train"].items() if k != "iterations"}
        return snapshot

    def store_url(self) -> str:
        """The database URL, the embedded SQLite file when none is set."""
        url = self.store.url.get_secret_value()
        return url or f"sqlite:///{self.run.output_dir / 'rollouts.db'}"


# settings added after runs were stored, with the value that computes what those runs computed: at that
# value they stay out of a run's identity, so such a run still resumes
_LATER_KEYS: dict[tuple[str, str], Any] = {
    ("predictor", "mixedness"): False,
    ("trace", "explore_share"): 0.0,
    ("trace", "oracle_samples"): 0,
    ("trace", "root_split"): "deep",
    ("task", "hop_shares"): [],
    ("task", "name_sharing"): 3,
}


def parse_override(item: str) -> tuple[list[str], Any]:
    """'section.key=value' -> (['section', 'key'], value); the value is read as a TOML literal
    where it is one (numbers, booleans, quoted strings, lists), else taken as a plain string."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise SettingsError(f"override {item!r} is not of the form section.key=value")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


# settings that hold credentials: they travel in the environment, never as Prefect flow or
# deployment parameters (Prefect stores parameters in plain text and shows them in its UI and API)
SECRET_KEYS = {"store.url": "TRACE_STORE__URL"}


def split_secrets(overrides: list[str]) -> tuple[list[str], dict[str, str]]:
    """(overrides without secret keys, {environment variable: value} for the secret ones)."""
    public, env = [], {}
    for item in overrides:
        key, _, raw = item.partition("=")
        variable = SECRET_KEYS.get(key.strip())
        if variable is None:
            public.append(item)
        else:
            env[variable] = str(parse_override(item)[1]) if raw.strip() else ""
    return public, env


def refuse_secret_parameters(overrides: list[str]) -> None:
    """A flow parameter is stored and shown by Prefect: refuse one that carries a secret."""
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key in SECRET_KEYS:
            raise SettingsError(
                f"{key} must not be a flow or deployment parameter (Prefect stores parameters in plain text); "
                f"set {SECRET_KEYS[key]} in the environment of the process that runs the flow instead"
            )


def flow_overrides(
    served: list[str] | None = None,
    overrides: list[str] | None = None,
    allocator: str | None = None,
    iterations: int | None = None,
    seed: int | None = None,
    run_name: str | None = None,
) -> list[str]:
    """The training flow's parameters as one override list, later over earlier: what `trace-rl
    serve` was started with (`served`), then `overrides`, then the typed parameters. So
    `prefect deployment run ... --param allocator=uniform` (or `--param 'overrides=[...]'`) changes
    those keys and keeps every other served setting."""
    typed = {"trace.allocator": allocator, "train.iterations": iterations, "run.seed": seed, "run.name": run_name}
    merged = [*(served or []), *(overrides or [])]
    merged += [f"{key}={value}" for key, value in typed.items() if value is not None]
    refuse_secret_parameters(merged)
    return merged


def _nest(overrides: list[str]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for item in overrides:
        path, value = parse_override(item)
        node = nested
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return nested


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(settings)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        elif e["type"] == "value_error":  # a cross-field rule: its message already says why
            lines.append(f"  {key}: {e['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "invalid settings:\n" + "\n".join(lines)


def load_settings(overrides: list[str] | None = None) -> Settings:
    """Build settings from all sources; raises SettingsError naming each bad key."""
    path = Path(os.environ.get(SETTINGS_FILE_ENV, "settings.toml"))
    if os.environ.get(SETTINGS_FILE_ENV) and not path.exists():
        raise SettingsError(f"{SETTINGS_FILE_ENV}={path}: file not found")
    if path.is_dir():
        raise SettingsError(f"{SETTINGS_FILE_ENV}={path}: a directory, not a settings file")
    try:
        return Settings(**_nest(overrides or []))
    except ValidationError as err:
        raise SettingsError(_describe(err)) from None
    except tomllib.TOMLDecodeError as err:
        raise SettingsError(f"{path}: not valid TOML ({err})") from None
    except UnicodeDecodeError as err:
        raise SettingsError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None


def _toml_item(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def defaults_toml() -> str:
    """The default settings as a commented TOML file (what the repository's settings.toml holds),
    written with tomlkit: each key preceded by its description as a comment."""
    import tomlkit

    doc = tomlkit.document()
    doc.add(tomlkit.comment("trace-rl settings: the embedded default run (CPU, SQLite, tiny model, synthetic task)."))
    doc.add(
        tomlkit.comment(
            "Override any key with an environment variable TRACE_<SECTION>__<KEY> or `--set section.key=value`."
        )
    )
    doc.add(tomlkit.comment("Regenerate with `trace-rl settings --defaults > settings.toml`."))
    defaults = Settings.model_construct()
    for section_name in Settings.model_fields:
        section = getattr(defaults, section_name)
        table = tomlkit.table()
        for key, field in type(section).model_fields.items():
            value = getattr(section, key)
            table.add(tomlkit.comment(field.description or ""))
            if value is None:
                table.add(tomlkit.comment(f"{key} ="))
            else:
                table.add(key, _toml_item(value))
        doc.add(tomlkit.nl())
        doc.add(section_name, table)
    return tomlkit.dumps(doc)
