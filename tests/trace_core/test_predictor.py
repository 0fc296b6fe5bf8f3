import numpy as np
import pytest

from trace_core.method.mlp_predictor import SuccessPredictor
from trace_core.method.predictor import (
    PredictorConfig,
    calibration_error,
    pooled_quality,
    quality,
    weighted_auc,
)


def test_before_its_first_fit_the_predictor_says_the_prior():
    predictor = SuccessPredictor(3, PredictorConfig(prior=0.3))
    assert predictor.predict(np.zeros((4, 3))).tolist() == [0.3] * 4


def _slow_auc(score, pos, neg):
    num = sum(
        wp * wn * (1.0 if si > sj else 0.5 if si == sj else 0.0)
        for si, wp in zip(score, pos)
        for sj, wn in zip(score, neg)
    )
    return num / (sum(pos) * sum(neg))


@pytest.mark.parametrize("seed", range(5))
def test_weighted_auc_equals_the_pairwise_definition(seed):
    rng = np.random.default_rng(seed)
    score = rng.choice([0.1, 0.2, 0.5, 0.7], size=9)
    pos, neg = rng.random(9), rng.random(9)
    assert weighted_auc(score, pos, neg) == pytest.approx(_slow_auc(score, pos, neg))


def test_quality_on_a_hand_case():
    # two nodes: p=0.8 with target 1 (1 leaf), p=0.2 with target 0.5 (2 leaves)
    # Brier = (1*(0.2^2) + 2*(0.5*0.8^2 + 0.5*0.2^2)) / 3 = (0.04 + 0.68) / 3 = 0.24
    q = quality(np.array([0.8, 0.2]), np.array([1.0, 0.5]), np.array([1.0, 2.0]))
    assert q.brier == pytest.approx(0.24)
    # positives: 1 at 0.8, 1 at 0.2; negatives: 1 at 0.2 -> AUC = (1 + 0.5) / 2
    assert q.auc == pytest.approx(0.75)
    # bins: 0.8 vs 1.0 (weight 1), 0.2 vs 0.5 (weight 2) -> (0.2 + 2 * 0.3) / 3
    assert q.ece == pytest.approx(0.8 / 3)
    assert calibration_error(np.array([0.5]), np.array([0.5]), np.array([1.0])) == 0.0


def test_the_predictor_learns_and_generalises_to_unseen_inputs():
    rng = np.random.default_rng(0)
    w = rng.normal(size=4)

    def draw(n):
        x = rng.normal(size=(n, 4))
        p = 1 / (1 + np.exp(-(x @ w)))
        leaves = rng.integers(1, 5, n)
        return x, rng.binomial(leaves, p) / leaves, leaves.astype(float), p

    predictor = SuccessPredictor(4, PredictorConfig(window=2))
    for it in range(2):
        x, t, n, _ = draw(400)
        predictor.add(it, x, t, n)
    predictor.fit()
    x, t, n, p = draw(300)  # inputs never seen in training
    held_out = quality(predictor.predict(x), t, n)
    best_possible = quality(p, t, n)  # the true probabilities, scored on the same noisy outcomes
    assert held_out.auc > best_possible.auc - 0.02 and held_out.ece < 0.08
    assert np.abs(predictor.predict(x) - p).mean() < 0.1


def test_the_window_keeps_only_the_most_recent_iterations():
    predictor = SuccessPredictor(1, PredictorConfig(window=2))
    for it in range(4):
        predictor.add(it, np.ones((1, 1)), np.ones(1), np.ones(1))
    assert [it for it, *_ in predictor.window] == [2, 3]


def test_a_saved_predictor_predicts_the_same_after_loading():
    rng = np.random.default_rng(1)
    predictor = SuccessPredictor(3)
    predictor.add(0, rng.normal(size=(50, 3)), rng.random(50), np.ones(50))
    predictor.fit()
    clone = SuccessPredictor(3)
    clone.load_state_dict(predictor.state_dict())
    x = rng.normal(size=(10, 3))
    assert np.array_equal(clone.predict(x), predictor.predict(x))


def test_pooled_quality_scores_iterations_as_one_sample_and_skips_empty_ones():
    rng = np.random.default_rng(3)
    parts = [(rng.random(6), rng.random(6), rng.integers(1, 4, 6).astype(float)) for _ in range(3)]
    empty = (np.array([]), np.array([]), np.array([]))
    joined = quality(*(np.concatenate(column) for column in zip(*parts, strict=True)))
    assert pooled_quality([parts[0], empty, parts[1], parts[2]]) == joined
    assert np.isnan(pooled_quality([empty]).auc)


def test_a_perfect_predictor_is_calibrated_pooled_though_each_small_iteration_looks_miscalibrated():
    rng = np.random.default_rng(0)
    parts = []
    for _ in range(15):  # one bench run's iterations 5 to 19: about 11 prompts of 3 rollouts each
        v = rng.uniform(0.2, 0.8, size=11)
        parts.append((v, rng.binomial(3, v) / 3, np.full(11, 3.0)))
    per_iteration = np.mean([quality(*part).ece for part in parts])
    assert per_iteration > 0.1  # binomial noise of ~33 leaves, not miscalibration
    assert pooled_quality(parts).ece < min(0.07, per_iteration / 2)
