"""Simulated neuroradiologists whose errors fall on the hard cases.

A reader calls a patient wrong with probability

    p_err = sigmoid(b - K * typicality_towards_truth)

where ``typicality`` (``lesion.typicality``) says how GBM-like the lesion looks from the features a
radiologist weighs (size, irregular outline, thick nodular rim, necrosis and septa, oedema extent
and signal, location), oriented towards the true class. An atypical GBM (small, round, thin rim,
large oedema, cerebellar) is therefore often called MET, and errors are not independent coin
flips. ``b`` is calibrated per reader, class and assisted flag so that, over the population of
lesions at the cohort's difficulty, the error rate equals one minus the reader's target
sensitivity (GBM) or specificity (MET) (``sites.ReaderProfile``, taken from the paper).

Assisted reads reuse the same uniform draw as the unassisted read with a smaller ``b``, so
assistance corrects some errors and introduces none (the paper's readers all improved). A
confidence from 1 (guess) to 5 (certain) follows from ``p_err``.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from gbmmet.constants import GBM, INFRA, LABELS, MET, SUPRA
from gbmmet.synth.lesion import LesionParams, sample_lesion_params, typicality
from gbmmet.synth.sites import ReaderProfile, get_site

#: Slope of the error probability against typicality: larger = errors more concentrated on
#: atypical cases.
K_TYPICALITY = 2.0
_REFERENCE_SAMPLE = 3000


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@functools.lru_cache(maxsize=32)
def _population_typicality(site: str, label: str, difficulty: float) -> np.ndarray:
    profile = get_site(site)
    rng = np.random.default_rng([0x5EED, LABELS.index(label), int(round(difficulty * 1000))])
    values = np.empty(_REFERENCE_SAMPLE)
    sign = 1.0 if label == GBM else -1.0
    for i in range(_REFERENCE_SAMPLE):
        location = INFRA if rng.random() < profile.infra_rate[label] else SUPRA
        values[i] = sign * typicality(sample_lesion_params(rng, label, location, None, difficulty), difficulty)
    return values


@functools.lru_cache(maxsize=128)
def error_intercept(site: str, label: str, target_error: float, difficulty: float) -> float:
    """``b`` such that the mean error probability over the population equals ``target_error``."""
    if not 0.0 < target_error < 1.0:
        raise ValueError(f"target_error must be in (0, 1), not {target_error!r}")
    t = _population_typicality(site, label, difficulty)
    lo, hi = -30.0, 30.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if _sigmoid(mid - K_TYPICALITY * t).mean() < target_error:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _confidence(p_err: float) -> int:
    for level, bound in ((5, 0.05), (4, 0.15), (3, 0.30), (2, 0.50)):
        if p_err < bound:
            return level
    return 1


def simulate_reads(
    rng: np.random.Generator,
    site: str,
    label: str,
    lesion: LesionParams,
    difficulty: float,
    readers: dict[str, ReaderProfile] | None = None,
) -> list[dict]:
    """One patient's reads: for each reader, unassisted then assisted.

    Returns rows with reader_id, assisted, call and confidence (patient_id is added by the caller).
    """
    profile = get_site(site)
    readers = profile.readers if readers is None else readers
    sign = 1.0 if label == GBM else -1.0
    t = sign * typicality(lesion, difficulty)
    rows = []
    for reader_id in sorted(readers):
        prof = readers[reader_id]
        u = rng.random()
        for assisted, (sens, spec) in ((False, prof.unassisted), (True, prof.assisted)):
            target = 1.0 - (sens if label == GBM else spec)
            b = error_intercept(site, label, target, difficulty)
            p_err = float(_sigmoid(b - K_TYPICALITY * t))
            wrong = u < p_err
            call = (MET if label == GBM else GBM) if wrong else label
            rows.append(
                {
                    "reader_id": reader_id,
                    "assisted": assisted,
                    "call": call,
                    "confidence": _confidence(p_err),
                }
            )
    return rows


def binary_auc(sensitivity: float, specificity: float) -> float:
    """AUC of a reader who only gives binary calls: the trapezoid through one point."""
    if math.isnan(sensitivity) or math.isnan(specificity):
        return float("nan")
    return 0.5 * (sensitivity + specificity)
