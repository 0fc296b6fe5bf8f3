"""Answer scoring: exact match and token F1 after SQuAD/HotpotQA answer normalisation.

The reward of a finished trajectory is exact match (EM) of its final answer against any of the gold
answers, after the normalisation used by the SQuAD v1.1 and HotpotQA evaluation scripts: lower-case,
drop punctuation, drop the articles "a", "an", "the", collapse whitespace. F1 over normalised
whitespace tokens (best over the gold answers) is reported beside it but is not the reward.

Deviations: none; Search-R1 scores its QA tasks the same way.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

from trace_core.method.tree import RolloutNode

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, remove punctuation, remove articles, collapse whitespace."""
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold_answers: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold answer, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in gold_answers))


def _f1_one(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    common = Counter(pred_tokens) & Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, gold_answers: Sequence[str]) -> float:
    """Best token-level F1 of the normalised prediction against the normalised gold answers."""
    pred_tokens = normalize_answer(prediction).split()
    return max((_f1_one(pred_tokens, normalize_answer(g).split()) for g in gold_answers), default=0.0)


def answer_f1(leaf: RolloutNode, record: Any) -> float:
    """A rollout's F1: its answer's token F1 against the record's golden answers (0 for a rollout that
    never answered); the reward for a record without golden answers."""
    answers = getattr(record, "golden_answers", None)
    if answers is None:
        return leaf.reward or 0.0
    return f1_score(leaf.argument, answers) if leaf.action == "answer" else 0.0
