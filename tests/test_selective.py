import numpy as np
import pytest

from gbmmet import constants as C
from gbmmet.selective import deferral, risk_coverage
from gbmmet.stats import wilson_interval


def test_risk_coverage_by_hand():
    # uncertainties 0.1 (right), 0.2 (right), 0.2 (wrong), 0.5 (wrong): three distinct values
    rc = risk_coverage([True, True, False, False], [0.1, 0.2, 0.2, 0.5])
    np.testing.assert_allclose(rc.coverage, [0.25, 0.75, 1.0])
    np.testing.assert_allclose(rc.accuracy, [1.0, 2 / 3, 0.5])
    np.testing.assert_array_equal(rc.n_kept, [1, 3, 4])
    # mean-risk AURC: 0.25 * 0 + 0.5 * 1/3 + 0.25 * 0.5
    assert rc.aurc == pytest.approx(0.5 / 3 + 0.125)


def test_without_ties_aurc_is_the_mean_risk_of_the_i_most_certain_calls(rng):
    correct = rng.uniform(size=30) < 0.7
    u = rng.uniform(size=30)
    ordered = correct[np.argsort(u)]
    risks = [1 - ordered[:i].mean() for i in range(1, 31)]
    assert risk_coverage(correct, u).aurc == pytest.approx(np.mean(risks))


def test_tied_uncertainties_are_kept_or_dropped_together():
    # whatever order the ties come in, the curve has one point for them
    a = risk_coverage([True, False, True], [0.3, 0.3, 0.1])
    b = risk_coverage([False, True, True], [0.3, 0.3, 0.1])
    np.testing.assert_allclose(a.coverage, [1 / 3, 1.0])
    np.testing.assert_allclose(a.accuracy, b.accuracy)
    assert a.aurc == b.aurc


def test_accuracy_falls_with_coverage_when_uncertainty_is_the_true_error_probability():
    # Each patient's call is wrong with probability e, and the uncertainty is e itself (five values,
    # so many ties). Averaged over 500 cohorts, the accuracy of the kept calls must not rise as more
    # (less certain) patients are kept.
    rng = np.random.default_rng(11)
    levels = np.array([0.02, 0.1, 0.2, 0.35, 0.5])
    curves = []
    for _ in range(500):
        e = np.r_[levels, rng.choice(levels, size=55)]  # every level present: same five points
        correct = rng.uniform(size=e.size) >= e
        curves.append(risk_coverage(correct, e).accuracy)
    mean = np.mean(curves, axis=0)
    assert len(mean) == 5
    assert np.all(np.diff(mean) < 0), mean


def test_deferral_by_hand():
    calls = [1, 1, 0, 0, 1]
    y = [1, 0, 0, 1, 1]
    sets = ["GBM", "GBM|MET", "MET", "", "GBM"]
    ood = [False, True, None, False, True]
    d = deferral(calls, y, sets, ood)
    assert d.reasons == [None, "two labels; out of distribution", None, "empty set", "out of distribution"]
    np.testing.assert_array_equal(d.deferred, [False, True, False, True, True])
    assert d.share_deferred == pytest.approx(3 / 5)
    assert d.n_kept == 2 and d.accuracy_kept == 1.0


def test_unknown_ood_is_not_a_reason():
    d = deferral([1, 0], [1, 0], ["GBM", "MET"], None)
    assert not d.deferred.any() and d.reasons == [None, None]
    d = deferral([1, 0], [1, 0], ["GBM", "MET"], [float("nan"), None])
    assert not d.deferred.any()


def test_deferral_rows_with_wilson_intervals():
    d = deferral([1, 1, 0, 0, 1], [1, 0, 0, 1, 1], ["GBM", "GBM|MET", "MET", "", "GBM"])
    rows = {r["metric"]: r for r in d.rows()}
    assert rows["deferred_share"]["value"] == pytest.approx(2 / 5)
    assert rows["accuracy_kept"]["value"] == pytest.approx(3 / 3)
    assert rows["accuracy_all"]["value"] == pytest.approx(3 / 5)
    kept = rows["accuracy_kept"]
    assert (kept["ci_low"], kept["ci_high"]) == pytest.approx(wilson_interval(3, 3))
    assert kept["ci_method"] == C.CI_WILSON and kept["n"] == 5 and kept["n_gbm"] == 3


def test_accuracy_kept_is_none_when_every_call_is_deferred():
    d = deferral([1, 0], [1, 1], ["GBM|MET", ""], [None, None])
    assert d.n_kept == 0 and d.accuracy_kept is None
    assert {r["metric"]: r["value"] for r in d.rows()}["accuracy_kept"] is None


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="one call, label, set"):
        deferral([1], [1, 0], ["GBM", "MET"])
    with pytest.raises(ValueError, match="conformal set must be one of"):
        deferral([1], [1], ["MET|GBM"])
    with pytest.raises(ValueError, match="at least one"):
        risk_coverage([], [])
    with pytest.raises(ValueError, match="NaN"):
        risk_coverage([True], [np.nan])
