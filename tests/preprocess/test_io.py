"""Reading images and ROIs: formats, orientation, and clear errors naming patient and file."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from gbmmet import io
from gbmmet.errors import (
    ImageContentError,
    ImageFileError,
    MissingFileError,
    MixedSeriesError,
    RoiError,
)
from tests.preprocess.dicom_util import volume, write_series


def _write(img, path):
    sitk.WriteImage(img, str(path))
    return path


def test_nifti_is_read_as_float32_lps(rng, tmp_path):
    img = volume(rng)
    out = io.read_image(_write(img, tmp_path / "a.nii.gz"))
    assert out.GetPixelID() == sitk.sitkFloat32
    assert sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(out.GetDirection()) == "LPS"
    np.testing.assert_allclose(sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(img))


def test_flipped_and_permuted_copies_read_the_same(rng, tmp_path):
    img = volume(rng)
    flipped = sitk.Flip(img, [True, False, True])
    permuted = sitk.PermuteAxes(img, [2, 0, 1])
    ref = io.read_image(_write(img, tmp_path / "ref.nii.gz"))
    for name, other in (("flipped", flipped), ("permuted", permuted)):
        out = io.read_image(_write(other, tmp_path / f"{name}.nii.gz"))
        assert out.GetSize() == ref.GetSize(), name
        np.testing.assert_allclose(out.GetOrigin(), ref.GetOrigin(), atol=1e-4)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(ref))


def test_dicom_series_folder_is_read(rng, tmp_path):
    img = volume(rng)
    write_series(img, tmp_path / "t2", "1.2.826.0.1.3680043.2.1125.7")
    out = io.read_native(tmp_path / "t2")
    assert out.GetSize() == img.GetSize()
    np.testing.assert_allclose(out.GetSpacing(), img.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(out.GetOrigin(), img.GetOrigin(), atol=1e-4)


def test_folder_with_two_series_names_them(rng, tmp_path):
    folder = tmp_path / "mixed"
    write_series(volume(rng), folder, "1.2.826.0.1.3680043.2.1125.11", prefix="A")
    write_series(volume(rng), folder, "1.2.826.0.1.3680043.2.1125.22", prefix="B")
    with pytest.raises(MixedSeriesError, match=r"patient P9: T2 folder .* holds 2 DICOM series") as err:
        io.read_native(folder, patient_id="P9", role="T2")
    assert "1.2.826.0.1.3680043.2.1125.11" in str(err.value) and "1.2.826.0.1.3680043.2.1125.22" in str(err.value)
    assert err.value.kind == "mixed_dicom_series"


def test_missing_file_names_patient_and_path(tmp_path):
    with pytest.raises(MissingFileError, match=r"patient P1: CE-T1 file not found: .*nope.nii.gz"):
        io.read_native(tmp_path / "nope.nii.gz", patient_id="P1", role="CE-T1")


def test_corrupt_nifti_is_an_image_file_error(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)) * 4)
    with pytest.raises(ImageFileError, match=r"patient P2: T2 file .*bad.nii.gz cannot be read as an image"):
        io.read_native(bad, patient_id="P2", role="T2")


@pytest.mark.parametrize("dim", [2, 4])
def test_2d_and_4d_images_are_refused(rng, tmp_path, dim):
    shape = (20, 24) if dim == 2 else (3, 6, 20, 24)
    img = sitk.GetImageFromArray(rng.uniform(1, 2, shape).astype(np.float32), isVector=False)
    path = _write(img, tmp_path / f"x{dim}.nii.gz")
    with pytest.raises(ImageContentError, match=f"is {dim}D .* expected a 3D volume"):
        io.read_native(path, patient_id="P3", role="T2")


def test_nan_and_inf_voxels_are_refused(rng, tmp_path):
    import nibabel as nib

    # written with nibabel: ITK's reader would silently read NaN and inf as 0
    arr = rng.uniform(1, 2, (7, 6, 5)).astype(np.float32)
    arr[1, 2, 3], arr[2, 2, 2] = np.nan, np.inf
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))
    with pytest.raises(ImageContentError, match="has 2 NaN or infinite voxels"):
        io.read_native(path, patient_id="P4", role="CE-T1")


def test_brats_style_label_map_roi_is_the_union(rng, tmp_path):
    t2 = volume(rng)
    labels = np.zeros(sitk.GetArrayFromImage(t2).shape, np.uint8)
    labels[2, 3:5, 3:5], labels[3, 6:8, 6:8], labels[4, 9, 9] = 1, 2, 4
    roi_img = sitk.GetImageFromArray(labels)
    roi_img.CopyInformation(t2)
    mask = sitk.GetArrayFromImage(io.read_roi(_write(roi_img, tmp_path / "seg.nii.gz"), t2))
    np.testing.assert_array_equal(mask, (labels > 0).astype(np.uint8))


def test_roi_boxes_csv_becomes_a_mask(rng, tmp_path):
    t2 = volume(rng)
    path = tmp_path / "boxes.csv"
    path.write_text("slice_index,i_min,i_max,j_min,j_max\n3,2,5,4,6\n5,0,1,0,0\n")
    mask = sitk.GetArrayFromImage(io.read_roi(path, t2))
    assert mask.sum() == 4 * 3 + 2
    assert mask[3, 4:7, 2:6].all() and mask[5, 0, 0:2].all()
    # a box reaching past the volume is clipped with a warning (tests/faults/test_images.py);
    # boxes wholly outside it are refused
    path.write_text("slice_index,i_min,i_max,j_min,j_max\n3,200,500,4,6\n")
    with pytest.raises(RoiError, match="every box lies outside the T2 volume"):
        io.read_roi(path, t2, patient_id="P5")


def test_empty_roi_and_roi_outside_the_image(rng, tmp_path):
    t2 = volume(rng)
    empty = sitk.Image(t2.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(t2)
    with pytest.raises(RoiError, match="patient P6: ROI .* is empty"):
        io.read_roi(_write(empty, tmp_path / "empty.nii.gz"), t2, patient_id="P6")
    far = sitk.Image(t2.GetSize(), sitk.sitkUInt8) + 1
    far.CopyInformation(t2)
    far.SetOrigin((900.0, 900.0, 900.0))
    with pytest.raises(RoiError, match="patient P6: ROI .* lies outside the T2 image"):
        io.read_roi(_write(far, tmp_path / "far.nii.gz"), t2, patient_id="P6")
