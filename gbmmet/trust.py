"""When not to trust a call: the settings and the per-cohort summary evaluation writes.

The parts are in their own modules (each pure, each tested on small arrays):

- ``gbmmet.uncertainty``: the fold ensemble's disagreement per patient (spread of the fold
  models' own predictive indices; slice entropy split into aleatoric and epistemic parts);
- ``gbmmet.ood``: a distance of a patient's slices to the training slices in the backbone's
  feature space, with a threshold fixed on validation patients;
- ``gbmmet.conformal``: class-conditional split-conformal sets at 90 % and 95 %;
- ``gbmmet.selective``: the risk-coverage curve and the deferral rule.

This module holds what ties them together: ``TrustSettings`` (recorded with the evaluation),
``conformal_calibration`` (which patients calibrate the sets), ``cohort_rows`` (a cohort's metric
and curve rows) and ``explain`` (the plain-language line of one patient, for ``gbmmet predict``
and the dashboard).

Conformal calibration patients, and the exchangeability they assume
------------------------------------------------------------------
Split conformal covers at the nominal level when the calibration patients and the patient at hand
are exchangeable: drawn from one population and scored by one function. ``"val"`` calibrates on
the validation patients, scored by the same 5-fold ensemble as the test patients: exchangeable
with the internal test, but few (8 in the demo preset, 48 in the paper's), and a class needs at
least ``1 / (1 - level) - 1`` patients (19 at 95 %) before its label can ever be left out.
``"oof"`` (the default) calibrates on the training patients' out-of-fold index, each from the one
fold model that did not train on it: many more patients (40 / 450), but one fold model is not the
ensemble, so the two scores are not exactly exchangeable; the validation cohort, never used to
calibrate in that mode, is where the coverage is checked. Evaluation reports the coverage it
reached per cohort with Wilson intervals. An external site breaks exchangeability by design
(another scanner, another population): its coverage is measured, not promised.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from gbmmet import constants as C
from gbmmet.ood import OodSettings

CALIBRATION_SETS = ("oof", "val")


@dataclass(frozen=True)
class TrustSettings:
    """What the trust columns depend on besides the data; recorded with the evaluation.

    Parameters:
        levels: the conformal sets' coverage levels.
        deferral_level: the level whose set the deferral rule reads (one of ``levels``).
        calibration: ``"oof"`` (training patients, out of fold) or ``"val"`` (validation
            patients): who calibrates the conformal sets (see the module's docstring).
        ood: the out-of-distribution detector's ``gbmmet.ood.OodSettings``.
    """

    levels: tuple[float, ...] = C.CONFORMAL_LEVELS
    deferral_level: float = C.DEFERRAL_LEVEL
    calibration: str = "oof"
    ood: OodSettings = field(default_factory=OodSettings)

    def __post_init__(self):
        if self.calibration not in CALIBRATION_SETS:
            raise ValueError(f"The 'calibration' parameter must be one of {CALIBRATION_SETS}. "
                             f"Got {self.calibration!r} instead.")
        if self.deferral_level not in self.levels:
            raise ValueError(f"The 'deferral_level' parameter must be one of the levels {self.levels}. "
                             f"Got {self.deferral_level} instead.")
        if not all(0.5 < lv < 1 for lv in self.levels):
            raise ValueError(f"The 'levels' parameter must hold levels in (0.5, 1). Got {self.levels} instead.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrustSettings:
        d = dict(d)
        if "levels" in d:
            d["levels"] = tuple(d["levels"])
        d["ood"] = OodSettings(**d.get("ood", {}))
        return cls(**d)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value) in ("<NA>", "NaT")


def labels_of(set_string) -> tuple[str, ...] | None:
    """The labels of a stored set: ``"GBM|MET"`` -> ``("GBM", "MET")``, ``""`` -> ``()``; None
    where there is no set (null: the run has no conformal fit)."""
    if _missing(set_string):
        return None
    return tuple(x for x in str(set_string).split(C.SET_SEPARATOR) if x)


def cohort_rows(calls, y, sets: dict[float, list[str]], ood, entropy, settings: TrustSettings
                ) -> tuple[list[dict], list[dict], object]:
    """One cohort's trust rows: ``metrics`` rows (conformal coverage and set sizes per level,
    deferral), ``calibration`` rows of the risk-coverage curve, and the ``Deferral``.

    Args:
        calls: the model's call per patient (``C.GBM`` / ``C.MET``) at the leakage-free cutoff.
        y: 1 where the patient has GBM.
        sets: level -> each patient's set string (empty dict: no conformal fit).
        ood: per patient True / False, or None where no distance was computed.
        entropy: per patient total predictive entropy (orders the curve: most certain first).
    """
    from gbmmet.conformal import coverage_rows
    from gbmmet.selective import deferral, risk_coverage

    y = np.asarray(y, int)
    rows = [r for level, s in sorted(sets.items()) for r in coverage_rows(s, y, level)]
    chosen = sets.get(settings.deferral_level)
    defer = None
    if chosen is not None:  # without sets the rule has no "not sure" to act on: no deferral rows
        defer = deferral(np.asarray([c == C.GBM for c in calls], int), y, chosen, ood)
        rows += defer.rows()
    correct = np.asarray([c == (C.GBM if t else C.MET) for c, t in zip(calls, y, strict=True)])
    curve = []
    if len(y):
        rc = risk_coverage(correct, np.asarray(entropy, float))
        curve = [{"curve": C.CURVE_RISK_COVERAGE, "x": float(x), "y": float(a), "n": int(n),
                  "treat_all": None, "treat_none": None}
                 for x, a, n in zip(rc.coverage, rc.accuracy, rc.n_kept, strict=True)]
    return rows, curve, defer


#: The kinds of ``explain``'s line.
DEFER, ONE_LABEL, DISAGREES, UNKNOWN = "defer", "one_label", "disagrees", "unknown"
NOT_COMPUTED = "not computed for this run"


def _ood_reasons(score, threshold, distance, contrast) -> list[str]:
    """Why a flagged patient is out of distribution, in words (``gbmmet.ood.ood_reasons``)."""
    from gbmmet.ood import FEATURES, SEQUENCES, ood_reasons

    keys = ood_reasons(distance, contrast, threshold)
    why = []
    if SEQUENCES in keys:
        why.append(f"unusual contrast, CE-T1 brighter than T2 around the ROI (T2 - CE-T1 {contrast:.3g} < 0, "
                   "WhiteStripe units): check that the two sequences are not swapped or mislabelled (a "
                   "haemorrhagic or melanotic lesion can also do this)")
    if FEATURES in keys:
        why.append(f"outside what the model was trained on (distance {distance:.3g} > threshold {threshold:.3g})")
    if not why:  # evaluated before the score had two parts
        dist = "" if _missing(score) or _missing(threshold) else f" (distance {score:.3g} > threshold {threshold:.3g})"
        why.append(f"outside what the model was trained on{dist}")
    return why


def explain(set_string, level: float, ood, score=None, threshold=None, call: str | None = None,
            distance=None, contrast=None) -> tuple[str, str]:
    """Whether to trust one patient's call, in one plain-language line, and its kind.

    Args:
        set_string: the patient's conformal set at ``level`` (null: not computed).
        level: the conformal level the deferral rule reads.
        ood, score, threshold: the out-of-distribution flag, score and threshold (null: not
            computed).
        call: the call at the leakage-free cutoff, where known.
        distance, contrast: the score's two parts, the feature distance and the sequence
            contrast (``gbmmet.ood``), which say why a patient is flagged (null: not stored; a
            contrast is stored only where the sequence check was on).

    Returns:
        ``(kind, line)``: ``DEFER`` (the set is not one label, or the patient lies outside the
        training data: the deferral rule), ``ONE_LABEL`` (one label, inside), ``DISAGREES`` (one
        label, not ``call``: the rule keeps the call, the line says to read it with care), or
        ``UNKNOWN`` (nothing computed).
    """
    labels = labels_of(set_string)
    ood = None if _missing(ood) else bool(ood)
    pct = f"{round(level * 100)} %"
    if labels is None and ood is None:
        return UNKNOWN, "Not computed for this run: no conformal set and no distance to the training data."
    why = _ood_reasons(score, threshold, distance, contrast) if ood else []
    if labels is not None and len(labels) == 2:
        why.append(f"not sure: the {pct} set holds both GBM and MET")
    elif labels == ():
        why.append(f"neither label fits at {pct}: the set is empty, the patient is unlike both classes")
    if why:
        text = "; and ".join(why)
        return DEFER, text[0].upper() + text[1:] + " \u2014 defer to the readers."
    if labels is None:
        return UNKNOWN, f"Inside what the model was trained on; the conformal set is {NOT_COMPUTED}."
    line, kind = f"One label at {pct}: {labels[0]}", ONE_LABEL
    if isinstance(call, str) and call and call != labels[0]:
        line += f" (but the call at the validation cutoff is {call}: the two disagree, read it with care)"
        kind = DISAGREES
    if ood is None:
        line += f"; distance to the training data {NOT_COMPUTED}"
    return kind, line + "."
