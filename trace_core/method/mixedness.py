"""Predicting mixedness itself: how likely two rollouts of a prompt disagree, not only its mean success.

Why. TRACE's Stage-1 value reads the mixedness of m rollouts from the predicted success v alone,
V_root(v, m) = 1 - v^m - (1 - v)^m, as if v were the prompt's true success rate s. It is not: it
is a forecast, and behind one v = 0.5 stand both prompts of middling difficulty (s near 0.5, a
group of 3 is mixed 75% of the time) and prompts the predictor cannot place (s near 0 or 1, never
mixed). Replaying the `online` predictor on measured pools (bench/calibration.py) found that v ranks
the pool's measured success well but V_root(v, 3) ranks the measured chance of a mixed group
poorly (docs/results.md). Spreading every v by one Beta dispersion never changes which prompts rank
first. Only a per-prompt second moment can.

What it computes. For a prompt with success s, the chance that two rollouts disagree is
d = 2 s (1 - s). Its unbiased estimate from a bare group of n rollouts with k successes is the
share of disagreeing pairs,

    d_hat = 2 k (n - k) / (n (n - 1)),                          n >= 2,

and `MixednessModel` regresses d_hat (a fractional target, weight n - 1) by the same decayed,
L2-regularised logistic regression as the `online` predictor, its L2 and decay chosen by forward
validation. Two forms (`MixednessConfig.form`), z being the success predictor's calibrated logit
at the time the group was allocated (v = sigmoid(z)):

    ratio (default):  d = 2 v (1 - v) sigmoid(eta(features))    (the share of the known-success value)
    direct:           d = sigmoid(eta(features, z, z^2))

The ratio form is the paper's rule times a learnt, per-prompt factor in (0, 1): 1 where v is the
prompt's success, small where the prompt is one the predictor cannot place. It cannot predict more
disagreement than 2 v (1 - v), so it never extrapolates: the groups it learns from were chosen by
the allocator (v near 1/2), and the direct form, fitted on that narrow range of z, sent whole pools
the wrong way (its z^2 term made confident prompts look mixed). Given v and d, the prompt's success
is read as the Beta with mean v and E[2 s (1 - s)] = d (moments matched,
`trace_core.method.allocation.beta_from_moments`), and the value of m rollouts becomes

    V_mix(v, d, m) = 1 - E[s^m] - E[(1 - s)^m]   under that Beta,

which equals d for m = 2 and 3 d / 2 for m = 3 whatever the Beta, and tends to the paper's
V_root(v, m) as d -> 2 v (1 - v).

Deviations: the paper's V_root treats v as the prompt's known success; V_mix does not.

Not the default (`predictor.mixedness = false`): on one seed of each bench regime it raised the
non-zero-advantage share and lowered accuracy (bench/results/mixedness, docs/results.md); more
seeds decide.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from trace_core.method.allocation import group_disagreement
from trace_core.method.glm import fit_logistic, forward_validated, logit


@dataclass(frozen=True)
class MixednessConfig:
    """history: iterations of groups kept; decays / l2s: forward-validation grids (as `OnlineConfig`);
    prior_groups: pseudo-groups at the mean input and z = 0 whose target is the paper's value at
    v = 1/2 (d = 1/2), so a model fitted on few groups stays near the paper's rule; min_groups:
    groups needed before the model is used at all (before that, `predict` returns None);
    features: regress on the prompt's features beside z and z^2 (False: on z and z^2 alone)."""

    history: int = 30
    decays: tuple[float, ...] = (0.5, 0.75, 0.9)
    l2s: tuple[float, ...] = (10.0, 100.0, 1000.0)
    prior_groups: float = 4.0
    min_groups: int = 16
    lbfgs_steps: int = 100
    features: bool = True
    form: str = "ratio"  # "ratio": d = 2 v (1 - v) sigmoid(eta), eta on features only; "direct": d = sigmoid(eta)

    def __post_init__(self) -> None:
        if self.form not in ("direct", "ratio"):
            raise ValueError(f"unknown mixedness form {self.form!r}; valid: direct, ratio")


class MixednessModel:
    """Decayed-history regression of a group's disagreement: d = 2 v (1 - v) sigmoid(eta(features))
    (the "ratio" form) or d = sigmoid(eta(features, z, z^2)) (the "direct" form)."""

    def __init__(self, dim: int, config: MixednessConfig = MixednessConfig()):
        self.dim = dim
        self.config = config
        self.history: deque[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = deque(maxlen=config.history)
        self.theta: np.ndarray | None = None
        self.mean = np.zeros(dim)
        self.scale = np.ones(dim)
        self.chosen = (float("nan"), float("nan"))

    @property
    def fitted(self) -> bool:
        return self.theta is not None

    @property
    def groups(self) -> int:
        return sum(len(r[3]) for r in self.history)

    def add(self, iteration: int, features: np.ndarray, z: np.ndarray, successes: np.ndarray, n: np.ndarray) -> None:
        """One iteration's bare groups: features of their prompts, the calibrated success logit
        each had at allocation, successes k out of n rollouts (groups with n < 2 are dropped)."""
        x = np.asarray(features, np.float64).reshape(-1, self.dim)
        k, n = np.asarray(successes, np.float64), np.asarray(n, np.int64)
        keep = n >= 2
        d = np.array([group_disagreement(a, int(b)) for a, b in zip(k[keep], n[keep], strict=True)])
        w = n[keep].astype(np.float64) - 1
        self.history.append((iteration, x[keep].astype(np.float32), np.asarray(z, np.float64)[keep], d, w))

    def _inputs(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        xs = (x - self.mean) / self.scale if self.config.features else np.zeros((len(x), 0))
        if self.config.form == "ratio":
            return xs
        return np.concatenate([xs, z[:, None], z[:, None] ** 2], axis=1)

    def _ceiling(self, z: np.ndarray) -> np.ndarray | None:
        """The ratio form's 2 v (1 - v), the disagreement were v the prompt's known success."""
        if self.config.form != "ratio":
            return None
        v = 1 / (1 + np.exp(-z))
        return 2 * v * (1 - v)

    def _with_prior(self, xi: np.ndarray, t: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # at the mean input and v = 1/2: d = 1/2 (the paper's value) directly, or 3/4 of it as a ratio
        target = 0.5 if self.config.form == "direct" else 0.375
        prior = self.config.prior_groups
        return np.concatenate([xi, np.zeros((1, xi.shape[1]))]), np.append(t, target), np.append(w, prior)

    def fit(self) -> bool:
        """Refit on the kept groups (L2 and decay by forward validation); False while there are
        fewer than `min_groups`."""
        if self.groups < self.config.min_groups:
            return False
        rows = list(self.history)
        newest = rows[-1][0]
        x = np.concatenate([r[1] for r in rows]).astype(np.float64)
        z, t, w = (np.concatenate([r[i] for r in rows]) for i in (2, 3, 4))
        age = np.concatenate([np.full(len(r[3]), newest - r[0], dtype=np.float64) for r in rows])
        self.mean, self.scale = x.mean(axis=0), x.std(axis=0) + 1e-6
        xi = self._inputs(x, z)
        c = self.config
        ceiling = self._ceiling(z)
        self.chosen = forward_validated(xi, t, w, age, c.decays, c.l2s, c.lbfgs_steps, self._with_prior, ceiling)
        decay, l2 = self.chosen
        full = None if ceiling is None else np.append(ceiling, 0.5)
        self.theta = fit_logistic(*self._with_prior(xi, t, w * decay**age), l2, c.lbfgs_steps, full)
        return True

    def predict(self, features: np.ndarray, z: np.ndarray) -> np.ndarray | None:
        """Predicted d = P(two rollouts disagree) per prompt; None before the first fit."""
        if self.theta is None:
            return None
        x = np.asarray(features, np.float64).reshape(-1, self.dim)
        z = np.asarray(z, np.float64)
        logits = self._inputs(x, z) @ self.theta[:-1] + self.theta[-1]
        ceiling = self._ceiling(z)
        return np.asarray(1 / (1 + np.exp(-logits))) * (1.0 if ceiling is None else ceiling)

    def state_dict(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "theta": self.theta,
            "mean": self.mean,
            "scale": self.scale,
            "chosen": self.chosen,
            "history": list(self.history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["dim"] != self.dim:
            raise ValueError(f"mixedness state has {state['dim']} features, this model {self.dim}")
        self.theta, self.mean, self.scale = state["theta"], state["mean"], state["scale"]
        self.chosen = tuple(state["chosen"])  # type: ignore[assignment]
        self.history = deque(state["history"], maxlen=self.config.history)


class MixednessHead:
    """What a success predictor needs to also serve `predict_mixedness` (mixed into `mlp` and
    `online`): a `MixednessModel` when `config.mixedness`, fed with the z its host gives each bare
    group's prompt before the iteration joins the host's history (what allocation saw)."""

    dim: int
    mixedness: MixednessModel | None

    @property
    def fitted(self) -> bool:
        raise NotImplementedError

    def predict(self, features: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _init_mixedness(self, enabled: bool) -> None:
        self.mixedness = MixednessModel(self.dim) if enabled else None

    def add_groups(self, iteration: int, features: np.ndarray, successes: np.ndarray, n: np.ndarray) -> None:
        if self.mixedness is not None and len(np.asarray(n)):
            self.mixedness.add(iteration, features, logit(self.predict(features)), successes, n)

    def predict_mixedness(self, features: np.ndarray) -> np.ndarray | None:
        if self.mixedness is None or not self.fitted:
            return None
        return self.mixedness.predict(features, logit(self.predict(features)))

    def _fit_mixedness(self) -> None:
        if self.mixedness is not None:
            self.mixedness.fit()

    def _mixedness_state(self) -> dict[str, Any] | None:
        return None if self.mixedness is None else self.mixedness.state_dict()

    def _load_mixedness(self, state: dict[str, Any] | None) -> None:
        if self.mixedness is not None and state is not None:
            self.mixedness.load_state_dict(state)
