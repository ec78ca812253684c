"""The slice-profile blur of a patient's image on the template, cheaply (``render``, step 4).

A patient's image on the template is its tissue levels times the template's tissue fractions,
with the lesion's box drawn in (``TemplateImage``). Blurring is linear, so the blurred image is
the levels times the tissue fractions blurred in plane once per process (``blurred_tissues``),
blurred along the slice axis, plus the blurred difference inside the box (``blurred_template``):
the whole image is never blurred. The blur along an axis is the impulse response of the recursive
Gaussian that generator version 3 ran over whole volumes, without its ringing
(``profile_kernel``); it is applied as banded matrix products, which BLAS does faster than a
correlation.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from gbmmet.synth.anatomy import Anatomy
from gbmmet.synth.sites import Acquisition

#: The template's tissues, in the order of ``TemplateImage.levels``.
TISSUES = ("csf", "gm", "wm", "skull", "scalp")
#: Blur kernels keep their taps of at least this weight (``profile_kernel``).
KERNEL_FLOOR = 1e-3


@dataclass(frozen=True, eq=False)
class TemplateImage:
    """One sequence's relative intensities on the template grid, before any blur.

    ``levels[n]`` times the template's fraction of tissue ``TISSUES[n]``, summed, everywhere but
    inside ``box`` (the lesion's box, template voxels (z, y, x)), where ``inside`` is the image.
    """

    levels: tuple[float, ...]
    box: tuple[slice, slice, slice]
    inside: np.ndarray

    def array(self, anatomy: Anatomy) -> np.ndarray:
        """The whole image as one array (rendering never builds it)."""
        out = tissue_sum(anatomy, self.levels)
        out[self.box] = self.inside
        return out


def tissue_sum(anatomy: Anatomy, levels, box: tuple[slice, ...] | None = None) -> np.ndarray:
    """Sum of ``levels`` times the tissue fractions (``TISSUES``), on ``box`` or everywhere."""
    where = box if box is not None else (slice(None),) * 3
    out = np.zeros(anatomy.gm[where].shape, np.float32)
    for tissue, level in zip(TISSUES, levels, strict=True):
        out += np.float32(level) * getattr(anatomy, tissue)[where]
    return out


@functools.lru_cache(maxsize=32)
def profile_kernel(sigma_vox: float) -> np.ndarray:
    """The slice-profile blur along one axis, sd ``sigma_vox`` voxels, as a 1-D kernel.

    It is the impulse response of SimpleITK's recursive Gaussian (generator version 3 ran that
    filter over whole volumes; it is separable) without its ringing: the taps beyond the last
    one of at least ``KERNEL_FLOOR`` are dropped, and the rest normalised to sum 1.
    """
    radius = int(math.ceil(4.0 * sigma_vox)) + 2
    impulse = np.zeros((2 * radius + 1,) * 3, np.float32)
    impulse[radius, radius, radius] = 1.0
    response = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(impulse), float(sigma_vox))
    kernel = sitk.GetArrayViewFromImage(response)[radius, radius].astype(np.float64)
    kernel /= kernel.sum()
    keep = int(np.nonzero(kernel >= KERNEL_FLOOR)[0].max()) - radius
    kernel = kernel[radius - keep:radius + keep + 1]
    return kernel / kernel.sum()


def _blur(arr: np.ndarray, kernels: dict[int, np.ndarray]) -> np.ndarray:
    """``arr`` correlated with ``kernels[axis]`` along each axis, zero outside."""
    for axis, kernel in kernels.items():
        arr = ndimage.correlate1d(arr, kernel, axis=axis, mode="constant")
    return arr


@functools.lru_cache(maxsize=32)
def _band(sigma_vox: float, n: int) -> np.ndarray:
    """``profile_kernel(sigma_vox)`` as an (n, n) matrix: correlation along an axis of length n,
    zero outside."""
    kernel = profile_kernel(sigma_vox)
    radius = len(kernel) // 2
    band = np.zeros((n, n), np.float32)
    for offset in range(-radius, radius + 1):
        band += np.eye(n, k=offset, dtype=np.float32) * np.float32(kernel[radius + offset])
    return band


def _blur_first_axis(arr: np.ndarray, sigma_vox: float, rows: int = 32) -> np.ndarray:
    """``arr`` (2-D) blurred along its first axis: ``_band`` products on blocks of ``rows`` rows,
    each with only the rows the kernel reaches (BLAS does this faster than a correlation)."""
    n = arr.shape[0]
    band = _band(sigma_vox, n)
    radius = len(profile_kernel(sigma_vox)) // 2
    out = np.empty_like(arr)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        lo, hi = max(0, start - radius), min(n, stop + radius)
        np.matmul(band[start:stop, lo:hi], arr[lo:hi], out=out[start:stop])
    return out


def _blur_bands(arr: np.ndarray, sigmas_vox: tuple[float, float, float]) -> np.ndarray:
    """``arr`` (3-D) blurred along each axis by ``profile_kernel(sigmas_vox[axis])``, zero
    outside: banded matrix products."""
    a, b, c = arr.shape
    out = _blur_first_axis(arr.reshape(a, -1), sigmas_vox[0]).reshape(a, b, c)
    out = np.matmul(_band(sigmas_vox[1], b), out)
    return (out.reshape(-1, c) @ _band(sigmas_vox[2], c).T).reshape(a, b, c)


@functools.lru_cache(maxsize=2)
def blurred_tissues(anatomy: Anatomy, sigma_ap_vox: float, sigma_lr_vox: float) -> np.ndarray:
    """The template's tissue fractions blurred in the axial plane, (len(TISSUES), z, y, x).

    Once per process and in-plane profile: the blur is linear, so a patient's blurred image is
    its levels times these (``blurred_template``).
    """
    stack = np.stack([getattr(anatomy, t) for t in TISSUES])
    return _blur(stack, {2: profile_kernel(sigma_ap_vox), 3: profile_kernel(sigma_lr_vox)})


def slice_profile(anatomy: Anatomy, acq: Acquisition) -> tuple[float, float, float]:
    """The blur's sd (mm) along the template's LR, AP and SI axes for an acquisition.

    A Gaussian with FWHM = voxel size along each axis (the pose is within a few degrees of the
    scanner axes, so the axes nearly coincide), at least half a template voxel.
    """
    axis_spacing = {a: s for a, s in zip(acq.axes, acq.spacing, strict=True)}
    lr, ap, si = (max(axis_spacing[a] / 2.355, 0.5 * anatomy.spacing) for a in ("LR", "AP", "SI"))
    return lr, ap, si


def blurred_template(anatomy: Anatomy, image: TemplateImage, sigma_mm: tuple[float, float, float]) -> np.ndarray:
    """``image`` blurred by a Gaussian of sd ``sigma_mm`` along (LR, AP, SI), float32 (z, y, x).

    The levels times the in-plane-blurred tissues (cached), blurred along SI; then, inside the
    lesion's box and as far as the blur spreads it, the blurred difference between what is drawn
    there and the tissues. Equal to blurring the whole image (``image.array``), by linearity.
    """
    sp = anatomy.spacing
    s_lr, s_ap, s_si = (s / sp for s in sigma_mm)
    kernels = {0: profile_kernel(s_si), 1: profile_kernel(s_ap), 2: profile_kernel(s_lr)}
    tissues = blurred_tissues(anatomy, s_ap, s_lr)
    out = np.asarray(image.levels, np.float32) @ tissues.reshape(len(TISSUES), -1)
    out = _blur_first_axis(out.reshape(anatomy.shape[0], -1), s_si).reshape(anatomy.shape)
    outer = tuple(slice(max(0, s.start - len(kernels[a]) // 2), min(n, s.stop + len(kernels[a]) // 2))
                  for a, (s, n) in enumerate(zip(image.box, anatomy.shape, strict=True)))
    inner = tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(image.box, outer, strict=True))
    diff = np.zeros(tuple(o.stop - o.start for o in outer), np.float32)
    diff[inner] = image.inside - tissue_sum(anatomy, image.levels, image.box)
    out[outer] += _blur_bands(diff, (s_si, s_ap, s_lr))
    return out
