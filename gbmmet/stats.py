"""Statistics of the evaluation: metrics with GBM as the positive class, DeLong's AUC variance and
paired test, the Youden cutoff, confidence intervals three ways, paired differences between two
raters, McNemar's test and Holm's adjustment.

Public API (used by the pipeline, the tests and analysts):

- ``delong_roc_variance(y_true, score)`` -> ``DelongAUC`` (AUC, variance, 95 % CI);
- ``delong_roc_test(y_true, score_a, score_b)`` -> ``DelongTest`` (both AUCs, z, two-sided p,
  95 % CI of the difference); tested against pROC's values on the aSAH data to 1e-9;
- ``binary_metrics(tp, fp, tn, fn)`` and ``metrics(y_true, call, score=None)``: accuracy,
  precision, recall, F1, specificity, NPV (``CALL_METRICS``) and AUC (``SCORE_METRICS``; from the
  score, else from the calls). No Brier score here: the predictive index is a share of slices, not
  a probability, so calibration belongs to a calibration module on a real probability;
- ``youden_cutoff(y_true, score)``: the cutoff maximising sensitivity + specificity - 1;
- ``ci_paper_subsample(y_true, call, score=None, *, names, n_resamples=1000, fraction=0.9,
  level=0.95, seed=0, choose_cutoff=None)`` -> ``dict[str, Interval]``: the paper's scheme,
  resamples of 90 % of patients without replacement, percentile interval. It under-covers (it
  resamples fewer patients than it has, without replacement): see ``SUBSAMPLE_COVERAGE_NOTE``;
- ``ci_bootstrap(y_true, call, score=None, *, names, method="BCa", n_resamples=1000, level=0.95,
  seed=0, choose_cutoff=None)`` -> ``dict[str, Interval]``: the stratified patient-level bootstrap
  with replacement (``scipy.stats.bootstrap``, BCa or percentile), GBM and MET patients resampled
  separately; where a proportion's interval is degenerate (zero width: k = 0 or k = m, e.g. every
  GBM called GBM) Wilson's interval of k / m stands in (method ``wilson``, ``CI_WILSON``);
- ``ci_paired_difference(y_true, a, b, *, names=("accuracy", "recall", "specificity", "auc"),
  method="newcombe_delong", n_resamples=1000, level=0.95, seed=0, choose_cutoff_a=None,
  choose_cutoff_b=None)`` -> ``dict[str, DiffInterval]``: metric(a) - metric(b) for two raters on
  the same patients. Default: Newcombe's hybrid score interval for the paired proportions
  (accuracy, sensitivity, specificity; method ``newcombe``) and DeLong's for the AUC (``delong``),
  chosen from bench/coverage.py, where the paired BCa under-covered (see its docstring for the numbers);
  ``method="BCa"`` / ``"percentile"``: the stratified bootstrap with the same resampled patients
  for both raters (``PAIRED_METHODS``);
- ``wilson_interval(k, m, level=0.95)`` -> (low, high): Wilson's score interval of k / m
  (statsmodels); ``newcombe_paired_ci(table, level=0.95)`` -> (diff, low, high): Newcombe's
  hybrid score interval (1998, method 10) of a paired difference of proportions from the table
  ``[[both, only_a], [only_b, neither]]``, checked against the published Cavo et al. example;
- ``mcnemar_test(correct_a, correct_b)`` -> ``McNemarResult``: McNemar's test on correct /
  incorrect of two raters on the same patients (exact binomial below 25 discordant pairs, else
  chi-square with continuity correction). On the GBMs alone it compares sensitivities, on the METs
  alone specificities;
- ``holm(pvalues)`` -> Holm-adjusted p values (NaN stays NaN and is not counted in the family);
- ``SUBSAMPLE_COVERAGE_NOTE``: the measured coverage of the paper's scheme (bench/coverage.py).

``choose_cutoff`` (a callable ``(y, score) -> cutoff``, e.g. ``youden_cutoff``): the calls are then
not the given ones but ``score >= cutoff`` with the cutoff chosen again in every resample (and in
every jackknife sample of BCa); the point estimate uses the cutoff chosen on the full sample. So the
interval carries the optimism of choosing the cutoff on the cohort it is evaluated on, as the paper
did on its internal test set. ``youden_cutoff`` itself runs vectorised over all resamples.

The resampled statistics are computed for all resamples at once from the count of times each
patient is drawn (confusion counts as a matrix product, the AUC as the Mann-Whitney sum over
weighted GBM-MET pairs): a BCa bootstrap of 1,000 resamples of 100 patients takes milliseconds,
with the same values as ``metrics()`` on each resample.

Conventions: ``y_true`` is 1 for GBM (positive) and 0 for MET; ``call`` is 1 where GBM is called;
a higher ``score`` means GBM. A metric whose denominator is 0 is NaN. A resample that lacks a
class, or where a metric is undefined, counts as degenerate: it is left out of the interval with a
warning, and the count is returned. Where BCa is undefined (a metric undefined in some resamples, or
a constant bootstrap distribution) the interval is the percentile one and says so in ``method``;
for a proportion whose interval is then of zero width, Wilson's (``method="wilson"``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from gbmmet import constants as C

Z975 = float(sps.norm.ppf(0.975))

#: Metrics computed from calls, and from a score (or the calls) for the AUC, in report order.
CALL_METRICS = ("accuracy", "precision", "recall", "f1", "specificity", "npv")
SCORE_METRICS = ("auc",)
#: The call metrics that are a proportion k / m of the patients (F1 and the AUC are not): their
#: degenerate bootstrap interval is replaced by the Wilson interval of k / m.
PROPORTION_METRICS = ("accuracy", "precision", "recall", "specificity", "npv")
#: The differences that are paired proportions on the same patients (all, GBMs, METs): Newcombe.
PAIRED_PROPORTION_METRICS = ("accuracy", "recall", "specificity")

#: ``Interval.method`` / ``DiffInterval.method`` labels (the bootstrap ones are ``bootstrap_bca``,
#: ``bootstrap_percentile``; the paper's scheme ``paper_subsample90``).
CI_BCA = "bootstrap_bca"
CI_PERCENTILE = "bootstrap_percentile"
CI_WILSON = C.CI_WILSON  # Wilson score interval of k / m: stands in for a degenerate bootstrap interval
CI_NEWCOMBE = "newcombe"  # Newcombe's hybrid score interval of a paired difference of proportions
CI_DELONG = "delong"  # DeLong's interval of a difference of two correlated AUCs

#: What bench/coverage.py measured for the paper's subsampling scheme against the bootstrap.
SUBSAMPLE_COVERAGE_NOTE = (
    "paper_subsample90 covered 29-52 % of the truth at nominal 95 % (accuracy, recall, specificity, AUC; "
    "n = 30 and 100, GBM:MET 2:1 and 1:1; accuracy 49 % at n = 100, 2:1), where the stratified BCa "
    "bootstrap (Wilson standing in for a zero-width proportion interval) covered 94-97 % at n = 100 "
    "and 95.5-99 % at n = 30 (400 simulated binormal cohorts per design, population AUC 0.88, 1,000 "
    "resamples; bench/coverage.py)"
)

Cutoff = Callable[[np.ndarray, np.ndarray], float]


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
def _binary(y_true, name: str = "y_true") -> np.ndarray:
    y = np.asarray(y_true)
    if y.dtype == bool:
        return y.astype(np.int8)
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError(f"{name} must hold 0 / 1 (or booleans); got values {sorted(set(y.tolist()))[:5]}")
    return y.astype(np.int8)


def _scores(score, n: int, name: str = "score") -> np.ndarray:
    s = np.asarray(score, dtype=np.float64)
    if s.shape != (n,):
        raise ValueError(f"{name} must have one value per case ({n}); got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError(f"{name} has NaN or infinite values")
    return s


def _both_classes(y: np.ndarray) -> None:
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        raise ValueError(f"AUC needs both classes; got {n_pos} positive and {len(y) - n_pos} negative cases")


# ---------------------------------------------------------------------------------------------
# DeLong
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DelongAUC:
    auc: float
    variance: float
    ci_low: float
    ci_high: float

    @property
    def se(self) -> float:
        return math.sqrt(self.variance)


@dataclass(frozen=True)
class DelongTest:
    auc_a: float
    auc_b: float
    diff: float  # auc_a - auc_b
    z: float
    p: float  # two-sided
    ci_low: float  # 95 % CI of the difference
    ci_high: float


def _structural_components(y: np.ndarray, scores: np.ndarray):
    """AUCs and DeLong's placement values (V10 for positives, V01 for negatives) of each score row,
    by the midrank algorithm of Sun & Xu (2014), which equals the pairwise definition."""
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    tz = np.apply_along_axis(sps.rankdata, 1, np.concatenate([pos, neg], axis=1))
    tx = np.apply_along_axis(sps.rankdata, 1, pos)
    ty = np.apply_along_axis(sps.rankdata, 1, neg)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    auc = v10.mean(axis=1)
    return auc, v10, v01


def _delong_cov(y: np.ndarray, scores: np.ndarray):
    auc, v10, v01 = _structural_components(y, scores)
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return auc, s10 / m + s01 / n


def delong_roc_variance(y_true, score) -> DelongAUC:
    """AUC of ``score`` for ``y_true`` and DeLong's variance, with the 95 % CI (clipped to [0, 1]).

    Raises:
        ValueError: one class only, mismatched lengths, NaN scores, labels other than 0 / 1.
    """
    y = _binary(y_true)
    _both_classes(y)
    s = _scores(score, len(y))
    auc, cov = _delong_cov(y, s[None, :])
    a, var = float(auc[0]), float(cov[0, 0])
    half = Z975 * math.sqrt(var)
    return DelongAUC(a, var, max(0.0, a - half), min(1.0, a + half))


def delong_roc_test(y_true, score_a, score_b) -> DelongTest:
    """DeLong's test of two correlated AUCs (the same cases scored twice)."""
    y = _binary(y_true)
    _both_classes(y)
    s = np.vstack([_scores(score_a, len(y), "score_a"), _scores(score_b, len(y), "score_b")])
    auc, cov = _delong_cov(y, s)
    diff = float(auc[0] - auc[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if var <= 0 and diff == 0:
        z, p, half = 0.0, 1.0, 0.0
    elif var <= 0:  # e.g. 2 cases of a class, each rater separating them: no variance to test with
        warnings.warn(f"DeLong's variance of the AUC difference ({diff:+.3f}) is zero with {int(y.sum())} positive and "
                      f"{len(y) - int(y.sum())} negative cases: too few to test; p and the CI are NaN",
                      RuntimeWarning, stacklevel=2)
        z, p, half = math.nan, math.nan, math.nan
    else:
        z = diff / math.sqrt(var)
        p = float(2 * sps.norm.sf(abs(z)))
        half = Z975 * math.sqrt(var)
    return DelongTest(float(auc[0]), float(auc[1]), diff, z, p, diff - half, diff + half)


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------
def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def binary_metrics(tp: int, fp: int, tn: int, fn: int) -> dict[str, float]:
    """Accuracy, precision (PPV), recall (sensitivity), F1, specificity and NPV from counts."""
    return {
        "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "specificity": _ratio(tn, tn + fp),
        "npv": _ratio(tn, tn + fn),
    }


def confusion(y_true, call) -> dict[str, int]:
    y, c = _binary(y_true), _binary(call, "call")
    if y.shape != c.shape:
        raise ValueError(f"y_true and call differ in length: {y.shape} and {c.shape}")
    return {"tp": int(((y == 1) & (c == 1)).sum()), "fp": int(((y == 0) & (c == 1)).sum()),
            "tn": int(((y == 0) & (c == 0)).sum()), "fn": int(((y == 1) & (c == 0)).sum())}


def auc_score(y, s) -> float:
    """Mann-Whitney AUC (ties count one half); NaN with one class."""
    y = np.asarray(y)
    m, n = int(y.sum()), int(len(y) - y.sum())
    if m == 0 or n == 0:
        return float("nan")
    ranks = sps.rankdata(s)
    return float((ranks[y == 1].sum() - m * (m + 1) / 2) / (m * n))


def metrics(y_true, call, score=None) -> dict[str, float]:
    """Every metric of one rater on one cohort: ``CALL_METRICS`` from the calls and the AUC from
    ``score`` (else from the calls, i.e. the single operating point). NaN where undefined."""
    y, c = _binary(y_true), _binary(call, "call")
    out = binary_metrics(**confusion(y, c))
    s = c.astype(np.float64) if score is None else _scores(score, len(y))
    out["auc"] = auc_score(y, s)
    return out


def roc_curve(y_true, score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The empirical ROC: (fpr, tpr, thresholds), one point per distinct score from the highest
    down (a case is called GBM where ``score >= threshold``), starting at (0, 0) with threshold
    +inf. The same points as ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``."""
    y = _binary(y_true)
    _both_classes(y)
    s = _scores(score, len(y))
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # the last case of each distinct score
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    fpr = np.r_[0.0, fp / (len(y) - y.sum())]
    tpr = np.r_[0.0, tp / y.sum()]
    return fpr, tpr, np.r_[np.inf, s[last]]


def youden_cutoff(y_true, score) -> float:
    """The cutoff maximising Youden's J (sensitivity + specificity - 1); a case is called GBM where
    ``score >= cutoff``. Candidates are the observed scores; among ties the highest cutoff wins
    (the more specific rule)."""
    y = _binary(y_true)
    _both_classes(y)
    s = _scores(score, len(y))
    best_j, best_t = -math.inf, float("nan")
    for t in np.unique(s)[::-1]:
        c = s >= t
        sens = c[y == 1].mean()
        spec = (~c[y == 0]).mean()
        j = sens + spec - 1
        if j > best_j + 1e-12:
            best_j, best_t = j, float(t)
    return best_t


# ---------------------------------------------------------------------------------------------
# resampled statistics, from the number of times each patient is drawn
# ---------------------------------------------------------------------------------------------
def _check_names(names) -> tuple[str, ...]:
    names = tuple(names)
    unknown = [n for n in names if n not in CALL_METRICS + SCORE_METRICS]
    if unknown or not names:
        raise ValueError(f"names must be among {CALL_METRICS + SCORE_METRICS}; got {names}")
    return names


def _weights(idx, size: int) -> np.ndarray:
    """Rows of resampled indices into 0..size-1 -> rows of how often each index was drawn."""
    idx = np.atleast_2d(idx)
    rows = idx.shape[0]
    flat = (idx + size * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * size).reshape(rows, size).astype(np.float64)


def _fractions(tp, fp, tn, fn) -> dict:
    """(numerator, denominator) of each call metric: ``binary_metrics``' formulas."""
    return {"accuracy": (tp + tn, tp + fp + tn + fn), "precision": (tp, tp + fp), "recall": (tp, tp + fn),
            "f1": (2 * tp, 2 * tp + fp + fn), "specificity": (tn, tn + fp), "npv": (tn, tn + fn)}


def _metric_rows(tp, fp, tn, fn, auc, names) -> np.ndarray:
    """``binary_metrics`` (same formulas, so the same floats) on arrays of counts, and the AUC."""
    pairs = _fractions(tp, fp, tn, fn)
    out = np.empty((len(names), len(tp)))
    with np.errstate(divide="ignore", invalid="ignore"):
        for j, name in enumerate(names):
            if name == "auc":
                out[j] = auc
            else:
                num, den = pairs[name]
                out[j] = np.where(den != 0, num / np.where(den != 0, den, 1), np.nan)
    return out


class _Youden:
    """``youden_cutoff`` for many resamples at once: the same candidates (the scores present in the
    resample), the same J values and the same tie rule (the highest cutoff within 1e-12 of the best)."""

    def __init__(self, s_pos: np.ndarray, s_neg: np.ndarray):
        asc = np.unique(np.r_[s_pos, s_neg])
        self.cutoffs = asc[::-1]  # candidates from the highest down
        k = len(asc)
        self.onehot_pos = np.zeros((len(s_pos), k))
        self.onehot_pos[np.arange(len(s_pos)), k - 1 - np.searchsorted(asc, s_pos)] = 1
        self.onehot_neg = np.zeros((len(s_neg), k))
        self.onehot_neg[np.arange(len(s_neg)), k - 1 - np.searchsorted(asc, s_neg)] = 1

    def counts(self, wp: np.ndarray, wn: np.ndarray):
        """(tp, fp, cutoff) per row of weights, with the cutoff chosen in that row."""
        at_p, at_n = wp @ self.onehot_pos, wn @ self.onehot_neg  # cases at each candidate
        tp, fp = np.cumsum(at_p, axis=1), np.cumsum(at_n, axis=1)  # called where score >= candidate
        m, n = wp.sum(axis=1, keepdims=True), wn.sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            j = tp / m + (n - fp) / n - 1
        j[(at_p + at_n) == 0] = -np.inf  # not a score of this resample
        best = j.max(axis=1, keepdims=True)
        k = np.argmax(j >= best - 1e-12, axis=1)
        rows = np.arange(len(k))
        return tp[rows, k], fp[rows, k], self.cutoffs[k]


class _Rater:
    """One rater's calls (or scores and a rule to choose the cutoff) split by class, ready to give
    its metrics on many resamples from the weights of the GBM (``wp``) and MET (``wn``) patients."""

    def __init__(self, y: np.ndarray, call, score, choose_cutoff: Cutoff | None, who: str = ""):
        pos, neg = y == 1, y == 0
        s = None if score is None else _scores(score, len(y), f"{who}score")
        self.choose = choose_cutoff
        if choose_cutoff is not None:
            if not callable(choose_cutoff):
                raise TypeError(f"{who}choose_cutoff must be a callable (y, score) -> cutoff, not "
                                f"{type(choose_cutoff).__name__}")
            if s is None:
                raise ValueError(f"{who}choose_cutoff needs a score to choose the cutoff on")
            self.s_pos, self.s_neg = s[pos], s[neg]
            self.youden = _Youden(self.s_pos, self.s_neg) if choose_cutoff is youden_cutoff else None
            s_auc = s
        else:
            if call is None:
                raise ValueError(f"{who}call is needed unless choose_cutoff is given")
            c = _binary(call, f"{who}call")
            if c.shape != y.shape:
                raise ValueError(f"y_true and {who}call differ in length: {y.shape} and {c.shape}")
            self.c_pos, self.c_neg = c[pos].astype(np.float64), c[neg].astype(np.float64)
            s_auc = c.astype(np.float64) if s is None else s
        sp, sn = s_auc[pos], s_auc[neg]
        self.s_auc = np.r_[sp, sn]  # GBMs first, then METs: for DeLong
        # Mann-Whitney kernel of every GBM-MET pair: the AUC of a resample is its weighted mean
        self.kernel = (sp[:, None] > sn[None, :]) + 0.5 * (sp[:, None] == sn[None, :])

    def right(self) -> np.ndarray:
        """Whether each case is called right on the full sample (GBMs first, then METs); with a
        re-chosen cutoff, at the cutoff chosen on the full sample."""
        if self.choose is None:
            return np.r_[self.c_pos == 1, self.c_neg == 0]
        n_pos = len(self.s_pos)
        y = np.r_[np.ones(n_pos, np.int8), np.zeros(len(self.s_neg), np.int8)]
        call = self.s_auc >= self.choose(y, self.s_auc)
        return np.r_[call[:n_pos], ~call[n_pos:]]

    def _chosen_counts(self, wp, wn):
        if self.youden is not None:
            tp, fp, _ = self.youden.counts(wp, wn)
            return tp, fp
        tp, fp = np.full(len(wp), np.nan), np.full(len(wp), np.nan)
        for r in range(len(wp)):
            kp, kn = wp[r].astype(np.intp), wn[r].astype(np.intp)
            if kp.sum() == 0 or kn.sum() == 0:
                continue
            y_r = np.r_[np.ones(kp.sum(), np.int8), np.zeros(kn.sum(), np.int8)]
            s_r = np.r_[np.repeat(self.s_pos, kp), np.repeat(self.s_neg, kn)]
            t = float(self.choose(y_r, s_r))
            tp[r], fp[r] = wp[r] @ (self.s_pos >= t), wn[r] @ (self.s_neg >= t)
        return tp, fp

    def counts(self, wp: np.ndarray, wn: np.ndarray):
        """(tp, fp, m, n) per row of weights: the confusion counts and the GBM / MET totals."""
        m, n = wp.sum(axis=1), wn.sum(axis=1)
        if self.choose is None:
            tp, fp = wp @ self.c_pos, wn @ self.c_neg
        else:
            tp, fp = self._chosen_counts(wp, wn)
        return tp, fp, m, n

    def values(self, wp: np.ndarray, wn: np.ndarray, names) -> np.ndarray:
        """(len(names), rows): each metric on each resample; NaN where a class is missing."""
        tp, fp, m, n = self.counts(wp, wn)
        auc = np.full(len(wp), np.nan)
        if "auc" in names:
            with np.errstate(divide="ignore", invalid="ignore"):
                auc = ((wp @ self.kernel) * wn).sum(axis=1) / (m * n)
        out = _metric_rows(tp, fp, n - fp, m - tp, auc, names)
        out[:, (m == 0) | (n == 0)] = np.nan
        return out


# ---------------------------------------------------------------------------------------------
# confidence intervals
# ---------------------------------------------------------------------------------------------
@dataclass
class Interval:
    low: float
    high: float
    n_resamples: int
    n_degenerate: int  # resamples left out (one class, or the metric undefined)
    method: str = ""  # what was computed: paper_subsample90, bootstrap_bca, bootstrap_percentile, wilson
    estimate: float = float("nan")  # the point estimate on all patients (full-sample cutoff if re-chosen)


@dataclass
class DiffInterval:
    diff: float  # metric(a) - metric(b) on all patients
    low: float
    high: float
    n_resamples: int  # 0 for newcombe and delong
    n_degenerate: int  # resamples left out (the metric undefined for a or b)
    method: str  # bootstrap_bca, bootstrap_percentile (also where BCa is undefined), newcombe, delong


def share_row(metric: str, k: int, m: int, n: int, n_gbm: int) -> dict:
    """A ``metrics`` row of the share ``k / m`` with its Wilson 95 % interval (value and interval
    None where ``m`` is 0); ``n`` and ``n_gbm`` are the cohort's patients and GBMs."""
    low, high = wilson_interval(k, m) if m > 0 else (None, None)
    return {"metric": metric, "value": k / m if m > 0 else None, "ci_low": low, "ci_high": high,
            "ci_method": C.CI_WILSON, "n": n, "n_gbm": n_gbm}


def wilson_interval(k: float, m: float, level: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval of the proportion ``k / m``
    (``statsmodels.stats.proportion.proportion_confint(method="wilson")``). 15 / 15 gives
    (0.796, 1): 15 / (15 + z^2) with z = 1.95996."""
    from statsmodels.stats.proportion import proportion_confint

    if not 0 <= k <= m or m <= 0:
        raise ValueError(f"wilson_interval needs 0 <= k <= m and m > 0; got k = {k}, m = {m}")
    low, high = proportion_confint(k, m, alpha=1 - level, method="wilson")
    return max(0.0, float(low)), min(1.0, float(high))


def newcombe_paired_ci(table, level: float = 0.95) -> tuple[float, float, float]:
    """Newcombe's hybrid score interval for the difference of two paired proportions (Newcombe
    1998, Stat Med 17:2635, method 10; "square-and-add" in Fagerland, Lydersen & Laake 2017, ch. 8).

    ``table`` = ``[[both, only_a], [only_b, neither]]`` (as for McNemar: rows a's success / failure,
    columns b's). Returns ``(diff, low, high)`` with ``diff = p_a - p_b = (only_a - only_b) / N``:
    ``low = diff - sqrt(da^2 - 2 phi da eb + eb^2)`` and ``high = diff + sqrt(ea^2 - 2 phi ea db +
    db^2)``, where ``da = p_a - l_a`` and ``ea = u_a - p_a`` are the distances to a's Wilson limits
    (``db``, ``eb`` likewise for b), and ``phi`` the correlation of the table, corrected towards 0:
    ``(A - N/2) / sqrt(marginals)`` where ``A = both * neither - only_a * only_b > N/2``, 0 where
    ``0 <= A <= N/2``, ``A / sqrt(marginals)`` where A < 0, and 0 where a marginal total is 0.
    Cavo et al. 2012's table [[59, 6], [16, 80]] gives -0.0621 (-0.1186 to -0.0046), the published
    value.
    """
    t = np.asarray(table, dtype=np.float64)
    if t.shape != (2, 2) or (t < 0).any() or t.sum() <= 0:
        raise ValueError(f"table must be 2 x 2 of counts >= 0 with a positive total; got {t.tolist()}")
    (both, only_a), (only_b, neither) = t
    n = t.sum()
    pa, pb = (both + only_a) / n, (both + only_b) / n
    la, ua = wilson_interval(both + only_a, n, level)
    lb, ub = wilson_interval(both + only_b, n, level)
    marg = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    a = both * neither - only_a * only_b
    if marg == 0:
        phi = 0.0
    elif a > n / 2:
        phi = (a - n / 2) / math.sqrt(marg)
    elif a >= 0:
        phi = 0.0
    else:
        phi = a / math.sqrt(marg)
    da, ea, db, eb = pa - la, ua - pa, pb - lb, ub - pb
    diff = pa - pb
    low = diff - math.sqrt(max(0.0, da * da - 2 * phi * da * eb + eb * eb))
    high = diff + math.sqrt(max(0.0, ea * ea - 2 * phi * ea * db + db * db))
    return float(diff), float(max(-1.0, low)), float(min(1.0, high))


def _percentiles(draws: np.ndarray, names, level: float, what: str, estimate=None,
                 stacklevel: int = 3) -> dict[str, Interval]:
    """Percentile interval of each column of ``draws`` (resamples x metrics), NaNs left out."""
    out = {}
    alpha = (1 - level) / 2
    for j, name in enumerate(names):
        col = draws[:, j]
        ok = col[np.isfinite(col)]
        bad = len(col) - len(ok)
        est = float("nan") if estimate is None else float(estimate[j])
        if bad:
            warnings.warn(f"{what}: {bad} of {len(col)} resamples leave {name} undefined "
                          "(one class, or a zero denominator); they are left out", RuntimeWarning, stacklevel=stacklevel)
        if len(ok) == 0:
            out[name] = Interval(float("nan"), float("nan"), len(col), bad, what, est)
        else:
            lo, hi = np.quantile(ok, [alpha, 1 - alpha])
            out[name] = Interval(float(lo), float(hi), len(col), bad, what, est)
    return out


def _classes(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if len(pos) < 2 or len(neg) < 2:
        raise ValueError(f"a stratified bootstrap needs 2 cases of each class; got {len(pos)} and {len(neg)}")
    return pos, neg


def _degenerate(iv: Interval, draws: np.ndarray) -> bool:
    """A zero-width (or missing) interval, or a constant bootstrap distribution."""
    ok = draws[np.isfinite(draws)]
    return len(ok) == 0 or ok.min() == ok.max() or not iv.high > iv.low


def _stratified_bootstrap(m: int, n: int, values, names, method: str, n_resamples: int, level: float,
                          seed: int, counts: dict | None = None) -> dict[str, Interval]:
    """``scipy.stats.bootstrap`` over the indices of the ``m`` GBM and ``n`` MET patients, each class
    resampled on its own; ``values(wp, wn)`` gives the metrics (len(names), rows) of weight rows.
    ``counts``: ``{name: (k, m)}`` of the proportions whose degenerate interval Wilson replaces."""
    if method not in ("BCa", "percentile"):
        raise ValueError(f"method must be 'BCa' or 'percentile'. Got {method!r} instead.")

    def stat(i_pos, i_neg, axis=-1):
        # bootstrap: (resamples, m) and (resamples, n); jackknife: (k, m - 1) with (k, n) or the
        # reverse; the point: (m,) and (n,)
        out = values(_weights(i_pos, m), _weights(i_neg, n))
        return out[:, 0] if np.ndim(i_pos) == 1 else out

    estimate = stat(np.arange(m), np.arange(n))
    with warnings.catch_warnings():
        # BCa undefined (NaN or constant distribution): handled below by the percentile interval
        warnings.simplefilter("ignore", sps.DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        res = sps.bootstrap((np.arange(m), np.arange(n)), stat, vectorized=True, paired=False,
                            n_resamples=n_resamples, confidence_level=level, method=method,
                            rng=np.random.default_rng(seed))
    dist = np.atleast_2d(res.bootstrap_distribution)  # (metrics, resamples)
    low, high = np.atleast_1d(res.confidence_interval.low), np.atleast_1d(res.confidence_interval.high)
    out, fallback = {}, None
    for j, name in enumerate(names):
        if np.isfinite(dist[j]).all() and np.isfinite(low[j]) and np.isfinite(high[j]):
            out[name] = Interval(float(low[j]), float(high[j]), n_resamples, 0, f"bootstrap_{method.lower()}",
                                 float(estimate[j]))
        else:
            if fallback is None:
                fallback = _percentiles(dist.T, names, level, CI_PERCENTILE, estimate, stacklevel=5)
            out[name] = fallback[name]
        k_m = (counts or {}).get(name)
        if k_m is not None and k_m[1] > 0 and _degenerate(out[name], dist[j]):
            iv = out[name]
            out[name] = Interval(*wilson_interval(k_m[0], k_m[1], level), iv.n_resamples, iv.n_degenerate,
                                 CI_WILSON, iv.estimate)
    return out


def ci_paper_subsample(y_true, call, score=None, *, names=CALL_METRICS + SCORE_METRICS, n_resamples: int = 1000,
                       fraction: float = 0.9, level: float = 0.95, seed: int = 0,
                       choose_cutoff: Cutoff | None = None) -> dict[str, Interval]:
    """The paper's scheme: ``n_resamples`` random subsets of ``fraction`` of the patients, without
    replacement (not stratified); the percentile interval of each metric over the subsets. A subset
    with one class only is degenerate (warned, counted, left out). ``choose_cutoff``: see the module
    docstring (``call`` is then unused and may be None). It under-covers: ``SUBSAMPLE_COVERAGE_NOTE``.
    Kept as the paper computed it: no Wilson stand-in for a zero-width interval.

    Raises:
        ValueError: bad labels, lengths or names; ``choose_cutoff`` without a score.
    """
    names = _check_names(names)
    y = _binary(y_true)
    rater = _Rater(y, call, score, choose_cutoff)
    pos, neg = y == 1, y == 0
    rng = np.random.default_rng(seed)
    k = max(1, int(round(fraction * len(y))))
    idx = np.array([rng.choice(len(y), size=k, replace=False) for _ in range(n_resamples)]).reshape(n_resamples, k)
    w = _weights(idx, len(y))
    draws = rater.values(w[:, pos], w[:, neg], names).T
    full = np.ones((1, len(y)))
    estimate = rater.values(full[:, pos], full[:, neg], names)[:, 0]
    return _percentiles(draws, names, level, f"paper_subsample{round(fraction * 100)}", estimate)


def _full_counts(rater: _Rater, m: int, n: int) -> tuple[float, float, float, float]:
    """(tp, fp, tn, fn) of a rater on all patients (its full-sample cutoff if re-chosen)."""
    tp, fp, mm, nn = (float(v[0]) for v in rater.counts(np.ones((1, m)), np.ones((1, n))))
    return tp, fp, nn - fp, mm - tp


def ci_bootstrap(y_true, call, score=None, *, names=CALL_METRICS + SCORE_METRICS, method: str = "BCa",
                 n_resamples: int = 1000, level: float = 0.95, seed: int = 0,
                 choose_cutoff: Cutoff | None = None) -> dict[str, Interval]:
    """Stratified patient-level bootstrap with replacement (``scipy.stats.bootstrap``): GBM and MET
    patients are resampled separately, so every resample has both classes. ``method``: ``BCa`` or
    ``percentile``. A metric undefined in some resamples (e.g. precision with no GBM call) gets a
    percentile interval over the defined ones, with a warning, the count, and
    ``method='bootstrap_percentile'`` on its interval (BCa cannot use such a distribution); so does
    a metric whose bootstrap distribution is constant. ``choose_cutoff``: see the module docstring
    (``call`` is then unused and may be None).

    Wilson stand-in: where the interval of a proportion (``PROPORTION_METRICS``: accuracy,
    precision, recall, specificity, NPV, each k / m of the sample's counts) is degenerate (zero
    width, or a constant bootstrap distribution: k = 0 or k = m, e.g. every GBM called GBM), the
    interval is Wilson's score interval of k / m and its ``method`` is ``wilson`` (``CI_WILSON``);
    15 / 15 gives 1.000 (0.796 to 1.000), where the bootstrap gave 1.000 to 1.000. Not for F1 or
    the AUC (not proportions: they keep the percentile interval). With ``choose_cutoff`` k / m is
    not a fixed count (the cutoff moves in every resample); Wilson then uses the counts at the
    full-sample cutoff, so it does not carry the optimism of choosing the cutoff.

    Raises:
        ValueError: fewer than 2 cases of a class, bad labels, lengths, names or method;
            ``choose_cutoff`` without a score.
    """
    names = _check_names(names)
    y = _binary(y_true)
    pos, neg = _classes(y)
    rater = _Rater(y, call, score, choose_cutoff)
    fractions = _fractions(*_full_counts(rater, len(pos), len(neg)))
    counts = {k: fractions[k] for k in names if k in PROPORTION_METRICS}
    return _stratified_bootstrap(len(pos), len(neg), lambda wp, wn: rater.values(wp, wn, names), names,
                                 method, n_resamples, level, seed, counts)


#: ``ci_paired_difference``'s methods; the first is the default (chosen by bench/coverage.py).
PAIRED_METHODS = ("newcombe_delong", "BCa", "percentile")


def _delong_difference(y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray, level: float):
    """(auc_a - auc_b, low, high): DeLong's interval of the difference at ``level``."""
    auc, cov = _delong_cov(y, np.vstack([score_a, score_b]))
    diff = float(auc[0] - auc[1])
    var = max(0.0, float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]))
    if var == 0 and diff != 0:  # too few cases to estimate a variance: no interval (not a zero-width one)
        return diff, math.nan, math.nan
    half = float(sps.norm.ppf(0.5 + level / 2)) * math.sqrt(var)
    return diff, max(-1.0, diff - half), min(1.0, diff + half)


def ci_paired_difference(y_true, a, b, *, names=("accuracy", "recall", "specificity", "auc"),
                         method: str = "newcombe_delong", n_resamples: int = 1000, level: float = 0.95,
                         seed: int = 0, choose_cutoff_a: Cutoff | None = None,
                         choose_cutoff_b: Cutoff | None = None) -> dict[str, DiffInterval]:
    """Interval of metric(a) - metric(b) for two raters on the same patients. ``a`` and ``b`` are
    each ``(call, score)``; a None score gives the AUC from the calls. ``choose_cutoff_a`` / ``_b``:
    that rater's cutoff is chosen again in every resample (e.g. the model's Youden cutoff chosen on
    the test set; its call may then be None). ``DiffInterval.method`` says what each interval is.

    ``method``:

    - ``newcombe_delong`` (the default): Newcombe's hybrid score interval (``newcombe_paired_ci``,
      method ``newcombe``) for the paired proportions (``PAIRED_PROPORTION_METRICS``: accuracy on
      all patients, sensitivity on the GBMs, specificity on the METs, from the 2 x 2 table of a's
      and b's correct calls); DeLong's interval (method ``delong``) for the AUC; the stratified
      bootstrap for the rest (precision, NPV, F1): percentile, or BCa where a cutoff is re-chosen.
      Where a cutoff is re-chosen the proportions are by the BCa bootstrap too: Newcombe would
      hold the cutoff fixed and lose the optimism of choosing it, and BCa's bias correction
      carries it where the percentile interval does not (re-chosen Youden cutoff, single rater:
      BCa 0.82-0.93, percentile 0.60-0.80);
    - ``BCa`` / ``percentile``: the stratified patient-level bootstrap with the same resampled
      patients for both raters, so their correlation narrows the interval. Where BCa is undefined
      (a constant difference, such as two identical raters, or a metric undefined in some
      resamples) the interval is the percentile one and ``method`` says so.

    Why the default (bench/coverage.py: 400 cohorts per design, n = 30 and 100, GBM:MET 2:1 and
    1:1, raters correlated rho = 0.5, true difference 0 or not; nominal 95 %): the paired BCa
    under-covers the proportion differences at n = 30 (0.745-0.953; sensitivity 0.745 at 1:1 with
    a true difference) and at n = 100 (0.902-0.965), and excludes a true 0 in up to 12 % of
    cohorts at n = 30 (McNemar rejects in at most 1.5 %): on a statistic this discrete (a few
    discordant pairs) its bias and acceleration corrections mislead. The percentile bootstrap
    does better but still under-covers (0.802-0.973 at n = 30, 0.902-0.973 at n = 100; 0.80-0.93
    at n = 30 with a true difference). Newcombe covers 0.963-0.993 at n = 30 and 0.932-0.980 at
    n = 100 (Monte Carlo SE about 0.011), with a type I error of 0.7-2.5 % at n = 30 and 2.0-5.8 %
    at n = 100; it is wider than the bootstrap by about 0.02-0.12 at n = 30 and 0.01-0.03 at
    n = 100. For the AUC difference (b's score, or b's calls) DeLong covers 0.925-0.975 at n = 30
    and 0.927-0.975 at n = 100 (percentile 0.907-0.960 and 0.927-0.968, BCa 0.863-0.953 and
    0.922-0.958), and it is the interval of the DeLong test whose p is reported.

    Raises:
        ValueError: as ``ci_bootstrap``; ``a`` or ``b`` not a pair; an unknown method.
    """
    if method not in PAIRED_METHODS:
        raise ValueError(f"method must be one of {PAIRED_METHODS}. Got {method!r} instead.")
    names = _check_names(names)
    y = _binary(y_true)
    pos, neg = _classes(y)
    raters = []
    for who, rater, choose in (("a", a, choose_cutoff_a), ("b", b, choose_cutoff_b)):
        if not isinstance(rater, Sequence) or len(rater) != 2:
            raise ValueError(f"{who} must be a pair (call, score); got {type(rater).__name__}")
        raters.append(_Rater(y, rater[0], rater[1], choose, f"{who} "))

    out: dict[str, DiffInterval] = {}
    rechosen = choose_cutoff_a is not None or choose_cutoff_b is not None
    if method == "newcombe_delong":
        if not rechosen:
            right_a, right_b = raters[0].right(), raters[1].right()  # GBMs first, then METs
            on = {"accuracy": slice(None), "recall": slice(0, len(pos)), "specificity": slice(len(pos), None)}
            for name in names:
                if name in PAIRED_PROPORTION_METRICS:
                    ra, rb = right_a[on[name]], right_b[on[name]]
                    table = [[(ra & rb).sum(), (ra & ~rb).sum()], [(~ra & rb).sum(), (~ra & ~rb).sum()]]
                    out[name] = DiffInterval(*newcombe_paired_ci(table, level), 0, 0, CI_NEWCOMBE)
        if "auc" in names:
            yy = np.r_[np.ones(len(pos), np.int8), np.zeros(len(neg), np.int8)]  # GBMs first, then METs
            diff, low, high = _delong_difference(yy, raters[0].s_auc, raters[1].s_auc, level)
            out["auc"] = DiffInterval(diff, low, high, 0, 0, CI_DELONG)
    rest = tuple(name for name in names if name not in out)
    if rest:
        def values(wp, wn):
            return raters[0].values(wp, wn, rest) - raters[1].values(wp, wn, rest)

        boot = method if method != "newcombe_delong" else ("BCa" if rechosen else "percentile")
        cis = _stratified_bootstrap(len(pos), len(neg), values, rest, boot, n_resamples, level, seed)
        out.update({k: DiffInterval(iv.estimate, iv.low, iv.high, iv.n_resamples, iv.n_degenerate, iv.method)
                    for k, iv in cis.items()})
        # a proportion difference whose bootstrap interval has zero width (every resample gives the
        # same difference: a few patients, a rater always right) gets Newcombe's interval of the
        # full-sample calls instead, as a single proportion gets Wilson's (default method only)
        for name in rest if method == "newcombe_delong" else ():
            iv = out[name]
            if name in PAIRED_PROPORTION_METRICS and iv.low == iv.high:
                ra, rb = raters[0].right(), raters[1].right()
                part = {"accuracy": slice(None), "recall": slice(0, len(pos)), "specificity": slice(len(pos), None)}[name]
                ra, rb = ra[part], rb[part]
                table = [[(ra & rb).sum(), (ra & ~rb).sum()], [(~ra & rb).sum(), (~ra & ~rb).sum()]]
                d, low, high = newcombe_paired_ci(table, level)
                out[name] = DiffInterval(iv.diff, low, high, iv.n_resamples, iv.n_degenerate, CI_NEWCOMBE)
    return {name: out[name] for name in names}


# ---------------------------------------------------------------------------------------------
# tests of two raters, multiplicity
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class McNemarResult:
    statistic: float  # min(b, c) when exact, else the continuity-corrected chi-square
    p: float  # two-sided
    n: int  # patients
    b_only_a_right: int
    c_only_b_right: int
    exact: bool  # exact binomial (fewer than 25 discordant pairs), else chi-square


def mcnemar_test(correct_a, correct_b) -> McNemarResult:
    """McNemar's test of two raters' correct / incorrect on the same patients (``statsmodels``):
    exact binomial where there are fewer than 25 discordant pairs, else chi-square with continuity
    correction. Pass the GBMs only to compare sensitivities, the METs only to compare specificities.

    Raises:
        ValueError: values other than 0 / 1 (or booleans), or different lengths.
    """
    from statsmodels.stats.contingency_tables import mcnemar

    ra, rb = _binary(correct_a, "correct_a").astype(bool), _binary(correct_b, "correct_b").astype(bool)
    if ra.shape != rb.shape or ra.ndim != 1:
        raise ValueError(f"correct_a and correct_b must be 1-D of one length; got {ra.shape} and {rb.shape}")
    b, c = int((ra & ~rb).sum()), int((~ra & rb).sum())
    table = [[int((ra & rb).sum()), b], [c, int((~ra & ~rb).sum())]]
    exact = b + c < 25
    res = mcnemar(table, exact=exact, correction=True)
    return McNemarResult(float(res.statistic), float(res.pvalue), len(ra), b, c, exact)


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjustment (``statsmodels`` ``multipletests(method="holm")``). NaN p values
    stay NaN and are not counted in the family."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return out
