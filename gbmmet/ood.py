"""Is a patient unlike the patients the models were trained on? A distance-based out-of-
distribution (OOD) score on the backbone's slice features, and a threshold from held-out patients.

- ``knn`` (the default; Sun et al. 2022, "Out-of-distribution detection with deep nearest
  neighbors", ICML): features are L2-normalised and a slice's score is its Euclidean distance to
  the k-th nearest training slice (k capped at the number of training slices). It assumes no shape
  for the feature distribution: the backbone's pooled features are multimodal (two diagnoses, sites,
  sequences, slice levels), and a cohort's training slices (hundreds to a few thousand) can be
  fewer than the feature width (1,280 for EfficientNet-Lite0 to 2,048 for ResNet-50), where a
  class-free Gaussian fit is poor.
- ``mahalanobis`` (Lee et al. 2018): a single Gaussian fitted to the raw training features with
  scikit-learn's Ledoit-Wolf shrunk covariance; a slice's score is the (square-rooted) Mahalanobis
  distance. No PCA: the shrinkage keeps the covariance invertible when there are fewer slices than
  features.

A patient's score is the mean of its slices' scores. The threshold ``threshold_`` is the
``quantile`` (numpy method ``"higher"``) of the scores of reference patients the models did not
train on (the validation patients), so that about ``1 - quantile`` of fresh in-distribution
patients are flagged (``flag``: score > threshold). Reference slices must not be among the training
slices: a training slice is its own nearest neighbour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METHODS = ("knn", "mahalanobis")


@dataclass(frozen=True)
class OodSettings:
    """How the OOD score is computed: ``method`` ("knn" or "mahalanobis"), ``k`` (knn: the
    neighbour whose distance is the score), ``quantile`` (of the reference patients' scores that
    becomes the threshold).

    Raises:
        ValueError: unknown method, k < 1, quantile outside (0, 1).
    """

    method: str = "knn"
    k: int = 10
    quantile: float = 0.95

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"The 'method' parameter of OodSettings must be one of {METHODS}. "
                             f"Got {self.method!r} instead.")
        if isinstance(self.k, bool) or not isinstance(self.k, int | np.integer) or self.k < 1:
            raise ValueError(f"The 'k' parameter of OodSettings must be an int >= 1. Got {self.k!r} instead.")
        if not 0 < self.quantile < 1:
            raise ValueError(f"The 'quantile' parameter of OodSettings must be in (0, 1). "
                             f"Got {self.quantile!r} instead.")


def _features(x, what: str, width: int | None = None) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (slices, features) array, not of shape {a.shape}")
    if width is not None and a.shape[1] != width:
        raise ValueError(f"{what} have {a.shape[1]} features per slice; the detector was fitted on {width}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what} hold NaN or infinite values")
    return a


def _group_mean(scores: np.ndarray, patient_ids, what: str) -> dict[str, float]:
    ids = np.asarray([str(p) for p in patient_ids], dtype=object)
    if len(ids) != len(scores):
        raise ValueError(f"{what}: patient ids must name the patient of each of the {len(scores)} "
                         f"slices; got {len(ids)} ids")
    uniq, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    means = np.bincount(inverse, weights=scores) / np.bincount(inverse)
    return {str(uniq[j]): float(means[j]) for j in np.argsort(first, kind="stable")}


class OodDetector:
    """Out-of-distribution score of slices and patients (see the module docstring).

    Parameters:
        settings: ``OodSettings``.

    Fitted attributes: ``threshold_`` (float), ``reference_scores_`` (dict patient -> score),
    ``n_train_`` (training slices), ``width_`` (features per slice), ``k_`` (the neighbour used,
    k capped at ``n_train_``; knn only), ``model_`` (the fitted NearestNeighbors or LedoitWolf).
    """

    def __init__(self, settings: OodSettings = OodSettings()):
        self.settings = settings

    def fit(self, train_features, reference_features, reference_patients) -> OodDetector:
        """Fit the score on the training slices and the threshold on the reference patients.

        Raises:
            ValueError: no training or reference slices, features not 2-D or of different widths,
                NaN, or ``reference_patients`` not one per reference slice.
        """
        from sklearn.covariance import LedoitWolf
        from sklearn.neighbors import NearestNeighbors
        from sklearn.preprocessing import normalize

        train = _features(train_features, "training features")
        if train.shape[0] == 0:
            raise ValueError("OodDetector.fit needs at least one training slice; got none")
        reference = _features(reference_features, "reference features", train.shape[1])
        if reference.shape[0] == 0:
            raise ValueError("OodDetector.fit needs at least one reference slice; got none")
        self.width_, self.n_train_ = train.shape[1], train.shape[0]
        if self.settings.method == "knn":
            self.k_ = min(self.settings.k, self.n_train_)
            self.model_ = NearestNeighbors(n_neighbors=self.k_).fit(normalize(train))
        else:
            self.k_ = None
            self.model_ = LedoitWolf().fit(train)
        self.reference_scores_ = _group_mean(self.slice_scores(reference), reference_patients,
                                             "reference features")
        self.threshold_ = float(np.quantile(list(self.reference_scores_.values()),
                                            self.settings.quantile, method="higher"))
        return self

    def _check_fitted(self):
        if not hasattr(self, "threshold_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError("This OodDetector instance is not fitted yet. Call 'fit' with the "
                                 "training and reference features before using it.")

    def slice_scores(self, features) -> np.ndarray:
        """OOD score of each slice (rows of ``features``): higher is further from training.

        Raises:
            NotFittedError (a ValueError): before ``fit``.
            ValueError: features not 2-D, of another width than at fit, or NaN.
        """
        from sklearn.preprocessing import normalize

        if not hasattr(self, "model_"):
            self._check_fitted()
        x = _features(features, "features", self.width_)
        if x.shape[0] == 0:
            return np.zeros(0)
        if self.settings.method == "knn":
            dist, _ = self.model_.kneighbors(normalize(x), n_neighbors=self.k_)
            return dist[:, -1]
        return np.sqrt(np.maximum(self.model_.mahalanobis(x), 0.0))

    def patient_scores(self, features, patient_ids) -> dict[str, float]:
        """Each patient's OOD score, the mean of its slices' scores, in order of first slice.

        Raises:
            NotFittedError (a ValueError): before ``fit``.
            ValueError: as ``slice_scores``, or ``patient_ids`` not one per slice.
        """
        self._check_fitted()
        return _group_mean(self.slice_scores(features), patient_ids, "features")

    def flag(self, score: float) -> bool:
        """True where ``score`` is above the threshold (NaN: False).

        Raises:
            NotFittedError (a ValueError): before ``fit``.
        """
        self._check_fitted()
        return bool(score > self.threshold_)

    def summary(self) -> dict:
        """The settings and what was learned, JSON-able.

        Raises:
            NotFittedError (a ValueError): before ``fit``.
        """
        self._check_fitted()
        return {"method": self.settings.method, "k": self.k_, "quantile": self.settings.quantile,
                "threshold": self.threshold_, "n_train_slices": int(self.n_train_),
                "n_reference_patients": len(self.reference_scores_)}
