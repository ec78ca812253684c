"""Rigid registration of CE-T1 onto T2: Mattes mutual information, multi-resolution, seeded.

Deterministic: the metric samples a fixed subset of voxels (seeded: a regular grid, each sample
moved at random within its voxel, or random points) and the method runs on a fixed number of
threads, so the same inputs give the same transform on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from gbmmet.errors import RegistrationError


@dataclass(frozen=True)
class RegistrationResult:
    transform: sitk.Euler3DTransform  # maps T2 (fixed) points to CE-T1 (moving) points
    metric: float  # final Mattes MI (more negative = better); the QC rule compares it with the cohort (qc.py)
    iterations: int
    stop: str


def physical_bounds(img: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned physical bounding box (LPS mm) of an image's voxel centres."""
    size = np.array(img.GetSize()) - 1
    corners = [img.TransformContinuousIndexToPhysicalPoint([float(c) for c in (i, j, k)])
               for i in (0, size[0]) for j in (0, size[1]) for k in (0, size[2])]
    pts = np.array(corners)
    return pts.min(0), pts.max(0)


def overlap_fraction(a: sitk.Image, b: sitk.Image) -> float:
    """Volume of the intersection of the two bounding boxes over the smaller box."""
    (a0, a1), (b0, b1) = physical_bounds(a), physical_bounds(b)
    inter = np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0.0, None).prod()
    smaller = min(np.prod(a1 - a0), np.prod(b1 - b0))
    return float(inter / smaller) if smaller > 0 else 0.0


def register_rigid(fixed: sitk.Image, moving: sitk.Image, *, shrink=(4, 2), smoothing_mm=(2.0, 1.0),
                   sampling: float = 0.1, bins: int = 32, iterations: int = 200, min_step: float = 0.01,
                   gradient_filter: bool = False, sampling_strategy: str = "regular", seed: int = 42,
                   threads: int = 1, patient_id: str | None = None) -> RegistrationResult:
    """Register ``moving`` (CE-T1) onto ``fixed`` (T2).

    ``min_step``: the optimizer stops when its step falls under it (mm); ``gradient_filter``: the
    metric's gradients from gradient images of the whole images (True) or at its sampled points;
    ``sampling_strategy``: "regular" (a grid, each sample moved at random within its voxel) or
    "random" (anywhere), both seeded by ``seed``.

    Raises:
        RegistrationError: the images' fields of view do not overlap (under 20 % of the smaller).
    """
    who = f"patient {patient_id}: " if patient_id else ""
    overlap = overlap_fraction(fixed, moving)
    if overlap < 0.2:
        raise RegistrationError(
            f"{who}CE-T1 and T2 do not overlap ({overlap:.0%} of the smaller field of view); "
            "are they the same patient and session?", patient_id=patient_id)
    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    initial = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY)
    reg = sitk.ImageRegistrationMethod()
    reg.SetNumberOfThreads(int(threads))
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=int(bins))
    strategies = {"regular": reg.REGULAR, "random": reg.RANDOM}
    if sampling_strategy not in strategies:
        raise ValueError(f"The 'sampling_strategy' parameter of register_rigid must be one of {sorted(strategies)}. "
                         f"Got {sampling_strategy!r} instead.")
    reg.SetMetricSamplingStrategy(strategies[sampling_strategy])
    reg.SetMetricSamplingPercentage(float(sampling), int(seed))
    reg.SetMetricUseFixedImageGradientFilter(bool(gradient_filter))
    reg.SetMetricUseMovingImageGradientFilter(bool(gradient_filter))
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=float(min_step), numberOfIterations=int(iterations), relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([int(s) for s in shrink])
    reg.SetSmoothingSigmasPerLevel([float(s) for s in smoothing_mm])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(initial, inPlace=False)
    # The pyramid's internal filters follow ITK's global thread count, not the method's: pin it
    # too, so the sums run in the same order whatever the machine.
    saved = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    try:
        out = reg.Execute(fixed, moving)
    except RuntimeError as exc:
        raise RegistrationError(f"{who}registration of CE-T1 onto T2 failed: {str(exc).splitlines()[-1][:200]}",
                                patient_id=patient_id) from None
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(saved)
    composite = sitk.CompositeTransform(out)
    euler = sitk.Euler3DTransform(composite.GetNthTransform(0)) if composite.GetNumberOfTransforms() == 1 \
        else _flatten(composite)
    return RegistrationResult(transform=euler, metric=float(reg.GetMetricValue()),
                              iterations=int(reg.GetOptimizerIteration()),
                              stop=reg.GetOptimizerStopConditionDescription())


def _flatten(composite: sitk.CompositeTransform) -> sitk.Euler3DTransform:
    """A composite of rigid transforms as one Euler transform (matrix product)."""
    m, t = np.eye(3), np.zeros(3)
    for n in range(composite.GetNumberOfTransforms() - 1, -1, -1):
        e = sitk.Euler3DTransform(composite.GetNthTransform(n))
        mi = np.array(e.GetMatrix()).reshape(3, 3)
        c = np.array(e.GetCenter())
        ti = np.array(e.GetTranslation()) + c - mi @ c
        m, t = mi @ m, mi @ t + ti
    out = sitk.Euler3DTransform()
    out.SetMatrix(m.ravel().tolist())
    out.SetTranslation(t.tolist())
    return out
