"""Statistics of the evaluation: metrics with GBM as the positive class, DeLong's AUC variance and
paired test, the Youden cutoff, and confidence intervals three ways.

Public API (used by the pipeline, the tests and analysts):

- ``delong_roc_variance(y_true, score)`` -> ``DelongAUC`` (AUC, variance, 95 % CI);
- ``delong_roc_test(y_true, score_a, score_b)`` -> ``DelongTest`` (both AUCs, z, two-sided p,
  95 % CI of the difference); tested against pROC's values on the aSAH data to 1e-9;
- ``binary_metrics(tp, fp, tn, fn)`` and ``metrics(y_true, call, score)``: accuracy, precision,
  recall, F1, specificity, NPV (and AUC, Brier score where a score is given);
- ``youden_cutoff(y_true, score)``: the cutoff maximising sensitivity + specificity - 1;
- ``ci_paper_subsample``: the paper's scheme, 1,000 resamples of 90 % of patients without
  replacement, percentile interval;
- ``ci_bootstrap``: the stratified patient-level bootstrap with replacement
  (``scipy.stats.bootstrap``, BCa or percentile), positives and negatives resampled separately.

Conventions: ``y_true`` is 1 for GBM (positive) and 0 for MET; ``call`` is 1 where GBM is called;
a higher ``score`` means GBM. A metric whose denominator is 0 is NaN. A resample that lacks a
class, or where a metric is undefined, counts as degenerate: it is left out of the interval with a
warning, and the count is returned.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

Z975 = float(sps.norm.ppf(0.975))

#: Metrics computed from calls (and a score, for AUC and Brier), in report order.
CALL_METRICS = ("accuracy", "precision", "recall", "f1", "specificity", "npv")
SCORE_METRICS = ("auc", "brier")


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
    if var <= 0:
        z, p = (0.0, 1.0) if diff == 0 else (math.copysign(math.inf, diff), 0.0)
        half = 0.0
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
    """Every metric of one rater on one cohort. AUC from ``score`` (else from the calls, i.e. the
    single operating point); Brier score only when ``score`` is a probability in [0, 1]."""
    y, c = _binary(y_true), _binary(call, "call")
    out = binary_metrics(**confusion(y, c))
    s = c.astype(np.float64) if score is None else _scores(score, len(y))
    out["auc"] = auc_score(y, s)
    out["brier"] = float(np.mean((s - y) ** 2)) if score is not None and s.min() >= 0 and s.max() <= 1 else float("nan")
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
# confidence intervals
# ---------------------------------------------------------------------------------------------
@dataclass
class Interval:
    low: float
    high: float
    n_resamples: int
    n_degenerate: int  # resamples left out (one class, or the metric undefined)
    method: str = ""  # what was computed: paper_subsample90, bootstrap_bca, bootstrap_percentile


def _metric_vector(y, c, s, names) -> np.ndarray:
    if y.sum() in (0, len(y)):
        return np.full(len(names), np.nan)
    m = metrics(y, c, s)
    return np.array([m[k] for k in names], dtype=np.float64)


def ci_paper_subsample(y_true, call, score=None, *, names=CALL_METRICS + SCORE_METRICS, n_resamples: int = 1000,
                       fraction: float = 0.9, level: float = 0.95, seed: int = 0) -> dict[str, Interval]:
    """The paper's scheme: ``n_resamples`` random subsets of ``fraction`` of the patients, without
    replacement; the percentile interval of each metric over the subsets."""
    y, c = _binary(y_true), _binary(call, "call")
    s = None if score is None else _scores(score, len(y))
    rng = np.random.default_rng(seed)
    k = max(1, int(round(fraction * len(y))))
    draws = np.empty((n_resamples, len(names)))
    for i in range(n_resamples):
        idx = rng.choice(len(y), size=k, replace=False)
        draws[i] = _metric_vector(y[idx], c[idx], None if s is None else s[idx], names)
    return _percentiles(draws, names, level, f"paper_subsample{round(fraction * 100)}")


def _percentiles(draws: np.ndarray, names, level: float, what: str) -> dict[str, Interval]:
    out = {}
    alpha = (1 - level) / 2
    for j, name in enumerate(names):
        col = draws[:, j]
        ok = col[np.isfinite(col)]
        bad = len(col) - len(ok)
        if bad:
            warnings.warn(f"{what}: {bad} of {len(col)} resamples leave {name} undefined "
                          "(one class, or a zero denominator); they are left out", RuntimeWarning, stacklevel=3)
        if len(ok) == 0:
            out[name] = Interval(float("nan"), float("nan"), len(col), bad, what)
        else:
            lo, hi = np.quantile(ok, [alpha, 1 - alpha])
            out[name] = Interval(float(lo), float(hi), len(col), bad, what)
    return out


def ci_bootstrap(y_true, call, score=None, *, names=CALL_METRICS + SCORE_METRICS, method: str = "BCa",
                 n_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, Interval]:
    """Stratified patient-level bootstrap with replacement (``scipy.stats.bootstrap``): GBM and MET
    patients are resampled separately, so every resample has both classes. ``method``: ``BCa`` or
    ``percentile``. A metric undefined in some resamples (e.g. precision with no GBM call) gets a
    percentile interval over the defined ones, with a warning, the count, and
    ``method='bootstrap_percentile'`` on its interval (BCa cannot use such a distribution)."""
    if method not in ("BCa", "percentile"):
        raise ValueError(f"method must be 'BCa' or 'percentile'. Got {method!r} instead.")
    y, c = _binary(y_true), _binary(call, "call")
    s = None if score is None else _scores(score, len(y))
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if len(pos) < 2 or len(neg) < 2:
        raise ValueError(f"a stratified bootstrap needs 2 cases of each class; got {len(pos)} and {len(neg)}")

    def stat(i_pos, i_neg):
        idx = np.concatenate([pos[i_pos], neg[i_neg]])
        return _metric_vector(y[idx], c[idx], None if s is None else s[idx], names)

    res = sps.bootstrap((np.arange(len(pos)), np.arange(len(neg))), stat, vectorized=False, paired=False,
                        n_resamples=n_resamples, confidence_level=level, method=method,
                        rng=np.random.default_rng(seed))
    dist = np.atleast_2d(res.bootstrap_distribution)  # (metrics, resamples)
    out = {}
    bad_any = ~np.isfinite(dist)
    fallback = None
    for j, name in enumerate(names):
        bad = int(bad_any[j].sum())
        lo, hi = float(np.atleast_1d(res.confidence_interval.low)[j]), float(np.atleast_1d(res.confidence_interval.high)[j])
        if bad or not (np.isfinite(lo) and np.isfinite(hi)):
            if fallback is None:
                fallback = _percentiles(dist.T, names, level, "bootstrap_percentile")
            out[name] = fallback[name]
        else:
            out[name] = Interval(lo, hi, n_resamples, 0, f"bootstrap_{method.lower()}")
    return out
