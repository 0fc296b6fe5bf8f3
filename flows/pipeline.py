"""Steps of the main job that turn settings into ready objects: task data, retriever, policy, backend.

Each step loads what it needs, calls `trace_core`, and saves its output beside a `build.json`
holding the hash of the settings it depends on, so a rerun with unchanged settings reuses the
output and a changed setting rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

import trace_core.generation.hf_backend
import trace_core.generation.vllm_backend  # noqa: F401  (registers the 'vllm' backend; imports vllm only when one is built)
from flows.settings import Settings
from trace_core.generation.backend import BackendSpec, GenerationBackend
from trace_core.generation.backend import make_backend as build_backend
from trace_core.method.loss import PolicyConfig
from trace_core.models.default_model import (
    TinyModelSpec,
    build_model,
    convert_gguf,
    count_parameters,
    load_policy,
    smollm2_gguf_path,
    train_tokenizer,
)
from trace_core.search_agent.agent import FORMAT_ERROR, AgentConfig, SearchEnv, information
from trace_core.search_agent.data import CorpusDoc, DataFormatError, QARecord, load_corpus, load_questions
from trace_core.search_agent.retrieval import Retriever, RetrieverSpec, format_passages
from trace_core.search_agent.retrieval import make_retriever as build_retriever
from trace_core.search_agent.synthetic_qa import SyntheticTaskSpec, generate_task, write_task
from trace_core.search_agent.warmstart import Checkpoint, WarmStartConfig, expert_turns, warm_start

Log = Callable[[str], None]


@dataclass(frozen=True)
class TaskData:
    train: list[QARecord]
    dev: list[QARecord]
    test: list[QARecord]
    corpus: list[CorpusDoc]
    directory: Path


@dataclass
class Runtime:
    """Everything a rollout needs, built from settings."""

    data: TaskData
    env: SearchEnv
    backend: GenerationBackend
    model: PreTrainedModel
    model_dir: Path


def settings_hash(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def code_version() -> str:
    """The git commit of the code (with '+dirty' for local changes), or the package version."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import version

        return f"trace-rl {version('trace-rl')}"


def _built(directory: Path, digest: str) -> bool:
    marker = directory / "build.json"
    return marker.exists() and json.loads(marker.read_text()).get("hash") == digest


def _mark(directory: Path, digest: str, **info: Any) -> None:
    (directory / "build.json").write_text(json.dumps({"hash": digest, **info}, indent=2, default=str))


def prepare_task(s: Settings, log: Log = print) -> TaskData:
    """Generate (or read) the task's questions and corpus and build the BM25 index beside them."""
    t = s.task
    if t.source == "synthetic":
        spec = SyntheticTaskSpec(
            t.seed, t.n_people, t.n_orgs, t.n_cities, t.n_countries, t.n_train, t.n_dev, t.n_test, t.max_hops
        )
        directory, digest = t.data_dir, settings_hash(asdict(spec))
        if not _built(directory, digest):
            log(f"generating the synthetic task in {directory}")
            directory.mkdir(parents=True, exist_ok=True)
            write_task(generate_task(spec), directory)
            _mark(directory, digest, spec=asdict(spec))
        files = {k: directory / f"{k}.jsonl" for k in ("train", "dev", "test", "corpus")}
    else:
        assert t.train_file and t.dev_file and t.corpus_file  # checked by the settings validator
        directory = t.data_dir
        files = {
            "train": t.train_file,
            "dev": t.dev_file,
            "test": t.test_file or t.dev_file,
            "corpus": t.corpus_file,
        }
    corpus = load_corpus(files["corpus"])
    return TaskData(
        load_questions(files["train"]),
        load_questions(files["dev"]),
        load_questions(files["test"]),
        corpus,
        directory,
    )


def make_retriever(s: Settings, data: TaskData) -> Retriever:
    """The search tool `retriever.name`, built through its registry (a local index is kept beside the data)."""
    spec = RetrieverSpec(data.corpus, data.directory / "bm25", s.retriever.url, s.retriever.timeout_s)
    return build_retriever(s.retriever.name, spec)


def agent_config(s: Settings) -> AgentConfig:
    a = s.agent
    return AgentConfig(
        max_turns=a.max_turns,
        max_tokens_per_turn=a.max_tokens_per_turn,
        temperature=a.temperature,
        top_p=a.top_p,
        topk=s.retriever.topk,
        instruction=a.instruction,
    )


def policy_config(s: Settings) -> PolicyConfig:
    p = s.policy
    return PolicyConfig(
        learning_rate=p.learning_rate,
        clip_eps=p.clip_eps,
        kl_coef=p.kl_coef,
        minibatches=p.minibatches,
        lora=s.uses_lora(),
        lora_rank=p.lora_rank,
        lora_alpha=p.lora_alpha,
        seed=s.run.seed,
    )


def _tokenizer_texts(data: TaskData, retriever: Retriever, config: AgentConfig) -> list[str]:
    texts = [information(format_passages(hits)) for hits in retriever.search([d.title for d in data.corpus], 1)]
    texts += [r.question for r in data.train] + [config.instruction, information(FORMAT_ERROR)]
    texts += [turn for r in data.train if r.chain for turn in expert_turns(r)]
    return texts


def _dtype(s: Settings) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[s.model.dtype]


def make_backend(
    s: Settings, model: torch.nn.Module, tokenizer: Any, seed: int, model_dir: Path | None = None, name: str = ""
) -> GenerationBackend:
    """The generation backend `name` (default backend.name), built through its registry."""
    spec = BackendSpec(
        model,
        tokenizer,
        seed=seed,
        model_dir=model_dir,
        share_prefix=s.backend.share_prefix,
        kv_cache_bytes=s.backend.kv_cache_mb * 2**20,
        max_batch_sequences=s.backend.max_batch_sequences,
        max_lora_rank=s.policy.lora_rank,
        dtype=s.model.dtype,
        device=s.model.device,
    )
    return build_backend(name or s.backend.name, spec)


def _tiny_model_recipe(s: Settings) -> tuple[TinyModelSpec, WarmStartConfig, AgentConfig]:
    m, w = s.model, s.warmstart
    spec = TinyModelSpec(
        m.vocab_size, m.hidden_size, m.intermediate_size, m.num_layers, m.num_heads, m.head_dim, seed=m.seed
    )
    ws = WarmStartConfig(
        batch_size=w.batch_size,
        learning_rate=w.learning_rate,
        max_steps=w.max_steps,
        max_seconds=w.max_seconds,
        eval_every=w.eval_every,
        eval_questions=w.eval_questions,
        eval_samples=w.eval_samples,
        success_band=(w.success_low, w.success_high),
        seed=m.seed,
    )
    return spec, ws, agent_config(s)


def tiny_model_digest(s: Settings) -> str:
    """What the built tiny model depends on: its spec, the warm start, the agent protocol and the
    task, but not where the task's files live (`task.data_dir` spelt relative or absolute is the
    same task; rebuilding the model for it cost a 5-minute warm start)."""
    spec, ws, config = _tiny_model_recipe(s)
    task = {k: v for k, v in s.task.model_dump(mode="json").items() if k != "data_dir"}
    return settings_hash(asdict(spec), asdict(ws), asdict(config), task)


def build_tiny_model(s: Settings, data: TaskData, retriever: Retriever, log: Log = print) -> Path:
    """Train the tokenizer, build the tiny Llama and warm-start it into the success band."""
    m = s.model
    spec, ws, config = _tiny_model_recipe(s)
    out = m.models_dir / "tiny-react"
    digest = tiny_model_digest(s)
    if _built(out, digest):
        return out
    if not any(r.chain for r in data.train):
        raise ValueError(
            "model.preset='tiny' is warm-started on the synthetic task's chains; "
            "with task.source='files' use model.preset='path'"
        )
    log("training the tokenizer and building the tiny model")
    torch.manual_seed(m.seed)
    tokenizer = train_tokenizer(_tokenizer_texts(data, retriever, config), spec.vocab_size)
    model = build_model(tokenizer, spec).to(torch.device(m.device))  # type: ignore[arg-type]
    env = SearchEnv(tokenizer, retriever, config)
    # the model is not saved yet, so vLLM could not load it: the warm start generates with transformers
    backend = make_backend(s, model, tokenizer, m.seed, name="transformers" if s.backend.name == "vllm" else "")
    probe = data.train[: ws.eval_questions]
    log(
        f"warm start: {count_parameters(model):,} parameters; stopping when sampled success is in "
        f"[{s.warmstart.success_low}, {s.warmstart.success_high}]"
    )

    def show(c: Checkpoint) -> None:
        log(f"  step {c.step:4d}  {c.seconds:6.0f}s  loss {c.loss:.3f}  sampled success {c.success:.2f}")

    report = warm_start(model, backend, env, data.train[ws.eval_questions :], probe, ws, log=show)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    _mark(
        tmp,
        digest,
        parameters=count_parameters(model),
        chosen=asdict(report.chosen),
        history=[asdict(c) for c in report.history],
        seconds=report.seconds,
    )
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    log(
        f"warm start chose step {report.chosen.step} (success {report.chosen.success:.2f}) "
        f"after {report.seconds:.0f}s; saved to {out}"
    )
    return out


def prepare_model(s: Settings, data: TaskData, retriever: Retriever, log: Log = print) -> Path:
    """The policy's model directory for the configured preset, built or converted when needed."""
    if s.model.preset == "path":
        path = Path(s.model.path)  # non-empty: checked by the settings validator
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"model.path={path}: not a Hugging Face model directory (no config.json)")
        return path
    if s.model.preset == "smollm2":
        out = s.model.models_dir / "smollm2-135m-instruct"
        if not (out / "config.json").exists():
            log(f"converting SmolLM2-135M-Instruct from GGUF into {out}")
            out.parent.mkdir(parents=True, exist_ok=True)
            convert_gguf(smollm2_gguf_path(), out)
        log(
            "SmolLM2-135M-Instruct gets no warm start here (too slow on CPU): on the synthetic task expect "
            "reward 0, invalid actions and no-op updates until it uses <search>/<answer> (see the README)"
        )
        return out
    return build_tiny_model(s, data, retriever, log)


def preflight(s: Settings) -> None:
    """Check the inputs a run will read before any flow starts, so a bad one is one line naming the
    file, line or field (trace_core.search_agent.data's DataFormatError, FileNotFoundError) instead of a
    traceback from inside the flow: the question files are parsed, the corpus and model directory
    looked at, a retrieval server asked one query (RetrieverError). The database is checked by the
    caller, which opens it anyway."""
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
            if key != "corpus_file":  # a corpus may be millions of documents: the run reads it once
                if not load_questions(path):
                    raise DataFormatError(f"task.{key}={path}: no questions")
    if s.model.preset == "path" and not (Path(s.model.path) / "config.json").exists():
        raise FileNotFoundError(f"model.path={s.model.path}: not a Hugging Face model directory (no config.json)")
    if s.retriever.name == "http":  # one query, so a server that is down is one line, not three retried tracebacks
        spec = RetrieverSpec((), None, s.retriever.url, s.retriever.timeout_s)
        build_retriever("http", spec).search(["trace-rl preflight"], 1)


def load_runtime(s: Settings, log: Log = print) -> Runtime:
    torch.manual_seed(s.run.seed)
    data = prepare_task(s, log)
    retriever = make_retriever(s, data)
    model_dir = prepare_model(s, data, retriever, log)
    model, tokenizer = load_policy(model_dir, s.model.device, _dtype(s))
    env = SearchEnv(tokenizer, retriever, agent_config(s))
    return Runtime(data, env, make_backend(s, model, tokenizer, s.run.seed, model_dir), model, model_dir)
