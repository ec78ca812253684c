import json
import math

import numpy as np
import pytest
from mapie.classification import SplitConformalClassifier

from gbmmet import constants as C
from gbmmet.conformal import ClassConditionalConformal, ProbabilityColumn, coverage_rows, n_needed
from gbmmet.stats import wilson_interval

# 19 GBM calibration patients, P(GBM) 0.05 .. 0.95; 10 MET ones, P(GBM) 0.0 .. 0.9
GBM_CAL = np.round(np.arange(1, 20) * 0.05, 2)
MET_CAL = np.round(np.arange(10) * 0.1, 1)


def _hand_worked() -> ClassConditionalConformal:
    p = np.concatenate([GBM_CAL, MET_CAL])
    y = np.r_[np.ones(19, int), np.zeros(10, int)]
    return ClassConditionalConformal().fit(p, y)


def test_hand_worked_thresholds():
    # GBM at 0.90: scores 1 - p = 0.05 .. 0.95; the ceil(20 * 0.9) = 18th smallest is 0.90
    # MET at 0.90: scores p = 0.0 .. 0.9; the ceil(11 * 0.9) = 10th smallest is 0.9
    # at 0.95 both classes have fewer than 20 patients: infinite threshold
    cc = _hand_worked()
    assert cc.thresholds_[0.9][C.GBM] == pytest.approx(0.90)
    assert cc.thresholds_[0.9][C.MET] == pytest.approx(0.9)
    assert cc.thresholds_[0.95] == {C.GBM: math.inf, C.MET: math.inf}


def test_hand_worked_sets():
    # at 0.90 GBM is in the set when P(GBM) >= 0.10, MET when P(GBM) <= 0.9
    sets = _hand_worked().predict_sets([0.05, 0.1, 0.5, 0.9, 0.95])
    assert sets[0.9] == ["MET", "GBM|MET", "GBM|MET", "GBM|MET", "GBM"]
    assert sets[0.95] == ["GBM|MET"] * 5


def test_a_patient_unlike_both_classes_gets_the_empty_set():
    # GBMs all confident (P >= 0.8), METs all confident (P <= 0.2): P = 0.5 fits neither
    p = np.r_[np.linspace(0.8, 0.99, 20), np.linspace(0.01, 0.2, 20)]
    y = np.r_[np.ones(20, int), np.zeros(20, int)]
    sets = ClassConditionalConformal(levels=(0.9,)).fit(p, y).predict_sets([0.5, 0.95, 0.05])
    assert sets[0.9] == ["", "GBM", "MET"]


def test_too_few_patients_of_a_class_puts_that_label_in_every_set_and_says_so():
    cc = _hand_worked()
    assert len(cc.notes_) == 2
    assert "GBM at level 0.95: 19 calibration patients, fewer than the 20 needed" in cc.notes_[0]
    assert "MET at level 0.95: 10 calibration patients, fewer than the 20 needed" in cc.notes_[1]
    summary = cc.summary()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["classes"]["0.95"][C.GBM] == {"n": 19, "threshold": None}
    assert summary["classes"]["0.9"][C.MET] == {"n": 10, "threshold": pytest.approx(0.9)}


@pytest.mark.filterwarnings("ignore:WARNING. your conformalization dataset has less labels")
@pytest.mark.parametrize("level", C.CONFORMAL_LEVELS)
def test_our_too_few_rule_is_exactly_where_mapie_refuses(level):
    need = n_needed(level)
    x = np.linspace(0.1, 0.9, need)[:, None]
    SplitConformalClassifier(ProbabilityColumn().fit(), confidence_level=level, prefit=True) \
        .conformalize(x, np.ones(need, int)).predict_set(x[:1])
    with pytest.raises(ValueError, match="too low"):
        SplitConformalClassifier(ProbabilityColumn().fit(), confidence_level=level, prefit=True) \
            .conformalize(x[1:], np.ones(need - 1, int)).predict_set(x[:1])


def test_thresholds_are_the_split_conformal_order_statistic(rng):
    p = rng.uniform(size=57)
    y = (rng.uniform(size=57) < p).astype(int)
    cc = ClassConditionalConformal().fit(p, y)
    for level in C.CONFORMAL_LEVELS:
        for label, code, score in ((C.GBM, 1, 1 - p), (C.MET, 0, p)):
            s = np.sort(score[y == code])
            k = math.ceil((len(s) + 1) * level)
            expected = s[k - 1] if len(s) >= n_needed(level) else math.inf
            assert cc.thresholds_[level][label] == pytest.approx(expected)


def test_class_conditional_coverage_holds_in_simulation():
    # Exchangeable calibration and test patients from a fixed distribution (P(GBM) ~ Beta(4, 2) for
    # GBM, Beta(2, 4) for MET), 500 times. Split conformal promises, per class, mean coverage
    # ceil((n + 1) L) / (n + 1): at least L and below L + 1 / (n + 1). Allowance: 4 standard errors
    # of the mean over the repetitions.
    rng = np.random.default_rng(7)
    reps, n_cal, n_test = 500, {1: 30, 0: 25}, 200
    covered = {(lv, c): [] for lv in C.CONFORMAL_LEVELS for c in (0, 1)}
    draw = {1: lambda size: rng.beta(4, 2, size), 0: lambda size: rng.beta(2, 4, size)}
    for _ in range(reps):
        cal = {c: draw[c](n_cal[c]) for c in (0, 1)}
        test = {c: draw[c](n_test) for c in (0, 1)}
        cc = ClassConditionalConformal().fit(np.r_[cal[1], cal[0]],
                                             np.r_[np.ones(n_cal[1], int), np.zeros(n_cal[0], int)])
        for c, label in ((1, C.GBM), (0, C.MET)):
            for lv, sets in cc.predict_sets(test[c]).items():
                covered[lv, c].append(np.mean([label in s.split(C.SET_SEPARATOR) for s in sets]))
    for (lv, c), values in covered.items():
        mean, se = np.mean(values), np.std(values) / np.sqrt(reps)
        assert lv - 4 * se <= mean <= lv + 1 / (n_cal[c] + 1) + 4 * se, (lv, c, mean, se)
        # and, sharper, the exact promised mean (e.g. 28 / 31 = 0.903 for 30 GBMs at 0.90)
        exact = math.ceil((n_cal[c] + 1) * lv) / (n_cal[c] + 1)
        assert abs(mean - exact) < 4 * se, (lv, c, mean, exact)


def test_coverage_rows_by_hand():
    sets = ["GBM", "GBM|MET", "MET", "", "MET"]
    y = [1, 1, 1, 0, 0]
    rows = {r["metric"]: r for r in coverage_rows(sets, y, 0.9)}
    assert {k: r["value"] for k, r in rows.items()} == pytest.approx({
        "conformal_coverage_90": 3 / 5, "conformal_coverage_gbm_90": 2 / 3,
        "conformal_coverage_met_90": 1 / 2, "conformal_two_label_90": 1 / 5,
        "conformal_empty_90": 1 / 5})
    gbm = rows["conformal_coverage_gbm_90"]
    assert (gbm["ci_low"], gbm["ci_high"]) == pytest.approx(wilson_interval(2, 3))
    assert gbm["ci_method"] == C.CI_WILSON and gbm["n"] == 5 and gbm["n_gbm"] == 3


def test_coverage_rows_give_none_where_a_class_is_absent():
    rows = {r["metric"]: r for r in coverage_rows(["GBM", "GBM"], [1, 1], 0.95)}
    met = rows["conformal_coverage_met_95"]
    assert met["value"] is None and met["ci_low"] is None and met["ci_high"] is None
    assert rows["conformal_coverage_95"]["value"] == 1.0


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="levels"):
        ClassConditionalConformal(levels=(0.9, 1.0))
    with pytest.raises(ValueError, match="prob_gbm"):
        ClassConditionalConformal().fit([0.2, 1.3], [1, 0])
    with pytest.raises(ValueError, match="y must be"):
        ClassConditionalConformal().fit([0.2, 0.3], [1, 2])
    with pytest.raises(ValueError, match="not fitted yet"):
        ClassConditionalConformal().predict_sets([0.5])


def test_sets_rebuilt_from_the_summary_equal_the_fitted_sets_even_at_the_thresholds():
    from gbmmet.conformal import ClassConditionalConformal

    rng = np.random.default_rng(3)
    y = np.r_[np.ones(30, int), np.zeros(25, int)]
    p = np.clip(np.where(y == 1, rng.beta(5, 2, len(y)), rng.beta(2, 5, len(y))), 0, 1)
    fitted = ClassConditionalConformal().fit(p, y)
    rebuilt = ClassConditionalConformal.from_summary(json.loads(json.dumps(fitted.summary())))
    at_thresholds = [1 - t for th in fitted.thresholds_.values() for t in th.values() if np.isfinite(t)]
    grid = np.r_[np.linspace(0, 1, 201), at_thresholds, 1 - np.array(at_thresholds)].clip(0, 1)
    assert rebuilt.predict_sets(grid) == fitted.predict_sets(grid)
