"""Writing images (``writer``): gzipped NIfTI that reads back as written, the same bytes each time."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from gbmmet.synth.writer import _write_image


def test_a_written_image_reads_back_as_it_was_and_gives_the_same_bytes_again(tmp_path):
    arr = np.random.default_rng(0).integers(-300, 3000, (6, 7, 8)).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing([0.9, 0.9, 5.0])
    img.SetOrigin([10.0, -20.0, 30.0])
    img.SetDirection([0.0, 1.0, 0.0, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0])
    first, second = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    _write_image(img, first)
    _write_image(img, second)
    assert first.read_bytes() == second.read_bytes()
    back = sitk.ReadImage(str(first))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), arr)
    np.testing.assert_allclose(back.GetOrigin(), img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetSpacing(), img.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(back.GetDirection(), img.GetDirection(), atol=1e-6)
    assert np.asarray(nib.load(first).dataobj).shape == arr.shape[::-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "b.nii.gz"]  # no .nii left
