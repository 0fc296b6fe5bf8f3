"""The mixedness model: an unbiased disagreement target, the Beta value of m rollouts, and a model
that tells prompts of middling difficulty from prompts it cannot place at the same mean success."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest

from trace_core.method.allocation import beta_from_moments, group_disagreement, mixed_value, root_value
from trace_core.method.allocators import AllocatorConfig, make_allocator, stage1_counts
from trace_core.method.mixedness import MixednessConfig, MixednessModel
from trace_core.method.online_predictor import OnlinePredictor
from trace_core.method.predictor import PredictorConfig, make_predictor


@pytest.mark.parametrize("n", [2, 3, 5, 8])
@pytest.mark.parametrize("s", [0.0, 0.2, 0.5, 0.9])
def test_group_disagreement_is_unbiased_for_two_s_one_minus_s(n: int, s: float) -> None:
    expected = sum(comb(n, k) * s**k * (1 - s) ** (n - k) * group_disagreement(k, n) for k in range(n + 1))
    assert expected == pytest.approx(2 * s * (1 - s))


def test_group_disagreement_refuses_a_single_rollout() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        group_disagreement(1, 1)


@pytest.mark.parametrize(("v", "d"), [(0.5, 0.1), (0.5, 0.45), (0.2, 0.05), (0.8, 0.3)])
def test_beta_from_moments_has_the_mean_and_disagreement_asked_for(v: float, d: float) -> None:
    a, b = beta_from_moments(v, d)
    mean = a / (a + b)
    second = a * (a + 1) / ((a + b) * (a + b + 1))
    assert mean == pytest.approx(v)
    assert 2 * (mean - second) == pytest.approx(d)


@pytest.mark.parametrize(("v", "d"), [(0.5, 0.1), (0.3, 0.2), (0.9, 0.05)])
def test_mixed_value_is_d_for_two_rollouts_and_one_and_a_half_d_for_three(v: float, d: float) -> None:
    assert mixed_value(v, d, 2) == pytest.approx(d)
    assert mixed_value(v, d, 3) == pytest.approx(1.5 * d)
    assert mixed_value(v, d, 1) == mixed_value(v, d, 0) == 0.0


@pytest.mark.parametrize("m", [2, 4, 8])
def test_mixed_value_tends_to_the_papers_value_when_success_is_known(m: int) -> None:
    v = 0.3
    assert mixed_value(v, 2 * v * (1 - v), m) == pytest.approx(root_value(v, m), abs=1e-4)


def test_mixed_value_matches_a_monte_carlo_of_the_beta() -> None:
    rng = np.random.default_rng(0)
    v, d, m = 0.4, 0.25, 5
    a, b = beta_from_moments(v, d)
    s = rng.beta(a, b, size=400_000)
    k = rng.binomial(m, s)
    assert mixed_value(v, d, m) == pytest.approx(float(np.mean((k > 0) & (k < m))), abs=3e-3)


def _two_kinds(rng: np.random.Generator, prompts: int, dim: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Half the prompts (feature 0 = +1) succeed always or never, half (feature 0 = -1) half the
    time: both kinds succeed 50% on average."""
    kind = np.arange(prompts) % 2
    x = rng.normal(size=(prompts, dim))
    x[:, 0] = np.where(kind == 0, 1.0, -1.0)
    s = np.where(kind == 0, rng.integers(0, 2, prompts).astype(float), 0.5)
    return x, s


@pytest.mark.parametrize("form", ["direct", "ratio"])
def test_model_tells_middling_prompts_from_unplaceable_ones_at_the_same_mean(form: str) -> None:
    rng = np.random.default_rng(1)
    model = MixednessModel(4, MixednessConfig(form=form))
    assert model.predict(np.zeros((1, 4)), np.zeros(1)) is None
    for it in range(6):
        x, s = _two_kinds(rng, 16)
        n = np.full(16, 4)
        model.add(it, x, np.zeros(16), rng.binomial(n, s), n)
        model.fit()
    x, s = _two_kinds(rng, 40)
    d = model.predict(x, np.zeros(40))
    assert d is not None
    middling, bimodal = d[s == 0.5].mean(), d[s != 0.5].mean()
    assert middling > 0.3 and bimodal < 0.2  # truth: 0.5 and 0
    # Stage 1 on V_mix spends on the middling prompts; on V_root (every v = 0.5) it cannot tell them apart
    counts = stage1_counts([0.5] * 40, d.tolist(), 24, 8)
    assert sum(c for c, si in zip(counts, s, strict=True) if si == 0.5) == 24


def test_model_waits_for_enough_groups_before_predicting() -> None:
    model = MixednessModel(2)
    model.add(0, np.zeros((3, 2)), np.zeros(3), np.array([1, 0, 2]), np.array([2, 1, 2]))
    assert model.groups == 2  # the single rollout is no group
    assert not model.fit()
    assert not model.fitted


@pytest.mark.parametrize("name", ["mlp", "online"])
def test_predictor_learns_mixedness_only_when_asked(name: str) -> None:
    rng = np.random.default_rng(2)
    plain = make_predictor(name, 4, PredictorConfig(seed=0))
    mixing = make_predictor(name, 4, PredictorConfig(seed=0, mixedness=True))
    for it in range(4):
        x, s = _two_kinds(rng, 16)
        n = np.full(16, 4)
        k = rng.binomial(n, s)
        for predictor in (plain, mixing):
            predictor.add_groups(it, x, k, n)
            predictor.add(it, x, k / n, n.astype(float))
            predictor.fit()
    x, _ = _two_kinds(rng, 8)
    assert plain.predict_mixedness(x) is None
    d = mixing.predict_mixedness(x)
    assert d is not None and d.shape == (8,)
    restored = make_predictor(name, 4, PredictorConfig(seed=0, mixedness=True))
    restored.load_state_dict(mixing.state_dict())
    np.testing.assert_allclose(restored.predict_mixedness(x), d)


def test_trace_allocator_values_its_plan_with_the_mixedness_it_was_given() -> None:
    config = AllocatorConfig(budget=16, stage1_share=0.5, group_size=4, max_per_prompt=4)
    allocator = make_allocator("trace")
    v, d = [0.5, 0.5, 0.5, 0.5], [0.45, 0.02, 0.45, 0.02]
    plan = allocator.roots(v, config, np.random.default_rng(0), d)
    assert plan.counts == (4, 0, 4, 0)
    assert plan.expected_mixed == pytest.approx(2 * mixed_value(0.5, 0.45, 4))
    paper = allocator.roots(v, config, np.random.default_rng(0))
    assert paper.expected_mixed == pytest.approx(sum(root_value(0.5, m) for m in paper.counts))


def test_online_predictor_scores_groups_with_the_model_that_allocated_them() -> None:
    predictor = OnlinePredictor(2, PredictorConfig(mixedness=True))
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    predictor.add_groups(0, x, np.array([1, 2]), np.array([2, 2]))
    assert predictor.mixedness is not None
    z = predictor.mixedness.history[0][2]
    np.testing.assert_allclose(z, 0.0)  # before any fit every prompt is the prior, logit 0


def test_ratio_form_never_predicts_more_disagreement_than_a_known_success_would() -> None:
    rng = np.random.default_rng(3)
    model = MixednessModel(4, MixednessConfig(form="ratio"))
    for it in range(4):
        x, s = _two_kinds(rng, 16)
        n = np.full(16, 4)
        model.add(it, x, rng.normal(size=16), rng.binomial(n, s), n)
        model.fit()
    z = np.linspace(-4, 4, 9)
    d = model.predict(rng.normal(size=(9, 4)), z)
    v = 1 / (1 + np.exp(-z))
    assert d is not None and np.all(d <= 2 * v * (1 - v) + 1e-12)
