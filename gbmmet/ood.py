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

A second part checks the sequences themselves. Backbone features of a patient whose CE-T1 and T2
were swapped (or mislabelled) lie close enough to the training slices to pass the distance (k-NN
AUROC 0.80 against the internal test on the demo), but their contrast is inverted.
``sequence_contrast`` is the mean of T2 minus CE-T1, both in WhiteStripe units (normal white
matter at 0), over the pixels of a patient's stored ROI crops, leaving out those where both
sequences are at the byte range's floor (background: air, or a skull-stripped zero). Around a lesion T2 is
the brighter of the two (oedema, necrosis and CSF are T2-bright; only the enhancing rim is
CE-T1-bright), so the contrast is positive on every in-distribution patient measured (the demo's
synthetic patients and two real BraTS 2018 glioblastomas; numbers in docs/trust.md) and negative
on every swapped one. A negative contrast fails the check; the rule is physical, not fitted, and
it is not specific: a haemorrhagic or melanotic lesion (T1-bright) can fail it too, so the words
shown ask to check the sequences rather than assert they were swapped. The patient's ``score`` is
the larger of the distance and the sequence part put on the distance's scale,
``threshold * (1 - contrast / scale)`` with ``scale`` the reference patients' median contrast: it
crosses the threshold exactly where the contrast turns negative, and grows the more inverted the
contrast is. So ``score > threshold`` flags a patient unlike the training slices or with inverted
contrast, and ``ood_reasons`` says which. Where the reference patients' median contrast is not
positive the check is off (the score is the distance).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from gbmmet import constants as C

METHODS = ("knn", "mahalanobis")
#: ``ood_reasons``: the features lie far from the training slices; the contrast is inverted.
FEATURES, SEQUENCES = "features", "sequences"


def ood_reasons(distance, contrast, threshold) -> tuple[str, ...]:
    """Why a patient is flagged: ``FEATURES`` where ``distance`` is above ``threshold``,
    ``SEQUENCES`` where ``contrast`` is negative (pass None where the sequence check is off);
    empty when neither. Missing values (None, NaN) give no reason."""
    def known(v) -> bool:
        return v is not None and bool(np.isfinite(v))

    out = (FEATURES,) if known(distance) and known(threshold) and distance > threshold else ()
    return out + ((SEQUENCES,) if known(contrast) and contrast < 0 else ())


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


def contrast_sums(images, channels, ws_range: Mapping) -> tuple[np.ndarray, np.ndarray]:
    """Per stored slice: (sum of T2 minus CE-T1 in WhiteStripe units, pixels summed), over the
    pixels not at the byte range's floor in both sequences (background: CSF, dark on CE-T1 and
    bright on T2, stays). ``sequence_contrast`` is their ratio over a patient's slices; this half
    runs where the slices are (a Ray Data task), so only two numbers a slice travel.

    Args:
        images: stored slices, uint8 (N, channels, H, W).
        channels: what each channel holds (``SliceParams.channels``): one CE-T1 and a T2.
        ws_range: the byte mapping of each sequence (``SliceParams.ws_range``).

    Returns:
        (float64 (N,), float64 (N,)).

    Raises:
        ValueError: images not (N, C, H, W) with one channel per name, or a sequence missing from
            ``channels`` or ``ws_range``.
    """
    from gbmmet.preprocess.slices import from_uint8

    x = np.asarray(images)
    channels = tuple(channels)
    if x.ndim != 4 or x.shape[1] != len(channels):
        raise ValueError(f"sequence_contrast needs slices of shape (N, {len(channels)}, H, W) for channels "
                         f"{channels}; got {x.shape}")
    for name in (C.T1C, C.T2):
        if name not in channels or name not in ws_range:
            raise ValueError(f"sequence_contrast needs a {name!r} channel with its WhiteStripe range; "
                             f"channels {channels}, ranges for {sorted(ws_range)}")
    t1c_bytes, t2_bytes = x[:, channels.index(C.T1C)], x[:, channels.index(C.T2)]
    keep = (t1c_bytes > 0) | (t2_bytes > 0)  # background (air, a skull-stripped zero) is dark in both
    diff = from_uint8(t2_bytes, *ws_range[C.T2]).astype(np.float64) - from_uint8(t1c_bytes, *ws_range[C.T1C])
    sums = np.where(keep, diff, 0.0).reshape(len(x), -1).sum(axis=1)
    return sums, keep.reshape(len(x), -1).sum(axis=1).astype(np.float64)


def contrast_by_patient(sums, pixels, patient_ids) -> dict[str, float]:
    """Each patient's sequence contrast from its slices' ``contrast_sums``: the sum over its
    slices divided by the pixels (NaN where none), in order of first slice.

    Raises:
        ValueError: ``patient_ids`` not one per slice.
    """
    sums, pixels = np.asarray(sums, np.float64), np.asarray(pixels, np.float64)
    total, n = _group_sum(sums, patient_ids, "slices"), _group_sum(pixels, patient_ids, "slices")
    return {p: (total[p] / n[p] if n[p] else float("nan")) for p in total}


def sequence_contrast(images, channels, ws_range: Mapping, patient_ids) -> dict[str, float]:
    """Each patient's mean of T2 minus CE-T1 in WhiteStripe units over its stored ROI crops,
    leaving out the pixels where both sequences are at the byte range's floor (background: CSF,
    dark on CE-T1 and bright on T2, stays): ``contrast_by_patient`` of ``contrast_sums``.

    Args:
        images: stored slices, uint8 (N, channels, H, W).
        channels: what each channel holds (``SliceParams.channels``): one CE-T1 and a T2.
        ws_range: the byte mapping of each sequence (``SliceParams.ws_range``).
        patient_ids: the patient of each slice.

    Returns:
        dict patient -> contrast (NaN where no pixel is left), in order of first slice.

    Raises:
        ValueError: images not (N, C, H, W) with one channel per name, a sequence missing from
            ``channels`` or ``ws_range``, or ``patient_ids`` not one per slice.
    """
    sums, pixels = contrast_sums(images, channels, ws_range)
    return contrast_by_patient(sums, pixels, patient_ids)


def _group_sum(values: np.ndarray, patient_ids, what: str) -> dict[str, float]:
    ids = np.asarray([str(p) for p in patient_ids], dtype=object)
    if len(ids) != len(values):
        raise ValueError(f"{what}: patient ids must name the patient of each of the {len(values)} "
                         f"slices; got {len(ids)} ids")
    uniq, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    sums = np.bincount(inverse, weights=values, minlength=len(uniq))
    return {str(uniq[j]): float(sums[j]) for j in np.argsort(first, kind="stable")}


def _group_mean(scores: np.ndarray, patient_ids, what: str) -> dict[str, float]:
    total = _group_sum(scores, patient_ids, what)
    n = _group_sum(np.ones(len(scores)), patient_ids, what)
    return {p: total[p] / n[p] for p in total}


class OodDetector:
    """Out-of-distribution score of slices and patients (see the module docstring).

    Parameters:
        settings: ``OodSettings``.

    Fitted attributes: ``threshold_`` (float), ``reference_scores_`` (dict patient -> distance),
    ``n_train_`` (training slices), ``width_`` (features per slice), ``k_`` (the neighbour used,
    k capped at ``n_train_``; knn only), ``model_`` (the fitted NearestNeighbors or LedoitWolf),
    ``contrast_scale_`` (the reference patients' median sequence contrast, or the scale given;
    None where none was given or it is not positive: then the sequence check is off),
    ``reference_contrast_`` (dict reference patient -> contrast, where given),
    ``reference_contrast_min_``.
    """

    def __init__(self, settings: OodSettings = OodSettings()):
        self.settings = settings

    def fit(self, train_features, reference_features, reference_patients,
            reference_contrast: Mapping[str, float] | float | None = None) -> OodDetector:
        """Fit the score on the training slices and the threshold on the reference patients.

        ``reference_contrast`` sets the sequence part's scale: a dict patient ->
        ``sequence_contrast`` (other patients than the reference ones are ignored; the scale is
        their median), or the scale itself (a number, as an earlier fit recorded it). Without
        it, or where the scale is not positive, the score is the distance alone.

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
        self._fit_contrast(reference_contrast)
        return self

    def _fit_contrast(self, given) -> None:
        if given is None or isinstance(given, Mapping):
            given = given or {}
            self.reference_contrast_ = {p: float(given[p]) for p in self.reference_scores_
                                        if given.get(p) is not None and np.isfinite(given[p])}
            values = np.array(list(self.reference_contrast_.values()), float)
            scale = float(np.median(values)) if len(values) else np.nan
            self.reference_contrast_min_ = float(values.min()) if len(values) else None
        else:
            self.reference_contrast_, self.reference_contrast_min_ = {}, None
            scale = float(given)
        self.contrast_scale_ = scale if np.isfinite(scale) and scale > 0 else None

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

    def patient_distances(self, features, patient_ids) -> dict[str, float]:
        """Each patient's feature distance, the mean of its slices' scores, in order of first slice.

        Raises:
            NotFittedError (a ValueError): before ``fit``.
            ValueError: as ``slice_scores``, or ``patient_ids`` not one per slice.
        """
        self._check_fitted()
        return _group_mean(self.slice_scores(features), patient_ids, "features")

    def combine(self, distance: float, contrast: float | None = None) -> float:
        """A patient's OOD score from its feature distance and sequence contrast: the larger of
        ``distance`` and ``threshold_ * (1 - contrast / contrast_scale_)`` (the distance alone
        where the contrast or the scale is missing).

        Raises:
            NotFittedError (a ValueError): before ``fit``.
        """
        self._check_fitted()
        if contrast is None or not np.isfinite(contrast) or self.contrast_scale_ is None:
            return float(distance)
        return float(max(distance, self.threshold_ * (1.0 - contrast / self.contrast_scale_)))

    def patient_scores(self, features, patient_ids, contrast: Mapping[str, float] | None = None
                       ) -> dict[str, float]:
        """Each patient's OOD score (``combine`` of its distance and, where ``contrast`` names it,
        its sequence contrast), in order of first slice.

        Raises:
            NotFittedError (a ValueError): before ``fit``.
            ValueError: as ``slice_scores``, or ``patient_ids`` not one per slice.
        """
        contrast = contrast or {}
        return {p: self.combine(d, contrast.get(p)) for p, d in self.patient_distances(features, patient_ids).items()}

    def reasons(self, distance: float, contrast: float | None = None) -> tuple[str, ...]:
        """``ood_reasons`` against this detector's threshold (the contrast counts only where the
        sequence check is on).

        Raises:
            NotFittedError (a ValueError): before ``fit``.
        """
        self._check_fitted()
        return ood_reasons(distance, contrast if self.contrast_scale_ is not None else None, self.threshold_)

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
                "n_reference_patients": len(self.reference_scores_),
                "contrast_scale": self.contrast_scale_, "reference_contrast_min": self.reference_contrast_min_}
