"""Simulated neuroradiologists: errors on the hard cases, noisy confidence, human use of a model.

Unassisted reads (``simulate_reads``). A reader calls a patient wrong with probability

    p_err = sigmoid(b - K * typicality_towards_truth)

where ``typicality`` (``lesion.typicality``) says how GBM-like the lesion looks from the features a
radiologist weighs (size, irregular outline, thick nodular rim, necrosis and septa, oedema extent
and signal, location), oriented towards the true class. An atypical GBM (small, round, thin rim,
large oedema, cerebellar) is therefore often called MET, and errors are not independent coin
flips. ``b`` is calibrated per reader and class so that, over the population of lesions at the
cohort's difficulty, the error rate equals one minus the reader's unassisted sensitivity (GBM) or
specificity (MET) (``sites.ReaderProfile``, from the paper).

A reader does not know ``p_err``: the confidence from 1 (guess) to 5 (certain) comes from a
perceived error probability, ``logit(p_perceived) = logit(p_err) + N(0, CONFIDENCE_NOISE_SD)``,
so confidence ranks errors worse than ``p_err`` does and is not perfectly calibrated.

Assisted reads (``simulate_assisted_reads``) are made afterwards from the reader's own read and the
model's actual call (``assisted_call``): where they agree the reader keeps the call, more sure;
where they disagree the reader adopts the model's call with a probability that is larger when the
reader was unsure (``AssistProfile``). Assistance can thus fix errors, but can also adopt the
model's errors (automation bias) and lose correct reads, so what it is worth depends on the model:
a poor model makes the assisted reader worse. How often each reader follows the model is derived
from the paper (``assist_profile``).
"""

from __future__ import annotations

import functools
import hashlib
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

from gbmmet.constants import GBM, INFRA, LABELS, MET, SUPRA
from gbmmet.synth.lesion import LesionParams, sample_lesion_params, typicality
from gbmmet.synth.sites import ReaderProfile, get_site

#: Slope of the error probability against typicality: larger = errors more concentrated on
#: atypical cases.
K_TYPICALITY = 2.0
#: Sd of the Gaussian noise on the logit of the error probability a reader perceives; 1.0 moves
#: a read's perceived error odds by a factor of e either way about two times in three, which
#: gives confidence levels that overlap between right and wrong reads but still rank them.
CONFIDENCE_NOISE_SD = 1.0
#: Confidence level -> upper bound of the perceived error probability for that level (else 1).
_CONFIDENCE_BANDS = ((5, 0.05), (4, 0.15), (3, 0.30), (2, 0.50))
#: follow_sure / follow_unsure: a sure reader gives in to a disagreeing model five times less
#: often than an unsure one (an assumption; the paper reports no per-confidence data).
FOLLOW_SURE_RATIO = 0.2
#: Confidence from which a reader counts as sure of the unassisted call.
SURE_FROM = 4
_REFERENCE_SAMPLE = 3000
#: Difficulty of the reference population that ``assist_profile`` derives from (the published
#: class separation, the generator's default).
_REFERENCE_DIFFICULTY = 0.5


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


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


def _error_logit(site: str, label: str, toward_truth, difficulty: float, prof: ReaderProfile):
    """logit(p_err) of an unassisted read, for one lesion or an array of them."""
    target = 1.0 - (prof.unassisted[0] if label == GBM else prof.unassisted[1])
    return error_intercept(site, label, target, difficulty) - K_TYPICALITY * toward_truth


def _confidence(p_perceived: float) -> int:
    for level, bound in _CONFIDENCE_BANDS:
        if p_perceived < bound:
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
    """One patient's unassisted reads, one per reader (sorted by reader id).

    Each reader draws one uniform (wrong if below ``p_err``) and one normal (the noise on the
    perceived error probability behind the confidence). Returns rows with reader_id, assisted
    (False), call and confidence 1-5; patient_id is added by the caller. Assisted reads need the
    model's calls: ``simulate_assisted_reads``.
    """
    profile = get_site(site)
    readers = profile.readers if readers is None else readers
    t = (1.0 if label == GBM else -1.0) * typicality(lesion, difficulty)
    rows = []
    for reader_id in sorted(readers):
        logit_err = float(_error_logit(site, label, t, difficulty, readers[reader_id]))
        wrong = rng.random() < float(_sigmoid(logit_err))
        perceived = float(_sigmoid(logit_err + CONFIDENCE_NOISE_SD * rng.normal()))
        rows.append(
            {
                "reader_id": reader_id,
                "assisted": False,
                "call": (MET if label == GBM else GBM) if wrong else label,
                "confidence": _confidence(perceived),
            }
        )
    return rows


@dataclass(frozen=True)
class AssistProfile:
    """How a reader uses the model's call when it disagrees with the reader's own.

    ``follow_unsure``: probability of adopting the model's call when the reader was unsure
    (confidence below ``sure_from``); ``follow_sure``: the same when sure (small).
    """

    follow_unsure: float
    follow_sure: float
    sure_from: int = SURE_FROM

    def __post_init__(self):
        for name in ("follow_unsure", "follow_sure"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], not {value!r}")
        if self.sure_from not in (1, 2, 3, 4, 5):
            raise ValueError(f"sure_from must be a confidence level from 1 to 5, not {self.sure_from!r}")


def assisted_call(call: str, confidence: int, model_call: str, profile: AssistProfile, u: float) -> tuple[str, int]:
    """The reader's (call, confidence) after seeing ``model_call``; ``u`` is a uniform in [0, 1).

    Agreement: the call is kept, one level surer (at most 5). Disagreement: the reader adopts the
    model's call if ``u`` is below ``follow_unsure`` (confidence < ``sure_from``) or
    ``follow_sure`` (sure), keeping the confidence; otherwise keeps the call, one level less sure
    (at least 1). Raises ``ValueError`` for a call that is neither GBM nor MET.
    """
    for name, value in (("call", call), ("model_call", model_call)):
        if value not in LABELS:
            raise ValueError(f"{name} must be one of {list(LABELS)}, not {value!r}")
    if call == model_call:
        return call, min(5, confidence + 1)
    follow = profile.follow_sure if confidence >= profile.sure_from else profile.follow_unsure
    if u < follow:
        return model_call, confidence
    return call, max(1, confidence - 1)


def _sure_probability(logit_err, sure_from: int):
    """P(confidence >= sure_from | p_err): the perceived error is below that level's bound."""
    if sure_from <= 1:
        return np.ones_like(logit_err)
    bound = dict(_CONFIDENCE_BANDS)[sure_from]
    return ndtr((_logit(bound) - logit_err) / CONFIDENCE_NOISE_SD)


def _prevalence(site: str) -> dict[str, float]:
    counts = get_site(site).paper_test_counts
    total = sum(counts.get(label, 0) for label in LABELS)
    return {label: counts.get(label, 0) / total if total else 1.0 / len(LABELS) for label in LABELS}


def _reader(site: str, reader_id: str) -> ReaderProfile:
    readers = get_site(site).readers
    if reader_id not in readers:
        raise ValueError(f"reader {reader_id!r} has no profile at site {site!r}; known readers there: {sorted(readers)}")
    return readers[reader_id]


def _accuracy_terms(site: str, reader_id: str, model: tuple[float, float], sure_from: int) -> tuple[float, float, float]:
    """(a, s_unsure, s_sure): expected assisted accuracy = a + s_unsure * follow_unsure + s_sure *
    follow_sure, prevalence-weighted over the site's reference population (see ``assist_profile``)."""
    prof = _reader(site, reader_id)
    weights = _prevalence(site)
    a = s_unsure = s_sure = 0.0
    for label, m in zip((GBM, MET), model, strict=True):
        t = _population_typicality(site, label, _REFERENCE_DIFFICULTY)
        logit_err = _error_logit(site, label, t, _REFERENCE_DIFFICULTY, prof)
        p = _sigmoid(logit_err)
        sure = _sure_probability(logit_err, sure_from)
        # following a disagreeing model fixes a wrong reader facing a right model and loses a
        # right reader facing a wrong one
        gain = p * m - (1.0 - p) * (1.0 - m)
        a += weights[label] * float(np.mean(1.0 - p))
        s_unsure += weights[label] * float(np.mean((1.0 - sure) * gain))
        s_sure += weights[label] * float(np.mean(sure * gain))
    return a, s_unsure, s_sure


def expected_assisted_accuracy(site: str, reader_id: str, profile: AssistProfile,
                               model: tuple[float, float]) -> float:
    """Expected accuracy of the assisted reader over the site's reference population, weighted
    by the paper's test-set prevalence, with a model that is right with ``model`` = (sensitivity,
    specificity) independently of the reader given the class. Raises ``ValueError`` for a reader
    without a profile at the site."""
    a, s_unsure, s_sure = _accuracy_terms(site, reader_id, model, profile.sure_from)
    return a + s_unsure * profile.follow_unsure + s_sure * profile.follow_sure


@functools.lru_cache(maxsize=64)
def assist_profile(site: str, reader_id: str) -> AssistProfile:
    """How reader ``reader_id`` of ``site`` follows the model, derived from the paper.

    Derivation. The paper reports each reader's accuracy alone and with the model's result per
    cohort (``ReaderProfile.unassisted`` / ``.assisted``, (sensitivity, specificity) derived from
    the paper's accuracy and recall) and the model's operating point there
    (``SiteProfile.paper_model``). Over the site's reference population (``_REFERENCE_SAMPLE``
    lesions per class at the published difficulty, 0.5), each lesion has the unassisted reader's
    error probability ``p`` (``simulate_reads``) and a probability ``q`` that the reader is sure
    (confidence >= ``SURE_FROM``, from the noisy perceived error). Assume the model is right with
    probability ``m`` (its sensitivity for GBM, specificity for MET) independently of the reader
    given the class. With ``follow_sure = FOLLOW_SURE_RATIO * follow_unsure = r * f``, a lesion's
    assisted accuracy is

        (1 - p) - (1 - p)(1 - m) f g + p m f g,    g = (1 - q) + r q

    (agreement keeps the call; a reader who is right and disagrees with a wrong model loses it
    when following, a wrong reader facing a right model is fixed when following). Averaged over
    the population and weighted by the paper's test-set prevalence (``paper_test_counts``) this
    is linear in ``f``, ``a + s f``, so ``f`` is solved exactly: ``f = (target - a) / s`` with
    ``target`` the prevalence-weighted accuracy of ``ReaderProfile.assisted``. Where that ``f`` is
    outside [0, 1] (the paper's gain needs a reader who follows more than always when unsure, or
    no gain is possible) it is clipped and a ``UserWarning`` says so. (Linear, so no root finder
    is needed.)

    Result (follow_unsure; follow_sure is a fifth of it): siteA reader1 0.94, siteB reader1 0.99;
    reader2 is clipped to 1.0 at both sites, expected assisted accuracy 0.898 (paper 0.910) and
    0.875 (0.880): under independence a weak reader who follows a model of accuracy 0.89 / 0.86
    whenever unsure cannot do much better, and following more often when sure would lower it
    (sure reads are mostly right).

    At run time (``simulate_assisted_reads``) the actual model's calls are used, so the benefit
    depends on the actual model. Raises ``ValueError`` for an unknown site or reader, or a site
    without ``paper_model``.
    """
    site_profile = get_site(site)
    prof = _reader(site, reader_id)
    if site_profile.paper_model is None:
        raise ValueError(f"site {site!r} has no paper_model operating point to derive assisted reads from")
    weights = _prevalence(site)
    target = weights[GBM] * prof.assisted[0] + weights[MET] * prof.assisted[1]
    a, s_unsure, s_sure = _accuracy_terms(site, reader_id, site_profile.paper_model, SURE_FROM)
    s = s_unsure + FOLLOW_SURE_RATIO * s_sure
    f = (target - a) / s if s > 0 else 0.0
    if not 0.0 <= f <= 1.0:
        clipped = min(1.0, max(0.0, f))
        warnings.warn(
            f"{reader_id} at {site}: the paper's assisted accuracy {target:.3f} needs follow_unsure = {f:.3f} "
            f"(accuracy alone {a:.3f}, gain per unit of following {s:.3f}); clipped to {clipped:.3f}, "
            f"expected assisted accuracy {a + s * clipped:.3f}",
            stacklevel=2,
        )
        f = clipped
    return AssistProfile(follow_unsure=f, follow_sure=FOLLOW_SURE_RATIO * f, sure_from=SURE_FROM)


def _uniform(seed: int, reader_id: str, patient_id: str) -> float:
    digest = hashlib.sha256(f"{reader_id}\x1f{patient_id}".encode()).digest()
    return float(np.random.default_rng([seed, int.from_bytes(digest[:8], "big")]).random())


def simulate_assisted_reads(
    reads: Iterable[Mapping],
    model_calls: Mapping[str, str],
    sites: Mapping[str, str],
    seed: int,
) -> list[dict]:
    """Assisted reads made from unassisted ``reads`` and the model's calls.

    ``reads``: rows with reader_id, patient_id, call and confidence (1-5), unassisted;
    ``model_calls``: patient_id -> GBM / MET; ``sites``: patient_id -> site name. Each read goes
    through ``assisted_call`` with the reader's ``assist_profile`` and a uniform drawn from
    ``(seed, sha256 of reader_id and patient_id)``, so a read's outcome does not depend on the
    other rows. Patients without a model call are skipped. Returns rows with reader_id,
    patient_id, assisted (True), call and confidence, in the order of ``reads``.

    Raises ``ValueError``: negative seed, an assisted or confidence-less input row, a patient
    without a site, or a reader with no profile at the patient's site (naming reader, site and
    the known readers).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, not {seed!r}")
    out = []
    for row in reads:
        reader_id, patient_id = row["reader_id"], row["patient_id"]
        if row.get("assisted"):
            raise ValueError(f"read of {patient_id!r} by {reader_id!r} is already assisted; pass unassisted reads")
        if patient_id not in model_calls:
            continue
        if patient_id not in sites:
            raise ValueError(f"patient {patient_id!r} has no site")
        confidence = row.get("confidence")
        if confidence is None:
            raise ValueError(f"read of {patient_id!r} by {reader_id!r} has no confidence")
        profile = assist_profile(sites[patient_id], reader_id)
        call, conf = assisted_call(row["call"], int(confidence), model_calls[patient_id], profile,
                                   _uniform(int(seed), reader_id, patient_id))
        out.append({"reader_id": reader_id, "patient_id": patient_id, "assisted": True, "call": call,
                    "confidence": conf})
    return out


def binary_auc(sensitivity: float, specificity: float) -> float:
    """AUC of a reader who only gives binary calls: the trapezoid through one point."""
    if math.isnan(sensitivity) or math.isnan(specificity):
        return float("nan")
    return 0.5 * (sensitivity + specificity)
