"""ROI slices: one 3 x 224 x 224 image per T2 slice that carries the ROI.

Slices are taken at the T2's own slice positions (the slices a radiologist drew on), on the
bounding rectangle of the ROI in that slice, made square about its centre, and sampled at
``size`` x ``size`` from the 1 mm volumes. Arrays are (channel, row, column) with rows running
anterior to posterior and columns from the patient's right to left (radiological view of an
axial slice, as the LPS-oriented volume gives them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class RoiBox:
    slice_index: int  # index along the T2's slice axis (LPS-oriented volume)
    i_min: int
    i_max: int
    j_min: int
    j_max: int
    z_mm: float  # superior-inferior position of the slice centre (LPS z, mm)
    side_mm: float  # side of the square crop


def slice_axis(t2: sitk.Image) -> int:
    """The slice axis of a 2D acquisition: the axis with the largest spacing (2 = k)."""
    return int(np.argmax(t2.GetSpacing()))


def roi_boxes(roi: sitk.Image) -> list[RoiBox]:
    """The ROI's bounding rectangle on every axial slice (k) of the LPS-oriented T2 grid."""
    arr = sitk.GetArrayViewFromImage(roi)  # (k, j, i)
    sx, sy, _ = roi.GetSpacing()
    boxes = []
    for k in np.nonzero(arr.reshape(arr.shape[0], -1).any(axis=1))[0]:
        rows, cols = np.nonzero(arr[k])
        i0, i1, j0, j1 = int(cols.min()), int(cols.max()), int(rows.min()), int(rows.max())
        center = roi.TransformContinuousIndexToPhysicalPoint([(i0 + i1) / 2.0, (j0 + j1) / 2.0, float(k)])
        side = max((i1 - i0 + 1) * sx, (j1 - j0 + 1) * sy)
        boxes.append(RoiBox(int(k), i0, i1, j0, j1, float(center[2]), float(side)))
    return boxes


def slice_grid(t2: sitk.Image, box: RoiBox, size: int) -> sitk.Image:
    """A size x size x 1 grid on the T2 slice of ``box``, covering its square."""
    direction = np.array(t2.GetDirection()).reshape(3, 3)
    center = np.array(t2.TransformContinuousIndexToPhysicalPoint(
        [(box.i_min + box.i_max) / 2.0, (box.j_min + box.j_max) / 2.0, float(box.slice_index)]))
    spacing = box.side_mm / size
    half = box.side_mm / 2.0 - spacing / 2.0
    origin = center - direction[:, 0] * half - direction[:, 1] * half
    grid = sitk.Image([size, size, 1], sitk.sitkUInt8)
    grid.SetSpacing([spacing, spacing, float(t2.GetSpacing()[2])])
    grid.SetDirection(t2.GetDirection())
    grid.SetOrigin(origin.tolist())
    return grid


def sample_slice(volume: sitk.Image, grid: sitk.Image, transform: sitk.Transform | None = None) -> np.ndarray:
    """``volume`` sampled on ``grid`` (linear), as a (size, size) float32 array."""
    out = sitk.Resample(volume, grid, transform or sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)[0]


def to_uint8(ws: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The fixed mapping from WhiteStripe units to stored bytes (``SliceParams.ws_range``)."""
    return np.clip(np.rint((ws - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def from_uint8(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Inverse of ``to_uint8`` (to within half a step)."""
    return (np.asarray(v, dtype=np.float32) * ((hi - lo) / 255.0) + lo).astype(np.float32)
