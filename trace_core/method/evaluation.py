"""Sampled evaluation of the policy: exact match, F1 and the spread of per-question success.

For each question, `n` independent rollouts are sampled (greedy when temperature is 0, in which
case one suffices). Reported: mean EM (the reward) and mean F1 over all rollouts, and each
question's success rate, whose histogram (how many questions never, always, or sometimes solved)
is what group-relative RL depends on: only mixed questions give a gradient; and the mean reward per
data source (`by_source`: BFCL's subsets for function calling, the paper's Table 5 columns).

Any task family's trees can be scored: EM is the reward (for function calling, BFCL's multi-turn
checker: accuracy avg@n); F1 is the family's `f1(leaf, record)` (the search agent's: token F1 of the
answer against the golden answers), and the reward where a family has none.

`outcomes` keeps every rollout's reward by (data source, question id, sample), the sample being the
leaf's order within its tree, so two evaluations of the same questions can be compared question by
question (paired) rather than only through their means.

Deviations: none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from trace_core.generation.backend import GenerationBackend
from trace_core.method.rollout import rollout_batch
from trace_core.method.tree import RolloutNode, RolloutTree


@dataclass(frozen=True)
class QuestionOutcome:
    """One sampled rollout of an evaluation: the question (its record's `id`, within `data_source`),
    the sample's index (its leaf's order within the question's tree) and its reward (1.0 exactly right)."""

    question_id: str
    sample: int
    correct: float
    data_source: str


@dataclass(frozen=True)
class EvalReport:
    """em / f1: means over all sampled rollouts. success: per question, the share of its n rollouts
    that were exactly right. never / always / mixed: how many questions had 0, n, or in-between
    successes. generated_tokens: policy tokens sampled for the evaluation. outcomes: every rollout's
    reward, question by question, in tree order and leaf order within each tree."""

    n: int
    em: float
    f1: float
    success: tuple[float, ...]
    never: int
    always: int
    mixed: int
    generated_tokens: int
    by_source: tuple[tuple[str, float], ...] = ()
    outcomes: tuple[QuestionOutcome, ...] = ()

    def histogram(self) -> dict[str, int]:
        return {"never": self.never, "mixed": self.mixed, "always": self.always}


# a leaf's F1 against its record (a task family's), e.g. token F1 of the answer
LeafF1 = Callable[[RolloutNode, Any], float]


def evaluate_policy(
    records: Sequence[Any],
    backend: GenerationBackend,
    env: Any,
    n: int = 1,
    temperature: float | None = None,
    f1: LeafF1 | None = None,
) -> EvalReport:
    return score_trees(rollout_batch(records, n, backend, env, env.config.sampling(temperature)), n, f1)


def _reward(leaf: RolloutNode, _record: Any) -> float:
    return leaf.reward or 0.0


def score_trees(trees: Sequence[RolloutTree], n: int, f1: LeafF1 | None = None) -> EvalReport:
    """EM, F1 (`f1`, the reward when None), the per-question success spread and the per-source EM of
    finished trees (n leaves each)."""
    f1 = f1 or _reward
    ems: list[float] = []
    f1s: list[float] = []
    success: list[float] = []
    sources: dict[str, list[float]] = {}
    outcomes: list[QuestionOutcome] = []
    tokens = 0
    for tree in trees:
        leaves = tree.leaves()
        rewards = [leaf.reward or 0.0 for leaf in leaves]
        ems.extend(rewards)
        f1s.extend(f1(leaf, tree.record) for leaf in leaves)
        sources.setdefault(tree.record.data_source, []).extend(rewards)
        success.append(sum(rewards) / len(rewards))
        record = tree.record
        outcomes.extend(QuestionOutcome(record.id, i, r, record.data_source) for i, r in enumerate(rewards))
        tokens += sum(node.generated_tokens for node in tree)
    return EvalReport(
        n=n,
        em=sum(ems) / len(ems),
        f1=sum(f1s) / len(f1s),
        success=tuple(success),
        never=sum(s == 0 for s in success),
        always=sum(s == 1 for s in success),
        mixed=sum(0 < s < 1 for s in success),
        generated_tokens=tokens,
        by_source=tuple((k, sum(v) / len(v)) for k, v in sorted(sources.items())),
        outcomes=tuple(outcomes),
    )
