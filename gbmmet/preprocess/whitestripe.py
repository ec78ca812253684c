"""WhiteStripe intensity normalisation (Shinohara et al., NeuroImage Clin 2014).

The same algorithm as ``intensity-normalization`` 3.0's ``WhiteStripeNormalizer`` (a test shows
equality on the same input): a Gaussian KDE of the foreground on 80 points; T1: the last mode
below the 96th percentile (white matter), T2: the largest mode; the stripe is the voxels within
+- ``width`` quantiles of the mode; output = (image - stripe mean) / stripe sd. One addition: the
KDE may run on a strided subsample of the foreground (``max_samples``), since a KDE over millions
of voxels costs seconds; quantiles and the stripe always use every voxel. And the KDE may be
evaluated from a fine histogram of its samples (``kde_bins``): the same Gaussian kernel and
bandwidth (Scott's rule, as ``gaussian_kde``) over bin counts instead of over each sample, 80 x
``kde_bins`` kernel terms instead of 80 x n. With 16 384 bins the density differs from
``gaussian_kde``'s by under 1e-4 of its peak (a bin is a few hundredths of the bandwidth) and the
mode is the same (a test draws mixtures and compares); 10x faster on 200 000 samples.
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


def _smooth_histogram(values: np.ndarray, bins: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A Gaussian KDE of ``values`` on 80 points from their minimum to their maximum: every sample
    a kernel (``bins`` None, ``gaussian_kde``), or each of ``bins`` histogram bins one kernel at
    its centre weighted by its count."""
    vec = values.ravel().astype(np.float64)
    grid = np.linspace(vec.min(), vec.max(), 80)
    if bins is None:
        return grid, gaussian_kde(vec)(grid)
    return grid, binned_kde(vec, grid, bins)


def binned_kde(values: np.ndarray, grid: np.ndarray, bins: int) -> np.ndarray:
    """``gaussian_kde(values)(grid)`` (1-D, Scott's bandwidth) computed from a histogram of
    ``values`` with ``bins`` equal bins between ``grid``'s ends; all values must lie there."""
    n = values.size
    h = float(np.std(values, ddof=1)) * n ** -0.2 if n > 1 else 0.0
    if not h > 0:  # one value: gaussian_kde fails on it; no mode to choose between
        return np.ones_like(grid)
    counts, edges = np.histogram(values, bins=bins, range=(float(grid[0]), float(grid[-1])))
    centres = (edges[:-1] + edges[1:]) / 2.0
    kernel = np.exp(-0.5 * np.square((grid[:, None] - centres[None, :]) / h))
    return kernel @ counts.astype(np.float64) / (n * h * np.sqrt(2.0 * np.pi))


def tissue_mode(values: np.ndarray, modality: str, max_samples: int | None = None,
                kde_bins: int | None = None) -> float:
    """T1: mode of the brightest tissue (below the 96th percentile); T2: the largest mode.
    ``max_samples``: the KDE on a strided subsample of at most about that many values;
    ``kde_bins``: the KDE from a histogram of that many bins (``binned_kde``)."""
    if max_samples and values.size > max_samples:
        values = values[:: int(np.ceil(values.size / max_samples))]
    if modality == "t2":
        grid, pdf = _smooth_histogram(values, kde_bins)
        return float(grid[np.argmax(pdf)])
    threshold = float(np.percentile(values, 96.0))
    grid, pdf = _smooth_histogram(values[values <= threshold], kde_bins)
    maxima = argrelmax(pdf)[0]
    return float(grid[maxima[-1]] if len(maxima) else grid[np.argmax(pdf)])


def fit_whitestripe(data: np.ndarray, mask: np.ndarray, modality: str, *, width: float = 0.05,
                    max_samples: int | None = None, kde_bins: int | None = None,
                    patient_id: str | None = None) -> WhiteStripe:
    """Fit WhiteStripe on the voxels of ``data`` where ``mask`` is true (``max_samples``,
    ``kde_bins``: how the KDE is computed, ``tissue_mode``).

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
    mode = tissue_mode(fg, modality, max_samples, kde_bins)
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
