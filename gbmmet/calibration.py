"""Calibration and decision curves for the per-patient predictive index.

The *predictive index* of a patient is the share of the patient's ROI slices that the 5-fold
ensemble calls GBM: a value in [0, 1], often exactly 0 or 1. It ranks patients but is not a
probability. This module maps it to one (``IndexCalibrator``) and describes how well any
probability-like value ``p`` in [0, 1] is calibrated and how useful it is for decisions.

Conventions: ``y`` is 1 for GBM (the positive class) and 0 for MET (booleans are accepted);
``p`` and ``index`` are per-patient values in [0, 1], a higher value meaning GBM.

Definitions
-----------
``IndexCalibrator``
    A logistic recalibration ``P(GBM | index) = sigmoid(intercept_ + coef_ * index)``, fitted
    with scikit-learn's ``LogisticRegression`` (lbfgs) on training-side patients only: the caller
    passes the ensemble indices of the validation split, never of the test set. The index is
    standardised with the training mean and (population) SD before the fit, and ``C`` is
    scikit-learn's ``C`` on that standardised scale: the objective is
    ``0.5 * beta**2 + C * sum(log-loss)`` with ``beta`` the coefficient per training SD, the
    intercept unpenalised. Standardising makes ``C`` mean what it means in any scikit-learn
    pipeline and makes the fit independent of the index's units; the coefficients are then mapped
    back to the raw index, so ``intercept_`` and ``coef_`` apply to the index itself. ``C=1.0``
    (the default) is a weak L2 penalty that keeps the fit finite on the perfectly separated
    samples small validation sets often are (all MET at index 0, all GBM at 1); ``C=None`` is
    the unpenalised maximum-likelihood fit, which has no finite solution on separated data.
    Separation is warned about (``RuntimeWarning``) either way. A constant index carries no
    information: ``coef_`` is 0 and the prediction is the training prevalence, with a warning.

``calibration_summary(y, p)`` -> ``Calibration``
    * ``brier = mean((p - y)**2)``.
    * ``intercept`` (calibration-in-the-large): ``a`` in ``logit P(y=1) = a + logit(p)``, a
      binomial GLM (statsmodels) with only an intercept and ``logit(p)`` as offset. 0 when the
      mean prediction is right; > 0 when ``p`` is too low on average.
    * ``slope`` (calibration slope): ``b`` in ``logit P(y=1) = a + b * logit(p)``, a binomial GLM
      with an intercept. 1 when well calibrated; < 1 when ``p`` is overconfident (too extreme),
      > 1 when it is too timid.
    ``p`` is clipped to ``[1e-6, 1 - 1e-6]`` before the logit, so that an index of exactly 0 or 1
    has a finite logit (about -13.8 and 13.8). With one class, intercept and slope are undefined;
    the slope is also undefined when ``logit(p)`` is constant or separates GBM from MET (the
    maximum-likelihood slope is infinite). An undefined number is NaN with a ``RuntimeWarning``
    naming it; nothing raises for these cases.

``reliability_curve(y, p, n_bins=5, strategy="quantile")``
    ``sklearn.calibration.calibration_curve`` (mean predicted value and observed GBM rate per
    bin), with the number of patients per bin added. Bins are computed exactly as scikit-learn
    does (``quantile``: edges at the percentiles of ``p``; ``uniform``: equal widths on [0, 1];
    a value goes to the bin ``searchsorted(edges[1:-1], p)``). Empty bins are left out, as in
    scikit-learn, so the ``bin`` number of a row may skip values.

``net_benefit(y, p, threshold)`` and ``decision_curve(y, p, thresholds)``
    A patient is treated as GBM when ``p >= pt`` (the threshold ``pt``, in (0, 1)). With ``n``
    patients, ``TP`` GBM treated and ``FP`` MET treated::

        net benefit = TP / n - FP / n * pt / (1 - pt)
        treat all   = prevalence - (1 - prevalence) * pt / (1 - pt)
        treat none  = 0

    (Vickers & Elkin, Med Decis Making 2006). The weight ``pt / (1 - pt)`` is the harm of a false
    GBM call relative to the benefit of a true one that makes ``pt`` the right threshold, so the
    curve only means that when ``p`` is a calibrated probability (for the index, pass
    ``IndexCalibrator.predict_proba`` of it).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import expit, logit
from sklearn.base import BaseEstimator

#: ``p`` is clipped to [EPS, 1 - EPS] before its logit is taken.
EPS = 1e-6

#: The thresholds of ``decision_curve`` by default: 0.05, 0.10, ..., 0.95. These are the values of
#: ``np.arange(0.05, 0.96, 0.05)`` without its floating-point noise (0.15000000000000002), which
#: would otherwise move patients whose ``p`` equals a threshold out of the treated group.
DEFAULT_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))

_STRATEGIES = ("quantile", "uniform")


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
def _unit(values, name: str, where: str) -> np.ndarray:
    """``values`` as a 1-D float array in [0, 1]; TypeError if not numbers, ValueError if not."""
    arr = np.asarray(values)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == object):
        raise TypeError(f"The {name!r} parameter of {where} must be an array of numbers in [0, 1]. "
                        f"Got an array of dtype {arr.dtype} instead.")
    try:
        arr = arr.astype(np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"The {name!r} parameter of {where} must be an array of numbers in [0, 1]. "
                        f"Got {values!r} instead.") from None
    if arr.ndim != 1:
        raise ValueError(f"The {name!r} parameter of {where} must be a 1-D array of values in [0, 1]. "
                         f"Got an array of shape {arr.shape} instead.")
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"The {name!r} parameter of {where} must be a 1-D array of values in [0, 1]. "
                         f"Got {float(arr[i])!r} at position {i} instead.")
    out = (arr < 0) | (arr > 1)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise ValueError(f"The {name!r} parameter of {where} must be a 1-D array of values in [0, 1]. "
                         f"Got {float(arr[i])!r} at position {i} instead.")
    return arr


def _labels(y, n: int, where: str) -> np.ndarray:
    """``y`` as a 1-D int array of 0 (MET) / 1 (GBM) with ``n`` values."""
    arr = np.asarray(y)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"The 'y' parameter of {where} must be a 1-D array with one label per "
                         f"patient ({n}). Got an array of shape {arr.shape} instead.")
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if arr.size and not np.isin(arr, (0, 1)).all():
        seen = sorted({repr(v) for v in arr.tolist()})[:5]
        raise ValueError(f"The 'y' parameter of {where} must hold 1 (GBM) / 0 (MET) or booleans. "
                         f"Got values {', '.join(seen)} instead.")
    return arr.astype(np.int64)


def _pair(y, p, name: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    pp = _unit(p, name, where)
    yy = _labels(y, pp.shape[0], where)
    if pp.shape[0] == 0:
        raise ValueError(f"{where} needs at least one patient. Got none.")
    return yy, pp


def _threshold(threshold, where: str) -> float:
    try:
        pt = float(threshold)
    except (TypeError, ValueError):
        raise TypeError(f"The 'threshold' parameter of {where} must be a number in (0, 1). "
                        f"Got {threshold!r} instead.") from None
    if not 0 < pt < 1:  # False for NaN too
        raise ValueError(f"The 'threshold' parameter of {where} must be in (0, 1). "
                         f"Got {threshold!r} instead.")
    return pt


def _separated(x: np.ndarray, y: np.ndarray) -> bool:
    """True when ``x`` separates the classes, completely or quasi-completely (ties at the border).

    In one dimension with an intercept, the logistic maximum-likelihood estimate exists if and only
    if the ranges of ``x`` in the two classes overlap in more than one point.
    """
    pos, neg = x[y == 1], x[y == 0]
    return bool(neg.max() <= pos.min() or pos.max() <= neg.min())


# ---------------------------------------------------------------------------------------------
# recalibration of the index
# ---------------------------------------------------------------------------------------------
class IndexCalibrator(BaseEstimator):
    """Logistic map from the predictive index to ``P(GBM | index)`` (see the module docstring).

    Parameters
    ----------
    C : float or None, default=1.0
        scikit-learn's inverse L2 penalty strength on the *standardised* index (a weak penalty that
        keeps separated fits finite); ``None`` fits without a penalty.
    max_iter : int, default=1000
        Iterations of the lbfgs solver.

    Attributes
    ----------
    intercept_, coef_ : float
        ``P(GBM | index) = sigmoid(intercept_ + coef_ * index)``, on the raw index.
    n_, n_gbm_ : int
        Patients and GBM patients in the fit.
    separated_ : bool
        Whether the training index separated GBM from MET (the fit then rests on the penalty).
    """

    def __init__(self, C: float | None = 1.0, max_iter: int = 1000):
        self.C = C
        self.max_iter = max_iter

    def _check_params(self) -> None:
        C = self.C
        if C is not None and (isinstance(C, bool) or not isinstance(C, int | float)
                              or not math.isfinite(C) or C <= 0):
            raise ValueError(f"The 'C' parameter of IndexCalibrator must be a finite float > 0 or "
                             f"None (no penalty). Got {C!r} instead.")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ValueError(f"The 'max_iter' parameter of IndexCalibrator must be an int >= 1. "
                             f"Got {self.max_iter!r} instead.")

    def fit(self, index, y) -> IndexCalibrator:
        """Fit on training-side patients: ``index`` in [0, 1] and ``y`` (1 GBM, 0 MET), 1-D.

        Returns ``self``. Raises TypeError / ValueError for bad inputs, ValueError when ``y`` has a
        single class; warns (RuntimeWarning) when the index separates the classes or is constant.
        """
        from sklearn.linear_model import LogisticRegression

        self._check_params()
        x = _unit(index, "index", "IndexCalibrator.fit")
        yy = _labels(y, x.shape[0], "IndexCalibrator.fit")
        n, n_gbm = int(x.shape[0]), int(yy.sum())
        if n_gbm in (0, n):
            raise ValueError(f"IndexCalibrator.fit needs both classes. Got {n_gbm} GBM and "
                             f"{n - n_gbm} MET patients instead.")
        self.n_, self.n_gbm_ = n, n_gbm
        sd = float(x.std())
        if sd == 0.0:
            warnings.warn(f"IndexCalibrator.fit: the index is constant ({x[0]!r}) over {n} patients, "
                          "so it carries no information; coef_ is 0 and the prediction is the "
                          "training prevalence", RuntimeWarning, stacklevel=2)
            self.intercept_, self.coef_ = float(logit(n_gbm / n)), 0.0
            self.separated_ = False
            return self
        self.separated_ = _separated(x, yy)
        if self.separated_:
            how = (f"the fit rests on the L2 penalty (C={self.C!r})" if self.C is not None else
                   "the unpenalised coefficient has no finite value and grows until the solver stops")
            warnings.warn(f"IndexCalibrator.fit: the index separates GBM ({n_gbm}) from MET "
                          f"({n - n_gbm}) perfectly; {how}", RuntimeWarning, stacklevel=2)
        mean = float(x.mean())
        model = LogisticRegression(C=np.inf if self.C is None else float(self.C),
                                   max_iter=self.max_iter)
        model.fit(((x - mean) / sd)[:, None], yy)
        beta, alpha = float(model.coef_[0, 0]), float(model.intercept_[0])
        # back to the raw index: alpha + beta * (x - mean) / sd
        self.coef_ = beta / sd
        self.intercept_ = alpha - self.coef_ * mean
        return self

    def predict_proba(self, index) -> np.ndarray:
        """``P(GBM | index)`` as a 1-D array, one value per patient, in (0, 1).

        Unlike scikit-learn's classifiers this returns only the GBM column, not an (n, 2) array.
        Raises ``sklearn.exceptions.NotFittedError`` before ``fit``.
        """
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self)
        x = _unit(index, "index", "IndexCalibrator.predict_proba")
        return expit(self.intercept_ + self.coef_ * x)

    def to_dict(self) -> dict:
        """The parameters and the fit as a JSON-ready dict (for a run record)."""
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self)
        return {
            "kind": "IndexCalibrator",
            "C": None if self.C is None else float(self.C),
            "max_iter": int(self.max_iter),
            "intercept": float(self.intercept_),
            "coef": float(self.coef_),
            "n": int(self.n_),
            "n_gbm": int(self.n_gbm_),
            "separated": bool(self.separated_),
        }

    @classmethod
    def from_dict(cls, record: dict) -> IndexCalibrator:
        """A fitted calibrator rebuilt from ``to_dict``'s output; ValueError if a key is missing."""
        keys = ("C", "max_iter", "intercept", "coef", "n", "n_gbm", "separated")
        missing = [k for k in keys if k not in record]
        if missing or record.get("kind") != "IndexCalibrator":
            raise ValueError(f"The 'record' parameter of IndexCalibrator.from_dict must be the "
                             f"output of to_dict (kind 'IndexCalibrator', keys {list(keys)}). Got "
                             f"kind {record.get('kind')!r}, missing {missing} instead.")
        est = cls(C=record["C"], max_iter=record["max_iter"])
        est._check_params()
        est.intercept_, est.coef_ = float(record["intercept"]), float(record["coef"])
        est.n_, est.n_gbm_ = int(record["n"]), int(record["n_gbm"])
        est.separated_ = bool(record["separated"])
        return est


# ---------------------------------------------------------------------------------------------
# calibration of a probability
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    """Calibration of ``p`` against ``y`` (see the module docstring); NaN where undefined."""

    n: int
    n_gbm: int
    brier: float
    intercept: float
    slope: float


def _glm_binomial(y: np.ndarray, exog: np.ndarray, offset: np.ndarray | None) -> np.ndarray | None:
    """statsmodels' binomial GLM parameters, or None when no fit reaches the maximum likelihood.

    IRLS (statsmodels' default) is tried first. With offsets near +-13.8 (an index of exactly 0 or
    1) its undamped Newton steps can oscillate without converging; the fallback is L-BFGS (a line
    search, so it converges on this convex problem) polished by IRLS from there. A fit is accepted
    only where the score ``exog' (y - mu)`` vanishes, since statsmodels can report convergence at a
    point that is not the optimum.
    """
    import statsmodels.api as sm
    from statsmodels.tools.sm_exceptions import PerfectSeparationError, PerfectSeparationWarning

    off = np.zeros(y.shape[0]) if offset is None else offset

    def at_optimum(params) -> bool:
        params = np.asarray(params, dtype=np.float64)
        if not np.isfinite(params).all():
            return False
        score = exog.T @ (y - expit(exog @ params + off))
        return bool(np.max(np.abs(score)) <= 1e-7 * max(1, y.shape[0]))

    model = sm.GLM(y, exog, family=sm.families.Binomial(), offset=offset)
    with warnings.catch_warnings():
        # statsmodels' own check fires on perfect *prediction* too, where the estimate still
        # exists; separation is decided exactly by the caller before fitting. Overflow on the way
        # to an oscillating IRLS is also its business: the result is checked below.
        warnings.simplefilter("ignore", PerfectSeparationWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            params = model.fit().params
            if at_optimum(params):
                return np.asarray(params, dtype=np.float64)
            start = model.fit(method="lbfgs", max_start_irls=0).params
            params = model.fit(start_params=start).params
        except (PerfectSeparationError, np.linalg.LinAlgError, ValueError):
            return None
    return np.asarray(params, dtype=np.float64) if at_optimum(params) else None


def calibration_summary(y, p) -> Calibration:
    """Brier score, calibration-in-the-large intercept and calibration slope of ``p``.

    ``y``: 1 GBM / 0 MET; ``p``: values in [0, 1], one per patient. Returns a ``Calibration``;
    intercept and slope are NaN, with a RuntimeWarning naming them, where undefined (one class;
    the slope also when ``logit(p)`` is constant or separates the classes, or a fit fails).
    Raises TypeError / ValueError for bad inputs or no patients.
    """
    where = "calibration_summary"
    yy, pp = _pair(y, p, "p", where)
    n, n_gbm = int(yy.shape[0]), int(yy.sum())
    brier = float(np.mean((pp - yy) ** 2))
    if n_gbm in (0, n):
        warnings.warn(f"{where}: only one class ({n_gbm} GBM, {n - n_gbm} MET); the calibration "
                      "intercept and slope are undefined and set to NaN", RuntimeWarning, stacklevel=2)
        return Calibration(n=n, n_gbm=n_gbm, brier=brier, intercept=math.nan, slope=math.nan)

    lp = logit(np.clip(pp, EPS, 1 - EPS))
    params = _glm_binomial(yy, np.ones((n, 1)), offset=lp)
    if params is None:
        warnings.warn(f"{where}: the calibration-in-the-large fit failed; the intercept is NaN",
                      RuntimeWarning, stacklevel=2)
        intercept = math.nan
    else:
        intercept = float(params[0])

    slope = math.nan
    if np.ptp(lp) == 0:
        warnings.warn(f"{where}: logit(p) is constant, so the calibration slope is undefined and "
                      "set to NaN", RuntimeWarning, stacklevel=2)
    elif _separated(lp, yy):
        warnings.warn(f"{where}: p separates GBM ({n_gbm}) from MET ({n - n_gbm}) perfectly, so the "
                      "calibration slope diverges; it is undefined and set to NaN",
                      RuntimeWarning, stacklevel=2)
    else:
        params = _glm_binomial(yy, np.column_stack([np.ones(n), lp]), offset=None)
        if params is None:
            warnings.warn(f"{where}: the calibration-slope fit failed; the slope is NaN",
                          RuntimeWarning, stacklevel=2)
        else:
            slope = float(params[1])
    return Calibration(n=n, n_gbm=n_gbm, brier=brier, intercept=intercept, slope=slope)


def reliability_curve(y, p, n_bins: int = 5, strategy: str = "quantile") -> list[dict]:
    """Reliability diagram rows ``{"bin", "mean_predicted", "observed_rate", "n"}``, non-empty bins.

    ``bin`` is scikit-learn's bin number (0 .. n_bins - 1); ``mean_predicted`` and
    ``observed_rate`` come from ``sklearn.calibration.calibration_curve``; ``n`` counts the
    patients in the bin (the counts sum to the number of patients). Raises TypeError / ValueError
    for bad inputs, ``n_bins`` < 1 or an unknown ``strategy``.
    """
    from sklearn.calibration import calibration_curve

    where = "reliability_curve"
    yy, pp = _pair(y, p, "p", where)
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"The 'n_bins' parameter of {where} must be an int >= 1. "
                         f"Got {n_bins!r} instead.")
    if strategy not in _STRATEGIES:
        raise ValueError(f"The 'strategy' parameter of {where} must be one of {_STRATEGIES}. "
                         f"Got {strategy!r} instead.")
    observed, predicted = calibration_curve(yy, pp, n_bins=n_bins, strategy=strategy, pos_label=1)
    # The bins as calibration_curve makes them (scikit-learn 1.9), for the counts it does not return.
    if strategy == "quantile":
        edges = np.percentile(pp, np.linspace(0, 1, n_bins + 1) * 100)
    else:
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    binids = np.searchsorted(edges[1:-1], pp)
    counts = np.bincount(binids, minlength=n_bins)
    nonempty = np.flatnonzero(counts)
    means = np.bincount(binids, weights=pp, minlength=n_bins)[nonempty] / counts[nonempty]
    if nonempty.shape != predicted.shape or not np.allclose(means, predicted, rtol=0, atol=1e-12):
        raise RuntimeError(f"{where}: the bins no longer match sklearn.calibration.calibration_curve "
                           "(has its binning changed?)")
    return [
        {"bin": int(b), "mean_predicted": float(mp), "observed_rate": float(ob), "n": int(counts[b])}
        for b, mp, ob in zip(nonempty, predicted, observed, strict=True)
    ]


# ---------------------------------------------------------------------------------------------
# decision curves
# ---------------------------------------------------------------------------------------------
def _net_benefit(y: np.ndarray, p: np.ndarray, pt: float) -> float:
    n = y.shape[0]
    treated = p >= pt
    tp = int(np.sum(treated & (y == 1)))
    fp = int(np.sum(treated & (y == 0)))
    return tp / n - fp / n * pt / (1 - pt)


def net_benefit(y, p, threshold: float) -> float:
    """Net benefit of calling GBM where ``p >= threshold``: ``TP/n - FP/n * pt/(1 - pt)``.

    ``y``: 1 GBM / 0 MET; ``p``: values in [0, 1]; ``threshold`` in (0, 1). Raises TypeError /
    ValueError for bad inputs.
    """
    yy, pp = _pair(y, p, "p", "net_benefit")
    return _net_benefit(yy, pp, _threshold(threshold, "net_benefit"))


def decision_curve(y, p, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> list[dict]:
    """Decision-curve rows, one per threshold ``pt``: ``{"threshold", "net_benefit_model",
    "net_benefit_treat_all", "net_benefit_treat_none"}``.

    Treat all: ``prevalence - (1 - prevalence) * pt / (1 - pt)``; treat none: 0. ``thresholds``
    must each lie in (0, 1); the default is 0.05, 0.10, ..., 0.95. Raises TypeError / ValueError
    for bad inputs.
    """
    where = "decision_curve"
    yy, pp = _pair(y, p, "p", where)
    try:
        pts = np.asarray(thresholds, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"The 'thresholds' parameter of {where} must be a sequence of numbers in "
                        f"(0, 1). Got {thresholds!r} instead.") from None
    if pts.ndim != 1 or pts.size == 0:
        raise ValueError(f"The 'thresholds' parameter of {where} must be a non-empty 1-D sequence of "
                         f"values in (0, 1). Got {thresholds!r} instead.")
    prevalence = float(yy.mean())
    rows = []
    for pt in pts.tolist():
        pt = _threshold(pt, where)
        odds = pt / (1 - pt)
        rows.append({
            "threshold": pt,
            "net_benefit_model": _net_benefit(yy, pp, pt),
            "net_benefit_treat_all": prevalence - (1 - prevalence) * odds,
            "net_benefit_treat_none": 0.0,
        })
    return rows
