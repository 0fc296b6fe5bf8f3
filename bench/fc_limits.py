"""What the function-calling family's limits must hold: every step, output and trajectory of BFCL's
ground truth, written as the warm start writes it (`expert_steps`).

Over every episode of the four multi-turn subsets it measures
- the tokens of each expert step (`<call>[...]</call>` or `<reply>...</reply>`, as generated), under
  SmolLM2-135M-Instruct's tokenizer and the tiny model's tokenizer (trained as `trace-rl warmstart`
  trains it, on the train split's transcripts);
- the characters of each ground-truth call's output (run on BFCL's APIs, uncut);
- the steps of each expert trajectory;
and how many steps, outputs and episodes would not fit given limits (by default those of
configs/function_calling_cpu.toml; the settings' defaults fit all of them: a step limit of 0 is
the longest step under the policy's tokenizer, an output limit of 0 cuts nothing).

    python bench/fc_limits.py --out bench/results/fc_limits
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from trace_core.function_calling.apis import ScenarioState
from trace_core.function_calling.data import SUBSETS, bfcl_data_dir, load_subset
from trace_core.function_calling.env import allowed_functions, expert_steps, parse_step
from trace_core.models.default_model import convert_gguf, smollm2_gguf_path, train_tokenizer
from trace_rl.config.settings import load_settings
from trace_rl.flows.pipeline import make_tools, prepare_task
from trace_rl.tasks.family import family


def outputs_of(record) -> list[int]:
    """The length of every ground-truth call's output, uncut, executed in order on a fresh state."""
    state = ScenarioState(record.config(), record.classes, record.long_context)
    lengths = []
    for text in expert_steps(record):
        step = parse_step(text, allowed_functions(record))
        lengths += [len(state.execute(call)) for call in step.calls]
    return lengths


def tokenizers(models_dir: Path) -> dict:
    from transformers import AutoTokenizer

    s = load_settings(["task.family=function_calling"])
    data = prepare_task(s, lambda _: None)
    texts = family(s).tokenizer_texts(s, data, make_tools(s, data))
    smollm2 = models_dir / "smollm2-135m-instruct"
    if not (smollm2 / "config.json").exists():
        smollm2 = Path(tempfile.mkdtemp()) / "smollm2"
        convert_gguf(smollm2_gguf_path(), smollm2)
    return {
        "smollm2": AutoTokenizer.from_pretrained(smollm2),
        "tiny": train_tokenizer(texts, s.model.vocab_size),
    }


def summary(values: list[int], limit: int) -> dict:
    a = np.asarray(values)
    return {
        "max": int(a.max()),
        "p99": float(np.percentile(a, 99)),
        "median": float(np.median(a)),
        "over_limit": int((a > limit).sum()),
        "count": len(a),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("bench/results/fc_limits"))
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--max-tokens-per-step", type=int, default=64)
    parser.add_argument("--max-output-chars", type=int, default=400)
    parser.add_argument("--max-steps", type=int, default=12)
    args = parser.parse_args()
    start = time.perf_counter()
    limits = {
        "max_tokens_per_step": args.max_tokens_per_step,
        "max_output_chars": args.max_output_chars,
        "max_steps": args.max_steps,
    }
    toks = tokenizers(args.models_dir)
    steps: dict[str, list[int]] = {name: [] for name in toks}
    episodes_over: dict[str, int] = {name: 0 for name in toks}
    outputs: list[int] = []
    trajectory: list[int] = []
    episodes = 0
    for subset in SUBSETS:
        for record in load_subset(bfcl_data_dir(), subset):
            episodes += 1
            texts = expert_steps(record)
            trajectory.append(len(texts))
            outputs += outputs_of(record)
            for name, tok in toks.items():
                lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
                steps[name] += lengths
                episodes_over[name] += max(lengths) > args.max_tokens_per_step
    result = {
        "command": "python bench/fc_limits.py --out bench/results/fc_limits",
        "episodes": episodes,
        "limits": limits,
        "step_tokens": {
            name: {**summary(v, args.max_tokens_per_step), "episodes_over_limit": episodes_over[name]}
            for name, v in steps.items()
        },
        "output_chars": summary(outputs, args.max_output_chars),
        "trajectory_steps": summary(trajectory, args.max_steps),
        "seconds": round(time.perf_counter() - start, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "limits.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
