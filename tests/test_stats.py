"""gbmmet.stats against trusted values: pROC's DeLong on the aSAH data (to 1e-9), hand-worked
cases, the paper's own confusion counts, and the confidence intervals' behaviour."""

from __future__ import annotations

import csv
import itertools
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from gbmmet.stats import (
    CALL_METRICS,
    CI_DELONG,
    CI_NEWCOMBE,
    CI_WILSON,
    PAIRED_METHODS,
    SCORE_METRICS,
    auc_score,
    binary_metrics,
    ci_bootstrap,
    ci_paired_difference,
    ci_paper_subsample,
    confusion,
    delong_roc_test,
    delong_roc_variance,
    holm,
    mcnemar_test,
    metrics,
    newcombe_paired_ci,
    roc_curve,
    wilson_interval,
    youden_cutoff,
)
from tests.conftest import SHARED

REF = Path(__file__).parent / "data" / "reference"  # copies of ../shared/reference (see its README)


@pytest.fixture(scope="module")
def asah():
    with (REF / "aSAH.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    y = np.array([r["outcome"] == "Poor" for r in rows])
    markers = {k: np.array([float(r[k]) for r in rows]) for k in ("wfns", "s100b", "ndka")}
    return y, markers, json.loads((REF / "delong-aSAH-expected.json").read_text())


def test_reference_copies_equal_the_shared_originals():
    original = SHARED / "reference"
    if not original.is_dir():
        pytest.skip(f"{original} absent (a clone without ../shared): the copies are used as they are")
    for name in ("aSAH.csv", "delong-aSAH-expected.json"):
        assert (REF / name).read_bytes() == (original / name).read_bytes()


def test_delong_auc_and_variance_equal_proc(asah):
    y, markers, ref = asah
    for name, score in markers.items():
        d = delong_roc_variance(y, score)
        assert d.auc == pytest.approx(ref["auc"][name], abs=1e-9)
        assert d.variance == pytest.approx(ref["delong_variance"][name], abs=1e-9)
        assert d.ci_low == pytest.approx(d.auc - 1.959963984540054 * math.sqrt(d.variance), abs=1e-12)


def test_delong_paired_tests_equal_proc(asah):
    y, markers, ref = asah
    for case in ref["paired_tests"]:
        t = delong_roc_test(y, markers[case["a"]], markers[case["b"]])
        assert t.z == pytest.approx(case["z"], abs=1e-9)
        assert t.p == pytest.approx(case["p_two_sided"], abs=1e-9)
        assert t.ci_low == pytest.approx(case["ci95_diff"][0], abs=1e-9)
        assert t.ci_high == pytest.approx(case["ci95_diff"][1], abs=1e-9)
        assert t.auc_a == pytest.approx(ref["auc"][case["a"]], abs=1e-9)


def test_delong_by_hand_on_a_tiny_case():
    # positives 0.9, 0.6; negatives 0.6, 0.1: pairs (0.9>0.6, 0.9>0.1, 0.6=0.6, 0.6>0.1) -> AUC 3.5/4
    y, s = [1, 1, 0, 0], [0.9, 0.6, 0.6, 0.1]
    d = delong_roc_variance(y, s)
    assert d.auc == pytest.approx(0.875)
    # V10 = (1, 0.75), V01 = (0.75, 1): var = s2(V10)/2 + s2(V01)/2 = 0.03125/2 + 0.03125/2
    assert d.variance == pytest.approx(0.03125)
    # the midrank algorithm equals the pairwise definition on random data with ties
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 40)
    s = rng.integers(0, 6, 40).astype(float)
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a, b in itertools.product(s[y == 1], s[y == 0])]
    assert delong_roc_variance(y, s).auc == pytest.approx(np.mean(pairs))
    assert auc_score(y, s) == pytest.approx(np.mean(pairs))


def test_delong_refuses_one_class_and_bad_input():
    with pytest.raises(ValueError, match="both classes; got 3 positive and 0 negative"):
        delong_roc_variance([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="0 / 1"):
        delong_roc_variance([1, 2, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        delong_roc_variance([1, 0], [0.1, float("nan")])
    same = delong_roc_test([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1], [0.9, 0.8, 0.2, 0.1])
    assert same.diff == 0 and same.p == 1.0


def _rounds_to(value: float, reported: float, digits: int) -> bool:
    return round(value, digits) == pytest.approx(reported, abs=1e-9)


def test_the_papers_confusion_counts_against_its_reported_metrics():
    """Internal test: 8 of 50 MET called GBM, 3 of 50 GBM called MET. External: 9 of 43 MET called
    GBM, 12 of 100 GBM called MET (the paper's text). Reported (model): internal accuracy 89 %,
    precision 0.852, recall 0.939, F1 0.893; external 85.9 %, 0.907, 0.889, 0.893."""
    internal = binary_metrics(tp=47, fp=8, tn=42, fn=3)
    external = binary_metrics(tp=88, fp=9, tn=34, fn=12)
    reported = {
        "internal": {"accuracy": (0.89, 2), "precision": (0.852, 3), "recall": (0.939, 3), "f1": (0.893, 3)},
        "external": {"accuracy": (0.859, 3), "precision": (0.907, 3), "recall": (0.889, 3), "f1": (0.893, 3)},
    }
    got = {"internal": internal, "external": external}
    follows = {(c, m) for c, ms in reported.items() for m, (v, d) in ms.items() if _rounds_to(got[c][m], v, d)}
    # What the counts give, worked by hand: internal 89/100, 47/55 = 0.8545, 47/50 = 0.94,
    # 94/105 = 0.8952; external 122/143 = 0.8531, 88/97 = 0.9072, 88/100 = 0.88, 176/197 = 0.8934.
    assert internal["accuracy"] == pytest.approx(0.89) and internal["precision"] == pytest.approx(47 / 55)
    assert internal["recall"] == pytest.approx(0.94) and internal["f1"] == pytest.approx(94 / 105)
    assert external["accuracy"] == pytest.approx(122 / 143) and external["precision"] == pytest.approx(88 / 97)
    assert external["recall"] == pytest.approx(0.88) and external["f1"] == pytest.approx(176 / 197)
    # The reported numbers that follow from the counts ...
    assert follows == {("internal", "accuracy"), ("external", "precision"), ("external", "f1")}
    # ... and those that do not (internal precision 0.852 vs 0.855, recall 0.939 vs 0.940, F1 0.893
    # vs 0.895; external accuracy 85.9 % vs 85.3 %, recall 0.889 vs 0.880): perhaps bootstrap means.
    assert set(itertools.product(reported, ("accuracy", "precision", "recall", "f1"))) - follows == {
        ("internal", "precision"), ("internal", "recall"), ("internal", "f1"),
        ("external", "accuracy"), ("external", "recall")}


def test_metrics_confusion_and_zero_denominators():
    y = [1, 1, 1, 0, 0]
    c = [1, 0, 1, 0, 1]
    assert confusion(y, c) == {"tp": 2, "fp": 1, "tn": 1, "fn": 1}
    m = metrics(y, c, [0.9, 0.4, 0.8, 0.2, 0.6])
    assert m["accuracy"] == pytest.approx(0.6) and m["specificity"] == pytest.approx(0.5)
    assert m["npv"] == pytest.approx(0.5) and m["auc"] == pytest.approx(5 / 6)
    none_called = metrics([1, 0, 0], [0, 0, 0])
    assert math.isnan(none_called["precision"]) and none_called["recall"] == 0.0
    assert none_called["auc"] == 0.5  # from calls alone: one operating point


def test_metrics_has_no_brier_score_the_index_is_not_a_probability():
    assert SCORE_METRICS == ("auc",) and "specificity" in CALL_METRICS and "npv" in CALL_METRICS
    assert set(metrics([1, 0], [1, 0], [0.9, 0.1])) == set(CALL_METRICS + SCORE_METRICS)
    with pytest.raises(ValueError, match="names must be among"):
        ci_bootstrap([1, 1, 0, 0], [1, 0, 0, 0], names=("brier",))


def test_youden_cutoff_by_hand():
    # scores of GBM 0.9 0.7 0.55 0.4; MET 0.6 0.3 0.2 0.1
    y = [1, 1, 1, 1, 0, 0, 0, 0]
    s = [0.9, 0.7, 0.55, 0.4, 0.6, 0.3, 0.2, 0.1]
    # cutoff 0.4: sens 1, spec 3/4 -> J 0.75 (best); 0.7: sens 0.5, spec 1 -> 0.5
    assert youden_cutoff(y, s) == pytest.approx(0.4)


def test_confidence_intervals_cover_the_estimate_and_count_degenerate_resamples():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(40, int), np.zeros(30, int)]
    score = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    call = (score >= 0.5).astype(int)
    point = metrics(y, call, score)
    for ci in (ci_paper_subsample(y, call, score, n_resamples=300),
               ci_bootstrap(y, call, score, n_resamples=300, method="BCa"),
               ci_bootstrap(y, call, score, n_resamples=300, method="percentile")):
        for name in ("accuracy", "precision", "recall", "f1", "auc"):
            assert ci[name].low <= point[name] <= ci[name].high, (name, ci[name], point[name])
            assert ci[name].n_degenerate == 0
    # subsampling 90 % without replacement is narrower than a bootstrap with replacement
    sub = ci_paper_subsample(y, call, score, n_resamples=300)["accuracy"]
    boot = ci_bootstrap(y, call, score, n_resamples=300, method="percentile")["accuracy"]
    assert sub.high - sub.low < boot.high - boot.low
    assert sub.method == "paper_subsample90" and boot.method == "bootstrap_percentile"
    # the stratified bootstrap agrees with scipy's own percentile interval for the AUC
    pos, neg = score[y == 1], score[y == 0]
    ref = sps.bootstrap((pos, neg), lambda a, b: auc_score(np.r_[np.ones(len(a)), np.zeros(len(b))], np.r_[a, b]),
                        vectorized=False, n_resamples=300, method="percentile", rng=np.random.default_rng(0))
    ours = ci_bootstrap(y, call, score, n_resamples=300, method="percentile", names=("auc",))["auc"]
    assert ours.low == pytest.approx(ref.confidence_interval.low) and ours.high == pytest.approx(ref.confidence_interval.high)

    # a small cohort: some 90 % subsets lack MET entirely -> NaN left out, warned and counted
    y_small = np.r_[np.ones(12, int), np.zeros(1, int)]
    s_small = np.linspace(0.1, 0.9, 13)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small = ci_paper_subsample(y_small, (s_small >= 0.5).astype(int), s_small, n_resamples=200)
    assert small["auc"].n_degenerate > 0 and any("left out" in str(w.message) for w in caught)


def test_roc_curve_by_hand_and_against_scikit_learn(rng):
    from sklearn.metrics import roc_curve as sk_roc_curve

    # scores 0.9 (GBM), 0.8 (MET), 0.8 (GBM), 0.1 (MET): thresholds +inf, 0.9, 0.8, 0.1
    fpr, tpr, thr = roc_curve([1, 0, 1, 0], [0.9, 0.8, 0.8, 0.1])
    assert fpr.tolist() == [0, 0, 0.5, 1] and tpr.tolist() == [0, 0.5, 1, 1]
    assert thr[0] == np.inf and thr[1:].tolist() == [0.9, 0.8, 0.1]
    for _ in range(30):
        y = rng.integers(0, 2, 25)
        y[:2] = [0, 1]
        s = rng.integers(0, 8, 25) / 7  # ties
        for a, b in zip(roc_curve(y, s), sk_roc_curve(y, s, drop_intermediate=False), strict=True):
            assert np.allclose(a, b)


# ---------------------------------------------------------------------------------------------
# resampling: vectorised, re-chosen cutoffs, paired differences, McNemar, Holm
# ---------------------------------------------------------------------------------------------
def _binormal(rng, n_gbm=40, n_met=30, mu=1.5):
    y = np.r_[np.ones(n_gbm, int), np.zeros(n_met, int)]
    score = np.round(rng.normal(mu * y, 1), 1)  # rounded: ties, as in a share of slices
    return y, score


def _old_statistic(y, call, score, names):
    """The former slow path: ``metrics()`` on the patients of each resample."""
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)

    def stat(i_pos, i_neg):
        idx = np.concatenate([pos[i_pos], neg[i_neg]])
        m = metrics(y[idx], call[idx], score[idx])
        return np.array([m[k] for k in names])

    return (np.arange(len(pos)), np.arange(len(neg))), stat


def test_vectorised_bootstrap_equals_metrics_on_each_resample(rng):
    y, score = _binormal(rng)
    call = (score >= 0.6).astype(int)
    names = CALL_METRICS + SCORE_METRICS
    data, stat = _old_statistic(y, call, score, names)
    for method in ("percentile", "BCa"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = sps.bootstrap(data, stat, vectorized=False, n_resamples=300, method=method,
                                rng=np.random.default_rng(0)).confidence_interval
        ours = ci_bootstrap(y, call, score, n_resamples=300, method=method)
        for j, name in enumerate(names):
            # the same resamples give the same values; BCa's acceleration sums them in another order
            assert ours[name].low == pytest.approx(ref.low[j], abs=1e-12), (method, name)
            assert ours[name].high == pytest.approx(ref.high[j], abs=1e-12), (method, name)


def test_vectorised_paper_subsample_equals_metrics_on_each_subset(rng):
    y, score = _binormal(rng, 20, 10)
    call = (score >= 0.6).astype(int)
    draws_rng, k = np.random.default_rng(0), round(0.9 * len(y))
    accs = []
    for _ in range(200):
        idx = draws_rng.choice(len(y), size=k, replace=False)
        accs.append(metrics(y[idx], call[idx], score[idx])["accuracy"])
    ours = ci_paper_subsample(y, call, score, n_resamples=200, names=("accuracy",))["accuracy"]
    assert (ours.low, ours.high) == tuple(np.quantile(accs, [0.025, 0.975]))


def test_bca_bootstrap_of_1000_resamples_on_100_patients_is_fast(rng):
    y, score = _binormal(rng, 67, 33)
    call = (score >= 0.6).astype(int)
    ci_bootstrap(y, call, score)  # warm-up (imports)
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        ci_bootstrap(y, call, score, n_resamples=1000, method="BCa")
        best = min(best, time.perf_counter() - t0)
    assert best < 0.1


def test_choose_cutoff_point_estimate_is_the_full_sample_youden_rule(rng):
    y, score = _binormal(rng)
    best = metrics(y, (score >= youden_cutoff(y, score)).astype(int), score)
    ci = ci_bootstrap(y, None, score, choose_cutoff=youden_cutoff, n_resamples=200)
    for name in ("accuracy", "recall", "specificity", "auc"):
        assert ci[name].estimate == best[name]
        assert ci[name].low <= best[name] <= ci[name].high


def test_vectorised_youden_equals_youden_cutoff_in_each_resample(rng):
    y, score = _binormal(rng, 15, 12)
    names = ("accuracy", "recall", "specificity")

    def plain(y_b, s_b):  # not youden_cutoff itself, so the generic per-resample path runs
        return youden_cutoff(y_b, s_b)

    for method in ("percentile", "BCa"):
        fast = ci_bootstrap(y, None, score, names=names, method=method, n_resamples=200, choose_cutoff=youden_cutoff)
        slow = ci_bootstrap(y, None, score, names=names, method=method, n_resamples=200, choose_cutoff=plain)
        assert fast == slow
    fast = ci_paper_subsample(y, None, score, names=names, n_resamples=200, choose_cutoff=youden_cutoff)
    assert fast == ci_paper_subsample(y, None, score, names=names, n_resamples=200, choose_cutoff=plain)


def test_choose_cutoff_needs_a_score():
    with pytest.raises(ValueError, match="needs a score"):
        ci_bootstrap([1, 1, 0, 0], [1, 0, 0, 0], choose_cutoff=youden_cutoff)


def test_paired_difference_of_identical_raters_is_exactly_zero(rng):
    y, score = _binormal(rng)
    call = (score >= 0.6).astype(int)
    for name, d in ci_paired_difference(y, (call, score), (call, score), n_resamples=200, method="BCa").items():
        assert (d.diff, d.low, d.high) == (0.0, 0.0, 0.0), name
        assert d.method == "bootstrap_percentile"  # BCa is undefined on a constant distribution
    # the default: Newcombe has width (no discordant pair is still a finite sample), DeLong 0 to 0
    d = ci_paired_difference(y, (call, score), (call, score))
    assert (d["auc"].diff, d["auc"].low, d["auc"].high, d["auc"].method) == (0.0, 0.0, 0.0, CI_DELONG)
    for name in ("accuracy", "recall", "specificity"):
        assert d[name].diff == 0.0 and d[name].low == pytest.approx(-d[name].high) and d[name].high > 0
        assert d[name].method == CI_NEWCOMBE


def test_paired_difference_point_is_metric_a_minus_metric_b(rng):
    y, score = _binormal(rng)
    call_a = (score >= 0.6).astype(int)
    call_b = np.where(rng.random(len(y)) < 0.2, 1 - call_a, call_a)  # a reader without a score
    d = ci_paired_difference(y, (call_a, score), (call_b, None), n_resamples=200)
    ma, mb = metrics(y, call_a, score), metrics(y, call_b)
    for name in ("accuracy", "recall", "specificity", "auc"):
        assert d[name].diff == pytest.approx(ma[name] - mb[name], abs=1e-15)
        assert d[name].low <= d[name].diff <= d[name].high


def test_paired_difference_with_the_models_cutoff_rechosen(rng):
    y, score = _binormal(rng)
    call_b = (score >= 1.0).astype(int)
    d = ci_paired_difference(y, (None, score), (call_b, None), names=("accuracy",), n_resamples=200,
                             choose_cutoff_a=youden_cutoff)["accuracy"]
    chosen = (score >= youden_cutoff(y, score)).astype(int)
    assert d.diff == pytest.approx(metrics(y, chosen)["accuracy"] - metrics(y, call_b)["accuracy"], abs=1e-15)


def test_paired_bootstrap_is_narrower_than_unpaired_for_correlated_raters(rng):
    y, score = _binormal(rng)
    call_a = (score >= 0.6).astype(int)
    call_b = np.where(rng.random(len(y)) < 0.1, 1 - call_a, call_a)  # agrees with a on ~90 %
    paired = ci_paired_difference(y, (call_a, None), (call_b, None), names=("accuracy",), method="percentile")
    wa = ci_bootstrap(y, call_a, names=("accuracy",), method="percentile")["accuracy"]
    wb = ci_bootstrap(y, call_b, names=("accuracy",), method="percentile", seed=1)["accuracy"]
    # independent resamples of the two raters would give about the root sum of squares of the widths
    unpaired = math.hypot(wa.high - wa.low, wb.high - wb.low)
    assert paired["accuracy"].high - paired["accuracy"].low < 0.6 * unpaired


def test_holm_by_hand_and_nan_left_out_of_the_family():
    # sorted 0.01, 0.03, 0.04 -> x3, x2, x1 = 0.03, 0.06, 0.04 -> running maximum 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = holm([0.01, float("nan"), 0.04, 0.03])
    assert math.isnan(out[1]) and out[[0, 2, 3]] == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]).tolist() == [1.0, 1.0]  # capped at 1


def test_mcnemar_exact_by_hand():
    # 3 both right, 1 only a right, 5 only b right, 2 both wrong: 6 discordant -> exact binomial,
    # p = 2 P(X <= 1 | 6, 1/2) = 2 (1 + 6) / 64
    a = [1] * 3 + [1] + [0] * 5 + [0] * 2
    b = [1] * 3 + [0] + [1] * 5 + [0] * 2
    r = mcnemar_test(a, b)
    assert (r.b_only_a_right, r.c_only_b_right, r.n, r.exact) == (1, 5, 11, True)
    assert r.p == pytest.approx(14 / 64) and r.statistic == 1.0


def test_mcnemar_chi_square_with_continuity_correction_by_hand():
    # 20 only a right, 10 only b right: 30 discordant -> (|20 - 10| - 1)^2 / 30 = 2.7 on 1 df
    r = mcnemar_test([1] * 20 + [0] * 10 + [1] * 5, [0] * 20 + [1] * 10 + [1] * 5)
    assert not r.exact and r.statistic == pytest.approx(2.7)
    assert r.p == pytest.approx(sps.chi2.sf(2.7, 1))


# ---------------------------------------------------------------------------------------------
# Wilson for a degenerate proportion, Newcombe and DeLong for paired differences
# ---------------------------------------------------------------------------------------------
Z = 1.959963984540054


def test_wilson_interval_by_hand():
    # 15 / 15: lower limit 15 / (15 + z^2) = 15 / 18.8415 = 0.7961, upper 1
    assert wilson_interval(15, 15) == (pytest.approx(15 / (15 + Z**2)), 1.0)
    assert round(wilson_interval(15, 15)[0], 3) == 0.796
    # 0 / 10: (0, z^2 / (10 + z^2)); 12 / 15: centre (12 + z^2/2) / (15 + z^2), half-width
    # z / (15 + z^2) * sqrt(12 * 3 / 15 + z^2 / 4) -> 0.5481 to 0.9295
    assert wilson_interval(0, 10) == (0.0, pytest.approx(Z**2 / (10 + Z**2)))
    assert wilson_interval(12, 15) == pytest.approx((0.5481455, 0.9295245), abs=1e-7)
    with pytest.raises(ValueError, match="0 <= k <= m"):
        wilson_interval(3, 2)


def test_wilson_stands_in_for_a_zero_width_proportion_interval():
    # every one of 15 GBMs called GBM, 5 of 15 METs called GBM: recall is 1 in every resample
    y = np.r_[np.ones(15, int), np.zeros(15, int)]
    call = np.r_[np.ones(15, int), np.ones(5, int), np.zeros(10, int)]
    names = ("recall", "specificity")
    data, stat = _old_statistic(y, call, call.astype(float), ("specificity",))
    for method in ("BCa", "percentile"):
        ci = ci_bootstrap(y, call, names=names, method=method, n_resamples=300)
        assert ci["recall"].method == CI_WILSON and ci["recall"].estimate == 1.0
        assert (round(ci["recall"].low, 3), ci["recall"].high) == (0.796, 1.0)
        # the non-degenerate specificity is as before: scipy's own interval on the same resamples
        ref = sps.bootstrap(data, lambda a, b: stat(a, b)[0], vectorized=False, n_resamples=300, method=method,
                            rng=np.random.default_rng(0)).confidence_interval
        assert ci["specificity"].method == f"bootstrap_{method.lower()}"
        assert ci["specificity"].low == pytest.approx(ref.low, abs=1e-12)
        assert ci["specificity"].high == pytest.approx(ref.high, abs=1e-12)


def test_wilson_not_for_f1_or_auc_and_for_precision_where_defined():
    # a perfect rater: accuracy 30 / 30, precision 15 / 15 get Wilson; F1 and AUC (not
    # proportions) keep the percentile interval 1 to 1
    y = np.r_[np.ones(15, int), np.zeros(15, int)]
    ci = ci_bootstrap(y, y, names=("accuracy", "precision", "f1", "auc"), n_resamples=200)
    assert ci["accuracy"].method == CI_WILSON and ci["accuracy"].low == pytest.approx(30 / (30 + Z**2))
    assert ci["precision"].method == CI_WILSON and ci["precision"].low == pytest.approx(15 / (15 + Z**2))
    for name in ("f1", "auc"):
        assert (ci[name].low, ci[name].high, ci[name].method) == (1.0, 1.0, "bootstrap_percentile")
    # no GBM called: specificity 15 / 15 -> Wilson; precision undefined everywhere stays NaN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ci = ci_bootstrap(y, np.zeros(30, int), names=("specificity", "precision"), n_resamples=200)
    assert ci["specificity"].method == CI_WILSON and math.isnan(ci["precision"].low)
    # the paper's scheme is kept as the paper computed it
    assert ci_paper_subsample(y, y, names=("accuracy",), n_resamples=50)["accuracy"].method == "paper_subsample90"


def test_wilson_with_a_rechosen_cutoff_uses_the_full_sample_counts():
    # separated scores: the Youden cutoff separates every resample, recall 15 / 15 throughout
    y = np.r_[np.ones(15, int), np.zeros(15, int)]
    score = np.r_[np.linspace(0.6, 1, 15), np.linspace(0, 0.4, 15)]
    ci = ci_bootstrap(y, None, score, names=("recall", "auc"), choose_cutoff=youden_cutoff, n_resamples=200)
    assert ci["recall"].method == CI_WILSON and ci["recall"].low == pytest.approx(15 / (15 + Z**2))
    assert ci["auc"].method == "bootstrap_percentile"


def test_newcombe_paired_ci_against_the_published_example_and_by_hand():
    # Cavo et al. 2012 (Fagerland, Lydersen & Laake 2017, ch. 8; R contingencytables'
    # Newcombe_square_and_add_CI_paired_2x2): -0.0621 (95 % CI -0.1186 to -0.0046)
    diff, low, high = newcombe_paired_ci([[59, 6], [16, 80]])
    assert (round(diff, 4), round(low, 4), round(high, 4)) == (-0.0621, -0.1186, -0.0046)
    # the demo's case: 15 GBMs, the reader right on all, the model on 12 (3 discordant pairs, all
    # against the model; McNemar exact p = 0.25). A marginal total is 0 -> phi = 0. Wilson 12/15 =
    # (0.54815, 0.92952), 15/15 = (0.79612, 1): low = -0.2 - (0.8 - 0.54815) = -0.45185,
    # high = -0.2 + sqrt((0.92952 - 0.8)^2 + (1 - 0.79612)^2) = -0.2 + 0.24155 = 0.04155: includes 0
    diff, low, high = newcombe_paired_ci([[12, 0], [3, 0]])
    assert diff == pytest.approx(-0.2)
    assert low == pytest.approx(-0.2 - (0.8 - 0.5481455), abs=1e-7)
    assert high == pytest.approx(-0.2 + math.hypot(0.9295245 - 0.8, 1 - 15 / (15 + Z**2)), abs=1e-7)
    assert low < 0 < high
    # a negative correlation: [[1, 5], [5, 1]], A = 1 - 25 = -24, phi = -24 / sqrt(6^4) = -2/3;
    # both 6/12, Wilson half-width d = z / (12 + z^2) sqrt(3 + z^2 / 4) = 0.24622;
    # limits -+ d sqrt(2 + 4/3)
    diff, low, high = newcombe_paired_ci([[1, 5], [5, 1]])
    d = Z / (12 + Z**2) * math.sqrt(3 + Z**2 / 4)
    assert diff == 0 and high == pytest.approx(d * math.sqrt(2 + 4 / 3)) and low == pytest.approx(-high)
    # 0 <= A <= N/2 -> phi = 0: [[3, 2], [2, 3]] has A = 9 - 4 = 5 = N/2; both 5/10
    diff, low, high = newcombe_paired_ci([[3, 2], [2, 3]])
    d = Z / (10 + Z**2) * math.sqrt(2.5 + Z**2 / 4)
    assert high == pytest.approx(d * math.sqrt(2))
    with pytest.raises(ValueError, match="2 x 2"):
        newcombe_paired_ci([[1, 2, 3], [4, 5, 6]])


def test_paired_difference_default_is_newcombe_and_delong():
    assert PAIRED_METHODS[0] == "newcombe_delong"
    # the demo's case: 15 GBMs, the reader right on all, the model misses 3
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(15, int), np.zeros(15, int)]
    reader = np.r_[np.ones(15, int), (rng.random(15) < 0.3).astype(int)]
    model = reader.copy()
    model[:3] = 0
    score = np.r_[rng.normal(1.5, 1, 15), rng.normal(0, 1, 15)]
    d = ci_paired_difference(y, (model, score), (reader, None))
    assert d["recall"].method == CI_NEWCOMBE and d["recall"].n_resamples == 0
    assert (d["recall"].diff, d["recall"].low, d["recall"].high) == newcombe_paired_ci([[12, 0], [3, 0]])
    assert d["recall"].low < 0 < d["recall"].high  # as McNemar (p = 0.25); the bootstrap excluded 0
    assert ci_paired_difference(y, (model, score), (reader, None), method="BCa")["recall"].high < 0
    right_m, right_r = model == y, reader == y
    table = [[(right_m & right_r).sum(), (right_m & ~right_r).sum()],
             [(~right_m & right_r).sum(), (~right_m & ~right_r).sum()]]
    assert (d["accuracy"].diff, d["accuracy"].low, d["accuracy"].high) == newcombe_paired_ci(table)
    assert d["specificity"].diff == 0 and d["specificity"].method == CI_NEWCOMBE
    # the AUC: DeLong's interval of the difference (the reader's AUC from the calls)
    t = delong_roc_test(y, score, reader)
    assert d["auc"].method == CI_DELONG
    assert (d["auc"].diff, d["auc"].low, d["auc"].high) == pytest.approx((t.diff, t.ci_low, t.ci_high), abs=1e-12)
    half90 = (t.ci_high - t.ci_low) / 2 * sps.norm.ppf(0.95) / Z
    d90 = ci_paired_difference(y, (model, score), (reader, None), names=("auc",), level=0.9)["auc"]
    assert d90.high - d90.diff == pytest.approx(half90)
    # the rest (precision, NPV, F1) by the percentile bootstrap
    rest = ci_paired_difference(y, (model, score), (reader, None), names=("precision", "f1"), n_resamples=200)
    assert {iv.method for iv in rest.values()} == {"bootstrap_percentile"}
    with pytest.raises(ValueError, match="method must be one of"):
        ci_paired_difference(y, (model, score), (reader, None), method="newcombe")


def test_paired_difference_default_with_a_rechosen_cutoff_bootstraps_the_proportions(rng):
    y, score = _binormal(rng, 20, 15)
    call_b = (score >= 1.0).astype(int)
    d = ci_paired_difference(y, (None, score), (call_b, None), choose_cutoff_a=youden_cutoff, n_resamples=200)
    assert {d[k].method for k in ("accuracy", "recall", "specificity")} <= {"bootstrap_bca", "bootstrap_percentile"}
    assert d["accuracy"].method == "bootstrap_bca" and d["auc"].method == CI_DELONG
    bca = ci_paired_difference(y, (None, score), (call_b, None), choose_cutoff_a=youden_cutoff, n_resamples=200,
                               method="BCa", names=("accuracy",))
    assert d["accuracy"] == bca["accuracy"]


def test_a_zero_width_bootstrap_difference_falls_back_to_newcombe():
    # 3 GBMs and 3 METs; the model's re-chosen cutoff separates them perfectly in every resample,
    # the reader is always right too: every resample's sensitivity difference is 0
    y = np.array([1, 1, 1, 0, 0, 0])
    score = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    d = ci_paired_difference(y, (None, score), (y, None), names=("recall",), n_resamples=200,
                             choose_cutoff_a=youden_cutoff)["recall"]
    assert d.method == "newcombe" and d.diff == 0 and d.low < 0 < d.high


def test_delong_test_without_variance_gives_no_p_value_rather_than_zero():
    y = np.array([1, 1, 0, 0])
    with pytest.warns(RuntimeWarning, match="too few to test"):
        t = delong_roc_test(y, [0.9, 0.8, 0.2, 0.1], [0.1, 0.2, 0.8, 0.9])
    assert t.diff == 1.0 and np.isnan(t.p) and np.isnan(t.ci_low)
