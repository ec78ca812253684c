"""Rasterising a lesion (``lesion``): its fast pieces equal the references they replace."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from gbmmet import constants as C
from gbmmet.synth import lesion as L
from gbmmet.synth.anatomy import load_anatomy


@pytest.mark.parametrize("shape", [(2, 2, 2), (3, 4, 5), (33, 65, 31)])
def test_gaussian_filter_equals_scipys(shape):
    field = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    np.testing.assert_allclose(L.gaussian_filter(field, 2.5), ndimage.gaussian_filter(field, 2.5), atol=1e-6)


def test_zoom_linear_equals_scipys_zoom():
    field = np.random.default_rng(1).normal(size=(9, 12, 7)).astype(np.float32)
    shape = (16, 22, 13)
    reference = ndimage.zoom(field, 2, order=1)[:16, :22, :13]
    np.testing.assert_allclose(L._zoom_linear(field, 2, shape), reference, atol=1e-6)


def test_distance_to_equals_the_euclidean_distance_transform_outside_the_mask():
    mask = np.zeros((20, 24, 22), bool)
    mask[6:11, 8:15, 5:9] = True
    mask[14, 3, 17] = True
    outside = ~mask
    reference = ndimage.distance_transform_edt(outside, sampling=1.5)
    np.testing.assert_allclose(L.distance_to(mask, 1.5)[outside], reference[outside], atol=1e-4)


def test_the_mass_never_reaches_beyond_its_outer_bound():
    rng = np.random.default_rng(2)
    directions = rng.normal(size=(20000, 3)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    for label in C.LABELS:
        for _ in range(50):
            p = L.sample_lesion_params(rng, label, C.SUPRA, None)
            bumps = L._bumps(directions, p.lobe_dirs, p.lobe_weights, 3.0)
            outer = p.diameter_mm / 2.0 * np.maximum(1.0 + p.lobulation * bumps, 0.35)
            assert outer.max() <= L._outer_bound_mm(p)


def test_rasterised_parts_fill_their_box_to_each_face():
    anatomy = load_anatomy(2.0)
    rng = np.random.default_rng(4)
    for label in C.LABELS:
        parts = L.rasterize_lesion(L.sample_lesion_params(rng, label, C.SUPRA, anatomy), anatomy)
        drawn = (parts.enhancing + parts.necrosis + parts.edema) > 0
        assert drawn.shape == tuple(s.stop - s.start for s in parts.box)
        for axis in range(3):
            faces = np.moveaxis(drawn, axis, 0)
            assert faces[0].any() and faces[-1].any()
