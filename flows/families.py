"""Task families, by name (`task.family`): what turns settings into a family's data, tools and
environment. Everything above the environment (flows, allocators, predictor, store, DVC stages,
bench) is the same for every family.

- `search_qa` (default): Search-R1-style multi-hop QA over a corpus, the synthetic task or files
  (`[task]`, `[retriever]`, `[agent]`).
- `function_calling`: BFCL v4 multi-turn episodes over its executable APIs (`[function_calling]`;
  `trace_core.function_calling`). Train, dev and test are split by scenario, shared across the
  subsets: test is the paper's 20% held-out share, and dev is taken from the other 80% (so the
  test set is exactly the 80/20 split's).

A family gives: `prepare` (the data, read or generated once), `tools` (what its environment uses:
the retriever, BFCL's data folder), `environment` (over a tokenizer), `tokenizer_texts` (what the
tiny model's tokenizer is trained on), `expert_plan` (a training record's expert turns, for the
warm start), `max_turns`, `max_positions` (the context the tiny model is built for), `identity`
(what a built tiny model depends on) and `preflight` (its inputs checked before a run starts).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from flows.builds import is_built, mark_built, settings_hash
from trace_core.function_calling.data import (
    FCRecord,
    bfcl_data_dir,
    load_subset,
    read_split,
    split_by_scenario,
    write_split,
)
from trace_core.function_calling.env import FCConfig, FunctionCallingEnv, expert_steps
from trace_core.registry import Registry
from trace_core.search_agent.agent import FORMAT_ERROR, AgentConfig, SearchEnv, information
from trace_core.search_agent.data import CorpusDoc, DataFormatError, load_corpus, load_questions
from trace_core.search_agent.retrieval import Retriever, RetrieverSpec, format_passages
from trace_core.search_agent.retrieval import make_retriever as build_retriever
from trace_core.search_agent.synthetic_qa import SyntheticTaskSpec, generate_task, write_task
from trace_core.search_agent.warmstart import expert_plan, expert_turns

if TYPE_CHECKING:
    from flows.settings import Settings

Log = Callable[[str], None]


@dataclass(frozen=True)
class TaskData:
    """A family's records by split (QARecord or FCRecord), its corpus (search QA only) and folder."""

    train: list[Any]
    dev: list[Any]
    test: list[Any]
    corpus: Sequence[CorpusDoc] = ()
    directory: Path = Path(".")


class TaskFamily(Protocol):
    max_positions: int

    def prepare(self, s: Settings, log: Log) -> TaskData: ...

    def tools(self, s: Settings, data: TaskData) -> Any: ...

    def environment(self, s: Settings, tools: Any, tokenizer: Any) -> Any: ...

    def tokenizer_texts(self, s: Settings, data: TaskData, tools: Any) -> list[str]: ...

    def expert_plan(self, record: Any) -> list[str]: ...

    def max_turns(self, s: Settings) -> int: ...

    def identity(self, s: Settings) -> dict[str, Any]: ...

    def preflight(self, s: Settings) -> None: ...


FAMILIES: Registry[TaskFamily] = Registry("task family")


def family(s: Settings) -> TaskFamily:
    return FAMILIES.get(s.task.family)


# the synthetic task's difficulty-mix keys, which change no task at these values
_MIX_DEFAULTS: dict[str, Any] = {"hop_shares": [], "name_sharing": 3}


def synthetic_spec(s: Settings) -> SyntheticTaskSpec:
    """The synthetic task's spec from `[task]`."""
    t = s.task
    return SyntheticTaskSpec(
        t.seed,
        t.n_people,
        t.n_orgs,
        t.n_cities,
        t.n_countries,
        t.n_train,
        t.n_dev,
        t.n_test,
        t.max_hops,
        hop_shares=tuple(t.hop_shares),
        name_sharing=t.name_sharing,
    )


def _spec_identity(spec: SyntheticTaskSpec) -> dict[str, Any]:
    """What the generated files depend on; the mix keys only where they change the task."""
    out = asdict(spec)
    for key, default in _MIX_DEFAULTS.items():
        value = list(out[key]) if isinstance(out[key], tuple) else out[key]
        if value == default:
            out.pop(key)
    return out


class SearchQA:
    """Multi-hop QA with a search tool (the default family)."""

    max_positions = 1024

    def prepare(self, s: Settings, log: Log) -> TaskData:
        """Generate (or read) the task's questions and corpus."""
        t = s.task
        if t.source == "synthetic":
            spec = synthetic_spec(s)
            directory, digest = t.data_dir, settings_hash(_spec_identity(spec))
            if not is_built(directory, digest):
                log(f"generating the synthetic task in {directory}")
                directory.mkdir(parents=True, exist_ok=True)
                write_task(generate_task(spec), directory)
                mark_built(directory, digest, spec=asdict(spec))
            files = {k: directory / f"{k}.jsonl" for k in ("train", "dev", "test", "corpus")}
        else:
            assert t.train_file and t.dev_file and t.corpus_file  # checked by the settings validator
            directory = t.data_dir
            files = {"train": t.train_file, "dev": t.dev_file, "test": t.test_file or t.dev_file}
            files["corpus"] = t.corpus_file
        corpus = load_corpus(files["corpus"])
        train, dev, test = (load_questions(files[k]) for k in ("train", "dev", "test"))
        return TaskData(train, dev, test, corpus=corpus, directory=directory)

    def tools(self, s: Settings, data: TaskData) -> Retriever:
        """The search tool `retriever.name`, through its registry (a local index is kept beside the data)."""
        spec = RetrieverSpec(list(data.corpus), data.directory / "bm25", s.retriever.url, s.retriever.timeout_s)
        return build_retriever(s.retriever.name, spec)

    def config(self, s: Settings) -> AgentConfig:
        a = s.agent
        return AgentConfig(
            max_turns=a.max_turns,
            max_tokens_per_turn=a.max_tokens_per_turn,
            temperature=a.temperature,
            top_p=a.top_p,
            topk=s.retriever.topk,
            instruction=a.instruction,
        )

    def environment(self, s: Settings, tools: Any, tokenizer: Any) -> SearchEnv:
        return SearchEnv(tokenizer, tools, self.config(s))

    def tokenizer_texts(self, s: Settings, data: TaskData, tools: Any) -> list[str]:
        if not any(r.chain for r in data.train):
            raise ValueError(
                "model.preset='tiny' is warm-started on the synthetic task's chains; "
                "with task.source='files' use model.preset='path'"
            )
        texts = [information(format_passages(hits)) for hits in tools.search([d.title for d in data.corpus], 1)]
        texts += [r.question for r in data.train] + [s.agent.instruction, information(FORMAT_ERROR)]
        texts += [turn for r in data.train if r.chain for turn in expert_turns(r)]
        return texts

    def expert_plan(self, record: Any) -> list[str]:
        return expert_plan(record)

    def max_turns(self, s: Settings) -> int:
        return s.agent.max_turns

    def identity(self, s: Settings) -> dict[str, Any]:
        # where the task's files live is not part of it (a relative or absolute data_dir is the same task)
        task = {k: v for k, v in s.task.model_dump(mode="json").items() if k not in ("data_dir", "family")}
        for key, default in _MIX_DEFAULTS.items():  # the mix keys came later: at their defaults, same identity
            if task.get(key) == default:
                task.pop(key)
        return {"task": task, "agent": asdict(self.config(s))}

    def preflight(self, s: Settings) -> None:
        t = s.task
        if t.source == "files":
            for key in ("train_file", "dev_file", "test_file", "corpus_file"):
                path = getattr(t, key)
                if path is None:
                    continue
                if Path(path).is_dir():
                    raise DataFormatError(f"task.{key}={path}: a directory, not a file")
                if not Path(path).exists():
                    raise DataFormatError(f"task.{key}={path}: file not found")
                if key != "corpus_file" and not load_questions(path):  # a corpus is read once, by the run
                    raise DataFormatError(f"task.{key}={path}: no questions")
        if s.retriever.name == "http":  # one query, so a server that is down is one line, not three retried tracebacks
            spec = RetrieverSpec((), None, s.retriever.url, s.retriever.timeout_s)
            build_retriever("http", spec).search(["trace-rl preflight"], 1)


class FunctionCalling:
    """BFCL v4 multi-turn function calling over its executable APIs."""

    max_positions = 4096

    def data_dir(self, s: Settings) -> Path:
        return Path(s.function_calling.data_dir) if s.function_calling.data_dir else bfcl_data_dir()

    def prepare(self, s: Settings, log: Log) -> TaskData:
        """The configured subsets, split by scenario into train / dev / test and written whole to
        `function_calling.split_dir` (once per split settings and BFCL data), then read from there;
        train in a seeded order (so the warm start's probe, its first records, mixes the subsets),
        dev and test by scenario (so the first `train.eval_questions` of dev hold every subset's
        entry of the same scenarios)."""
        f = s.function_calling
        source = self.data_dir(s)
        split = f.model_dump(mode="json", include={"subsets", "test_share", "dev_share", "split_seed"})
        digest = settings_hash(split, _files_digest(source, f.subsets))
        if not is_built(f.split_dir, digest):
            log(f"splitting BFCL v4 multi-turn ({', '.join(f.subsets)}) by scenario into {f.split_dir}")
            records = [r for subset in f.subsets for r in load_subset(source, subset)]
            rest, test = split_by_scenario(records, f.test_share, f.split_seed)
            train, dev = split_by_scenario(rest, f.dev_share / (1 - f.test_share), f.split_seed + 1)
            order = np.random.default_rng(f.split_seed).permutation(len(train))
            dev, test = (sorted(v, key=lambda r: r.scenario) for v in (dev, test))  # stable: subsets in order
            write_split(f.split_dir, {"train": [train[i] for i in order], "dev": dev, "test": test})
            mark_built(f.split_dir, digest, split=split, source=str(source))
        sides = read_split(f.split_dir)
        return TaskData(sides["train"], sides["dev"], sides["test"], directory=source)

    def tools(self, s: Settings, data: TaskData) -> Path:
        return data.directory

    def config(self, s: Settings) -> FCConfig:
        f = s.function_calling
        return FCConfig(
            max_turns=f.max_steps,
            max_steps_per_turn=f.max_steps_per_turn,
            max_tokens_per_turn=f.max_tokens_per_step,
            temperature=s.agent.temperature,
            top_p=s.agent.top_p,
            max_output_chars=f.max_output_chars,
            docs=f.docs,
            instruction=f.instruction,
        )

    def environment(self, s: Settings, tools: Any, tokenizer: Any) -> FunctionCallingEnv:
        return FunctionCallingEnv(tokenizer, tools, self.config(s))

    def tokenizer_texts(self, s: Settings, data: TaskData, tools: Any) -> list[str]:
        env = FunctionCallingEnv(None, tools, self.config(s))
        per_turn = s.function_calling.max_steps_per_turn
        return [text for r in data.train for text in env.transcript(r, expert_steps(r, steps_per_turn=per_turn))]

    def expert_plan(self, record: FCRecord) -> list[str]:
        return expert_steps(record)

    def max_turns(self, s: Settings) -> int:
        return s.function_calling.max_steps

    def identity(self, s: Settings) -> dict[str, Any]:
        fc = {k: v for k, v in s.function_calling.model_dump(mode="json").items() if k not in ("data_dir", "split_dir")}
        return {"family": "function_calling", "function_calling": fc, "temperature": s.agent.temperature}

    def preflight(self, s: Settings) -> None:
        directory = self.data_dir(s)
        for subset in s.function_calling.subsets:
            path = directory / f"BFCL_v4_multi_turn_{subset}.json"
            if not path.exists():
                raise DataFormatError(f"function_calling.data_dir={directory}: no {path.name}")


def _files_digest(directory: Path, subsets: Sequence[str]) -> str:
    """A digest of the subsets' question and answer files (a changed BFCL release re-splits)."""
    digest = hashlib.sha256()
    for subset in subsets:
        name = f"BFCL_v4_multi_turn_{subset}.json"
        for path in (directory / name, directory / "possible_answer" / name):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


FAMILIES.register("search_qa")(SearchQA())
FAMILIES.register("function_calling")(FunctionCalling())
