"""The `online` predictor: calibrated out of sample, follows drift, remembers the whole history."""

from __future__ import annotations

import numpy as np
import pytest

from trace_core.method.online_predictor import OnlinePredictor, fit_platt
from trace_core.method.predictor import PREDICTORS, PredictorConfig, make_predictor, quality
from trace_core.registry import UnknownNameError

DIM = 6


def _iteration(rng, w, shift, n=60, rollouts=4):
    """n prompts with features x, success sigmoid(x.w + shift), `rollouts` outcomes each."""
    x = rng.normal(size=(n, DIM))
    p = 1 / (1 + np.exp(-(x @ w + shift)))
    k = rng.binomial(rollouts, p)
    return x, k / rollouts, np.full(n, float(rollouts)), p


def test_before_its_first_fit_it_says_the_prior():
    predictor = OnlinePredictor(DIM, PredictorConfig(prior=0.3))
    assert not predictor.fitted and predictor.predict(np.zeros((3, DIM))).tolist() == [0.3] * 3


def test_platt_recalibration_undoes_an_overconfident_scale():
    rng = np.random.default_rng(0)
    true_logit = rng.normal(size=4000)
    outcome = rng.binomial(1, 1 / (1 + np.exp(-true_logit))).astype(float)
    a, c = fit_platt(3.0 * true_logit, outcome, np.ones(4000), prior=1.0)  # logits 3x too confident
    assert a == pytest.approx(1 / 3, abs=0.05) and c == pytest.approx(0.0, abs=0.1)


def test_out_of_sample_predictions_are_calibrated_and_follow_drift():
    """The policy gets better every iteration (shift rises from -1.5 to +1.5): each iteration's
    predictions, made before its outcomes, must stay calibrated and rank well."""
    rng = np.random.default_rng(1)
    w = rng.normal(size=DIM) * 0.8
    predictor = OnlinePredictor(DIM, PredictorConfig())
    scores = []
    for it, shift in enumerate(np.linspace(-1.5, 1.5, 16)):
        x, target, weight, _ = _iteration(rng, w, shift)
        if predictor.fitted:
            scores.append(quality(predictor.predict(x), target, weight))
        predictor.add(it, x, target, weight)
        predictor.fit()
    later = scores[4:]
    assert np.mean([q.auc for q in later]) > 0.75
    assert np.mean([q.ece for q in later]) < 0.08
    # keeps up with the rising success rate (about +0.05 per iteration) instead of lagging behind it
    assert np.mean([abs(q.mean_predicted - q.mean_target) for q in later]) < 0.05


def test_it_beats_a_two_iteration_window_mlp_when_each_iteration_is_small():
    """Few prompts per iteration (as online training gives): the whole history matters."""
    rng = np.random.default_rng(2)
    w = rng.normal(size=DIM)
    online, mlp = OnlinePredictor(DIM, PredictorConfig()), make_predictor("mlp", DIM, PredictorConfig(window=2))
    briers = {"online": [], "mlp": []}
    for it in range(14):
        x, target, weight, _ = _iteration(rng, w, 0.0, n=16)
        for name, predictor in (("online", online), ("mlp", mlp)):
            if it >= 4:
                briers[name].append(quality(predictor.predict(x), target, weight).brier)
            predictor.add(it, x, target, weight, [f"q{it}-{i}" for i in range(len(x))])
            predictor.fit()
    assert np.mean(briers["online"]) < np.mean(briers["mlp"])


def test_a_restored_state_predicts_exactly_the_same():
    rng = np.random.default_rng(3)
    w = rng.normal(size=DIM)
    predictor = OnlinePredictor(DIM, PredictorConfig())
    for it in range(3):
        x, target, weight, _ = _iteration(rng, w, 0.0)
        predictor.add(it, x, target, weight)
        predictor.fit()
    restored = OnlinePredictor(DIM, PredictorConfig())
    restored.load_state_dict(predictor.state_dict())
    probe = rng.normal(size=(10, DIM))
    assert np.array_equal(restored.predict(probe), predictor.predict(probe))


def test_predictors_are_built_by_name_and_an_unknown_name_lists_the_valid_ones():
    assert {"mlp", "online"} <= set(PREDICTORS.names())
    assert isinstance(make_predictor("online", DIM, PredictorConfig()), OnlinePredictor)
    with pytest.raises(UnknownNameError, match="mlp, online"):
        make_predictor("oracle", DIM, PredictorConfig())


def test_a_first_iteration_where_everything_succeeded_does_not_make_it_certain():
    predictor = OnlinePredictor(DIM, PredictorConfig(prior=0.5))
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4, DIM))
    predictor.add(0, x, np.ones(4), np.full(4, 4.0))  # 16 leaves, all successes
    predictor.fit()
    # 2 pseudo-leaves at 0.5 beside 16 successes: about (16 + 1) / (16 + 2) = 0.94, not 1
    assert 0.85 < predictor.predict(np.zeros((1, DIM)) + x.mean(axis=0))[0] < 0.98


def test_refit_calibration_scores_past_iterations_with_todays_kind_of_model():
    """'refit' recomputes the out-of-sample pairs at each fit; 'none' keeps (a, c) = (1, 0); on a
    well-specified stationary task both keep a calibrated slope near 1, unlike a compressed one."""
    from trace_core.method.online_predictor import OnlineConfig

    rng = np.random.default_rng(4)
    w = rng.normal(size=DIM)
    data = [_iteration(rng, w, 0.0, n=80) for _ in range(8)]
    fitted = {}
    for mode in ("carried", "refit", "none"):
        predictor = OnlinePredictor(DIM, PredictorConfig(), OnlineConfig(calibration=mode))
        for it, (x, t, weight, _) in enumerate(data):
            predictor.add(it, x, t, weight)
            predictor.fit()
        fitted[mode] = predictor
    assert fitted["none"].platt == (1.0, 0.0)
    a, c = fitted["refit"].platt
    assert 0.7 < a < 1.4 and abs(c) < 0.3
    x, _, _, p = _iteration(rng, w, 0.0, n=400)
    q = quality(fitted["refit"].predict(x), p, np.ones(len(p)))
    assert q.ece < 0.06 and q.auc > 0.85
    with pytest.raises(ValueError, match="carried, refit, none"):
        OnlineConfig(calibration="bogus")
