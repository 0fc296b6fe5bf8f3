"""The `mlp` success predictor: a small MLP over the prefix's feature vector, sigmoid output.

Fitted to backed-up node targets (success rate over the leaves below the node) by soft-label binary
cross-entropy weighted by leaf count, over a window of the most recent iterations, with a fifth of
the prompts held out for early stopping (the rationale and the deviations from the paper are in
predictor.py's docstring, which holds the interface every predictor shares). Registered as `mlp`.

Deviations: those of predictor.py (the paper's predictor architecture is not public; this MLP is ours).
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from trace_core.method.mixedness import MixednessHead
from trace_core.method.predictor import PREDICTORS, FitReport, PredictorConfig, quality


@PREDICTORS.register("mlp")
class SuccessPredictor(MixednessHead):
    """MLP success predictor over fixed-size feature vectors, refitted on a window of iterations."""

    def __init__(self, dim: int, config: PredictorConfig = PredictorConfig()) -> None:
        self.dim = dim
        self.config = config
        self._init_mixedness(config.mixedness)
        self.window: deque[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = deque(maxlen=config.window)
        self.net: torch.nn.Module | None = None
        self.mean = np.zeros(dim)
        self.scale = np.ones(dim)

    @property
    def fitted(self) -> bool:
        return self.net is not None

    def _new_net(self) -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Linear(self.dim, self.config.hidden), torch.nn.Tanh(), torch.nn.Linear(self.config.hidden, 1)
        ).double()

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(n, dim) features -> (n,) probabilities; the prior before the first fit."""
        features = np.asarray(features, dtype=np.float64).reshape(-1, self.dim)
        if self.net is None:
            return np.full(len(features), self.config.prior)
        with torch.no_grad():
            x = torch.from_numpy((features - self.mean) / self.scale)
            return torch.sigmoid(self.net(x)).squeeze(-1).numpy()

    def add(
        self,
        iteration: int,
        features: np.ndarray,
        target: np.ndarray,
        weight: np.ndarray,
        groups: Sequence[str] | None = None,
    ) -> None:
        """Add one iteration's node examples to the window (the oldest iteration falls out).

        groups: the prompt id of each example; examples of one prompt are held out together.
        """
        features = np.asarray(features, dtype=np.float64).reshape(-1, self.dim)
        held = np.zeros(len(features), dtype=bool)
        if groups is not None and self.config.holdout > 0:
            held = np.array([zlib.crc32(g.encode()) % 1000 < self.config.holdout * 1000 for g in groups], dtype=bool)
        row = (iteration, features, np.asarray(target, np.float64), np.asarray(weight, np.float64), held)
        self.window.append(row)

    def fit(self) -> FitReport:
        """Refit from scratch on the window; deterministic given the seed and the data."""
        x, t, w, held = (np.concatenate([row[i] for row in self.window]) for i in (1, 2, 3, 4))
        if len(x) == 0:
            raise ValueError("the predictor has no examples to fit")
        if held.all() or not held.any():
            held = np.zeros(len(x), dtype=bool)  # too few prompts to hold any out: fit all, all steps
        fit_rows = ~held
        self.mean = x[fit_rows].mean(axis=0)
        self.scale = x[fit_rows].std(axis=0) + 1e-6
        torch.manual_seed(self.config.seed)
        net = self._new_net()
        xt = torch.from_numpy((x - self.mean) / self.scale)
        tt = torch.from_numpy(t)
        w_fit = torch.from_numpy(np.where(fit_rows, w, 0.0) / w[fit_rows].sum())
        w_held = torch.from_numpy(np.where(held, w, 0.0) / max(w[held].sum(), 1e-12))
        opt = torch.optim.AdamW(net.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)
        best_loss, best_state, best_step, fit_loss = float("inf"), net.state_dict(), 0, float("nan")
        for step in range(1, self.config.epochs + 1):
            per_row = torch.nn.functional.binary_cross_entropy_with_logits(net(xt).squeeze(-1), tt, reduction="none")
            loss = (w_fit * per_row).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if held.any():
                with torch.no_grad():
                    per_row = torch.nn.functional.binary_cross_entropy_with_logits(
                        net(xt).squeeze(-1), tt, reduction="none"
                    )
                    held_loss = float((w_held * per_row).sum())
                if held_loss < best_loss:
                    best_loss, best_step, fit_loss = held_loss, step, float((w_fit * per_row).sum())
                    best_state = {k: v.clone() for k, v in net.state_dict().items()}
            else:
                best_state, best_step, fit_loss = net.state_dict(), step, float(loss.item())
        net.load_state_dict(best_state)
        self.net = net
        self._fit_mixedness()
        predicted = self.predict(x)
        heldout = quality(predicted[held], t[held], w[held]) if held.any() else None
        return FitReport(
            fit_loss,
            len(x),
            len(self.window),
            best_step,
            quality(predicted[fit_rows], t[fit_rows], w[fit_rows]),
            heldout,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "net": None if self.net is None else self.net.state_dict(),
            "mean": self.mean,
            "scale": self.scale,
            "window": list(self.window),
            "mixedness": self._mixedness_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["dim"] != self.dim:
            raise ValueError(f"predictor state has {state['dim']} features, this predictor {self.dim}")
        self.mean, self.scale = state["mean"], state["scale"]
        self.window = deque(state["window"], maxlen=self.config.window)
        self._load_mixedness(state.get("mixedness"))
        self.net = None
        if state["net"] is not None:
            self.net = self._new_net()
            self.net.load_state_dict(state["net"])
