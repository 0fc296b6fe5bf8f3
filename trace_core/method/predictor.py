"""The shared success predictor: prefix history -> probability that a continuation succeeds.

One model serves both stages: a root is the prefix made of the prompt alone. Inputs are feature
vectors (see `features.py` for the search agent's and `simulated.py` for the known-probability
task's); the model is a small MLP with a sigmoid output, fitted to backed-up node targets
(success rate over the leaves below the node) by soft-label binary cross-entropy weighted by each
node's leaf count, over a window of the most recent iterations. Before its first fit it predicts
the stated prior, so allocation starts near-uniform. It steers allocation only: nothing it outputs
enters the loss or the advantages.

With a few hundred nodes per iteration against ~800 input features the MLP overfits within a
dozen full-batch steps (measured: held-out AUC falls from 0.73 to 0.62 and calibration error rises
from 0.05 to 0.2 by step 150). So every fit holds out a fifth of the prompts (by a hash of the
prompt id, so all nodes of one prompt fall on the same side) and keeps the weights of the step with
the lowest held-out loss: early stopping chooses the amount of fitting.

Quality is reported as Brier score, AUC and expected calibration error, all weighted by leaf
counts, with soft targets split into t * n positive and (1 - t) * n negative leaf outcomes.

Deviations:
1. The paper's predictor architecture is not public; GPS (arXiv 2602.01970) fits a latent-variable
   model on the whole history. Ours is a discriminative MLP on encoder features refitted from
   scratch on a sliding window; generalisation to unseen prompts comes from the input features.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from trace_core.registry import Registry


@dataclass(frozen=True)
class PredictorConfig:
    """prior: prediction before the first fit. window: iterations of data kept for refitting.
    hidden: MLP width. epochs / lr / weight_decay: full-batch AdamW fitting, at most `epochs`
    steps. holdout: share of prompts held out to choose the stopping step (0 disables it).
    mixedness: also learn, from the bare Stage-1 groups, the chance two rollouts of a prompt
    disagree (`predict_mixedness`, trace_core/method/mixedness.py), so Stage 1 can value a prompt by
    V_mix(v, d, m) instead of V_root(v, m)."""

    prior: float = 0.5
    window: int = 8
    hidden: int = 32
    epochs: int = 150
    lr: float = 1e-2
    weight_decay: float = 1e-2
    holdout: float = 0.2
    seed: int = 0
    mixedness: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.prior < 1:
            raise ValueError(f"the prior must be in (0, 1), got {self.prior}")
        if self.window < 1:
            raise ValueError("the window must hold at least one iteration")


@dataclass(frozen=True)
class PredictorQuality:
    """Weighted quality of predictions against backed-up targets (NaN where undefined)."""

    examples: int
    leaves: float
    brier: float
    auc: float
    ece: float
    mean_predicted: float
    mean_target: float


@dataclass(frozen=True)
class FitReport:
    """loss: weighted BCE on the fitted examples at the chosen step; heldout: quality on the
    held-out prompts (None without a hold-out); steps: the chosen number of steps."""

    loss: float
    examples: int
    iterations: int
    steps: int
    train: PredictorQuality
    heldout: PredictorQuality | None


def quality(predicted: np.ndarray, target: np.ndarray, weight: np.ndarray, bins: int = 10) -> PredictorQuality:
    """Brier, AUC and ECE of `predicted` against soft `target` with leaf-count `weight`."""
    p, t, w = (np.asarray(a, dtype=np.float64) for a in (predicted, target, weight))
    total = w.sum()
    if len(p) == 0 or total <= 0:
        nan = float("nan")
        return PredictorQuality(len(p), float(total), nan, nan, nan, nan, nan)
    brier = float((w * (t * (1 - p) ** 2 + (1 - t) * p**2)).sum() / total)
    return PredictorQuality(
        examples=len(p),
        leaves=float(total),
        brier=brier,
        auc=weighted_auc(p, w * t, w * (1 - t)),
        ece=calibration_error(p, t, w, bins),
        mean_predicted=float((w * p).sum() / total),
        mean_target=float((w * t).sum() / total),
    )


def pooled_quality(parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], bins: int = 10) -> PredictorQuality:
    """`quality` of several iterations' (predicted, target, weight) scored as one sample.

    Per iteration a Stage-1 plan scores about 30 leaves, so even a perfect predictor's ECE there
    sits near 0.1 (binomial noise, bench/metric_ceiling.py); pooled over a run's iterations that
    noise averages out and what remains is miscalibration."""
    kept = [part for part in parts if len(part[0])]
    if not kept:
        return quality(np.array([]), np.array([]), np.array([]), bins)
    predicted, target, weight = (np.concatenate(column) for column in zip(*kept, strict=True))
    return quality(predicted, target, weight, bins)


def weighted_auc(score: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting half, with weights."""
    if pos.sum() <= 0 or neg.sum() <= 0:
        return float("nan")
    order = np.argsort(score, kind="stable")
    s, wp, wn = score[order], pos[order], neg[order]
    _, starts = np.unique(s, return_index=True)
    groups = np.split(np.arange(len(s)), starts[1:])
    below = 0.0  # negative weight strictly below the current score
    wins = 0.0
    for g in groups:
        gp, gn = wp[g].sum(), wn[g].sum()
        wins += gp * (below + 0.5 * gn)
        below += gn
    return float(wins / (pos.sum() * neg.sum()))


def calibration_error(p: np.ndarray, t: np.ndarray, w: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: weighted mean over equal-width bins of |mean p - mean target|."""
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = w.sum()
    err = 0.0
    for b in range(bins):
        m = idx == b
        wb = w[m].sum()
        if wb > 0:
            err += wb / total * abs((w[m] * p[m]).sum() / wb - (w[m] * t[m]).sum() / wb)
    return float(err)


class Predictor(Protocol):
    """What allocation and the training flow need of a success predictor (registered in PREDICTORS)."""

    dim: int
    config: PredictorConfig

    @property
    def fitted(self) -> bool: ...

    def predict(self, features: np.ndarray) -> np.ndarray: ...

    def add(
        self,
        iteration: int,
        features: np.ndarray,
        target: np.ndarray,
        weight: np.ndarray,
        groups: Sequence[str] | None = None,
    ) -> None: ...

    def add_groups(self, iteration: int, features: np.ndarray, successes: np.ndarray, n: np.ndarray) -> None:
        """One iteration's bare Stage-1 groups (prompt features, successes k of n rollouts): the
        mixedness model's data. A no-op unless `config.mixedness`."""
        ...

    def fit(self) -> FitReport: ...

    def predict_mixedness(self, features: np.ndarray) -> np.ndarray | None:
        """Predicted chance that two rollouts of each prompt disagree; None when not learnt (yet)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# name -> factory(feature dimension, config), each registered by its own module (torch), imported when used
PREDICTORS: Registry[Callable[[int, PredictorConfig], Predictor]] = Registry("predictor")
PREDICTORS.declare("mlp", "trace_core.method.mlp_predictor")
PREDICTORS.declare("online", "trace_core.method.online_predictor")


def make_predictor(name: str, dim: int, config: PredictorConfig) -> Predictor:
    """The predictor registered as `name`; an unknown name lists the valid ones."""
    return PREDICTORS.get(name)(dim, config)
