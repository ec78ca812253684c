"""Selective prediction: what accuracy is left if the least certain calls are handed to a
radiologist, and the deferral rule the system applies.

- ``risk_coverage(correct, uncertainty)``: keep patients in order of increasing uncertainty; one
  point per distinct uncertainty value (tied patients are kept or dropped together, so the curve
  does not depend on an arbitrary order among ties): the share kept, the accuracy of the kept
  calls, how many were kept. ``aurc`` is the area under the risk (1 - accuracy) curve in the
  mean-risk definition of Geifman et al. 2019 ("Bias-reduced uncertainty estimation for deep neural
  classifiers", ICLR): each patient weighs 1 / n at the risk of the first point that keeps it,
  ``sum_j (coverage_j - coverage_{j-1}) * risk_j``; without ties it is the mean over i = 1..n of
  the risk of the i most certain calls. Lower is better; its floor depends on the error rate.
- ``deferral(calls, y, sets, ood)``: a call is deferred when its conformal set is not exactly one
  label ("two labels", "empty set") or the patient is out of distribution ("out of distribution");
  reasons are joined by "; ". An unknown OOD status (None) is not a reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gbmmet import constants as C
from gbmmet.stats import share_row

REASON_TWO_LABELS = "two labels"
REASON_EMPTY = "empty set"
REASON_OOD = "out of distribution"
REASON_SEPARATOR = "; "
_VALID_SETS = {C.GBM, C.MET, C.GBM + C.SET_SEPARATOR + C.MET, ""}


@dataclass(frozen=True)
class RiskCoverage:
    """A risk-coverage curve: one point per distinct uncertainty value, most certain first."""

    coverage: np.ndarray  # share of patients kept
    accuracy: np.ndarray  # accuracy of the kept calls
    n_kept: np.ndarray
    aurc: float  # mean-risk area under 1 - accuracy (see the module docstring)


def risk_coverage(correct, uncertainty) -> RiskCoverage:
    """The risk-coverage curve of calls ordered by ``uncertainty`` (ascending), ties together.

    Parameters
    ----------
    correct : array of bool, one per patient
        Whether the call was right.
    uncertainty : array of float, same length
        Higher means less certain (e.g. ``index_fold_sd``, ``mutual_information``).

    Raises
    ------
    ValueError
        No patients, lengths differ, or NaN uncertainty.
    """
    ok = np.asarray(correct, dtype=bool)
    u = np.asarray(uncertainty, dtype=float)
    if ok.ndim != 1 or ok.shape != u.shape or len(ok) == 0:
        raise ValueError(f"risk_coverage needs one correct flag and one uncertainty per patient, at least one; "
                         f"got {ok.shape} and {u.shape}")
    if not np.all(np.isfinite(u)):
        raise ValueError("risk_coverage: uncertainty holds NaN or infinite values")
    values, inverse = np.unique(u, return_inverse=True)
    n_kept = np.cumsum(np.bincount(inverse, minlength=len(values)))
    correct_kept = np.cumsum(np.bincount(inverse, weights=ok.astype(float), minlength=len(values)))
    coverage = n_kept / len(ok)
    accuracy = correct_kept / n_kept
    aurc = float(np.sum(np.diff(coverage, prepend=0.0) * (1.0 - accuracy)))
    return RiskCoverage(coverage, accuracy, n_kept, aurc)


@dataclass(frozen=True)
class Deferral:
    """Which calls are deferred to a radiologist, why, and the accuracy of the others."""

    deferred: np.ndarray  # bool per patient
    reasons: list[str | None]  # None where not deferred
    share_deferred: float
    accuracy_kept: float | None  # None where every call is deferred
    n_kept: int
    correct: np.ndarray  # bool per patient: the call is right
    n_gbm: int

    def rows(self) -> list[dict]:
        """Metric rows "deferred_share", "accuracy_kept" (of the calls not deferred) and
        "accuracy_all", with Wilson 95 % intervals, in the shape of ``conformal.coverage_rows``
        (``n`` and ``n_gbm``: the cohort's patients and GBMs)."""
        n = len(self.deferred)
        kept = ~self.deferred
        return [
            share_row("deferred_share", int(self.deferred.sum()), n, n, self.n_gbm),
            share_row("accuracy_kept", int(self.correct[kept].sum()), int(kept.sum()), n, self.n_gbm),
            share_row("accuracy_all", int(self.correct.sum()), n, n, self.n_gbm),
        ]


def _reasons(set_str: str, ood) -> str | None:
    if set_str not in _VALID_SETS:
        raise ValueError(f"deferral: a conformal set must be one of {sorted(_VALID_SETS)}; got {set_str!r}")
    why = []
    if set_str == "":
        why.append(REASON_EMPTY)
    elif C.SET_SEPARATOR in set_str:
        why.append(REASON_TWO_LABELS)
    if ood is not None and ood == ood and bool(ood):  # None / NaN: unknown, not a reason
        why.append(REASON_OOD)
    return REASON_SEPARATOR.join(why) or None


def deferral(calls, y, sets, ood=None) -> Deferral:
    """Apply the deferral rule (see the module docstring) to a cohort with known labels.

    Parameters
    ----------
    calls : array of 0 / 1 (1 = GBM called), one per patient
    y : array of 0 / 1 (1 = GBM)
    sets : list of str
        The conformal set of each patient ("GBM", "MET", "GBM|MET" or ""), usually at
        ``DEFERRAL_LEVEL``.
    ood : sequence of bool or None, or None
        Out-of-distribution flag per patient; None or NaN (for a patient, or None for all) =
        unknown.

    Raises
    ------
    ValueError
        Lengths differ, calls or y not 0 / 1, or an unknown set string.
    """
    calls, y = np.asarray(calls), np.asarray(y)
    n = len(y)
    ood = [None] * n if ood is None else list(ood)
    if not (calls.shape == y.shape == (n,) and len(sets) == len(ood) == n):
        raise ValueError(f"deferral needs one call, label, set and ood flag per patient; got {len(calls)} calls, "
                         f"{n} labels, {len(sets)} sets, {len(ood)} ood flags")
    if not (np.isin(calls, (0, 1)).all() and np.isin(y, (0, 1)).all()):
        raise ValueError("deferral: calls and y must be 0 (MET) / 1 (GBM)")
    reasons = [_reasons(s, o) for s, o in zip(sets, ood, strict=True)]
    deferred = np.array([r is not None for r in reasons], dtype=bool)
    correct = calls == y
    n_kept = int((~deferred).sum())
    return Deferral(deferred=deferred, reasons=reasons,
                    share_deferred=float(deferred.mean()) if n else float("nan"),
                    accuracy_kept=float(correct[~deferred].mean()) if n_kept else None,
                    n_kept=n_kept, correct=correct, n_gbm=int(y.sum()))
