"""WhiteStripe intensity normalisation (Shinohara et al., NeuroImage Clin 2014).

The same algorithm as ``intensity-normalization`` 3.0's ``WhiteStripeNormalizer`` (a test shows
equality on the same input): a Gaussian KDE of the foreground on 80 points; T1: the last mode
below the 96th percentile (white matter), T2: the largest mode; the stripe is the voxels within
+- ``width`` quantiles of the mode; output = (image - stripe mean) / stripe sd. One addition: the
KDE may run on a strided subsample of the foreground (``max_samples``), since a KDE over millions
of voxels costs seconds; quantiles and the stripe always use every voxel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import argrelmax
from scipy.stats import gaussian_kde

from gbmmet.errors import NormalizationError

MODALITIES = ("t1", "t2")


@dataclass(frozen=True)
class WhiteStripe:
    mean: float
    std: float
    mode: float
    lower: float
    upper: float
    n_voxels: int

    def apply(self, data: np.ndarray) -> np.ndarray:
        return ((np.asarray(data, dtype=np.float64) - self.mean) / self.std).astype(np.float32)


def _smooth_histogram(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    vec = values.ravel().astype(np.float64)
    kde = gaussian_kde(vec)
    grid = np.linspace(vec.min(), vec.max(), 80)
    return grid, kde(grid)


def tissue_mode(values: np.ndarray, modality: str, max_samples: int | None = None) -> float:
    """T1: mode of the brightest tissue (below the 96th percentile); T2: the largest mode."""
    if max_samples and values.size > max_samples:
        values = values[:: int(np.ceil(values.size / max_samples))]
    if modality == "t2":
        grid, pdf = _smooth_histogram(values)
        return float(grid[np.argmax(pdf)])
    threshold = float(np.percentile(values, 96.0))
    grid, pdf = _smooth_histogram(values[values <= threshold])
    maxima = argrelmax(pdf)[0]
    return float(grid[maxima[-1]] if len(maxima) else grid[np.argmax(pdf)])


def fit_whitestripe(data: np.ndarray, mask: np.ndarray, modality: str, *, width: float = 0.05,
                    max_samples: int | None = None, patient_id: str | None = None) -> WhiteStripe:
    """Fit WhiteStripe on the voxels of ``data`` where ``mask`` is true.

    Raises:
        ValueError: unknown modality.
        NormalizationError: empty mask, or a degenerate stripe (no voxel, zero sd).
    """
    if modality not in MODALITIES:
        raise ValueError(f"The 'modality' parameter must be one of {MODALITIES}. Got {modality!r} instead.")
    who = f"patient {patient_id}: " if patient_id else ""
    mask = np.asarray(mask, dtype=bool)
    fg = np.asarray(data)[mask]
    if fg.size == 0:
        raise NormalizationError(f"{who}WhiteStripe ({modality}): no foreground voxel to fit on", patient_id=patient_id)
    mode = tissue_mode(fg, modality, max_samples)
    q = float(np.mean(fg < mode))
    lo_q, hi_q = max(q - width, 0.0), min(q + width, 1.0)
    lower, upper = (float(v) for v in np.quantile(fg, (lo_q, hi_q)))
    stripe = fg[(fg > lower) & (fg < upper)]
    if stripe.size == 0:
        raise NormalizationError(f"{who}WhiteStripe ({modality}): no voxel in the stripe", patient_id=patient_id)
    mean, std = float(stripe.mean()), float(stripe.std())
    if std == 0:
        raise NormalizationError(f"{who}WhiteStripe ({modality}): the stripe has zero spread", patient_id=patient_id)
    return WhiteStripe(mean=mean, std=std, mode=mode, lower=lower, upper=upper, n_voxels=int(stripe.size))
