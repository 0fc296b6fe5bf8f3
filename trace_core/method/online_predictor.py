"""`online`: a calibrated success predictor that learns from the whole run while tracking drift.

What it computes. A prefix's success probability is

    p = sigmoid(a * z + c),   z = w . x_std + b

where x_std are the prefix's features (the same vector the `mlp` predictor sees, standardised over
the kept history) and (w, b) is an L2-regularised logistic regression fitted to the backed-up node
targets of every kept iteration, each example weighted by its leaf count times `decay ** age`
(age: iterations since the example was sampled). The decay lets old iterations teach what kind
of question is hard while the recent ones set where the policy is now (a question's success drifts
during training, docs/results.md).

The regularisation strength and the decay are chosen at every refit by forward validation, the
way they are used: fit on the iterations before the newest and score the newest (leaf-weighted
log loss), over a small grid; then refit on everything with the winner.

(a, c) is a Platt recalibration fitted on *out-of-sample* pairs only: when an iteration's examples
arrive, the current model (fitted before they existed) scores them, exactly as the allocator saw
such prefixes; the last `calibration_window` iterations of those (logit, target) pairs are kept
and (a, c) fitted to them with a Gaussian prior pulling toward (1, 0). An overconfident model gets
a < 1 and is shrunk toward the running mean; a biased one gets c (in simulation, calibrated
predictions of modest AUC still beat uniform where overconfident ones lose mixed groups).

Every fit also holds `prior_leaves` (2) pseudo-leaves at the prior, at the mean input: without them
a first iteration whose bare rollouts all succeeded sent every prediction to 1 and TRACE then saw
no prompt worth sampling (found by the tiny end-to-end test). Before the first fit it predicts the
prior; before the first calibration pairs exist, (a, c) = (1, 0). Everything is deterministic
given the data (L-BFGS in float64 from zeros).

Why this predictor: replayed on the same iterations of a `uniform` run, each predicted before it was
seen (bench/results/predictor.json, docs/results.md), most of its gain over the two-iteration `mlp`
is the history and the GLM with its recalibration adds calibration, above all at anchors.

Where the recalibration's out-of-sample pairs come from (`OnlineConfig.calibration`): "carried"
(the default: each iteration scored by the model current when it arrived), "refit" (recomputed at
every fit by models of today's decay and L2 fitted on the iterations before each one, so the slope
is fitted on today's logit scale) or "none"; replayed on the same runs, no variant won across runs
(bench/results/calibration.json), so "carried" stays. A prompt predicted 0.5 is as often one the
model cannot place (solved or hopeless) as one of middling difficulty; a single Beta dispersion for
every prompt cannot fix that (it never changes which prompts rank first). Predicting mixedness
itself, per prompt, is `predictor.mixedness` (trace_core/method/mixedness.py).

Deviations from the paper: its predictor is not public (docs/method.md). Ours is a generalised linear
model rather than a neural network, and is recalibrated online.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trace_core.method.glm import fit_logistic, forward_validated, log_loss
from trace_core.method.mixedness import MixednessHead
from trace_core.method.predictor import PREDICTORS, FitReport, PredictorConfig, quality

CALIBRATIONS = ("carried", "refit", "none")


@dataclass(frozen=True)
class OnlineConfig:
    """history: iterations of examples kept. decays / l2s: the grids forward validation chooses
    from (decay per iteration of age; L2 strength per unit of example weight).
    calibration_window: iterations of out-of-sample pairs for the Platt fit; calibration_prior:
    strength of the pull of (a, c) toward (1, 0), in leaves. prior_leaves: pseudo-leaves at the
    configured prior added to every fit (a Beta-like prior on the intercept)."""

    history: int = 30
    decays: tuple[float, ...] = (0.5, 0.75, 0.9)
    l2s: tuple[float, ...] = (1.0, 10.0, 100.0)
    calibration_window: int = 6
    calibration_prior: float = 20.0
    calibration: str = "carried"  # "carried", "refit" (see `_refit_pairs`) or "none" (a = 1, c = 0)
    prior_leaves: float = 2.0
    lbfgs_steps: int = 100

    def __post_init__(self) -> None:
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"unknown calibration {self.calibration!r}; valid: {', '.join(CALIBRATIONS)}")


def fit_platt(z: np.ndarray, t: np.ndarray, w: np.ndarray, prior: float) -> tuple[float, float]:
    """(a, c) maximising the weighted likelihood of sigmoid(a z + c) plus a Gaussian prior of
    `prior` pseudo-leaves around (1, 0)."""
    zt, tt, wt = (torch.from_numpy(np.asarray(v, np.float64)) for v in (z, t, w))
    ac = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([ac], max_iter=100, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = ac[0] * zt + ac[1]
        nll = (wt * torch.nn.functional.binary_cross_entropy_with_logits(logits, tt, reduction="none")).sum()
        loss = nll + 0.5 * prior * ((ac[0] - 1) ** 2 + ac[1] ** 2)
        loss.backward()
        return loss

    opt.step(closure)
    a, c = (float(v) for v in ac.detach())
    return max(a, 0.0), c  # a negative slope would invert the ranking: never trust that


@PREDICTORS.register("online")
class OnlinePredictor(MixednessHead):
    """Decayed-history logistic regression with online Platt recalibration; see the module docstring."""

    def __init__(self, dim: int, config: PredictorConfig = PredictorConfig(), online: OnlineConfig = OnlineConfig()):
        self.dim = dim
        self.config = config
        self._init_mixedness(config.mixedness)
        self.online = online
        self.history: deque[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = deque(maxlen=online.history)
        self.pairs: deque[tuple[np.ndarray, np.ndarray, np.ndarray]] = deque(maxlen=online.calibration_window)
        self.theta: np.ndarray | None = None
        self.mean = np.zeros(dim)
        self.scale = np.ones(dim)
        self.platt = (1.0, 0.0)
        self.chosen = (float("nan"), float("nan"))  # (decay, l2) of the last fit

    @property
    def fitted(self) -> bool:
        return self.theta is not None

    def _raw(self, features: np.ndarray) -> np.ndarray:
        assert self.theta is not None
        x = (np.asarray(features, np.float64).reshape(-1, self.dim) - self.mean) / self.scale
        return np.asarray(x @ self.theta[:-1] + self.theta[-1])

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(n, dim) features -> (n,) calibrated probabilities; the prior before the first fit."""
        features = np.asarray(features, dtype=np.float64).reshape(-1, self.dim)
        if self.theta is None:
            return np.full(len(features), self.config.prior)
        a, c = self.platt
        return np.asarray(1 / (1 + np.exp(-(a * self._raw(features) + c))))

    def add(
        self,
        iteration: int,
        features: np.ndarray,
        target: np.ndarray,
        weight: np.ndarray,
        groups: Sequence[str] | None = None,
    ) -> None:
        """Add one iteration's node examples. Before they join the history, the current model
        scores them: those out-of-sample logits are the recalibration's data."""
        del groups  # examples are held out by iteration (forward validation), not by prompt
        x = np.asarray(features, np.float64).reshape(-1, self.dim)
        t, w = np.asarray(target, np.float64), np.asarray(weight, np.float64)
        if self.theta is not None and len(x):
            self.pairs.append((self._raw(x), t, w))
        self.history.append((iteration, x.astype(np.float32), t, w))  # float32: a run's history stays small

    def _data(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        rows = list(self.history)
        newest = rows[-1][0]
        x = np.concatenate([r[1] for r in rows]).astype(np.float64)
        t, w = (np.concatenate([r[i] for r in rows]) for i in (2, 3))
        age = np.concatenate([np.full(len(r[1]), newest - r[0], dtype=np.float64) for r in rows])
        return x, t, w, age

    def fit(self) -> FitReport:
        """Choose (decay, l2) by forward validation, refit on the whole history, recalibrate."""
        if not self.history or sum(len(r[1]) for r in self.history) == 0:
            raise ValueError("the predictor has no examples to fit")
        x, t, w, age = self._data()
        self.mean = x.mean(axis=0)
        self.scale = x.std(axis=0) + 1e-6
        xs = (x - self.mean) / self.scale
        o = self.online
        decay, l2 = forward_validated(xs, t, w, age, o.decays, o.l2s, o.lbfgs_steps, self._with_prior)
        self.chosen = (decay, l2)
        xp, tp, wp = self._with_prior(xs, t, w * decay**age)
        self.theta = fit_logistic(xp, tp, wp, l2, self.online.lbfgs_steps)
        if self.online.calibration == "refit":
            pairs = self._refit_pairs(xs, t, w, age, decay, l2)
        else:
            pairs = list(self.pairs) if self.online.calibration == "carried" else []
        if pairs:
            z, tp, wp = (np.concatenate([p[i] for p in pairs]) for i in range(3))
            self.platt = fit_platt(z, tp, wp, self.online.calibration_prior)
        self._fit_mixedness()
        predicted = self.predict(x)
        fit_quality = quality(predicted, t, w)
        z = self._raw(x)
        return FitReport(
            log_loss(z, t, w * decay**age), len(x), len(self.history), self.online.lbfgs_steps, fit_quality, None
        )

    def _refit_pairs(
        self, xs: np.ndarray, t: np.ndarray, w: np.ndarray, age: np.ndarray, decay: float, l2: float
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Out-of-sample (logit, target, weight) of each of the newest `calibration_window`
        iterations, scored by a model of *today's* kind (the chosen decay and L2) fitted on the
        iterations before it. The carried pairs were scored by whichever model was current then;
        when the chosen L2 changes between refits, their logits live on another scale than today's,
        and a slope fitted to them compresses (or stretches) today's predictions."""
        pairs = []
        for a in sorted(set(age.tolist()))[: self.online.calibration_window]:
            held, past = age == a, age > a
            if not past.any():
                break
            weights = w[past] * decay ** (age[past] - age[past].min())
            theta = fit_logistic(*self._with_prior(xs[past], t[past], weights), l2, self.online.lbfgs_steps)
            pairs.append((xs[held] @ theta[:-1] + theta[-1], t[held], w[held]))
        return pairs

    def _with_prior(self, xs: np.ndarray, t: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The data plus `prior_leaves` pseudo-leaves at the prior, at the mean input: the intercept is
        otherwise unpenalised, and a first iteration whose bare rollouts all succeeded would send
        every prediction to 1 (with 16 such leaves it now stops near 0.94)."""
        n0 = self.online.prior_leaves
        return (np.concatenate([xs, np.zeros((1, xs.shape[1]))]), np.append(t, self.config.prior), np.append(w, n0))

    def state_dict(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "theta": self.theta,
            "mean": self.mean,
            "scale": self.scale,
            "platt": self.platt,
            "chosen": self.chosen,
            "history": list(self.history),
            "pairs": list(self.pairs),
            "mixedness": self._mixedness_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["dim"] != self.dim:
            raise ValueError(f"predictor state has {state['dim']} features, this predictor {self.dim}")
        self.theta, self.mean, self.scale = state["theta"], state["mean"], state["scale"]
        self.platt, self.chosen = tuple(state["platt"]), tuple(state["chosen"])  # type: ignore[assignment]
        self.history = deque(state["history"], maxlen=self.online.history)
        self.pairs = deque(state["pairs"], maxlen=self.online.calibration_window)
        self._load_mixedness(state.get("mixedness"))
