"""gbmmet.stats against trusted values: pROC's DeLong on the aSAH data (to 1e-9), hand-worked
cases, the paper's own confusion counts, and the confidence intervals' behaviour."""

from __future__ import annotations

import csv
import itertools
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from gbmmet.stats import (
    auc_score,
    binary_metrics,
    ci_bootstrap,
    ci_paper_subsample,
    confusion,
    delong_roc_test,
    delong_roc_variance,
    metrics,
    roc_curve,
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


def test_metrics_confusion_brier_and_zero_denominators():
    y = [1, 1, 1, 0, 0]
    c = [1, 0, 1, 0, 1]
    assert confusion(y, c) == {"tp": 2, "fp": 1, "tn": 1, "fn": 1}
    m = metrics(y, c, [0.9, 0.4, 0.8, 0.2, 0.6])
    assert m["accuracy"] == pytest.approx(0.6) and m["specificity"] == pytest.approx(0.5)
    assert m["npv"] == pytest.approx(0.5) and m["auc"] == pytest.approx(5 / 6)
    assert m["brier"] == pytest.approx(np.mean([0.01, 0.36, 0.04, 0.04, 0.36]))
    none_called = metrics([1, 0, 0], [0, 0, 0])
    assert math.isnan(none_called["precision"]) and none_called["recall"] == 0.0
    assert none_called["auc"] == 0.5  # from calls alone: one operating point


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
