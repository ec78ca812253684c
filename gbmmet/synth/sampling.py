"""Sampling template volumes at the voxels of a native grid, through a patient's pose (``render``,
step 4).

The pose (template <- native grid: affine, deformation field, motion) is computed exactly with
SimpleITK on a lattice of native voxels about ``LATTICE_MM`` apart (every slice of a 2-D
sequence) and interpolated linearly in between: the deformation varies over centimetres, so a
voxel's place moves by about 0.015 mm on average, 0.2 mm at most. torch's ``grid_sample``
samples the template there (trilinear for images, nearest for labels), a slab of slices at a
time (``NativeSampler``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import SimpleITK as sitk

from gbmmet.synth.anatomy import Anatomy

#: About how far apart (mm) the native voxels are where the pose is computed exactly
#: (``template_lattice``); in between it is interpolated.
LATTICE_MM = 3.0


@contextlib.contextmanager
def torch_threads() -> Iterator:
    """torch (imported here: only rendering needs it), with as many threads as SimpleITK may
    use (inside a Ray task, the task's CPUs), restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()))
    try:
        yield torch
    finally:
        torch.set_num_threads(before)


def lattice_steps(grid: sitk.Image) -> tuple[int, int, int]:
    """Native voxels between lattice points along (i, j, k): about ``LATTICE_MM`` apart, every
    voxel along an axis whose voxels are coarser than that (a 2-D sequence's slices)."""
    return tuple(max(1, round(LATTICE_MM / s)) for s in grid.GetSpacing())  # type: ignore[return-value]


def template_lattice(anatomy: Anatomy, grid: sitk.Image, transform: sitk.Transform,
                     steps: tuple[int, int, int]) -> np.ndarray:
    """Where every ``steps``-th voxel of ``grid`` (along i, j, k) falls on the template, through
    ``transform`` (template <- grid), computed exactly.

    Returns float32 (3, kc, jc, ic): template continuous indices (x, y, z) normalised to [-1, 1]
    (-1 the first voxel, 1 the last), as torch's ``grid_sample`` takes them; lattice point
    (a, b, c) is grid voxel (i, j, k) = (c si, b sj, a sk), the last one at or beyond the grid's end.
    """
    size = [int(math.ceil((n - 1) / st)) + 1 for n, st in zip(grid.GetSize(), steps, strict=True)]
    spacing = [s * st for s, st in zip(grid.GetSpacing(), steps, strict=True)]
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, size, grid.GetOrigin(),
                                              spacing, grid.GetDirection())
    disp = sitk.GetArrayViewFromImage(field)  # valid while ``field`` lives
    # lattice index -> physical point -> normalised template index is affine: M @ (c, b, a) + t,
    # plus the displacement (the transform's departure from the identity) through M's last part.
    ref = anatomy.reference
    to_norm = np.asarray(ref.GetDirection()).reshape(3, 3).T / np.asarray(ref.GetSpacing())[:, None]
    to_norm *= 2.0 / (np.asarray(ref.GetSize()) - 1.0)[:, None]
    m = to_norm @ np.asarray(grid.GetDirection()).reshape(3, 3) * np.asarray(spacing)
    t = to_norm @ (np.asarray(grid.GetOrigin()) - np.asarray(ref.GetOrigin())) - 1.0
    out = np.moveaxis(disp @ to_norm.T, -1, 0)  # (3, kc, jc, ic)
    ramps = [np.arange(n, dtype=np.float64) for n in size]  # along i, j, k
    for c in range(3):
        out[c] += (t[c] + m[c, 2] * ramps[2])[:, None, None] + (m[c, 1] * ramps[1])[None, :, None] \
            + (m[c, 0] * ramps[0])[None, None, :]
    return out.astype(np.float32)


def _lerp_axis(x: np.ndarray, axis: int, n_out: int, step: int) -> np.ndarray:
    """``x`` (values at every ``step``-th sample along ``axis``) interpolated linearly to the
    first ``n_out`` samples."""
    pos = np.arange(n_out) / step
    lo = np.minimum(np.floor(pos).astype(np.intp), x.shape[axis] - 2)
    shape = [1] * x.ndim
    shape[axis] = n_out
    weight = (pos - lo).astype(np.float32).reshape(shape)
    low, high = np.take(x, lo, axis=axis), np.take(x, lo + 1, axis=axis)
    high -= low
    high *= weight
    low += high
    return low


class NativeSampler:
    """Samples volumes on the template grid at the voxels of a native grid, through the pose.

    The pose (template <- grid) is computed exactly on a lattice (``template_lattice``) and
    interpolated linearly in between: within each lattice plane once (``planes``), then slice by
    slice while sampling, a lattice slab at a time. A voxel's coordinates never depend on which
    voxels are sampled with it, so a block (``sample(block=...)``) gets what the whole grid gets.
    """

    def __init__(self, anatomy: Anatomy, grid: sitk.Image, transform: sitk.Transform):
        self.grid = grid
        self.steps = lattice_steps(grid)
        self.lattice = template_lattice(anatomy, grid, transform, self.steps)
        i, j, _ = grid.GetSize()
        planes = _lerp_axis(np.ascontiguousarray(np.moveaxis(self.lattice, 0, -1)), 2, i, self.steps[0])
        self.planes = _lerp_axis(planes, 1, j, self.steps[1])  # (kc, j, i, 3) channels (x, y, z)
        self._rises = np.diff(self.planes, axis=0) if len(self.planes) > 1 else self.planes[:0]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.grid.GetSize())[::-1]  # type: ignore[return-value]

    def coords(self, k: int, rows: slice, cols: slice) -> np.ndarray:
        """Normalised template coordinates (x, y, z) of slice ``k``'s voxels (rows, cols)."""
        plane, offset = divmod(k, self.steps[2])
        if offset == 0:
            return self.planes[plane, rows, cols]
        weight = np.float32(offset / self.steps[2])
        return self.planes[plane, rows, cols] + weight * self._rises[plane, rows, cols]

    def slabs(self, torch, volume: np.ndarray, nearest: bool = False,
              block: tuple[slice, slice, slice] | None = None) -> Iterator[tuple[slice, np.ndarray]]:
        """``volume`` at the voxels of ``block`` (default the grid), a lattice slab of slices at a
        time: (the slices, relative to the block; float32 (k, j, i)). Trilinear, or nearest
        neighbour; zero outside the template."""
        ks, rows, cols = block if block is not None else tuple(slice(0, n) for n in self.shape)
        src = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
        mode = "nearest" if nearest else "bilinear"
        start = ks.start
        while start < ks.stop:
            stop = min(ks.stop, (start // self.steps[2] + 1) * self.steps[2])
            coords = np.stack([self.coords(k, rows, cols) for k in range(start, stop)])
            sampled = torch.nn.functional.grid_sample(src, torch.from_numpy(coords)[None], mode=mode,
                                                      padding_mode="zeros", align_corners=True)
            yield slice(start - ks.start, stop - ks.start), sampled[0, 0].numpy()
            start = stop

    def sample(self, torch, volume: np.ndarray, nearest: bool = False,
               block: tuple[slice, slice, slice] | None = None) -> np.ndarray:
        """``volume`` at every voxel of ``block`` (default the grid), float32 (k, j, i)
        (``slabs``)."""
        ks, rows, cols = block if block is not None else tuple(slice(0, n) for n in self.shape)
        out = np.empty((ks.stop - ks.start, rows.stop - rows.start, cols.stop - cols.start), np.float32)
        for where, values in self.slabs(torch, volume, nearest, block):
            out[where] = values
        return out


def lesion_block(sampler: NativeSampler, box: tuple[slice, slice, slice], template_shape
                 ) -> tuple[slice, slice, slice] | None:
    """The block (k, j, i) of a native grid whose voxels can fall on template ``box`` (z, y, x),
    nearest neighbour; None where none can.

    From the lattice (``template_lattice``) alone: a voxel's coordinates are a convex combination
    of its lattice cell's corners, so a cell whose corners all lie on one side of the box on some
    axis has no voxel in it.
    """
    lattice = sampler.lattice
    lo = np.array([box[2].start, box[1].start, box[0].start], np.float64) - 1.0  # (x, y, z), margin
    hi = np.array([box[2].stop, box[1].stop, box[0].stop], np.float64)
    n = np.array(template_shape[::-1], np.float64)
    lo, hi = 2.0 * lo / (n - 1.0) - 1.0, 2.0 * hi / (n - 1.0) - 1.0
    corners = [lattice[:, a:a + lattice.shape[1] - 1, b:b + lattice.shape[2] - 1, c:c + lattice.shape[3] - 1]
               for a in (0, 1) for b in (0, 1) for c in (0, 1)]
    low, high = np.minimum.reduce(corners), np.maximum.reduce(corners)
    hit = ((high >= lo[:, None, None, None]) & (low <= hi[:, None, None, None])).all(axis=0)
    if not hit.any():
        return None
    cells = np.nonzero(hit)
    return tuple(slice(int(c.min()) * step, min(size, (int(c.max()) + 1) * step + 1))
                 for c, size, step in zip(cells, sampler.shape, sampler.steps[::-1], strict=True))
