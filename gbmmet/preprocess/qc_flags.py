"""Automatic QC flags of a preprocessed patient, each with its rule (pure functions on numbers).

Rules against the cohort (the lake's other patients preprocessed with the same parameters: those
of the patient's site when there are at least ``MIN_COHORT``, else those of every site; with
fewer the flag is not judged), all the robust z of ``gbmmet.preprocess.qc``
(median, 1.4826 x MAD with a floor, cut-off ``THRESHOLD`` 3.5):

- ``registration_metric``: the final Mattes MI worse than the cohort's (one-sided): the rule of
  ``gbmmet.preprocess.qc.registration_qc`` itself, its cohort without patients it flagged.
- ``registration_shift``: how far the registration moved the CE-T1 from where its header put it,
  the mean displacement over the T2's head (``registration_displacement_mm``), larger than the
  cohort's (one-sided; scale at least ``SHIFT_FLOOR_MM``). Two sequences of one session are close
  in scanner coordinates; a large correction is motion between them, a wrong header or another
  session's image, even where the registration then succeeded: the ``registration_*`` panels say
  which. Measured on the ``tiny`` preset (simulated motion of sd 2-3 mm per axis): a CE-T1 shifted
  15 mm before preprocessing is flagged, the same patient unshifted is not
  (``tests/pipelines/test_qc_report.py``).
- ``ws_width_t1c``, ``ws_width_t2``: WhiteStripe's relative width, sd / mean of its stripe
  (``ws_relative_width``), away from the cohort's on either side (scale at least
  ``WS_WIDTH_FLOOR``): a stripe on the wrong tissue or over two tissues is wider or narrower than
  white matter's. Relative, so that a scanner's gain does not move it.

Rules on the patient alone:

- ``roi_slices``: fewer than ``MIN_ROI_SLICES`` (2) ROI slices: the patient's index rests on one
  slice.
- ``skull_stripped`` (information, not a fault): the images came skull-stripped
  (``gbmmet.preprocess.skull``); WhiteStripe was fit on deep brain, voxels above 0 only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gbmmet.preprocess import qc, skull

THRESHOLD = qc.THRESHOLD
MIN_COHORT = qc.MIN_COHORT
MIN_ROI_SLICES = 2
#: Smallest scale of the shift's z (mm): the cohort's motion may be near-identical (co-registered data).
SHIFT_FLOOR_MM = 1.0
#: Smallest scale of the relative stripe width's z (sd / mean: 0.05 % of the mean).
WS_WIDTH_FLOOR = 0.0005
WARN, INFO = "warn", "info"

FLAG_REG_METRIC = "registration_metric"
FLAG_REG_SHIFT = "registration_shift"
FLAG_WS_T1C = "ws_width_t1c"
FLAG_WS_T2 = "ws_width_t2"
FLAG_ROI_SLICES = "roi_slices"
FLAG_SKULL = "skull_stripped"

RULES = {
    FLAG_REG_METRIC: qc.RULE,
    FLAG_REG_SHIFT: (f"mean displacement of the T2's head by the registration larger than the cohort's by a "
                     f"robust z above {THRESHOLD} (scale at least {SHIFT_FLOOR_MM} mm)"),
    FLAG_WS_T1C: (f"CE-T1 WhiteStripe sd / mean away from the cohort's by a robust |z| above {THRESHOLD} "
                  f"(scale at least {WS_WIDTH_FLOOR})"),
    FLAG_WS_T2: (f"T2 WhiteStripe sd / mean away from the cohort's by a robust |z| above {THRESHOLD} "
                 f"(scale at least {WS_WIDTH_FLOOR})"),
    FLAG_ROI_SLICES: f"fewer than {MIN_ROI_SLICES} ROI slices",
    FLAG_SKULL: (f"T2 already skull-stripped: at least {skull.STRIPPED_ZERO_SHARE:.0%} of the voxels outside "
                 "the head exactly 0 (WhiteStripe fit on deep brain, voxels above 0)"),
}


@dataclass(frozen=True)
class Flag:
    """One rule applied to one patient; ``raised`` is None where it could not be applied."""

    name: str
    raised: bool | None
    value: float
    detail: str  # the numbers behind the verdict
    z: float = float("nan")
    severity: str = WARN

    @property
    def rule(self) -> str:
        return RULES[self.name]

    def to_dict(self) -> dict:
        """As stored (JSON): NaN as null."""
        return {"name": self.name, "raised": self.raised, "value": finite_or_none(self.value),
                "z": finite_or_none(self.z), "severity": self.severity, "detail": self.detail, "rule": self.rule}


def finite_or_none(v):
    """``v`` where it is a finite number (JSON has no NaN), else None; other values as they are."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def registration_displacement_mm(transform, points: np.ndarray) -> float:
    """Mean distance (mm) by which ``transform`` (a SimpleITK rigid / affine transform) moves
    ``points`` (n, 3, physical mm); NaN without points."""
    pts = np.asarray(points, float).reshape(-1, 3)
    if len(pts) == 0:
        return float("nan")
    m = np.array(transform.GetMatrix()).reshape(3, 3)
    c = np.array(transform.GetCenter())
    t = np.array(transform.GetTranslation())
    moved = (pts - c) @ m.T + c + t
    return float(np.linalg.norm(moved - pts, axis=1).mean())


def ws_relative_width(sd, mean) -> float:
    """WhiteStripe's sd over its mean (NaN where either is missing or the mean is 0)."""
    if sd is None or mean is None or not math.isfinite(sd) or not math.isfinite(mean) or mean == 0:
        return float("nan")
    return float(sd / abs(mean))


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def cohort_flag(name: str, value, site_cohort: Sequence, all_cohort: Sequence = (), *, scale_floor: float,
                two_sided: bool = False, site: str = "", threshold: float = THRESHOLD,
                min_cohort: int = MIN_COHORT, unit: str = "") -> Flag:
    """``value`` against the cohort by the robust z (``qc.robust_z``): raised where z (|z| if
    ``two_sided``) is above ``threshold``; not judged (``raised`` None) without a finite value or
    with fewer than ``min_cohort`` finite cohort values (site first, else every site)."""
    site_c, all_c = _finite(site_cohort), _finite(all_cohort)
    cohort, scope = (site_c, f"site {site}" if site else "this site") if len(site_c) >= min_cohort \
        else (all_c, "all sites")
    v = float("nan") if value is None else float(value)
    if not math.isfinite(v) or len(cohort) < min_cohort:
        return Flag(name, None, v, f"not judged: {value if value is None else f'{v:.4g}'}{unit}, "
                                   f"{len(cohort)} cohort patients ({scope}), {min_cohort} needed")
    med, scale, z = qc.robust_z(v, cohort, scale_floor)
    raised = bool(abs(z) > threshold) if two_sided else bool(z > threshold)
    return Flag(name, raised, v, f"{v:.4g}{unit} against the median {med:.4g}{unit} (scale {scale:.3g}) of "
                                 f"{len(cohort)} patients ({scope}): z {z:+.1f}", z=abs(z) if two_sided else z)


def roi_slices_flag(n_slices) -> Flag:
    n = int(n_slices or 0)
    return Flag(FLAG_ROI_SLICES, n < MIN_ROI_SLICES, float(n), f"{n} ROI slice(s)")


def skull_stripped_flag(zero_share) -> Flag:
    share = float("nan") if zero_share is None else float(zero_share)
    return Flag(FLAG_SKULL, skull.is_skull_stripped(share), share,
                f"{share:.1%} of the T2's voxels outside the head exactly 0", severity=INFO)


def patient_flags(patient: dict, cohort: Sequence[dict]) -> list[Flag]:
    """Every flag of ``patient`` against ``cohort`` (dicts with patient_id, site,
    registration_metric, registration_suspect, displacement_mm, ws_t1c_sd, ws_t1c_mean, ws_t2_sd,
    ws_t2_mean, n_slices, background_zero_share; the patient itself may be among them, it is left
    out)."""
    pid, site = patient["patient_id"], patient["site"]
    others = [r for r in cohort if r["patient_id"] != pid]
    mine = [r for r in others if r["site"] == site]

    def values(rows, key):
        return [key(r) for r in rows]

    reg = qc.registration_qc(patient.get("registration_metric"),
                             qc.cohort_values(mine), qc.cohort_values(others), site=site)
    flags = [Flag(FLAG_REG_METRIC, reg.suspect, reg.metric, reg.describe(), z=reg.z)]
    shift = lambda r: r.get("displacement_mm")  # noqa: E731
    flags.append(cohort_flag(FLAG_REG_SHIFT, shift(patient), values(mine, shift), values(others, shift),
                             scale_floor=SHIFT_FLOOR_MM, site=site, unit=" mm"))
    for name, seq in ((FLAG_WS_T1C, "t1c"), (FLAG_WS_T2, "t2")):
        def width(r, seq=seq):
            return ws_relative_width(r.get(f"ws_{seq}_sd"), r.get(f"ws_{seq}_mean"))
        flags.append(cohort_flag(name, width(patient), values(mine, width), values(others, width),
                                 scale_floor=WS_WIDTH_FLOOR, two_sided=True, site=site))
    flags.append(roi_slices_flag(patient.get("n_slices")))
    flags.append(skull_stripped_flag(patient.get("background_zero_share")))
    return flags


def badness(flags: Sequence[Flag]) -> tuple[int, float]:
    """Sort key, larger is worse: warnings raised, then the largest finite z of any rule."""
    raised = sum(1 for f in flags if f.raised and f.severity == WARN)
    zs = [f.z for f in flags if math.isfinite(f.z)]
    return raised, max(zs) if zs else float("-inf")
