"""The method's sections of the `Settings`: how TRACE allocates (`[trace]`), predicts
(`[predictor]`), updates the policy (`[policy]`), measures its headroom (`[headroom]`) and how long
it trains and evaluates (`[train]`). The other sections, and the `Section` base with its shared
validation, are in sections.py.
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from flows.sections import Section
from trace_core.method.advantages import ADVANTAGES
from trace_core.method.allocators import ALLOCATORS, make_allocator
from trace_core.method.online_predictor import OnlinePredictor  # noqa: F401  (registers 'online')
from trace_core.method.predictor import PREDICTORS


class TraceSection(Section):
    allocator: str = Field(
        "trace", description="Allocator: trace, uniform, dynamic_sampling, prompt_only, random_branch."
    )
    budget: int = Field(64, ge=2, description="M: leaves (finished trajectories) sampled per iteration.")
    pool_size: int = Field(64, ge=1, description="Candidate prompts offered to Stage 1 per iteration.")
    stage1_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of M for bare rollouts (two-stage allocators). 0.75 against 0.5, 5 seeds from the "
        "step-560 warm start (bench/results/stage1_share): effective ratio -0.067, dev EM -0.015, "
        "test EM -0.001 (paired means).",
    )
    group_size: int = Field(
        4,
        ge=2,
        description=(
            "G: rollouts per prompt of the uniform-style groups. 2 and 8 against 4 for `uniform`, 5 seeds from the "
            "step-560 warm start (bench/results/groups): effective ratio 0.357 / 0.761 against 0.636, test EM "
            "-0.018 / +0.003 (paired means, intervals covering 0)."
        ),
    )
    max_per_prompt: int = Field(8, ge=2, description="Cap on bare rollouts for one prompt (m_i).")
    root_split: Literal["deep", "wide"] = Field(
        "deep",
        description="How a predicted Stage 1 settles its near-ties: 'deep' (the exact V_root optimum, which gives "
        "the top prompts a third rollout) or 'wide' (as many distinct prompts at 2 rollouts as the budget allows, "
        "then V_root).",
    )
    max_per_anchor: int = Field(4, ge=1, description="Cap on continuations from one anchor (k_j).")
    advantage: str = Field(
        "vine",
        description="Advantage estimator: vine (measured best for trace: bench/results/vine), grpo or tree; "
        "on trees without branches vine equals grpo.",
    )
    explore_share: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of a predicted Stage 1's leaves spent on pool prompts drawn at random, 2 rollouts each, "
        "so the predictor also learns from prompts the rule would not choose (0: none). Measured at 0.25 on 2 seeds "
        "(bench/results/ablation): effective ratio -0.07 and -0.12, non-zero-advantage share -0.04 and -0.10.",
    )

    oracle_samples: int = Field(
        0,
        ge=0,
        description="A control, not an equal-cost allocator: when > 0 (even), every iteration samples each pool "
        "prompt this many times with the current policy before Stage 1 (outside the budget, never trained on; "
        "stored as headroom rows) and Stage 1 allocates on the measured success rates instead of the predictor's v. "
        "It bounds what a perfect root predictor buys (bench/results/oracle_roots). 0: off.",
    )

    @field_validator("allocator")
    @classmethod
    def _known_allocator(cls, name: str) -> str:
        ALLOCATORS.get(name)  # an unknown name raises, listing the valid ones
        return name

    @field_validator("advantage")
    @classmethod
    def _known_advantage(cls, name: str) -> str:
        ADVANTAGES.get(name)
        return name

    @model_validator(mode="after")
    def _budget_fits(self) -> TraceSection:
        if self.pool_size * self.max_per_prompt < self.budget:
            raise ValueError(
                f"pool_size * max_per_prompt = {self.pool_size * self.max_per_prompt} "
                f"cannot absorb budget {self.budget}"
            )
        if self.group_size > self.max_per_prompt:
            raise ValueError("group_size must not exceed max_per_prompt")
        if self.oracle_samples and (self.oracle_samples % 2 or not make_allocator(self.allocator).roots_by_predictor):
            raise ValueError(
                f"oracle_samples={self.oracle_samples}: must be even (two halves, as the ledger stores them) and "
                f"steers only an allocator whose Stage 1 uses the predictor, not {self.allocator!r}"
            )
        return self


class PredictorSection(Section):
    name: str = Field(
        "online",
        description="Success predictor registered by this name: 'online' (decayed whole-history logistic regression "
        "with online recalibration; held out, root AUC 0.727 and ECE 0.160 against 0.680 and 0.232 for 'mlp', and "
        "+0.02 dev EM in both bench regimes, bench/results/predictor*) or 'mlp' (an MLP refitted on the last "
        "`window` iterations, the predictor before).",
    )

    @field_validator("name")
    @classmethod
    def _known_predictor(cls, name: str) -> str:
        PREDICTORS.get(name)
        return name

    prior: float = Field(0.5, gt=0, lt=1, description="Predicted success before the first fit (cold start).")
    window: int = Field(
        2,
        ge=1,
        description="Iterations of node targets kept for refitting. Short, because the policy moves fast: with 8 "
        "the stale predictor steered TRACE to all-same prompts (effective ratio 0.09 at iteration 40, dev EM -2.9 "
        "points); with 2 it stayed near 0.5 and dev EM rose 4.3 points.",
    )
    hidden: int = Field(32, ge=1, description="Width of the predictor's hidden layer.")
    epochs: int = Field(150, ge=1, description="Full-batch fitting steps per refit.")
    learning_rate: float = Field(1e-2, gt=0, description="Predictor AdamW learning rate.")
    targets: Literal["subtree", "launched"] = Field(
        "launched",
        description="What a node's training target counts: 'launched' (only leaves of rollouts sampled from the "
        "node or above it) or 'subtree' (every leaf below it, the paper's backup, which also counts Stage 2's "
        "continuations from descendants, launched where an outcome disagreed with a prediction: biased). In "
        "bench/results/targets-ab (warm seeds 0 and 1, late seed 0) 'launched' gave the higher effective ratio, "
        "non-zero-advantage share and test EM in every pair (warm mean test EM 0.417 against 0.364).",
    )
    mixedness: bool = Field(
        False,
        description="Also learn, from the bare Stage-1 groups, the chance that two rollouts of a prompt disagree, "
        "and value Stage 1 by V_mix(v, d, m), the chance m rollouts are mixed when the prompt's success has mean v "
        "and that disagreement d (trace_core/method/mixedness.py), instead of the paper's V_root(v, m), which reads v "
        "as "
        "the prompt's true success rate. Seed 0 of both bench regimes (bench/results/mixedness): non-zero-advantage "
        "share 0.617 against 0.592 (warm) and 0.690 against 0.653 (late), allocation-time root AUC +0.1, but test EM "
        "0.367 against 0.407 and 0.435 against 0.453; off until more seeds decide.",
    )


class PolicySection(Section):
    learning_rate: float = Field(3e-4, gt=0, description="Policy AdamW learning rate.")
    clip_eps: float = Field(0.2, gt=0, lt=1, description="PPO clip range epsilon.")
    kl_coef: float = Field(
        0.05,
        ge=0,
        description="beta: weight of the k3 KL to the warm-started policy (the LoRA adapter switched off, or a frozen "
        "copy under full fine-tuning); 0 turns it off. Chosen against forgetting (bench/results/recipe, uniform, 40 "
        "iterations, 5 seeds, bench/forgetting.py): at 0.05, per-kind dev forgetting 0.026 (the resampling noise floor "
        "0.030) against 0.043 at 0, kinds fallen by > 0.1 1.8 against 3.0, start-to-final per-question r 0.68 against "
        "0.60 (higher in 5 of 5 seeds), test EM +0.008 [-0.013, +0.028], effective ratio +0.027 [+0.001, +0.049].",
    )
    minibatches: int = Field(
        2,
        ge=1,
        description=(
            "Optimizer steps per iteration. 4 against 2, 5 seeds from the step-560 warm start "
            "(bench/results/minibatches): uniform dev EM +0.008, test EM -0.013; trace dev EM -0.048 (every seed), "
            "test EM +0.005 (paired means)."
        ),
    )
    weights: Literal["auto", "lora", "full"] = Field(
        "auto",
        description="What trains: a LoRA adapter, all weights, or auto (all weights of the ~1M-parameter tiny model, "
        "where LoRA measured +5 dev EM points in 40 updates against +14 for full fine-tuning; LoRA otherwise).",
    )
    lora_rank: int = Field(16, ge=1, description="LoRA rank r.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling alpha.")


class HeadroomSection(Section):
    every: int = Field(
        0,
        ge=0,
        description="Measure the oracle ledger (`trace-rl headroom`) at iteration 0 and every this many iterations "
        "after: each pool prompt is sampled `samples` times by the current policy, outside the training budget and "
        "never trained on, to score the oracle's, uniform's and the run's Stage 1. 0: never (costs about "
        "pool_size * samples rollouts per measurement).",
    )
    samples: int = Field(
        16,
        ge=4,
        description="Measurement rollouts per pool prompt: even, and half of them at least trace.max_per_prompt "
        "(the oracle is cross-fitted on the two halves).",
    )

    @field_validator("samples")
    @classmethod
    def _even(cls, samples: int) -> int:
        if samples % 2:
            raise ValueError(f"must be even (two halves for cross-fitting), got {samples}")
        return samples


class TrainSection(Section):
    iterations: int = Field(40, ge=1, description="Training iterations.")
    eval_every: int = Field(10, ge=1, description="Iterations between dev evaluations (and after the last).")
    eval_questions: int = Field(100, ge=1, description="Dev questions per evaluation.")
    eval_samples: int = Field(4, ge=1, description="Samples per dev question (accuracy is avg@samples, temperature 1).")
