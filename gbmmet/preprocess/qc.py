"""Registration QC: does the registered CE-T1 belong to the T2's patient?

The rule (``registration_qc``), applied by ``gbmmet preprocess`` to every patient it processes
and by ``gbmmet predict`` to its one patient:

    z = (m - median(cohort)) / max(1.4826 * MAD(cohort), SCALE_FLOOR)
    suspect  <=>  z > THRESHOLD (3.5)

``m`` is the final Mattes mutual information of the rigid registration of CE-T1 onto T2
(``RegistrationResult.metric``, ``preprocess_runs.registration_metric``; more negative is a
better match, so a large positive ``z`` is a match worse than the cohort's). The cohort is the
lake's other patients preprocessed with the same parameters and not themselves suspect: those of
the patient's site when there are at least ``MIN_COHORT`` (8), else those of every site; with
fewer the rule is not applied (the verdict stays unknown and is given on a later run).

Why this metric and this rule (measured on the ``tiny`` synthetic preset, 2 mm grid, 20 patients
each with its own CE-T1 and with the next patient's CE-T1 of its site): the final Mattes value
separated the pairs best, same-patient -1.01 to -1.15 and swapped -0.47 to -0.83; as this rule
computes z (each patient left out of its cohort; the 4-patient site falls back to all sites),
same-patient pairs lay at -1.8 to +2.8 and swapped pairs at +6.1 to +24.1: all 20 swapped flagged,
no same-patient one. Normalised mutual information of the registered CE-T1 with the T2 inside the
head mask separated less (1.08-1.15 vs 1.02-1.07; robust z of swapped pairs +3.1 to +6.2, of
same-patient ones down to -2.4), inside the ROI slices less still (swapped z +2.0 to +3.5);
correlations did not separate. The value itself moves with scanner and protocol, hence a cohort of the same site
rather than a fixed cut-off; 3.5 is the usual cut-off of the modified z-score (Iglewicz and
Hoaglin), between the two measured ranges.

A suspect patient is flagged, not failed: the rule is relative to a cohort, and a patient who is
merely unusual (a large resection cavity, motion, another protocol) lands in the same tail; its
slices stay in the lake with ``preprocess_runs.registration_suspect`` true and a warning that
gives the rule and the numbers, for a person to look at the overlay and for training and
evaluation to leave it out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Robust z above which a registration is suspect (the modified z-score's usual cut-off).
THRESHOLD = 3.5
#: Fewest cohort patients the median and MAD are taken from.
MIN_COHORT = 8
#: Smallest scale of the z-score (Mattes MI units), so a cohort of near-identical values does
#: not turn a negligible difference into a large z.
SCALE_FLOOR = 0.02
#: ``kind`` of the warning recorded for a suspect patient (``gbmmet.errors.RegistrationSuspectError``'s).
WARNING_KIND = "registration_suspect"

RULE = (f"final Mattes MI of CE-T1 onto T2 worse than the cohort's by a robust z "
        f"(median, 1.4826 x MAD) above {THRESHOLD}")


@dataclass(frozen=True)
class RegistrationQC:
    """The rule applied to one patient. ``suspect`` is None where it could not be applied."""

    metric: float
    median: float
    scale: float
    z: float
    n_cohort: int
    scope: str  # "site siteA", "all sites"
    suspect: bool | None
    threshold: float = THRESHOLD

    def describe(self) -> str:
        """One line: the verdict, the rule and its numbers."""
        if self.suspect is None:
            return (f"registration QC not applied: {self.n_cohort} cohort patients ({self.scope}), "
                    f"{MIN_COHORT} needed; Mattes MI {self.metric:.3f}")
        verdict = "SUSPECT (is the CE-T1 this patient's?)" if self.suspect else "ok"
        return (f"registration QC {verdict}: Mattes MI {self.metric:.3f} against the median "
                f"{self.median:.3f} (scale {self.scale:.3f}) of {self.n_cohort} patients ({self.scope}): "
                f"z {self.z:+.1f}, suspect above {self.threshold}")

    def warning(self, who: str = "") -> dict[str, str]:
        """The ``preprocess_runs.warnings`` entry of a suspect patient; ``who`` names the patient
        and its files (e.g. "patient p1: CE-T1 a.nii.gz onto T2 b.nii.gz: ")."""
        return {"kind": WARNING_KIND, "message": f"{who}{self.describe()} [rule: {RULE}]"}


def robust_z(value: float, cohort: Sequence[float], scale_floor: float = SCALE_FLOOR
             ) -> tuple[float, float, float]:
    """(median, scale, z) of ``value`` against ``cohort``: scale is 1.4826 x MAD, at least
    ``scale_floor``."""
    arr = np.asarray(cohort, dtype=float)
    med = float(np.median(arr))
    scale = max(1.4826 * float(np.median(np.abs(arr - med))), scale_floor)
    return med, scale, (float(value) - med) / scale


def registration_qc(metric: float, site_cohort: Sequence[float], all_cohort: Sequence[float] = (), *,
                    site: str = "", threshold: float = THRESHOLD, min_cohort: int = MIN_COHORT) -> RegistrationQC:
    """Apply the rule (module docstring) to a patient's final Mattes value ``metric``.

    ``site_cohort``: the metric of the other patients of its site; ``all_cohort``: of every site
    (used when the site has fewer than ``min_cohort``). Non-finite values are ignored.

    Returns:
        RegistrationQC, ``suspect`` None when neither cohort is large enough or ``metric`` is NaN.
    """
    site_c = [v for v in site_cohort if v is not None and math.isfinite(v)]
    all_c = [v for v in all_cohort if v is not None and math.isfinite(v)]
    cohort, scope = (site_c, f"site {site}" if site else "this site") if len(site_c) >= min_cohort \
        else (all_c, "all sites")
    if metric is None or not math.isfinite(metric) or len(cohort) < min_cohort:
        n = max(len(site_c), len(all_c))
        return RegistrationQC(float("nan") if metric is None else float(metric), float("nan"), float("nan"),
                              float("nan"), n, scope, None, threshold)
    med, scale, z = robust_z(metric, cohort)
    return RegistrationQC(float(metric), med, scale, z, len(cohort), scope, bool(z > threshold), threshold)


def latest_ok_runs(rows, params_hash: str) -> dict[str, dict]:
    """Per patient, its latest ok ``preprocess_runs`` row (attempt ids sort by time) made with
    ``params_hash``; ``rows`` are dicts with at least patient_id, attempt_id, status, params_hash."""
    latest: dict[str, dict] = {}
    for r in rows:
        if r["status"] != "ok" or r["params_hash"] != params_hash:
            continue
        pid = r["patient_id"]
        if pid not in latest or r["attempt_id"] > latest[pid]["attempt_id"]:
            latest[pid] = r
    return latest


def cohort_values(rows, exclude: str | None = None, site: str | None = None) -> list[float]:
    """The registration metrics of ``rows`` (latest ok rows) that are not suspect, without patient
    ``exclude``, of site ``site`` (None: every site)."""
    return [r["registration_metric"] for r in rows
            if r["patient_id"] != exclude and r.get("registration_suspect") is not True
            and (site is None or r["site"] == site) and r["registration_metric"] is not None]
