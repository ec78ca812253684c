"""The slice-profile blur, by linearity from tissues blurred once per process (``blur``)."""

from __future__ import annotations

import numpy as np
import pytest

from gbmmet.synth.anatomy import load_anatomy
from gbmmet.synth.blur import TISSUES, TemplateImage, _blur, blurred_template, profile_kernel


@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.7, 2.12])
def test_profile_kernel_is_symmetric_and_sums_to_one(sigma):
    kernel = profile_kernel(sigma)
    assert len(kernel) % 2 == 1
    np.testing.assert_allclose(kernel, kernel[::-1])
    assert kernel.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("sigma", [1.0, 1.7, 2.12])
def test_profile_kernel_has_the_requested_sd(sigma):
    kernel = profile_kernel(sigma)
    offsets = np.arange(len(kernel)) - len(kernel) // 2
    assert np.sqrt((kernel * offsets**2).sum()) == pytest.approx(sigma, rel=0.05)


def test_blurred_template_equals_blurring_the_whole_image():
    anatomy = load_anatomy(2.0)
    rng = np.random.default_rng(0)
    z, y, x = (n // 2 for n in anatomy.shape)
    box = (slice(z - 6, z + 5), slice(y - 4, y + 7), slice(x - 5, x + 5))
    inside = rng.random(tuple(s.stop - s.start for s in box), dtype=np.float32)
    image = TemplateImage(levels=tuple(rng.uniform(0.1, 1.0, len(TISSUES))), box=box, inside=inside)
    sigma_mm = (1.0, 1.3, 4.2)  # LR, AP, SI
    kernels = {axis: profile_kernel(sigma_mm[2 - axis] / anatomy.spacing) for axis in range(3)}
    whole = _blur(image.array(anatomy), kernels)
    np.testing.assert_allclose(blurred_template(anatomy, image, sigma_mm), whole, atol=2e-6)
