"""Where the tiny model's warm-start loss sits on function-calling episodes, by kind of token.

Builds the configured family's tokenizer and tiny model as `trace-rl warmstart` does
(`TRACE_SETTINGS_FILE` picks the config), trains it on the expert steps of the first `--records`
training episodes but the first 64, and every `--every` steps measures on those 64 held-aside
episodes the mean negative log-likelihood of the expert's tokens in three kinds:
- `struct`: function names, keywords, brackets and tags of call steps;
- `value`: tokens inside a quoted argument value (what must be read from the user's words);
- `reply`: the tokens of reply steps;
and the probability of the whole expert trajectory at temperature 1 (exp of minus its summed NLL:
the chance that sampling reproduces it exactly, a lower bound on sampled success), median and mean.
The warm start's own training step, optimiser, rate, batch size and length buckets; no success probe (it
costs more than the training), no model saved.

    TRACE_SETTINGS_FILE=configs/function_calling_generated.toml \\
        python bench/fc_warm_tokens.py --steps 2000 --every 100 --records 20000 --out runs.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from trace_core.function_calling.env import expert_steps
from trace_core.generation.batching import pad_right, token_logprobs
from trace_core.method.warmstart import Trajectory, _length_buckets, _optimizer, _train_step, expert_trajectories
from trace_core.models.default_model import build_model, train_tokenizer
from trace_rl.config.settings import load_settings
from trace_rl.flows import pipeline
from trace_rl.tasks.family import family

KINDS = ("struct", "value", "reply")
HELD = 64


def token_kinds(tokenizer, record) -> list[int]:
    """Per expert token of `record` (in order), its kind's index in KINDS."""
    out: list[int] = []
    for step in expert_steps(record):
        enc = tokenizer(step, add_special_tokens=False, return_offsets_mapping=True)
        quoted = np.zeros(len(step), bool)
        inside = False
        for i, c in enumerate(step):
            if c == "'" and (i == 0 or step[i - 1] != "\\"):
                inside = not inside
                continue
            quoted[i] = inside
        for a, b in enc["offset_mapping"]:
            out.append(2 if step.startswith("<reply>") else int(quoted[a:b].any()))
    return out


def nll_by_token(model, batch: list[tuple[Trajectory, list[int]]], pad_id: int):
    ids = pad_right([t.input_ids for t, _ in batch], pad_id)
    attention = pad_right([[1] * len(t.input_ids) for t, _ in batch], 0)
    mask = pad_right([t.loss_mask for t, _ in batch], 0, torch.float32)[:, 1:]
    kind = torch.full(mask.shape, -1)
    for row, (t, kinds) in enumerate(batch):
        positions = [i - 1 for i, m in enumerate(t.loss_mask) if m]
        if len(positions) != len(kinds):
            raise ValueError("expert tokens and their kinds disagree in length")
        kind[row, positions] = torch.tensor(kinds)
    return -token_logprobs(model, ids, attention), mask, kind


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--records", type=int, default=2000, help="training episodes read (the first 64 held aside)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    s = load_settings()
    data = pipeline.prepare_task(s, log=lambda *_: None)
    tools = pipeline.make_tools(s, data)
    torch.manual_seed(s.model.seed)
    tokenizer = train_tokenizer(family(s).tokenizer_texts(s, data, tools), s.model.vocab_size)
    spec, ws = pipeline._tiny_model_recipe(s)
    model = build_model(tokenizer, spec)
    env = pipeline.make_env(s, tools, tokenizer)
    # the episodes the warm start trains on: those whose expert steps fit in max_steps
    records = [r for r in data.train[: args.records] if 0 < len(expert_steps(r)) <= env.config.max_turns]
    trajectories = expert_trajectories(records, env, expert_steps)
    held = list(zip(trajectories[:HELD], (token_kinds(tokenizer, r) for r in records[:HELD]), strict=True))
    batches = _length_buckets(trajectories[HELD:], ws.batch_size)
    pad_id = tokenizer.pad_token_id or 0
    optimizer, schedule = _optimizer(model, ws)
    order: list[int] = []
    rng = torch.Generator().manual_seed(ws.seed)
    start = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as out:
        for step in range(1, args.steps + 1):
            if not order:
                order = torch.randperm(len(batches), generator=rng).tolist()
            loss = _train_step(model, optimizer, schedule, batches[order.pop()], pad_id)  # the warm start's own step
            if step % args.every:
                continue
            with torch.no_grad():
                by_kind: dict[int, list[torch.Tensor]] = {k: [] for k in range(len(KINDS))}
                totals: list[float] = []
                for i in range(0, HELD, 16):
                    nll, mask, kind = nll_by_token(model, held[i : i + 16], pad_id)
                    for k in by_kind:
                        by_kind[k].append(nll[kind == k])
                    totals += (nll * mask).sum(1).tolist()
            p = np.exp(-np.array(totals))
            row = {
                "step": step,
                "seconds": round(time.perf_counter() - start, 1),
                "train_loss": round(loss, 4),
                **{f"{KINDS[k]}_nll": round(torch.cat(v).mean().item(), 4) for k, v in by_kind.items()},
                "p_trajectory_median": float(np.median(p)),
                "p_trajectory_mean": float(p.mean()),
            }
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
