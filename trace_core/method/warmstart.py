"""Supervised warm start of the default policy on expert trajectories, stopped inside a success band.

Any task family can be warm-started: `plan(record)` gives its expert's turn texts (for function
calling, the ground-truth calls: `function_calling.env.expert_steps`; for the search agent, each
question's known reasoning chain: `search_agent.expert`), played through the real environment, so
the policy learns from the same kind of context it will see. The loss is token-level cross-entropy
on the expert's turn tokens only; prompt and observation tokens are masked (Search-R1 found training
on retrieved text costs accuracy).

RL needs a policy that is useful but imperfect: at temperature 1, questions should be sometimes
solved, not always or never. That window is narrow (under a minute of CPU training in our probe),
so the stopping point is chosen by measurement, not by a step count: every `eval_every` steps the
policy's sampled success on held-aside training questions is measured, and training stops at the
first checkpoint inside `success_band`. If a step overshoots the band, the checkpoint closest to
the band's centre is restored.

Deviations: none (the paper starts from pretrained instruct models; the embedded default has none).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel

from trace_core.generation.backend import GenerationBackend
from trace_core.generation.batching import pad_right, token_logprobs
from trace_core.method.evaluation import evaluate_policy


@dataclass(frozen=True)
class WarmStartConfig:
    """batch_size: trajectories per step; learning_rate: AdamW peak rate after `warmup_steps`;
    max_steps / max_seconds: hard limits; eval_every: steps between success measurements on
    `eval_questions` questions x `eval_samples` samples at temperature 1; success_band: the
    (low, high) sampled success at which to stop."""

    batch_size: int = 16
    learning_rate: float = 3e-3
    warmup_steps: int = 20
    max_steps: int = 3000
    max_seconds: float = 3600.0
    eval_every: int = 40
    eval_questions: int = 48
    eval_samples: int = 2
    success_band: tuple[float, float] = (0.35, 0.55)
    seed: int = 0

    def __post_init__(self) -> None:
        lo, hi = self.success_band
        if not 0 <= lo < hi <= 1:
            raise ValueError(f"success_band must satisfy 0 <= low < high <= 1, got {self.success_band}")


@dataclass(frozen=True)
class Trajectory:
    """A full token sequence; loss_mask is 1 on the policy's (expert's) turn tokens, 0 elsewhere."""

    input_ids: tuple[int, ...]
    loss_mask: tuple[int, ...]


@dataclass(frozen=True)
class Checkpoint:
    step: int
    seconds: float
    loss: float
    success: float


@dataclass
class WarmStartReport:
    chosen: Checkpoint
    history: list[Checkpoint] = field(default_factory=list)
    trajectories: int = 0
    seconds: float = 0.0


def expert_trajectories(records: Sequence[Any], env: Any, plan: Callable[[Any], list[str]]) -> list[Trajectory]:
    """Play each record's expert turns `plan(record)` through the environment (with the turns
    before as each turn's history); records with no plan or one longer than max_turns are skipped."""
    plans = [plan(r) for r in records]
    usable = [i for i, p in enumerate(plans) if p and len(p) <= env.config.max_turns]
    seqs = {i: list(env.prompt_ids(records[i])) for i in usable}
    masks = {i: [0] * len(seqs[i]) for i in usable}
    for depth in range(1, max((len(plans[i]) for i in usable), default=0) + 1):
        live = [i for i in usable if len(plans[i]) >= depth]
        texts = [plans[i][depth - 1] for i in live]
        steps = env.step(
            [records[i] for i in live],
            texts,
            [depth] * len(live),
            ["stop"] * len(live),
            [plans[i][: depth - 1] for i in live],
        )
        for i, text, step in zip(live, texts, steps, strict=True):
            turn = env.encode(text)
            seqs[i] += [*turn, *step.observation_ids]
            masks[i] += [1] * len(turn) + [0] * len(step.observation_ids)
    return [Trajectory(tuple(seqs[i]), tuple(masks[i])) for i in usable]


def sft_loss(model: PreTrainedModel, batch: Sequence[Trajectory], pad_id: int) -> torch.Tensor:
    """Mean negative log-likelihood over the loss-masked tokens of the batch."""
    ids = pad_right([t.input_ids for t in batch], pad_id)
    attention = pad_right([[1] * len(t.input_ids) for t in batch], 0)
    mask = pad_right([t.loss_mask for t in batch], 0, torch.float32)[:, 1:]
    device = next(model.parameters()).device
    logp = token_logprobs(model, ids.to(device), attention.to(device))
    mask = mask.to(logp.device)
    return -(logp * mask).sum() / mask.sum().clamp(min=1)


def _length_buckets(data: Sequence[Trajectory], batch_size: int) -> list[list[Trajectory]]:
    """Batches of trajectories of similar length, so little of each batch is padding."""
    ranked = sorted(data, key=lambda t: len(t.input_ids))
    return [ranked[i : i + batch_size] for i in range(0, len(ranked), batch_size)]


def _distance_to_band(success: float, band: tuple[float, float]) -> float:
    return abs(success - (band[0] + band[1]) / 2)


def _optimizer(
    model: PreTrainedModel, config: WarmStartConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW without weight decay, its rate warmed up linearly over `config.warmup_steps`."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / config.warmup_steps))
    return optimizer, schedule


def _train_step(
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LambdaLR,
    batch: Sequence[Trajectory],
    pad_id: int,
) -> float:
    """One clipped gradient step on the SFT loss of `batch`; returns the loss before the step."""
    loss = sft_loss(model, batch, pad_id)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    schedule.step()
    return loss.item()


def _measure(
    backend: GenerationBackend,
    env: Any,
    probe: Sequence[Any],
    config: WarmStartConfig,
    step: int,
    start: float,
    losses: list[float],
) -> Checkpoint:
    """Sampled success on `probe` now, with the mean training loss since the previous checkpoint."""
    backend.reset_cache()
    report = evaluate_policy(probe, backend, env, n=config.eval_samples, temperature=1.0)
    return Checkpoint(step, time.perf_counter() - start, sum(losses) / len(losses), report.em)


def warm_start(
    model: PreTrainedModel,
    backend: GenerationBackend,
    env: Any,
    train: Sequence[Any],
    probe: Sequence[Any],
    config: WarmStartConfig,
    plan: Callable[[Any], list[str]],
    log: Callable[[Checkpoint], None] | None = None,
) -> WarmStartReport:
    """Fine-tune `model` in place on the expert trajectories `plan` gives for `train` (a task
    family's expert turns) until its sampled success on `probe` enters the band; the chosen
    weights are left in `model`."""
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    order_rng = torch.Generator().manual_seed(config.seed)
    data = expert_trajectories(train, env, plan)
    if not data:
        raise ValueError("no training record has expert turns that fit in max_turns")
    pad_id = env.tokenizer.pad_token_id or 0
    optimizer, schedule = _optimizer(model, config)
    band = config.success_band
    history: list[Checkpoint] = []
    best: tuple[Checkpoint, dict[str, torch.Tensor]] | None = None
    batches = _length_buckets(data, config.batch_size)
    order: list[int] = []
    losses: list[float] = []
    model.train()
    for step in range(1, config.max_steps + 1):
        if not order:
            order = torch.randperm(len(batches), generator=order_rng).tolist()
        losses.append(_train_step(model, optimizer, schedule, batches[order.pop()], pad_id))
        out_of_time = time.perf_counter() - start > config.max_seconds
        if step % config.eval_every and step != config.max_steps and not out_of_time:
            continue
        point = _measure(backend, env, probe, config, step, start, losses)
        losses = []
        history.append(point)
        if best is None or _distance_to_band(point.success, band) < _distance_to_band(best[0].success, band):
            best = (point, copy.deepcopy(model.state_dict()))
        if log is not None:
            log(point)
        if band[0] <= point.success <= band[1] or point.success > band[1] or out_of_time:
            break
    assert best is not None  # the last step always evaluates
    chosen, weights = best
    model.load_state_dict(weights)
    backend.reset_cache()
    model.eval()
    return WarmStartReport(chosen, history, len(data), time.perf_counter() - start)
