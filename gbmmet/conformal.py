"""Class-conditional (label-conditional, "Mondrian by class") split conformal prediction sets for
GBM vs MET, at several levels: at level 1 - a the set holds the true diagnosis with probability
>= 1 - a for GBM patients and, separately, for MET patients (Vovk 2012; Sadinle, Lei & Wasserman
2019, section 4.3), not merely on average over a cohort whose mix may differ.

Score: the LAC score of Sadinle et al., a label's conformity being the model's probability of it:
P̂(GBM) for GBM, 1 - P̂(GBM) for MET; MAPIE works with the nonconformity ``s = 1 - P̂(label)``.
For each class c and level, MAPIE 1.6's ``SplitConformalClassifier(prefit=True,
conformity_score="lac")`` is conformalized on the calibration patients of class c only (patients the
models did not train on: the validation patients), which is exactly label-conditional conformal
with LAC scores. Its threshold is the ``ceil((n_c + 1)(1 - a))``-th smallest of the n_c scores
(``np.quantile(s, ceil((n_c + 1)(1 - a)) / n_c, method="lower")``), and label c enters a
patient's set when ``1 - P̂(c) <= threshold`` (to MAPIE's 1e-8 tolerance). MAPIE refuses when
``n_c < 1 / a`` (10 patients at 0.90, 20 at 0.95; the theory would allow ``1 / a - 1``): then the
threshold is infinite, label c is in every set (coverage 1 for that class, trivially) and
``notes_`` says so. The set is "GBM", "MET", "GBM|MET" (``SET_SEPARATOR``; undecided) or ""
(empty: neither label fits; unlike either class's calibration patients).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError

from gbmmet import constants as C
from gbmmet.stats import share_row

#: Class codes as in ``y`` (1 = GBM), in set order.
_CLASSES = ((C.GBM, 1), (C.MET, 0))
#: MAPIE's tolerance in its LAC set rule (``mapie._machine_precision.EPSILON``), for
#: ``from_summary``; a test checks the rebuilt sets equal MAPIE's
_EPS = 1e-8


def _prob_column(prob_gbm, what: str) -> np.ndarray:
    p = np.asarray(prob_gbm, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array of P(GBM), not of shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError(f"{what} must hold probabilities in [0, 1]; found values outside it or NaN")
    return p


def n_needed(level: float) -> int:
    """The fewest calibration patients of a class MAPIE conformalizes at ``level`` (n >= 1 / a)."""
    return math.ceil(round(1.0 / (1.0 - level), 9))


class ProbabilityColumn(ClassifierMixin, BaseEstimator):
    """A fitted scikit-learn classifier whose input X is the P(GBM) column itself (classes 0 = MET,
    1 = GBM): it lets MAPIE conformalize probabilities the fold ensemble already gave."""

    def fit(self, X=None, y=None):
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X):
        p = np.asarray(X, dtype=float)[:, 0]
        return np.column_stack([1.0 - p, p])

    def predict(self, X):
        return (np.asarray(X, dtype=float)[:, 0] >= 0.5).astype(int)


class _Threshold:
    """A label's set membership from its stored LAC threshold, answering like MAPIE's
    ``predict_set`` for ``predict_sets`` (column ``code`` of a two-class set array)."""

    def __init__(self, threshold: float):
        self.threshold = threshold

    def predict_set(self, x):
        p = np.asarray(x, float)[:, 0]
        member = np.stack([1 - (1 - p) <= self.threshold + _EPS, 1 - p <= self.threshold + _EPS], axis=1)
        return None, member[:, :, None]


class ClassConditionalConformal:
    """Label-conditional split conformal sets from P(GBM) (see the module docstring).

    Parameters:
        levels: the confidence levels, each in (0, 1) (default ``CONFORMAL_LEVELS``).

    Fitted attributes: ``n_`` (label -> calibration patients), ``thresholds_`` (level -> label ->
    nonconformity threshold on ``1 - P̂(label)``; ``math.inf`` where too few patients),
    ``notes_`` (list of str), ``conformalizers_`` ((level, label) -> MAPIE object, or None).

    Raises:
        ValueError: no level, or a level outside (0, 1).
    """

    def __init__(self, levels=C.CONFORMAL_LEVELS):
        levels = tuple(float(v) for v in levels)
        if not levels or any(not 0 < v < 1 for v in levels):
            raise ValueError(f"The 'levels' parameter of ClassConditionalConformal must be levels in (0, 1). "
                             f"Got {levels!r} instead.")
        self.levels = levels

    def fit(self, prob_gbm, y) -> ClassConditionalConformal:
        """Conformalize each class at each level on the calibration patients.

        Parameters:
            prob_gbm: P̂(GBM) of each calibration patient.
            y: 1 for GBM, 0 for MET.

        Raises:
            ValueError: probabilities outside [0, 1] or NaN, y not 0 / 1, lengths differ.
        """
        from mapie.classification import SplitConformalClassifier

        p = _prob_column(prob_gbm, "prob_gbm")
        y = np.asarray(y)
        if y.shape != p.shape or not np.isin(y, (0, 1)).all():
            raise ValueError(f"y must be one 0 (MET) / 1 (GBM) per patient ({len(p)}); got {y.tolist()!r}")
        estimator = ProbabilityColumn().fit()
        self.n_, self.thresholds_, self.notes_, self.conformalizers_ = {}, {}, [], {}
        for level in self.levels:
            self.thresholds_[level] = {}
            for label, code in _CLASSES:
                x = p[y == code][:, None]
                self.n_[label] = n = len(x)
                if n < n_needed(level):
                    self.conformalizers_[level, label] = None
                    self.thresholds_[level][label] = math.inf
                    self.notes_.append(f"{label} at level {level:g}: {n} calibration patients, fewer than the "
                                       f"{n_needed(level)} needed; {label} is in every set at this level")
                    continue
                scc = SplitConformalClassifier(estimator, confidence_level=level, conformity_score="lac",
                                               prefit=True)
                with warnings.catch_warnings():  # one class at a time is the point here
                    warnings.filterwarnings("ignore", message=".*less labels than your training dataset")
                    scc.conformalize(x, np.full(n, code))
                    scc.predict_set(x[:1])  # MAPIE computes its quantile at prediction
                self.conformalizers_[level, label] = scc
                score_fn = scc._mapie_classifier.conformity_score_function_
                self.thresholds_[level][label] = float(np.ravel(score_fn.quantiles_)[0])
        return self

    def predict_sets(self, prob_gbm) -> dict[float, list[str]]:
        """The conformal set of each patient at each level: "GBM", "MET", "GBM|MET" or "".

        Raises:
            NotFittedError (a ValueError): before ``fit``.
            ValueError: probabilities outside [0, 1] or NaN.
        """
        if not hasattr(self, "thresholds_"):
            raise NotFittedError("This ClassConditionalConformal instance is not fitted yet. Call 'fit' "
                                 "with the calibration patients' P(GBM) and labels first.")
        p = _prob_column(prob_gbm, "prob_gbm")
        out = {}
        for level in self.levels:
            member = []
            for label, code in _CLASSES:
                scc = self.conformalizers_[level, label]
                if scc is None or len(p) == 0:
                    member.append(np.full(len(p), scc is None))
                else:
                    member.append(scc.predict_set(p[:, None])[1][:, code, 0])
            out[level] = [C.SET_SEPARATOR.join(lab for (lab, _), m in zip(_CLASSES, ms, strict=True) if m)
                          for ms in zip(*member, strict=True)]
        return out

    @classmethod
    def from_summary(cls, summary: dict) -> ClassConditionalConformal:
        """The fitted sets rebuilt from ``summary()`` (what an evaluation record keeps), for
        ``gbmmet predict``: a label is in the set where ``1 - P̂(label)`` is at most its threshold,
        MAPIE's LAC rule; ``predict_sets`` then reads the thresholds, not MAPIE objects.

        Raises:
            ValueError: a summary of another score than LAC.
        """
        if summary.get("score") != "lac":
            raise ValueError(f"conformal summary of score {summary.get('score')!r}: only 'lac' can be rebuilt")
        self = cls(summary["levels"])
        self.thresholds_, self.n_, self.notes_ = {}, {}, list(summary.get("notes", []))
        for level in self.levels:
            classes = summary["classes"][f"{level:g}"]
            self.thresholds_[level] = {label: math.inf if c["threshold"] is None else float(c["threshold"])
                                       for label, c in classes.items()}
            self.n_.update({label: c["n"] for label, c in classes.items()})
        self.conformalizers_ = {(level, label): _Threshold(t) for level, th in self.thresholds_.items()
                                for label, t in th.items()}
        return self

    def summary(self) -> dict:
        """Levels, per class n and threshold (None where infinite), and the notes; JSON-able."""
        if not hasattr(self, "thresholds_"):
            raise NotFittedError("This ClassConditionalConformal instance is not fitted yet.")
        per_level = {f"{level:g}": {label: {"n": self.n_[label],
                                            "threshold": None if math.isinf(t) else t}
                                    for label, t in self.thresholds_[level].items()}
                     for level in self.levels}
        return {"levels": list(self.levels), "score": "lac", "classes": per_level,
                "notes": list(self.notes_)}


def coverage_rows(sets, y, level: float) -> list[dict]:
    """Metric rows of the conformal sets at ``level`` on a cohort with known labels.

    Metrics (suffix ``level_suffix(level)``, e.g. ``_90``): ``conformal_coverage`` (share of
    patients whose set holds their diagnosis), ``conformal_coverage_gbm`` / ``_met`` (among GBM /
    MET patients), ``conformal_two_label`` and ``conformal_empty`` (shares of all patients). Each
    with Wilson's 95 % interval; value and interval None where the denominator is 0. ``n`` and
    ``n_gbm`` are the cohort's patients and GBMs, as in the other rows of ``metrics``.

    Raises:
        ValueError: ``sets`` and ``y`` of different lengths, y not 0 / 1.
    """
    y = np.asarray(y)
    if len(sets) != len(y) or not np.isin(y, (0, 1)).all():
        raise ValueError(f"coverage_rows needs one set and one 0 / 1 label per patient; got {len(sets)} "
                         f"sets and labels {y.tolist()!r}")
    members = [set(s.split(C.SET_SEPARATOR)) if s else set() for s in sets]
    truth = np.where(y == 1, C.GBM, C.MET)
    covered = np.array([t in m for t, m in zip(truth, members, strict=True)], dtype=bool)
    size = np.array([len(m) for m in members])
    n, n_gbm, sfx = len(y), int(y.sum()), C.level_suffix(level)
    return [
        share_row(f"conformal_coverage{sfx}", int(covered.sum()), n, n, n_gbm),
        share_row(f"conformal_coverage_gbm{sfx}", int(covered[y == 1].sum()), n_gbm, n, n_gbm),
        share_row(f"conformal_coverage_met{sfx}", int(covered[y == 0].sum()), n - n_gbm, n, n_gbm),
        share_row(f"conformal_two_label{sfx}", int((size == 2).sum()), n, n, n_gbm),
        share_row(f"conformal_empty{sfx}", int((size == 0).sum()), n, n, n_gbm),
    ]
