"""A training run's settings, resolved once: the frozen, typed description the stages read.

`describe(settings)` is called at the edge (the flow, before any stage runs); from there on no stage
sees `Settings`, only the parts of this description it uses: the allocator and its budget, the
predictor and its targets, the advantage estimator, what is evaluated and measured when, the seeds
that key every random stream, the faults to inject, and where the run's files go.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trace_core.method.allocators import AllocatorConfig
from trace_core.method.loss import PolicyConfig
from trace_core.method.predictor import PredictorConfig
from trace_core.method.sampling import Targets
from trace_rl.config.settings import Settings


@dataclass(frozen=True)
class Sampling:
    """What the two sampling stages do: the allocator `allocator` spends `config.budget` leaves on a
    pool of `pool_size` prompts; `oracle_samples` > 0 replaces the predictor's Stage-1 values with
    measured rates (a control, not a deployment)."""

    allocator: str
    config: AllocatorConfig
    pool_size: int
    oracle_samples: int


@dataclass(frozen=True)
class Prediction:
    """The success predictor: registry name, its configuration, and the node targets it learns."""

    name: str
    config: PredictorConfig
    targets: Targets


@dataclass(frozen=True)
class Evaluation:
    """Dev evaluation: `questions` x `samples` (avg@samples at temperature 1) every `every`
    iterations, before the first and after the last of `iterations`."""

    questions: int
    samples: int
    every: int
    iterations: int

    def due(self, iteration: int) -> bool:
        return iteration < 0 or (iteration + 1) % self.every == 0 or iteration == self.iterations - 1


@dataclass(frozen=True)
class Headroom:
    """The oracle ledger: `samples` measurement rollouts per pool prompt every `every` iterations (0: never)."""

    every: int
    samples: int

    def due(self, iteration: int) -> bool:
        return self.every > 0 and iteration % self.every == 0


@dataclass(frozen=True)
class RunSpec:
    """One run, as its stages see it. `seed` and `init_from` key every stage's random stream;
    `retry` holds the Prefect options every stage task runs with; `fail_once` lists the
    `stage@iteration` faults to inject once each (testing retries)."""

    name: str
    seed: int
    init_from: str
    run_dir: Path
    iterations: int
    sampling: Sampling
    prediction: Prediction
    policy: PolicyConfig
    use_reference: bool
    advantage: str
    evaluation: Evaluation
    headroom: Headroom
    fail_once: tuple[str, ...]
    retry: tuple[tuple[str, Any], ...]

    def retry_options(self) -> dict[str, Any]:
        return dict(self.retry)


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


def describe(s: Settings) -> RunSpec:
    """Resolve `s` into the run's description (the only place a stage's settings are read)."""
    t, q, p = s.trace, s.predictor, s.policy
    allocator = AllocatorConfig(
        t.budget, t.stage1_share, t.group_size, t.max_per_prompt, t.max_per_anchor, t.explore_share, t.root_split
    )
    predictor = PredictorConfig(
        q.prior, q.window, q.hidden, q.epochs, q.learning_rate, seed=s.run.seed, mixedness=q.mixedness
    )
    return RunSpec(
        name=s.run.name,
        seed=s.run.seed,
        init_from=s.run.init_from,
        run_dir=s.run.output_dir / s.run.name,
        iterations=s.train.iterations,
        sampling=Sampling(t.allocator, allocator, t.pool_size, t.oracle_samples),
        prediction=Prediction(q.name, predictor, q.targets),
        policy=policy_config(s),
        # full fine-tuning with a KL penalty needs a frozen copy of the starting policy as reference
        use_reference=p.kl_coef > 0 and not s.uses_lora(),
        advantage=t.advantage,
        evaluation=Evaluation(s.train.eval_questions, s.train.eval_samples, s.train.eval_every, s.train.iterations),
        headroom=Headroom(s.headroom.every, s.headroom.samples),
        fail_once=tuple(s.orchestration.fail_once),
        retry=tuple(sorted(s.orchestration.retry_options().items())),
    )
