"""Sampling the template on a native grid through the pose (``sampling``), against SimpleITK."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from gbmmet import constants as C
from gbmmet.synth import render as R
from gbmmet.synth.anatomy import load_anatomy
from gbmmet.synth.sampling import NativeSampler, lesion_block, torch_threads
from gbmmet.synth.sites import get_site, scaled


@pytest.fixture(scope="module")
def posed():
    """The 2 mm template, a patient's pose, and siteA's CE-T1 grid (tiny voxels) around it."""
    anatomy = load_anatomy(2.0)
    transform, head = R._pose(np.random.default_rng(5), anatomy)
    grid = R.native_grid(scaled(get_site(C.SITE_INTERNAL).t1c, 2.0), head)
    return anatomy, transform, grid, NativeSampler(anatomy, grid, transform)


def test_sampler_places_each_voxel_where_the_pose_sends_it(posed):
    anatomy, transform, grid, sampler = posed
    size = np.asarray(anatomy.reference.GetSize(), float)
    errors = []
    for i, j, k in np.random.default_rng(0).integers(0, grid.GetSize(), (300, 3)):
        point = transform.TransformPoint(grid.TransformIndexToPhysicalPoint([int(i), int(j), int(k)]))
        exact = np.asarray(anatomy.reference.TransformPhysicalPointToContinuousIndex(point))
        mine = (sampler.coords(int(k), slice(j, j + 1), slice(i, i + 1))[0, 0] + 1.0) / 2.0 * (size - 1)
        errors.append(np.abs(exact - mine).max() * anatomy.spacing)
    assert max(errors) < 0.25  # mm: the lattice interpolates a deformation smooth over centimetres


def test_sampled_image_matches_simpleitk_resampling(posed):
    anatomy, transform, grid, sampler = posed
    volume = (anatomy.gm + 0.5 * anatomy.wm + 0.2 * anatomy.csf).astype(np.float32)
    with torch_threads() as torch:
        mine = sampler.sample(torch, volume)
    itk = sitk.GetArrayFromImage(sitk.Resample(anatomy.image(volume), grid, transform, sitk.sitkLinear, 0.0,
                                               sitk.sitkFloat32))
    assert np.abs(mine - itk).mean() < 1e-3
    assert np.quantile(np.abs(mine - itk), 0.999) < 0.05


def test_a_block_samples_what_the_whole_grid_samples(posed):
    anatomy, _, _, sampler = posed
    block = (slice(5, 23), slice(7, 30), slice(3, 41))
    with torch_threads() as torch:
        whole = sampler.sample(torch, anatomy.labels, nearest=True)
        part = sampler.sample(torch, anatomy.labels, nearest=True, block=block)
    np.testing.assert_array_equal(part, whole[block])


def test_lesion_block_holds_every_voxel_that_falls_in_the_box(posed):
    anatomy, _, _, sampler = posed
    z, y, x = (n // 2 for n in anatomy.shape)
    box = (slice(z - 5, z + 3), slice(y - 2, y + 6), slice(x + 4, x + 12))
    marked = np.zeros(anatomy.shape, np.uint8)
    marked[box] = 1
    with torch_threads() as torch:
        seen = sampler.sample(torch, marked, nearest=True) > 0
    block = lesion_block(sampler, box, anatomy.shape)
    assert seen.any() and block is not None
    outside = seen.copy()
    outside[block] = False
    assert not outside.any()
