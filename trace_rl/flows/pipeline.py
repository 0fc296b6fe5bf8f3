"""Steps of the main job that turn settings into ready objects: task data, retriever, policy, backend.

Each step loads what it needs, calls `trace_core`, and saves its output beside a `build.json`
holding the hash of the settings it depends on, so a rerun with unchanged settings reuses the
output and a changed setting rebuilds it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from trace_core.generation.backend import BackendSpec, GenerationBackend
from trace_core.generation.backend import make_backend as build_backend
from trace_core.method.warmstart import Checkpoint, WarmStartConfig, warm_start
from trace_core.models.default_model import (
    TinyModelSpec,
    build_model,
    convert_gguf,
    count_parameters,
    load_policy,
    smollm2_gguf_path,
    train_tokenizer,
)
from trace_rl.config.errors import SettingsError
from trace_rl.config.settings import Settings
from trace_rl.tasks.builds import is_built, mark_built, settings_hash
from trace_rl.tasks.family import TaskData, family

Log = Callable[[str], None]


@dataclass
class Runtime:
    """Everything a rollout needs, built from settings."""

    data: TaskData
    env: Any  # the family's Environment
    backend: GenerationBackend
    model: PreTrainedModel
    model_dir: Path


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


def prepare_task(s: Settings, log: Log = print) -> TaskData:
    """The task family's data (generated or read once; `trace_rl.tasks.family`)."""
    return family(s).prepare(s, log)


def make_tools(s: Settings, data: TaskData) -> Any:
    """What the family's environment uses (the retriever for search QA, BFCL's data for function calling)."""
    return family(s).tools(s, data)


def make_env(s: Settings, tools: Any, tokenizer: Any) -> Any:
    """The task family's environment over `tokenizer`."""
    return family(s).environment(s, tools, tokenizer)


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


def _tiny_model_recipe(s: Settings) -> tuple[TinyModelSpec, WarmStartConfig]:
    m, w = s.model, s.warmstart
    spec = TinyModelSpec(
        m.vocab_size,
        m.hidden_size,
        m.intermediate_size,
        m.num_layers,
        m.num_heads,
        m.head_dim,
        max_positions=m.max_positions or family(s).max_positions,
        seed=m.seed,
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
    return spec, ws


def tiny_model_digest(s: Settings) -> str:
    """What the built tiny model depends on: its spec, the warm start, and the task family's task and
    protocol (`TaskFamily.identity`), but not where the task's files live (`task.data_dir` spelt
    relative or absolute is the same task; rebuilding the model for it cost a 5-minute warm start).
    The search QA digest is the one it was before task families (`asdict(AgentConfig)`, then the task)."""
    spec, ws = _tiny_model_recipe(s)
    identity = family(s).identity(s)
    if s.task.family == "search_qa":
        return settings_hash(asdict(spec), asdict(ws), identity["agent"], identity["task"])
    return settings_hash(asdict(spec), asdict(ws), identity)


def tiny_model_dir(s: Settings) -> Path:
    """Where the tiny model of the configured task family is kept (one per family, so switching
    family does not rebuild the other's)."""
    name = "tiny-react" if s.task.family == "search_qa" else f"tiny-{s.task.family.replace('_', '-')}"
    return s.model.models_dir / name


def build_tiny_model(s: Settings, data: TaskData, tools: Any, log: Log = print) -> Path:
    """Train the tokenizer, build the tiny Llama and warm-start it (on the family's expert turns)
    into the success band."""
    m = s.model
    spec, ws = _tiny_model_recipe(s)
    out = tiny_model_dir(s)
    digest = tiny_model_digest(s)
    if is_built(out, digest):
        return out
    texts = family(s).tokenizer_texts(s, data, tools)
    log("training the tokenizer and building the tiny model")
    torch.manual_seed(m.seed)
    tokenizer = train_tokenizer(texts, spec.vocab_size)
    model = build_model(tokenizer, spec).to(torch.device(m.device))  # type: ignore[arg-type]
    env = make_env(s, tools, tokenizer)
    # the model is not saved yet, so vLLM could not load it: the warm start generates with transformers
    backend = make_backend(s, model, tokenizer, m.seed, name="transformers" if s.backend.name == "vllm" else "")
    probe = data.train[: ws.eval_questions]
    log(
        f"warm start: {count_parameters(model):,} parameters; stopping when sampled success is in "
        f"[{s.warmstart.success_low}, {s.warmstart.success_high}]"
    )

    def show(c: Checkpoint) -> None:
        log(f"  step {c.step:4d}  {c.seconds:6.0f}s  loss {c.loss:.3f}  sampled success {c.success:.2f}")

    plan = family(s).expert_plan
    report = warm_start(model, backend, env, data.train[ws.eval_questions :], probe, ws, plan, log=show)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    mark_built(
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


def prepare_model(s: Settings, data: TaskData, tools: Any, log: Log = print) -> Path:
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
            "reward 0, invalid actions and no-op updates until it uses <search>/<answer> (see docs/models.md)"
        )
        return out
    return build_tiny_model(s, data, tools, log)


def preflight(s: Settings) -> None:
    """Check the inputs a run will read before any flow starts, so a bad one is one line naming the
    file, line or field (DataFormatError, FileNotFoundError) instead of a traceback from inside the
    flow: the task family's inputs (question files parsed, a retrieval server asked one query, BFCL's
    data files found) and the model directory. The database is checked by the caller, which opens it
    anyway."""
    family(s).preflight(s)
    if s.model.device.startswith("cuda") and not torch.cuda.is_available():
        raise SettingsError(
            f"model.device={s.model.device}: this torch ({torch.__version__}) sees no CUDA device; use model.device=cpu"
        )
    if s.model.preset == "path":
        check_model_dir(Path(s.model.path))


def check_model_dir(path: Path) -> None:
    """A Hugging Face model directory trace-rl can load: config.json that parses as a JSON object, and
    weights (safetensors, whose header must read, or a PyTorch .bin), else one FileNotFoundError or
    ValueError naming `model.path` and what is wrong."""
    where = f"model.path={path}"
    config = path / "config.json"
    if not config.exists():
        raise FileNotFoundError(f"{where}: not a Hugging Face model directory (no config.json)")
    try:
        parsed = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{where}: config.json is not valid JSON ({err})") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"{where}: config.json does not hold a JSON object")
    weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("pytorch_model*.bin"))
    if not weights:
        raise FileNotFoundError(f"{where}: no weights (*.safetensors or pytorch_model*.bin) beside config.json")
    for file in weights:
        if file.suffix == ".safetensors":
            _check_safetensors(file, where)


def _check_safetensors(file: Path, where: str) -> None:
    """The file holds a whole safetensors header and every tensor it lists (a truncated copy does not)."""
    size = file.stat().st_size
    with file.open("rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        header = handle.read(length) if 0 < length <= size - 8 else b""
    try:
        tensors = json.loads(header) if header else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        tensors = None
    if not isinstance(tensors, dict):
        raise ValueError(f"{where}: {file.name} is not a safetensors file (damaged or truncated)")
    end = max((t["data_offsets"][1] for k, t in tensors.items() if k != "__metadata__"), default=0)
    if 8 + length + end > size:
        raise ValueError(f"{where}: {file.name} is truncated ({size:,} bytes, its header lists {8 + length + end:,})")


def load_runtime(s: Settings, log: Log = print) -> Runtime:
    torch.manual_seed(s.run.seed)
    data = prepare_task(s, log)
    tools = make_tools(s, data)
    model_dir = prepare_model(s, data, tools, log)
    model, tokenizer = load_policy(model_dir, s.model.device, _dtype(s))
    env = make_env(s, tools, tokenizer)
    return Runtime(data, env, make_backend(s, model, tokenizer, s.run.seed, model_dir), model, model_dir)
