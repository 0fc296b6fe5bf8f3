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

from trace_core.method.advantages import ADVANTAGES
from trace_core.method.allocators import ALLOCATORS, make_allocator
from trace_core.method.predictor import PREDICTORS
from trace_rl.config.sections import Section


class TraceSection(Section):
    allocator: str = Field(
        "trace",
        description="Allocator registered by this name: trace, uniform, dynamic_sampling, prompt_only, random_branch, "
        "or the stage ablation's active_roots and active_prefixes.",
    )
    budget: int = Field(64, ge=2, description="M: leaves (finished trajectories) sampled per iteration.")
    pool_size: int = Field(64, ge=1, description="Candidate prompts offered to Stage 1 per iteration.")
    stage1_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of M for bare rollouts (two-stage allocators); Stage 2 spends the rest.",
    )
    group_size: int = Field(
        4,
        ge=2,
        description="G: rollouts per prompt of the uniform-style groups.",
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
        description=(
            "Advantage estimator: vine (each turn against its nearest branch point), grpo or tree; on trees "
            "without branches vine equals grpo."
        ),
    )
    explore_share: float = Field(
        0.0,
        ge=0,
        lt=1,
        description=(
            "Share of a predicted Stage 1's leaves spent on pool prompts drawn at random, 2 rollouts each, so "
            "the predictor also learns from prompts the rule would not choose (0: none)."
        ),
    )

    oracle_samples: int = Field(
        0,
        ge=0,
        description=(
            "A control, not an equal-cost allocator: when > 0 (even), Stage 1 allocates on each pool prompt's "
            "success measured with this many extra rollouts (outside the budget, never trained on) instead of "
            "the predictor's v. 0: off."
        ),
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
        description=(
            "Success predictor registered by this name: 'online' (decayed whole-history logistic regression "
            "with online recalibration) or 'mlp' (an MLP refitted on the last `window` iterations)."
        ),
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
        description="Iterations of node targets kept for refitting; short, because the policy moves fast.",
    )
    hidden: int = Field(32, ge=1, description="Width of the predictor's hidden layer.")
    epochs: int = Field(150, ge=1, description="Full-batch fitting steps per refit.")
    learning_rate: float = Field(1e-2, gt=0, description="Predictor AdamW learning rate.")
    targets: Literal["subtree", "launched"] = Field(
        "launched",
        description=(
            "What a node's training target counts: 'launched' (only leaves of rollouts sampled from the node "
            "or above it) or 'subtree' (every leaf below it, the paper's backup, biased by Stage 2's "
            "continuations launched where an outcome disagreed with a prediction)."
        ),
    )
    mixedness: bool = Field(
        False,
        description=(
            "Also learn the chance that two rollouts of a prompt disagree, and value Stage 1 by V_mix(v, d, "
            "m) (trace_core/method/mixedness.py) instead of the paper's V_root(v, m)."
        ),
    )


class PolicySection(Section):
    learning_rate: float = Field(3e-4, gt=0, description="Policy AdamW learning rate.")
    clip_eps: float = Field(0.2, gt=0, lt=1, description="PPO clip range epsilon.")
    kl_coef: float = Field(
        0.05,
        ge=0,
        description=(
            "beta: weight of the k3 KL to the warm-started policy (the LoRA adapter switched off, or a frozen "
            "copy under full fine-tuning); 0 turns it off."
        ),
    )
    minibatches: int = Field(
        2,
        ge=1,
        description="Optimizer steps per iteration.",
    )
    weights: Literal["auto", "lora", "full"] = Field(
        "auto",
        description=(
            "What trains: a LoRA adapter, all weights, or auto (all weights of the ~1M-parameter tiny model, "
            "LoRA otherwise)."
        ),
    )
    lora_rank: int = Field(16, ge=1, description="LoRA rank r.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling alpha.")


class HeadroomSection(Section):
    every: int = Field(
        0,
        ge=0,
        description=(
            "Measure the oracle ledger (`trace-rl headroom`) at iteration 0 and every this many iterations "
            "after, outside the training budget (about pool_size * samples rollouts each time); 0: never."
        ),
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
