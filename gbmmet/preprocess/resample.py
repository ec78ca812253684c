"""Resampling to an isotropic grid in the image's own orientation."""

from __future__ import annotations

import math

import SimpleITK as sitk


def resample_isotropic(image: sitk.Image, spacing: float = 1.0, *, mask: bool = False) -> sitk.Image:
    """``image`` on a ``spacing`` mm isotropic grid covering the same field of view.

    Linear interpolation for images, nearest neighbour for masks (``mask=True``). The grid keeps
    the image's origin (first voxel centre) and direction.
    """
    if spacing <= 0:
        raise ValueError(f"The 'spacing' parameter must be > 0. Got {spacing!r} instead.")
    size = [max(1, int(math.floor((n - 1) * s / spacing)) + 1) for n, s in zip(image.GetSize(), image.GetSpacing(), strict=True)]
    ref = sitk.Image(size, sitk.sitkUInt8)
    ref.SetOrigin(image.GetOrigin())
    ref.SetDirection(image.GetDirection())
    ref.SetSpacing([spacing] * 3)
    interp = sitk.sitkNearestNeighbor if mask else sitk.sitkLinear
    pixel = image.GetPixelID() if mask else sitk.sitkFloat32
    return sitk.Resample(image, ref, sitk.Transform(), interp, 0, pixel)
