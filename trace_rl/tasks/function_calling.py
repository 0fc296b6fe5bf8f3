"""The function-calling family (`task.family = "function_calling"`): BFCL v4 multi-turn episodes over
its executable APIs (`trace_core.function_calling`); its section `[function_calling]`. Train, dev and
test are split by scenario, shared across the subsets: test is the paper's 20% held-out share, and dev
is taken from the other 80% (so the test set is exactly the 80/20 split's).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from trace_core.function_calling.agreement import bfcl_verdict, env_reward, expert, text_env
from trace_core.function_calling.data import (
    FCRecord,
    bfcl_data_dir,
    load_subset,
    read_split,
    split_by_scenario,
    write_split,
)
from trace_core.function_calling.env import DEFAULT_INSTRUCTION as FC_INSTRUCTION
from trace_core.function_calling.env import (
    FCConfig,
    FunctionCallingEnv,
    expert_steps,
    longest_expert_step,
    turn_pass_rate,
)
from trace_core.function_calling.generated import GENERATOR_VERSION, generate
from trace_core.search_agent.data import DataFormatError
from trace_rl.tasks.builds import is_built, mark_built, settings_hash
from trace_rl.tasks.family import FAMILIES, Log, TaskData
from trace_rl.tasks.settings import Section, TaskSettings


class FunctionCallingSection(Section):
    subsets: list[Literal["base", "miss_func", "miss_param", "long_context"]] = Field(
        ["base", "miss_func", "miss_param", "long_context"],
        min_length=1,
        description="BFCL v4 multi-turn subsets used (the paper's four).",
    )
    data_dir: str = Field("", description="BFCL's data folder; empty: the installed bfcl-eval package's.")
    split_dir: Path = Field(
        Path("data/function_calling"),
        description="Where the split is written (train/dev/test.jsonl, whole episodes): what runs train and are "
        "scored on, versioned by DVC.",
    )
    test_share: float = Field(0.2, gt=0, lt=1, description="Share of the scenarios held out for test (the paper: 0.2).")
    dev_share: float = Field(0.1, gt=0, lt=1, description="Share of all scenarios for dev (from those not in test).")
    split_seed: int = Field(0, ge=0, description="Seed of the split by scenario (shared by the subsets).")
    max_steps: int = Field(
        20,
        ge=1,
        le=64,
        description="Policy steps per episode (call steps and replies): the tree's depth limit. The default holds "
        "every ground-truth trajectory of BFCL v4 multi-turn (docs/function-calling.md).",
    )
    max_steps_per_turn: int = Field(
        20, ge=1, description="Call steps in one user turn before the episode is forced to end (BFCL's limit: 20)."
    )
    max_tokens_per_step: int = Field(
        0,
        ge=0,
        le=8192,
        description="Token limit of one step; 0: the longest ground-truth step of the task's episodes under the "
        "policy's tokenizer, so every required call fits.",
    )
    max_output_chars: int = Field(
        0, ge=0, description="A call's output is cut to this many characters; 0: never cut (as in BFCL)."
    )
    docs: Literal["compact", "official", "names"] = Field(
        "compact",
        description="Function documentation in the prompt: 'compact' (one line each, about 600 tokens), "
        "'official' (BFCL's JSON, about 7,000: for long-context models) or 'names' (the names only, one line: "
        "for a policy trained from scratch, which learns the signatures from the warm start's expert steps).",
    )
    instruction: str = Field(FC_INSTRUCTION, description="Instruction placed before the functions in every prompt.")
    source: Literal["bfcl", "generated"] = Field(
        "bfcl",
        description="Training and dev episodes: 'bfcl' (BFCL's own, split by scenario) or 'generated' (new "
        "file-system episodes on BFCL's API, dev from a held-out pool of names and words); test is BFCL's either way.",
    )
    generated_train: int = Field(2000, ge=1, description="Generated training episodes (source = 'generated').")
    generated_dev: int = Field(
        200, ge=1, description="Generated held-out dev episodes, from names and words never used in training."
    )
    generated_seed: int = Field(0, ge=0, description="Seed of the generated episodes.")

    @model_validator(mode="after")
    def _shares(self) -> FunctionCallingSection:
        if self.test_share + self.dev_share >= 1:
            raise ValueError("test_share + dev_share must leave scenarios for training (sum < 1)")
        return self


class FunctionCalling:
    """BFCL v4 multi-turn function calling over its executable APIs."""

    max_positions = 4096
    # no answer strings: the partial-credit score reported as F1 is the share of user turns passed
    f1 = staticmethod(turn_pass_rate)
    errors = ()

    def data_dir(self, s: TaskSettings) -> Path:
        return Path(s.function_calling.data_dir) if s.function_calling.data_dir else bfcl_data_dir()

    def prepare(self, s: TaskSettings, log: Log) -> TaskData:
        """The configured subsets, split by scenario into train / dev / test and written whole to
        `function_calling.split_dir` (once per split settings and BFCL data), then read from there;
        train in a seeded order (so the warm start's probe, its first records, mixes the subsets),
        dev and test by scenario (so the first `train.eval_questions` of dev hold every subset's
        entry of the same scenarios)."""
        f = s.function_calling
        source = self.data_dir(s)
        keys = {"subsets", "test_share", "dev_share", "split_seed", "source"}
        if f.source == "generated":
            keys |= {"generated_train", "generated_dev", "generated_seed"}
        split = f.model_dump(mode="json", include=keys)
        if f.source == "bfcl":
            split.pop("source")  # the split digest of a BFCL split is the one it was before generated episodes
        generator = GENERATOR_VERSION if f.source == "generated" else None
        digest = settings_hash(split, _files_digest(source, f.subsets), *([generator] if generator else []))
        if not is_built(f.split_dir, digest):
            log(f"splitting BFCL v4 multi-turn ({', '.join(f.subsets)}) by scenario into {f.split_dir}")
            records = [r for subset in f.subsets for r in load_subset(source, subset)]
            rest, test = split_by_scenario(records, f.test_share, f.split_seed)
            train, dev = split_by_scenario(rest, f.dev_share / (1 - f.test_share), f.split_seed + 1)
            order = np.random.default_rng(f.split_seed).permutation(len(train))
            dev, test = (sorted(v, key=lambda r: r.scenario) for v in (dev, test))  # stable: subsets in order
            sides = {"train": [train[i] for i in order], "dev": dev, "test": test}
            if f.source == "generated":
                log(f"generating {f.generated_train} training and {f.generated_dev} held-out file-system episodes")
                sides["train"] = generate("train", f.generated_train, f.generated_seed, _passes(source))
                sides["dev"] = generate("heldout", f.generated_dev, f.generated_seed, _passes(source))
            write_split(f.split_dir, sides)
            mark_built(f.split_dir, digest, split=split, source=str(source))
        sides = read_split(f.split_dir)
        return TaskData(sides["train"], sides["dev"], sides["test"], directory=source)

    def tools(self, s: TaskSettings, data: TaskData) -> Path:
        return data.directory

    def config(self, s: TaskSettings, step_tokens: int = 0) -> FCConfig:
        """The environment's limits; `step_tokens` stands for `max_tokens_per_step` = 0 (the fitted limit)."""
        f = s.function_calling
        return FCConfig(
            max_turns=f.max_steps,
            max_steps_per_turn=f.max_steps_per_turn,
            max_tokens_per_turn=f.max_tokens_per_step or max(step_tokens, 1),
            temperature=s.agent.temperature,
            top_p=s.agent.top_p,
            max_output_chars=f.max_output_chars,
            docs=f.docs,
            instruction=f.instruction,
        )

    def environment(self, s: TaskSettings, tools: Any, tokenizer: Any) -> FunctionCallingEnv:
        """The environment over `tokenizer`; with `max_tokens_per_step` = 0 its step limit is the longest
        ground-truth step of the split's episodes (train, dev and test) in that tokenizer's tokens."""
        fitted = 0
        if not s.function_calling.max_tokens_per_step and tokenizer is not None:
            fitted = _fitted_step_tokens(s.function_calling.split_dir, tokenizer)
        return FunctionCallingEnv(tokenizer, tools, self.config(s, fitted))

    def featurizer(self, s: TaskSettings, device: str) -> Any:
        """The predictor's inputs: the prefix's structure and the episode's first request's text embedding
        (the search agent's featurizer reads any tree)."""
        from trace_core.search_agent.features import SearchAgentFeaturizer, TextEncoder  # torch: on use only

        return SearchAgentFeaturizer(TextEncoder(device=device), self.max_turns(s))

    def tokenizer_texts(self, s: TaskSettings, data: TaskData, tools: Any) -> list[str]:
        env = FunctionCallingEnv(None, tools, self.config(s))
        per_turn = s.function_calling.max_steps_per_turn
        return [text for r in data.train for text in env.transcript(r, expert_steps(r, steps_per_turn=per_turn))]

    def expert_plan(self, record: FCRecord) -> list[str]:
        return expert_steps(record)

    def max_turns(self, s: TaskSettings) -> int:
        return s.function_calling.max_steps

    def identity(self, s: TaskSettings) -> dict[str, Any]:
        fc = {k: v for k, v in s.function_calling.model_dump(mode="json").items() if k not in ("data_dir", "split_dir")}
        return {"family": "function_calling", "function_calling": fc, "temperature": s.agent.temperature}

    def preflight(self, s: TaskSettings) -> None:
        directory = self.data_dir(s)
        for subset in s.function_calling.subsets:
            path = directory / f"BFCL_v4_multi_turn_{subset}.json"
            if not path.exists():
                raise DataFormatError(f"function_calling.data_dir={directory}: no {path.name}")


def _passes(data_dir: Path) -> Callable[[FCRecord], bool]:
    """Whether a generated episode's ground truth passes: our reward and BFCL's own verdict both 1."""
    env = text_env(data_dir)
    return lambda r: env_reward(env, r, expert(r)) == 1.0 and bfcl_verdict(r, expert(r))


def _fitted_step_tokens(split_dir: Path, tokenizer: Any) -> int:
    """The longest ground-truth step of the split written in `split_dir`, in `tokenizer`'s tokens."""
    records = [r for side in read_split(split_dir).values() for r in side]
    return longest_expert_step(records, tokenizer)


def _files_digest(directory: Path, subsets: Sequence[str]) -> str:
    """A digest of the subsets' question and answer files (a changed BFCL release re-splits)."""
    digest = hashlib.sha256()
    for subset in subsets:
        name = f"BFCL_v4_multi_turn_{subset}.json"
        for path in (directory / name, directory / "possible_answer" / name):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


FAMILIES.register("function_calling")(FunctionCalling())
