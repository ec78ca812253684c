"""One patient through every preprocessing step (no Ray, no lake: the Ray task wraps this).

read (LPS) -> N4 -> 1 mm isotropic -> rigid CE-T1 onto T2 -> WhiteStripe -> ROI slices
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from gbmmet import io
from gbmmet.errors import ImageContentError, NormalizationError, RoiError
from gbmmet.preprocess import bias, register, resample, skull, slices, whitestripe
from gbmmet.preprocess.params import PreprocessParams

STEPS = ("read", "n4", "resample", "register", "whitestripe", "slices")


@dataclass
class PatientOutput:
    """Slices (n, channels, size, size) uint8 with their boxes, and the QC numbers."""

    images: np.ndarray
    boxes: list[slices.RoiBox]
    seconds: dict[str, float] = field(default_factory=dict)  # wall seconds per step (``STEPS``)
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # this process's CPU seconds per step
    registration_metric: float = float("nan")
    registration: sitk.Euler3DTransform | None = None
    ws: dict[str, whitestripe.WhiteStripe] = field(default_factory=dict)
    background_zero_share: float = float("nan")  # of the T2 (``gbmmet.preprocess.skull``)
    skull_stripped: bool = False
    qc: QCInputs | None = None  # only with ``preprocess_patient(..., qc=True)``


@dataclass(frozen=True)
class QCInputs:
    """What the QC panels (``gbmmet.preprocess.qc_panels``) are drawn from: the images before and
    after N4 on their own LPS grids, the CE-T1 on the 1 mm grid before registration, the T2 on it,
    and, per sequence, the histogram of the voxels WhiteStripe was fit on (counts, bin edges); and
    the T2's head mask on the 1 mm grid block-averaged 2x (``_head_2x``)."""

    t1_raw: sitk.Image
    t1_n4: sitk.Image
    t2_raw: sitk.Image
    t2_n4: sitk.Image
    t1_iso: sitk.Image
    t2_iso: sitk.Image
    histograms: dict[str, tuple[np.ndarray, np.ndarray]]
    head: sitk.Image


def _fit_mask(t2_iso: sitk.Image, roi_iso: sitk.Image, p: PreprocessParams, patient_id: str | None,
              head: sitk.Image | None = None) -> tuple[np.ndarray, float]:
    """Where WhiteStripe is fit: inside the head eroded (no scalp, no skull), outside the ROI; and
    the T2's share of exact zeros outside the head (``skull``: 0.95 and more, skull-stripped).
    A skull-stripped brain is eroded too (why: ``gbmmet.preprocess.skull``).

    Distances are computed on a 2x block-averaged grid (a quarter of a second instead of a
    second and a half) and the mask brought back to the full grid. ``head``: ``_head_2x(t2_iso)``
    where the caller has it already.
    """
    small = sitk.BinShrink(t2_iso, [2] * 3)
    roi_small = sitk.Cast(sitk.BinShrink(sitk.Cast(roi_iso, sitk.sitkFloat32), [2] * 3) > 0, sitk.sitkUInt8)
    head = bias.head_mask(small) if head is None else head
    zero_share = skull.background_zero_share(sitk.GetArrayViewFromImage(small), sitk.GetArrayViewFromImage(head))
    inside = sitk.SignedMaurerDistanceMap(head, insideIsPositive=True, squaredDistance=False, useImageSpacing=True)
    depth = sitk.GetArrayFromImage(inside)
    roi_dist = sitk.SignedMaurerDistanceMap(roi_small, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    away = sitk.GetArrayFromImage(roi_dist) > p.whitestripe.roi_margin_mm
    for erosion in (p.whitestripe.head_erosion_mm, p.whitestripe.head_erosion_mm / 2, 0.0):
        mask = (depth > erosion) & away
        if mask.sum() > 200:
            return _unshrink_2x(mask, t2_iso.GetSize()[::-1]), zero_share
    raise NormalizationError(f"patient {patient_id}: no brain left to fit WhiteStripe on outside the ROI",
                             patient_id=patient_id)


def _head_2x(t2_iso: sitk.Image) -> sitk.Image:
    """The head mask (``bias.head_mask``) of ``t2_iso`` block-averaged 2x, as ``_fit_mask`` uses it."""
    return bias.head_mask(sitk.BinShrink(t2_iso, [2] * 3))


def _unshrink_2x(small: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A mask on a 2x block-averaged grid (``sitk.BinShrink``) back on the full grid of ``shape``:
    each voxel takes its block's value; the last voxel of an odd axis, outside every block, is
    False (what nearest-neighbour resampling gives, without its 0.05 s per 7 M voxels)."""
    out = np.zeros(shape, dtype=bool)
    up = small.repeat(2, axis=0).repeat(2, axis=1).repeat(2, axis=2)
    out[:up.shape[0], :up.shape[1], :up.shape[2]] = up
    return out


def preprocess_patient(t1c_path: str, t2_path: str, roi_path: str, params: PreprocessParams | None = None,
                       *, patient_id: str | None = None, qc: bool = False) -> PatientOutput:
    """Run one patient through every step; with ``qc``, keep what the QC panels are drawn from
    (``PatientOutput.qc``: references to images made anyway, and two histograms).

    Raises:
        PatientError subclasses naming the patient and the file: missing or unreadable images,
        truncated files, unusable headers (spacing, orientation, sform / qform, voxel type), bad
        content (2D, 4D, NaN), empty ROI, ROI off the T2's grid or outside it, images that do not
        overlap.

    Warns:
        InputWarning: questionable but usable input (e.g. ROI boxes clipped to the T2).
    """
    p = (params or PreprocessParams()).check()
    sec: dict[str, float] = {}
    cpu: dict[str, float] = {}
    t, t_cpu = time.perf_counter(), time.process_time()

    def lap(step):
        nonlocal t, t_cpu
        now, now_c = time.perf_counter(), time.process_time()
        sec[step], cpu[step] = now - t, now_c - t_cpu
        t, t_cpu = now, now_c

    t2_native = io.read_native(t2_path, patient_id=patient_id, role="T2")
    roi_native = io.read_roi(roi_path, t2_native, patient_id=patient_id)
    t1 = io.read_image(t1c_path, patient_id=patient_id, role="CE-T1")
    t2, roi = io.canonical(t2_native), io.canonical(roi_native)
    if slices.slice_axis(t2) != 2 and max(t2.GetSpacing()) > 1.5 * min(t2.GetSpacing()):
        raise ImageContentError(f"patient {patient_id}: T2 {t2_path} is not an axial acquisition "
                                f"(spacing {t2.GetSpacing()} in LPS order); ROI slices need axial T2 slices",
                                patient_id=patient_id, path=t2_path)
    boxes = slices.roi_boxes(roi)
    if not boxes:
        raise RoiError(f"patient {patient_id}: ROI {roi_path} is empty", patient_id=patient_id, path=roi_path)
    lap("read")

    t1_raw = t1
    n4 = {"backend": p.n4.backend, "shrink": p.n4.shrink, "iterations": p.n4.iterations,
          "convergence": p.n4.convergence, "mask_mm": p.n4.mask_mm, "field_mm": p.n4.field_mm}
    t1 = bias.n4_correct(t1, **n4)
    t2_n4 = bias.n4_correct(t2, **n4)
    lap("n4")

    t1_iso = resample.resample_isotropic(t1, p.iso_mm)
    t2_iso = resample.resample_isotropic(t2_n4, p.iso_mm)
    roi_iso = resample.resample_isotropic(roi, p.iso_mm, mask=True)
    lap("resample")

    r = p.registration
    factor = max(1, int(round(r.resolution_mm / p.iso_mm)))
    t2_reg = sitk.BinShrink(t2_iso, [factor] * 3) if factor > 1 else t2_iso
    t1_reg = sitk.BinShrink(t1_iso, [factor] * 3) if factor > 1 else t1_iso
    reg = register.register_rigid(t2_reg, t1_reg, shrink=r.shrink, smoothing_mm=r.smoothing_mm,
                                  sampling=r.sampling, bins=r.bins, iterations=r.iterations, min_step=r.min_step,
                                  gradient_filter=r.gradient_filter, sampling_strategy=r.sampling_strategy,
                                  seed=r.seed, threads=r.threads,
                                  patient_id=patient_id)
    t1_on_t2 = sitk.Resample(t1_iso, t2_iso, reg.transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    lap("register")

    head = _head_2x(t2_iso)
    mask, zero_share = _fit_mask(t2_iso, roi_iso, p, patient_id, head)
    w = p.whitestripe
    fit = {"t1c": (sitk.GetArrayViewFromImage(t1_on_t2), mask & (sitk.GetArrayViewFromImage(t1_on_t2) > 0), "t1"),
           "t2": (sitk.GetArrayViewFromImage(t2_iso), mask & (sitk.GetArrayViewFromImage(t2_iso) > 0), "t2")}
    ws = {name: whitestripe.fit_whitestripe(data, where, modality, width=w.width, max_samples=w.kde_samples,
                                            kde_bins=w.kde_bins, patient_id=patient_id)
          for name, (data, where, modality) in fit.items()}
    lap("whitestripe")

    s = p.slices
    volumes = {"t1c": t1_on_t2, "t2": t2_iso}
    images = np.empty((len(boxes), len(s.channels), s.size, s.size), dtype=np.uint8)
    for n, box in enumerate(boxes):
        grid = slices.slice_grid(t2, box, s.size)
        sampled = {name: ws[name].apply(slices.sample_slice(vol, grid)) for name, vol in volumes.items()}
        for c, name in enumerate(s.channels):
            images[n, c] = slices.to_uint8(sampled[name], *s.ws_range[name])
    lap("slices")
    kept = QCInputs(t1_raw, t1, t2, t2_n4, t1_iso, t2_iso, {name: _histogram(data[where]) for name, (data, where, _) in
                                                           fit.items()}, head) if qc else None
    return PatientOutput(images=images, boxes=boxes, seconds=sec, cpu_seconds=cpu, registration_metric=reg.metric,
                         registration=reg.transform, ws=ws, background_zero_share=zero_share,
                         skull_stripped=skull.is_skull_stripped(zero_share), qc=kept)


def _histogram(values: np.ndarray, bins: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """(counts, edges) of ``values`` between their 0.5th and 99.5th percentiles."""
    lo, hi = np.percentile(values, (0.5, 99.5))
    return np.histogram(values, bins=bins, range=(float(lo), float(hi) if hi > lo else float(lo) + 1.0))
