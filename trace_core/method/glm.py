"""Weighted logistic regression in float64, the estimator under the `online` predictor and the
mixedness model: L-BFGS from zeros, so every fit is deterministic given its data.

Deviations: none (not a method of the paper: its predictor is not public, docs/method.md)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

WithPrior = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def fit_logistic(
    x: np.ndarray, t: np.ndarray, w: np.ndarray, l2: float, steps: int, ceiling: np.ndarray | None = None
) -> np.ndarray:
    """argmin over (w, b) of sum_i w_i BCE(c_i sigmoid(x_i.w + b), t_i) + l2/2 |w|^2 (b unpenalised),
    c_i = ceiling[i] (1 without one: plain logistic regression). Returns the (dim + 1,)
    parameters, bias last."""
    xt = torch.from_numpy(np.concatenate([x, np.ones((len(x), 1))], axis=1))
    tt, wt = torch.from_numpy(t), torch.from_numpy(w / max(w.sum(), 1e-12))
    theta = torch.zeros(xt.shape[1], dtype=torch.float64, requires_grad=True)
    penalty = torch.ones_like(theta)
    penalty[-1] = 0.0
    scale = l2 / max(w.sum(), 1e-12)
    ct = None if ceiling is None else torch.from_numpy(np.clip(np.asarray(ceiling, np.float64), 1e-9, 1 - 1e-9))
    opt = torch.optim.LBFGS([theta], max_iter=steps, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        z = xt @ theta
        if ct is None:
            per_row = torch.nn.functional.binary_cross_entropy_with_logits(z, tt, reduction="none")
        else:  # p = c sigmoid(z): log p = log c + logsigmoid(z), log(1 - p) stays finite for c < 1
            p = ct * torch.sigmoid(z)
            per_row = -(tt * (torch.log(ct) + torch.nn.functional.logsigmoid(z)) + (1 - tt) * torch.log1p(-p))
        loss = (wt * per_row).sum()
        loss = loss + 0.5 * scale * (penalty * theta**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return theta.detach().numpy().copy()


def log_loss(z: np.ndarray, t: np.ndarray, w: np.ndarray, ceiling: np.ndarray | None = None) -> float:
    p = 1 / (1 + np.exp(-z)) * (1.0 if ceiling is None else ceiling)
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return float(-(w * (t * np.log(p) + (1 - t) * np.log(1 - p))).sum() / max(w.sum(), 1e-12))


def forward_validated(
    x: np.ndarray,
    t: np.ndarray,
    w: np.ndarray,
    age: np.ndarray,
    decays: Sequence[float],
    l2s: Sequence[float],
    steps: int,
    with_prior: WithPrior,
    ceiling: np.ndarray | None = None,
) -> tuple[float, float]:
    """The (decay, l2) whose model, fitted on every iteration but the newest (age 0) with weights
    w * decay ** age and the pseudo-data `with_prior` adds, best predicts the newest (weighted log
    loss). With a single iteration there is nothing to validate on: the last of each grid.
    ceiling: per-row c of `fit_logistic`; `with_prior` must then add exactly one row, given c = 1/2."""
    newest = age == 0
    if newest.all() or not newest.any():
        return decays[-1], l2s[-1]
    past = ~newest
    best, choice = float("inf"), (decays[-1], l2s[-1])
    for decay in decays:
        # validation ages count from the newest *training* iteration, as they would at allocation
        weights = w[past] * decay ** (age[past] - age[past].min())
        for l2 in l2s:
            c_past = None if ceiling is None else np.append(ceiling[past], 0.5)
            theta = fit_logistic(*with_prior(x[past], t[past], weights), l2, steps, c_past)
            c_new = None if ceiling is None else ceiling[newest]
            loss = log_loss(x[newest] @ theta[:-1] + theta[-1], t[newest], w[newest], c_new)
            if loss < best - 1e-12:
                best, choice = loss, (decay, l2)
    return choice
