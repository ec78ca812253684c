"""Damaged image files and ROIs fail with the right kind, naming the patient and the file.

Files are written byte for byte (header, then data) so that the damage nibabel's and ITK's writers
would repair (zero pixdim, missing orientation) reaches the reader.
"""

from __future__ import annotations

import gzip
import io as bytesio
import warnings

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from gbmmet import io
from gbmmet.errors import (
    ImageContentError,
    ImageFileError,
    ImageHeaderError,
    InputWarning,
    RoiError,
    RoiGridError,
    TruncatedImageError,
)
from gbmmet.preprocess.patient import preprocess_patient

PID = "F7"
AFFINE = np.array([[-1.0, 0, 0, 7.5], [0, -1.0, 0, 8.0], [0, 0, 2.0, -15.0], [0, 0, 0, 1]])


def _header(arr: np.ndarray, *, qform=AFFINE, sform=AFFINE, qcode=1, scode=1, pixdim=None) -> nib.Nifti1Header:
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(arr.dtype)
    hdr.set_data_shape(arr.shape)
    hdr.set_qform(qform, code=qcode)
    hdr.set_sform(sform, code=scode)
    if pixdim is not None:
        hdr["pixdim"][1:4] = pixdim
    hdr.set_data_offset(352)
    return hdr


def _nifti_bytes(arr: np.ndarray, hdr: nib.Nifti1Header) -> bytes:
    buf = bytesio.BytesIO()
    hdr.write_to(buf)  # header as given: nib.save would repair what these tests damage
    buf.write(b"\0" * (352 - buf.tell()))
    buf.write(arr.tobytes(order="F"))
    return buf.getvalue()


def _write(path, arr: np.ndarray, **header) -> str:
    raw = _nifti_bytes(arr, _header(arr, **header))
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def _volume(rng, dtype=np.float32) -> np.ndarray:
    return rng.uniform(10, 100, (16, 16, 16)).astype(dtype)


def _names(err, path) -> None:
    msg = str(err.value)
    assert PID in msg and path.name in msg, msg
    assert err.value.patient_id == PID and err.value.path == str(path)


def _read_fails(path, cls, kind, match=None):
    with pytest.raises(cls, match=match) as err:
        io.read_native(path, patient_id=PID, role="T2")
    assert type(err.value) is cls and err.value.kind == kind
    _names(err, path)
    return str(err.value)


# --- the file: compression and length -------------------------------------------------------


def test_clean_nifti_passes_and_reads_the_stored_values(rng, tmp_path):
    arr = _volume(rng)
    for name in ("t2.nii.gz", "t2.nii"):
        img = io.read_native(_write(tmp_path / name, arr), patient_id=PID)
        np.testing.assert_allclose(sitk.GetArrayFromImage(img), arr.transpose(2, 1, 0))
        assert img.GetSpacing() == (1.0, 1.0, 2.0)


def test_nifti2_file_is_refused_with_what_to_do(rng, tmp_path):
    # ITK as built here has no NIfTI-2 reader: say so rather than "unable to determine ImageIO"
    path = tmp_path / "t2.nii.gz"
    nib.save(nib.Nifti2Image(_volume(rng), AFFINE), str(path))
    _read_fails(path, ImageFileError, "unreadable_image", match="is NIfTI-2, .* save it as NIfTI-1")


def test_nii_gz_cut_halfway_is_a_truncated_image(rng, tmp_path):
    path = _write(tmp_path / "t2.nii.gz", _volume(rng))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    msg = _read_fails(path, TruncatedImageError, "truncated_image", match="gzip stream ends early")
    assert "re-export it from PACS" in msg


def test_gzip_with_a_wrong_crc_is_a_truncated_image(rng, tmp_path):
    path = _write(tmp_path / "t2.nii.gz", _volume(rng))
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # the trailer holds CRC-32 then length: the data inflates but does not check
    path.write_bytes(bytes(data))
    _read_fails(path, TruncatedImageError, "truncated_image", match="incorrect data check")


def test_file_named_nii_gz_that_is_not_gzip_is_unreadable(rng, tmp_path):
    path = tmp_path / "t2.nii.gz"
    path.write_bytes(_nifti_bytes(_volume(rng), _header(_volume(rng))))
    _read_fails(path, ImageFileError, "unreadable_image", match="is not gzip-compressed; .* rename it to .nii")


def test_nii_with_less_data_than_the_header_says_is_a_truncated_image(rng, tmp_path):
    path = _write(tmp_path / "t2.nii", _volume(rng))
    path.write_bytes(path.read_bytes()[:352 + 1000])
    _read_fails(path, TruncatedImageError, "truncated_image", match="holds 1352 bytes .* declares 16736")


# --- the header -----------------------------------------------------------------------------


def test_zero_spacing_and_no_orientation_is_a_bad_header(rng, tmp_path):
    # the case the fault sweep found: ITK reads this at 1 mm with an identity orientation
    path = _write(tmp_path / "t2.nii.gz", _volume(rng), qcode=0, scode=0, pixdim=0.0)
    _read_fails(path, ImageHeaderError, "bad_header", match=r"voxel spacing \[0.0, 0.0, 0.0\]")


@pytest.mark.parametrize("pixdim", [0.0, -1.0, np.nan], ids=["zero", "negative", "nan"])
def test_spacing_must_be_finite_and_positive(rng, tmp_path, pixdim):
    path = _write(tmp_path / "t2.nii.gz", _volume(rng), pixdim=(1.0, pixdim, 2.0))
    _read_fails(path, ImageHeaderError, "bad_header", match="spacing must be finite and > 0")


def test_no_qform_and_no_sform_is_refused_as_unknown_orientation(rng, tmp_path):
    path = _write(tmp_path / "t2.nii.gz", _volume(rng), qcode=0, scode=0)
    msg = _read_fails(path, ImageHeaderError, "bad_header", match="has no orientation")
    assert "left and right cannot be told apart" in msg


def test_sform_and_qform_shifted_apart_are_a_bad_header(rng, tmp_path):
    sform = AFFINE.copy()
    sform[:3, 3] += (0.0, 3.0, 0.0)
    path = _write(tmp_path / "t2.nii.gz", _volume(rng), sform=sform)
    msg = _read_fails(path, ImageHeaderError, "bad_header", match="qform and an sform that disagree")
    assert "by 3 mm in translation" in msg and "qform [[" in msg and "sform [[" in msg


def test_sform_and_qform_rotated_apart_are_a_bad_header(rng, tmp_path):
    a = np.deg2rad(1.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    sform = AFFINE.copy()
    sform[:3, :3] = rot @ AFFINE[:3, :3]
    path = _write(tmp_path / "t2.nii.gz", _volume(rng), sform=sform)
    _read_fails(path, ImageHeaderError, "bad_header", match="in direction cosines")


def test_sform_and_qform_within_tolerance_are_accepted(rng, tmp_path):
    sform = AFFINE.copy()
    sform[:3, 3] += 0.2  # below SFORM_QFORM_TRANSLATION_MM
    path = _write(tmp_path / "t2.nii.gz", _volume(rng), sform=sform)
    assert io.read_native(path, patient_id=PID).GetSize() == (16, 16, 16)


def test_only_one_of_sform_and_qform_set_is_accepted(rng, tmp_path):
    for name, codes in (("q.nii.gz", {"scode": 0}), ("s.nii.gz", {"qcode": 0})):
        img = io.read_native(_write(tmp_path / name, _volume(rng), **codes), patient_id=PID)
        np.testing.assert_allclose(img.GetOrigin(), (-7.5, -8.0, -15.0))  # RAS header, LPS in ITK


def test_complex_voxels_are_a_bad_header_naming_the_type(rng, tmp_path):
    arr = (_volume(rng) + 1j * _volume(rng)).astype(np.complex64)
    path = _write(tmp_path / "t2.nii.gz", arr)
    _read_fails(path, ImageHeaderError, "bad_header", match="voxel type complex64")


def test_rgb_voxels_are_a_bad_header(rng, tmp_path):
    arr = np.zeros((16, 16, 16), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    path = _write(tmp_path / "t2.nii.gz", arr)
    _read_fails(path, ImageHeaderError, "bad_header", match="NIfTI datatype code 128")


def test_complex_and_vector_images_in_other_formats_are_a_bad_header(rng, tmp_path):
    real = sitk.GetImageFromArray(_volume(rng))
    cplx = sitk.RealAndImaginaryToComplex(real, real)
    vector = sitk.Compose(real, real, real)
    for name, img in (("complex.mha", cplx), ("vector.mha", vector)):
        sitk.WriteImage(img, str(tmp_path / name))
        _read_fails(tmp_path / name, ImageHeaderError, "bad_header", match="expected a real scalar volume")


def test_nan_voxels_stay_a_content_error(rng, tmp_path):
    arr = _volume(rng)
    arr[3, 4, 5] = np.nan
    path = _write(tmp_path / "t2.nii.gz", arr)
    _read_fails(path, ImageContentError, "bad_image", match="has 1 NaN or infinite voxels")


# --- the ROI against the T2 -----------------------------------------------------------------


def _t2(rng) -> sitk.Image:
    img = sitk.GetImageFromArray(_volume(rng).transpose(2, 1, 0))
    img.SetSpacing((0.9, 0.9, 3.0))
    img.SetOrigin((10.0, -20.0, 5.0))
    return img


def _roi_like(t2: sitk.Image, **changes) -> sitk.Image:
    size = changes.get("size", t2.GetSize())
    arr = np.zeros(size[::-1], np.uint8)
    arr[6:10, 5:11, 5:11] = 1
    roi = sitk.GetImageFromArray(arr)
    roi.SetSpacing(changes.get("spacing", t2.GetSpacing()))
    roi.SetOrigin(changes.get("origin", t2.GetOrigin()))
    roi.SetDirection(changes.get("direction", t2.GetDirection()))
    return roi


def _roi_fails(rng, tmp_path, cls, kind, match, **changes):
    t2 = _t2(rng)
    path = tmp_path / "roi.nii.gz"
    sitk.WriteImage(_roi_like(t2, **changes), str(path))
    with pytest.raises(cls, match=match) as err:
        io.read_roi(path, t2, patient_id=PID)
    assert type(err.value) is cls and err.value.kind == kind
    _names(err, path)
    return str(err.value)


def test_roi_on_a_shifted_grid_is_a_grid_mismatch(rng, tmp_path):
    msg = _roi_fails(rng, tmp_path, RoiGridError, "roi_grid_mismatch", "is not on the T2's grid",
                     origin=(12.0, -20.0, 5.0))
    assert "ROI grid: size (16, 16, 16)" in msg and "origin (12, -20, 5)" in msg
    assert "T2 grid: size (16, 16, 16)" in msg and "origin (10, -20, 5)" in msg
    assert "tolerance 0.1 voxel" in msg and "moved by up to 2.22 T2 voxels" in msg


def test_roi_of_another_size_is_a_grid_mismatch(rng, tmp_path):
    _roi_fails(rng, tmp_path, RoiGridError, "roi_grid_mismatch", r"ROI grid: size \(16, 16, 12\)",
               size=(16, 16, 12))


def test_roi_with_another_spacing_is_a_grid_mismatch(rng, tmp_path):
    _roi_fails(rng, tmp_path, RoiGridError, "roi_grid_mismatch", r"spacing \(1, 1, 3\)", spacing=(1.0, 1.0, 3.0))


def test_roi_with_another_direction_is_a_grid_mismatch(rng, tmp_path):
    a = np.deg2rad(2.0)
    direction = (np.cos(a), -np.sin(a), 0.0, np.sin(a), np.cos(a), 0.0, 0.0, 0.0, 1.0)
    _roi_fails(rng, tmp_path, RoiGridError, "roi_grid_mismatch", "is not on the T2's grid", direction=direction)


def test_roi_grid_mismatch_says_how_much_falls_outside(rng, tmp_path):
    # ROI voxels are i, j in 5..10 (6 columns): a shift of 8 voxels leaves 3 of 6 columns outside
    _roi_fails(rng, tmp_path, RoiGridError, "roi_grid_mismatch", r"50.0% of the ROI falls outside the T2",
               origin=(10.0 + 8 * 0.9, -20.0, 5.0))


def test_roi_wholly_outside_the_t2_stays_a_roi_error(rng, tmp_path):
    _roi_fails(rng, tmp_path, RoiError, "bad_roi", "lies outside the T2 image", origin=(900.0, 900.0, 900.0))


def test_roi_grid_within_tolerance_is_put_on_the_t2_grid(rng, tmp_path):
    t2 = _t2(rng)
    path = tmp_path / "roi.nii.gz"
    sitk.WriteImage(_roi_like(t2, origin=(10.02, -20.0, 5.0)), str(path))  # 0.02 voxel
    mask = io.read_roi(path, t2, patient_id=PID)
    assert mask.GetOrigin() == t2.GetOrigin()
    assert int(sitk.GetArrayViewFromImage(mask).sum()) == 4 * 6 * 6


def test_empty_roi_is_a_roi_error(rng, tmp_path):
    t2 = _t2(rng)
    path = tmp_path / "roi.nii.gz"
    empty = sitk.Image(t2.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(t2)
    sitk.WriteImage(empty, str(path))
    with pytest.raises(RoiError, match="is empty") as err:
        io.read_roi(path, t2, patient_id=PID)
    assert err.value.kind == "bad_roi"
    _names(err, path)


def test_preprocess_patient_refuses_a_roi_off_the_t2_grid(rng, tmp_path):
    t2 = _t2(rng)
    t2_path, roi_path = tmp_path / "t2.nii.gz", tmp_path / "roi.nii.gz"
    sitk.WriteImage(t2, str(t2_path))
    sitk.WriteImage(_roi_like(t2, origin=(10.0, -18.0, 5.0)), str(roi_path))
    with pytest.raises(RoiGridError) as err:
        preprocess_patient(str(t2_path), str(t2_path), str(roi_path), patient_id=PID)
    assert err.value.kind == "roi_grid_mismatch"
    _names(err, roi_path)


# --- box CSVs -------------------------------------------------------------------------------

BOX_HEADER = "slice_index,i_min,i_max,j_min,j_max\n"


def test_box_partly_outside_is_clipped_with_a_warning_giving_the_share(rng, tmp_path):
    t2 = _t2(rng)  # 16 x 16 x 16
    path = tmp_path / "boxes.csv"
    # line 2: i 12..19 has 4 of its 8 columns inside -> 16 of 32 voxels outside; line 3 inside
    path.write_text(BOX_HEADER + "4,12,19,0,3\n5,0,3,0,3\n")
    with pytest.warns(InputWarning, match="lies outside the T2 volume") as rec:
        mask = io.read_roi(path, t2, patient_id=PID)
    (w,) = [r.message for r in rec if isinstance(r.message, InputWarning)]
    assert w.kind == "roi_partly_outside" and w.patient_id == PID and w.path == str(path)
    assert "33.3% of the box area" in str(w) and "line 2" in str(w) and path.name in str(w) and PID in str(w)
    arr = sitk.GetArrayViewFromImage(mask)
    assert arr.sum() == 16 + 16 and arr[4, 0:4, 12:16].all()


def test_boxes_all_outside_are_a_roi_error(rng, tmp_path):
    t2 = _t2(rng)
    path = tmp_path / "boxes.csv"
    path.write_text(BOX_HEADER + "16,0,3,0,3\n")  # slice 16 of a 16-slice T2: counted from 1?
    with pytest.raises(RoiError, match="every box lies outside the T2 volume") as err:
        io.read_roi(path, t2, patient_id=PID)
    assert err.value.kind == "bad_roi"
    _names(err, path)


def test_box_csv_with_a_byte_order_mark_is_read(rng, tmp_path):
    t2 = _t2(rng)
    path = tmp_path / "boxes.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (BOX_HEADER + "4,2,5,3,6\n").encode())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mask = io.read_roi(path, t2, patient_id=PID)
    assert int(sitk.GetArrayViewFromImage(mask).sum()) == 16
