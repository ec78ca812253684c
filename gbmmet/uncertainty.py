"""How sure the fold ensemble is of a patient: the spread of the fold models' predictive indices
and the entropy decomposition of the slice probabilities.

Definitions (``probs`` is (folds, slices) P(GBM) of the K fold models; all entropies in bits):

- ``H(p) = -p log2 p - (1 - p) log2 (1 - p)``, the binary entropy, with ``H(0) = H(1) = 0``;
- per slice, following Depeweg et al. 2018 ("Decomposition of uncertainty in Bayesian deep
  learning for efficient and risk-sensitive learning", ICML), the fold models standing in for
  draws from the posterior over models:

  * total (predictive) entropy ``H(mean_k p_k)``: everything the ensemble does not know;
  * aleatoric (expected) entropy ``mean_k H(p_k)``: what each model, on its own, finds ambiguous
    in the image;
  * mutual information ``total - aleatoric`` >= 0 (Jensen): the epistemic part, the models'
    disagreement; large where the slice is unlike what the models were trained on.

- per patient (``patient_uncertainty``): the three entropies averaged over the patient's slices
  (``COL_ENTROPY_TOTAL``, ``COL_ENTROPY_ALEATORIC``, ``COL_MUTUAL_INFORMATION`` in
  ``patient_predictions``), and ``index_fold_sd`` (``COL_INDEX_FOLD_SD``): the population standard
  deviation (ddof 0) over the folds of each fold model's own predictive index, the share of the
  patient's slices that model alone calls GBM (``p_k >= 0.5``). 0 when all folds agree on every
  slice's call; at most 0.5.

The predictive index itself (the share of slices the ensemble's majority vote calls GBM,
``gbmmet.model.ensemble.ensemble_vote``) is not recomputed here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import entr


def _check_probs(probs) -> np.ndarray:
    p = np.asarray(probs, dtype=float)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"probs must be a (folds, slices) array with at least one fold, not of shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("probs must hold probabilities in [0, 1]; found values outside it or NaN")
    return p


def binary_entropy(p) -> np.ndarray:
    """Binary entropy in bits of P(GBM) ``p`` (any shape); 0 at p = 0 and p = 1."""
    p = np.asarray(p, dtype=float)
    return (entr(p) + entr(1.0 - p)) / math.log(2.0)


def slice_entropies(probs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-slice entropy decomposition of the fold ensemble (see the module docstring).

    Parameters
    ----------
    probs : array of shape (folds, slices)
        P(GBM) of each fold model for each slice.

    Returns
    -------
    (total, aleatoric, mutual_information) : three arrays of shape (slices,), in bits. Tiny
    negative mutual information from rounding is clipped to 0.

    Raises
    ------
    ValueError
        ``probs`` not 2-D, without folds, or with values outside [0, 1] / NaN.
    """
    p = _check_probs(probs)
    total = binary_entropy(p.mean(axis=0))
    aleatoric = binary_entropy(p).mean(axis=0)
    return total, aleatoric, np.clip(total - aleatoric, 0.0, None)


@dataclass(frozen=True)
class PatientUncertainty:
    """A patient's uncertainty: see the module docstring for each field."""

    index_fold_sd: float
    entropy_total: float
    entropy_aleatoric: float
    mutual_information: float
    n_slices: int


def patient_uncertainty(patient_ids, probs) -> dict[str, PatientUncertainty]:
    """Each patient's fold spread of the predictive index and mean slice entropies.

    Parameters
    ----------
    patient_ids : sequence of str, length slices
        The patient of each slice (column of ``probs``).
    probs : array of shape (folds, slices)
        P(GBM) of each fold model for each slice.

    Returns
    -------
    dict patient id -> ``PatientUncertainty``, in order of the patients' first slice.

    Raises
    ------
    ValueError
        ``probs`` malformed (see ``slice_entropies``), or ``patient_ids`` not one per slice.
    """
    p = _check_probs(probs)
    ids = np.asarray([str(x) for x in patient_ids], dtype=object)
    if len(ids) != p.shape[1]:
        raise ValueError(f"patient_ids must name the patient of each of the {p.shape[1]} slices; "
                         f"got {len(ids)} ids")
    total, aleatoric, mi = slice_entropies(p)
    uniq, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(uniq))

    def per_patient(values):
        return np.bincount(inverse, weights=values, minlength=len(uniq)) / counts

    # each fold's own index: the share of the patient's slices that fold alone calls GBM
    fold_index = np.stack([per_patient(row) for row in (p >= 0.5).astype(float)])
    sd = fold_index.std(axis=0, ddof=0)
    means = [per_patient(v) for v in (total, aleatoric, mi)]
    return {str(uniq[j]): PatientUncertainty(float(sd[j]), float(means[0][j]), float(means[1][j]),
                                             float(means[2][j]), int(counts[j]))
            for j in np.argsort(first, kind="stable")}
