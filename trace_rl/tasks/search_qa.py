"""The search-QA family (`task.family = "search_qa"`, the default): Search-R1-style multi-hop QA with
a search tool, over the synthetic task or question and corpus files; its sections `[task]`,
`[retriever]` and `[agent]`.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from trace_core.search_agent.agent import DEFAULT_INSTRUCTION, FORMAT_ERROR, AgentConfig, SearchEnv, information
from trace_core.search_agent.data import DataFormatError, load_corpus, load_questions
from trace_core.search_agent.expert import expert_plan, expert_turns
from trace_core.search_agent.retrieval import RETRIEVERS, Retriever, RetrieverError, RetrieverSpec, format_passages
from trace_core.search_agent.retrieval import make_retriever as build_retriever
from trace_core.search_agent.reward import answer_f1
from trace_core.search_agent.synthetic_qa import SyntheticTaskSpec, generate_task, write_task
from trace_rl.tasks.builds import is_built, mark_built, settings_hash
from trace_rl.tasks.family import FAMILIES, Log, TaskData
from trace_rl.tasks.settings import Section, TaskSettings


class TaskSection(Section):
    family: str = Field(
        "search_qa",
        description="Task family: 'search_qa' (multi-hop QA with a search tool, the settings below) or "
        "'function_calling' (BFCL v4 multi-turn, [function_calling]).",
    )

    @field_validator("family")
    @classmethod
    def _known_family(cls, name: str) -> str:
        from trace_rl.tasks.family import FAMILIES  # imported here: registering a family imports this module

        FAMILIES.get(name)
        return name

    source: Literal["synthetic", "files"] = Field(
        "synthetic", description="'synthetic' generates the multi-hop task; 'files' reads the paths below."
    )
    data_dir: Path = Field(Path("data/synthetic"), description="Where the synthetic task is written.")
    seed: int = Field(0, ge=0, description="Seed of the synthetic knowledge base and questions.")
    n_people: int = Field(160, ge=4, description="People in the synthetic knowledge base.")
    n_orgs: int = Field(40, ge=2, description="Organisations in the synthetic knowledge base.")
    n_cities: int = Field(30, ge=4, description="Cities in the synthetic knowledge base.")
    n_countries: int = Field(8, ge=2, description="Countries in the synthetic knowledge base.")
    n_train: int = Field(1500, ge=1, description="Training questions (synthetic).")
    n_dev: int = Field(200, ge=1, description="Development questions (synthetic).")
    n_test: int = Field(200, ge=1, description="Test questions (synthetic).")
    max_hops: int = Field(3, ge=1, le=4, description="Longest reasoning chain of a synthetic question (1 to 4).")
    hop_shares: list[float] = Field(
        [],
        description="Relative weight of each hop count 1..max_hops in the synthetic questions (one per count); "
        "empty: every count equally likely.",
    )
    name_sharing: int = Field(
        3, ge=1, le=40, description="People sharing each first name and each surname (higher: more near-miss names)."
    )
    train_file: Path | None = Field(None, description="Question file (.jsonl/.parquet) when source='files'.")
    dev_file: Path | None = Field(None, description="Dev question file when source='files'.")
    test_file: Path | None = Field(None, description="Test question file when source='files'.")
    corpus_file: Path | None = Field(None, description="Corpus file of {id, contents} rows when source='files'.")

    @model_validator(mode="after")
    def _hop_shares_fit(self) -> TaskSection:
        shares = self.hop_shares
        if shares and (len(shares) != self.max_hops or min(shares) < 0 or sum(shares) <= 0):
            raise ValueError(
                f"task.hop_shares={shares}: give {self.max_hops} non-negative weights (hop counts 1..task.max_hops) "
                "with a positive sum, or none"
            )
        return self

    @model_validator(mode="after")
    def _files_given(self) -> TaskSection:
        if self.source == "files":
            missing = [k for k in ("train_file", "dev_file", "corpus_file") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"source='files' needs {', '.join('task.' + k for k in missing)}")
        return self


class RetrieverSection(Section):
    name: str = Field("bm25", description="Search tool: 'bm25' (local index) or 'http' (retrieval server).")

    @field_validator("name")
    @classmethod
    def _known_retriever(cls, name: str) -> str:
        RETRIEVERS.get(name)
        return name

    topk: int = Field(2, ge=1, le=50, description="Passages returned per search.")
    url: str = Field("http://127.0.0.1:8000/retrieve", description="Retrieval server endpoint for 'http'.")
    timeout_s: float = Field(30.0, gt=0, description="Retrieval server timeout, seconds.")


class AgentSection(Section):
    max_turns: int = Field(4, ge=1, le=32, description="Policy turns per episode (tool calls + answer).")
    max_tokens_per_turn: int = Field(48, ge=4, le=4096, description="Token limit of one turn.")
    temperature: float = Field(1.0, ge=0.0, le=5.0, description="Sampling temperature of rollouts.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass of rollouts.")
    instruction: str = Field(
        DEFAULT_INSTRUCTION,
        description="Instruction placed before the question in every prompt.",
    )


# the synthetic task's difficulty-mix keys, which change no task at these values
_MIX_DEFAULTS: dict[str, Any] = {"hop_shares": [], "name_sharing": 3}


def synthetic_spec(s: TaskSettings) -> SyntheticTaskSpec:
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
    f1 = staticmethod(answer_f1)
    errors = (RetrieverError,)  # a retrieval server that is down or answers nonsense

    def prepare(self, s: TaskSettings, log: Log) -> TaskData:
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

    def tools(self, s: TaskSettings, data: TaskData) -> Retriever:
        """The search tool `retriever.name`, through its registry (a local index is kept beside the data)."""
        spec = RetrieverSpec(list(data.corpus), data.directory / "bm25", s.retriever.url, s.retriever.timeout_s)
        return build_retriever(s.retriever.name, spec)

    def config(self, s: TaskSettings) -> AgentConfig:
        a = s.agent
        return AgentConfig(
            max_turns=a.max_turns,
            max_tokens_per_turn=a.max_tokens_per_turn,
            temperature=a.temperature,
            top_p=a.top_p,
            topk=s.retriever.topk,
            instruction=a.instruction,
        )

    def environment(self, s: TaskSettings, tools: Any, tokenizer: Any) -> SearchEnv:
        return SearchEnv(tokenizer, tools, self.config(s))

    def featurizer(self, s: TaskSettings, device: str) -> Any:
        """The predictor's inputs: the prefix's structure and the question's text embedding."""
        from trace_core.search_agent.features import SearchAgentFeaturizer, TextEncoder  # torch: on use only

        return SearchAgentFeaturizer(TextEncoder(device=device), self.max_turns(s))

    def tokenizer_texts(self, s: TaskSettings, data: TaskData, tools: Any) -> list[str]:
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

    def max_turns(self, s: TaskSettings) -> int:
        return s.agent.max_turns

    def identity(self, s: TaskSettings) -> dict[str, Any]:
        # where the task's files live is not part of it (a relative or absolute data_dir is the same task)
        task = {k: v for k, v in s.task.model_dump(mode="json").items() if k not in ("data_dir", "family")}
        for key, default in _MIX_DEFAULTS.items():  # the mix keys came later: at their defaults, same identity
            if task.get(key) == default:
                task.pop(key)
        return {"task": task, "agent": asdict(self.config(s))}

    def preflight(self, s: TaskSettings) -> None:
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


FAMILIES.register("search_qa")(SearchQA())
