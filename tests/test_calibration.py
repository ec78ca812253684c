"""gbmmet.calibration: calibration intercept and slope on simulated samples, hand-worked Brier
score, net benefit and reliability counts, and the index recalibrator's behaviour."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import statsmodels.api as sm
from scipy.optimize import brentq
from scipy.special import expit
from sklearn.calibration import calibration_curve

from gbmmet.calibration import (
    DEFAULT_THRESHOLDS,
    Calibration,
    IndexCalibrator,
    calibration_summary,
    decision_curve,
    net_benefit,
    reliability_curve,
)

N_LARGE = 20_000


def _standard_errors(x: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """Large-sample SEs of the calibration intercept (offset model) and slope at the truth.

    From the Fisher information of the logistic model: sum p(1-p) for the intercept-only model,
    and the slope entry of (X' W X)^-1, X = [1, x], W = diag(p(1-p)), for the slope.
    """
    w = p * (1 - p)
    se_intercept = 1 / math.sqrt(w.sum())
    info = np.array([[w.sum(), (w * x).sum()], [(w * x).sum(), (w * x * x).sum()]])
    se_slope = math.sqrt(np.linalg.inv(info)[1, 1])
    return se_intercept, se_slope


def _simulate(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A true linear predictor and outcomes drawn from it."""
    lp = rng.normal(0.0, 1.0, N_LARGE)
    y = (rng.random(N_LARGE) < expit(lp)).astype(int)
    return lp, y


# ---------------------------------------------------------------------------------------------
# calibration_summary
# ---------------------------------------------------------------------------------------------
def test_perfectly_calibrated_sample_has_slope_one_and_intercept_zero(rng):
    lp, y = _simulate(rng)
    se_intercept, se_slope = _standard_errors(lp, expit(lp))

    cal = calibration_summary(y, expit(lp))

    assert (cal.n, cal.n_gbm) == (N_LARGE, int(y.sum()))
    assert cal.intercept == pytest.approx(0.0, abs=4 * se_intercept)
    assert cal.slope == pytest.approx(1.0, abs=4 * se_slope)


def test_overconfident_predictions_have_slope_one_half(rng):
    lp, y = _simulate(rng)
    # the logit of the prediction is twice the truth's, so y on logit(p) has slope 1/2
    _, se_slope = _standard_errors(2 * lp, expit(lp))

    cal = calibration_summary(y, expit(2 * lp))

    assert cal.slope == pytest.approx(0.5, abs=4 * se_slope)


def test_brier_score_on_four_patients():
    # (0.9-1)^2 + (0.3-1)^2 + (0.6-0)^2 + (0.0-0)^2 = 0.01 + 0.49 + 0.36 + 0 = 0.86; / 4 = 0.215
    cal = calibration_summary([1, 1, 0, 0], [0.9, 0.3, 0.6, 0.0])

    assert cal.brier == pytest.approx(0.215, abs=1e-12)


def test_calibration_intercept_solves_its_score_equation_when_p_holds_exact_zeros():
    # p = 0 has logit(1e-6) = -13.8 as offset, where plain IRLS oscillates; the intercept a is
    # the root of sum(y - sigmoid(a + logit(p))) = 0
    y, p = np.array([1, 1, 0, 0]), np.array([0.9, 0.6, 0.3, 0.0])
    offset = np.log(np.clip(p, 1e-6, 1) / (1 - np.clip(p, 0, 1 - 1e-6)))
    expected = brentq(lambda a: np.sum(y - expit(a + offset)), -20, 20, xtol=1e-12)

    with pytest.warns(RuntimeWarning, match="slope"):  # p separates the classes
        cal = calibration_summary(y, p)

    assert cal.intercept == pytest.approx(expected, abs=1e-6)


def test_calibration_summary_with_one_class_is_nan_with_a_warning():
    with pytest.warns(RuntimeWarning, match="only one class.*intercept and slope"):
        cal = calibration_summary([1, 1, 1], [0.2, 0.9, 1.0])

    assert cal == Calibration(n=3, n_gbm=3, brier=cal.brier, intercept=cal.intercept, slope=cal.slope)
    assert math.isnan(cal.intercept) and math.isnan(cal.slope)
    assert cal.brier == pytest.approx((0.64 + 0.01 + 0.0) / 3)


def test_calibration_slope_is_nan_with_a_warning_when_p_separates_the_classes():
    # an index of exactly 0 for every MET and 1 for every GBM: the slope diverges
    with pytest.warns(RuntimeWarning, match="slope"):
        cal = calibration_summary([0, 0, 0, 1, 1], [0.0, 0.0, 0.0, 1.0, 1.0])

    assert math.isnan(cal.slope)
    assert math.isfinite(cal.intercept)


def test_calibration_summary_refuses_p_outside_the_unit_interval():
    with pytest.raises(ValueError, match=r"The 'p' parameter of calibration_summary .* Got 1.5"):
        calibration_summary([0, 1], [0.2, 1.5])


# ---------------------------------------------------------------------------------------------
# reliability_curve
# ---------------------------------------------------------------------------------------------
def test_reliability_counts_match_a_hand_count():
    y = [0, 0, 1, 0, 1, 0, 1, 1, 1, 1]
    p = [0.05, 0.1, 0.15, 0.3, 0.5, 0.55, 0.7, 0.9, 0.95, 1.0]
    # uniform edges 0, .2, .4, .6, .8, 1: {.05, .1, .15} {.3} {.5, .55} {.7} {.9, .95, 1.0}
    rows = reliability_curve(y, p, n_bins=5, strategy="uniform")

    assert [r["bin"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["n"] for r in rows] == [3, 1, 2, 1, 3]
    assert [r["observed_rate"] for r in rows] == pytest.approx([1 / 3, 0.0, 0.5, 1.0, 1.0])
    assert rows[0]["mean_predicted"] == pytest.approx(0.1)


def test_reliability_counts_sum_to_n_and_agree_with_sklearn_on_a_tied_index(rng):
    # indices are shares of slices, mostly exactly 0 or 1: quantile edges repeat, bins go empty
    p = np.concatenate([np.zeros(15), np.ones(20), rng.integers(1, 10, 15) / 10])
    y = (rng.random(p.size) < p).astype(int)
    observed, predicted = calibration_curve(y, p, n_bins=5, strategy="quantile")

    rows = reliability_curve(y, p, n_bins=5, strategy="quantile")

    assert sum(r["n"] for r in rows) == p.size
    assert [r["mean_predicted"] for r in rows] == pytest.approx(predicted.tolist())
    assert [r["observed_rate"] * r["n"] for r in rows] == pytest.approx(
        [round(r["observed_rate"] * r["n"]) for r in rows])
    assert [r["observed_rate"] for r in rows] == pytest.approx(observed.tolist())


# ---------------------------------------------------------------------------------------------
# net benefit and decision curves
# ---------------------------------------------------------------------------------------------
Y10 = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
P10 = [0.9, 0.7, 0.3, 0.1, 0.1, 0.2, 0.15, 0.05, 0.0, 0.1]


def test_net_benefit_on_ten_patients_at_threshold_0_2():
    # Treated where p >= 0.2: GBM 0.9, 0.7, 0.3 (TP = 3; the GBM at 0.1 is missed) and the MET at
    # exactly 0.2 (FP = 1, a tie counts as treated). pt / (1 - pt) = 0.2 / 0.8 = 0.25, so
    # net benefit = 3/10 - 1/10 * 0.25 = 0.3 - 0.025 = 0.275.
    assert net_benefit(Y10, P10, 0.2) == pytest.approx(0.275, abs=1e-12)


def test_decision_curve_row_on_ten_patients_at_threshold_0_2():
    # treat all: prevalence 0.4 - 0.6 * 0.25 = 0.25; treat none: 0
    (row,) = decision_curve(Y10, P10, thresholds=[0.2])

    assert row == pytest.approx({"threshold": 0.2, "net_benefit_model": 0.275,
                                 "net_benefit_treat_all": 0.25, "net_benefit_treat_none": 0.0})


def test_treat_all_equals_the_model_when_p_is_all_one():
    rows = decision_curve(Y10, np.ones(10))

    assert [r["threshold"] for r in rows] == list(DEFAULT_THRESHOLDS)
    for r in rows:
        assert r["net_benefit_model"] == pytest.approx(r["net_benefit_treat_all"], abs=1e-12)


@pytest.mark.parametrize("threshold", [0.0, 1.0, -0.1, math.nan])
def test_net_benefit_refuses_a_threshold_outside_the_open_unit_interval(threshold):
    with pytest.raises(ValueError, match=r"The 'threshold' parameter of net_benefit must be in \(0, 1\)"):
        net_benefit(Y10, P10, threshold)


def test_decision_curve_refuses_a_threshold_of_one():
    with pytest.raises(ValueError, match="must be in \\(0, 1\\). Got 1.0"):
        decision_curve(Y10, P10, thresholds=[0.5, 1.0])


# ---------------------------------------------------------------------------------------------
# IndexCalibrator
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def overlapping(rng) -> tuple[np.ndarray, np.ndarray]:
    """40 patients whose GBMs have the higher index, with overlap (no separation)."""
    y = np.repeat([0, 1], 20)
    index = np.clip(np.where(y == 1, 0.7, 0.3) + rng.normal(0, 0.2, 40), 0, 1).round(2)
    return index, y


def test_index_calibrator_is_monotone_increasing_when_gbms_have_higher_index(overlapping):
    est = IndexCalibrator().fit(*overlapping)

    proba = est.predict_proba(np.linspace(0, 1, 11))

    assert est.coef_ > 0
    assert np.all(np.diff(proba) > 0)


def test_index_calibrator_probabilities_are_strictly_between_zero_and_one(overlapping):
    proba = IndexCalibrator().fit(*overlapping).predict_proba([0.0, 0.5, 1.0])

    assert proba.shape == (3,)
    assert np.all((proba > 0) & (proba < 1))


def test_unpenalised_index_calibrator_matches_statsmodels_logistic_fit(overlapping):
    index, y = overlapping
    ref = sm.GLM(y, sm.add_constant(index), family=sm.families.Binomial()).fit().params

    est = IndexCalibrator(C=None).fit(index, y)

    assert [est.intercept_, est.coef_] == pytest.approx(ref.tolist(), rel=1e-4)


def test_index_calibrator_round_trips_through_a_json_dict(overlapping):
    est = IndexCalibrator(C=0.5).fit(*overlapping)

    back = IndexCalibrator.from_dict(json.loads(json.dumps(est.to_dict())))

    assert back.get_params() == est.get_params()
    assert (back.intercept_, back.coef_, back.n_, back.n_gbm_, back.separated_) == (
        est.intercept_, est.coef_, est.n_, est.n_gbm_, est.separated_)
    x = np.linspace(0, 1, 7)
    np.testing.assert_array_equal(back.predict_proba(x), est.predict_proba(x))


def test_index_calibrator_refuses_a_single_class_naming_both_counts():
    with pytest.raises(ValueError, match="needs both classes. Got 0 GBM and 4 MET"):
        IndexCalibrator().fit([0.0, 0.2, 0.5, 1.0], [0, 0, 0, 0])


def test_index_calibrator_warns_on_a_separated_sample_but_still_fits():
    index, y = [0.0, 0.0, 0.1, 0.0, 0.9, 1.0, 1.0, 1.0], [0, 0, 0, 0, 1, 1, 1, 1]

    with pytest.warns(RuntimeWarning, match="separates GBM"):
        est = IndexCalibrator().fit(index, y)

    assert est.separated_
    proba = est.predict_proba([0.0, 1.0])
    assert np.all(np.isfinite(proba)) and 0 < proba[0] < 0.5 < proba[1] < 1


def test_index_calibrator_refuses_an_index_outside_the_unit_interval():
    with pytest.raises(ValueError, match=r"The 'index' parameter of IndexCalibrator.fit must be .* "
                                         r"\[0, 1\]. Got 1.2 at position 1 instead."):
        IndexCalibrator().fit([0.5, 1.2, 0.1], [1, 1, 0])


def test_index_calibrator_refuses_nan_in_the_index():
    with pytest.raises(ValueError, match="Got nan at position 0"):
        IndexCalibrator().fit([math.nan, 0.2, 0.1], [1, 1, 0])


def test_index_calibrator_on_a_constant_index_predicts_the_prevalence_with_a_warning():
    with pytest.warns(RuntimeWarning, match="constant"):
        est = IndexCalibrator().fit([1.0, 1.0, 1.0, 1.0], [1, 1, 1, 0])

    assert est.coef_ == 0.0
    assert est.predict_proba([0.0, 1.0]) == pytest.approx([0.75, 0.75])


def test_index_calibrator_does_not_warn_on_an_overlapping_sample(overlapping):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        IndexCalibrator().fit(*overlapping)
