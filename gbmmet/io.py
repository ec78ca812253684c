"""Reading images (NIfTI files or DICOM series folders) and ROIs, with checks that name the
patient and the file.

Every image is brought to one canonical orientation (LPS: array axes i, j, k run towards the
patient's left, posterior and superior) as it is read, so a flipped or axis-permuted copy of a
volume gives the same arrays downstream.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from gbmmet.errors import (
    ImageContentError,
    ImageFileError,
    MissingFileError,
    MixedSeriesError,
    RoiError,
)

CANONICAL_ORIENTATION = "LPS"
#: Columns of an ROI given as per-slice boxes (indices into the T2 volume as stored, inclusive).
BOX_COLUMNS = ("slice_index", "i_min", "i_max", "j_min", "j_max")


def _who(patient_id: str | None, role: str) -> str:
    return f"patient {patient_id}: {role}" if patient_id else role


def _read_dicom_folder(folder: Path, who: str) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise ImageFileError(f"{who} folder {folder} holds no DICOM series", path=str(folder))
    if len(series) > 1:
        counts = ", ".join(f"{uid} ({len(reader.GetGDCMSeriesFileNames(str(folder), uid))} files)"
                           for uid in series)
        raise MixedSeriesError(
            f"{who} folder {folder} holds {len(series)} DICOM series, expected one: {counts}; "
            "put each series in its own folder and name the right one in the manifest",
            path=str(folder),
        )
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), series[0]))
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise ImageFileError(f"{who} DICOM series in {folder} cannot be read: {_first_line(exc)}",
                             path=str(folder)) from None


def _first_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if "Description:" in ln or "ERROR" in ln.upper()]
    return (useful or lines or ["unknown error"])[-1][:300]


def _nifti_non_finite(path: Path) -> int:
    """NaN / inf voxels of a float NIfTI file, counted with nibabel.

    ITK's NIfTI reader silently turns NaN and inf into 0, so checking the array SimpleITK returns
    would pass a damaged file; nibabel reads the stored values. Integer files cannot hold NaN.
    """
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception:  # noqa: BLE001 - SimpleITK already read it; nothing more to learn here
        return 0
    if not np.issubdtype(img.get_data_dtype(), np.floating):
        return 0
    return int(np.count_nonzero(~np.isfinite(np.asanyarray(img.dataobj))))


def read_native(path: str | Path, *, patient_id: str | None = None, role: str = "image",
                allow_constant: bool = False) -> sitk.Image:
    """Read a 3D image as stored (no reorientation), float32, checked.

    Raises:
        MissingFileError: the path does not exist.
        ImageFileError: not a readable image (corrupt file, folder without one DICOM series).
        ImageContentError: not a 3D scalar volume, or NaN / inf voxels.
    """
    path = Path(path)
    who = _who(patient_id, role)
    if not path.exists():
        raise MissingFileError(f"{who} file not found: {path}", patient_id=patient_id, path=str(path))
    if path.is_dir():
        img = _read_dicom_folder(path, who)
    else:
        try:
            img = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise ImageFileError(f"{who} file {path} cannot be read as an image: {_first_line(exc)}",
                                 patient_id=patient_id, path=str(path)) from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ImageContentError(f"{who} {path} has {img.GetNumberOfComponentsPerPixel()} components "
                                "per voxel; expected a scalar volume", patient_id=patient_id, path=str(path))
    size = img.GetSize()
    if img.GetDimension() != 3 or min(size) < 2:
        kind = f"{img.GetDimension()}D" if img.GetDimension() != 3 else "a single slice"
        raise ImageContentError(f"{who} {path} is {kind} (size {size}); expected a 3D volume",
                                patient_id=patient_id, path=str(path))
    img = sitk.Cast(img, sitk.sitkFloat32)
    arr = sitk.GetArrayViewFromImage(img)
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if not bad and path.name.lower().endswith((".nii", ".nii.gz")):
        bad = _nifti_non_finite(path)
    if bad:
        raise ImageContentError(f"{who} {path} has {bad} NaN or infinite voxels",
                                patient_id=patient_id, path=str(path))
    if not allow_constant and float(arr.max()) <= float(arr.min()):
        raise ImageContentError(f"{who} {path} is constant ({float(arr.min())})", patient_id=patient_id,
                                path=str(path))
    return img


def canonical(img: sitk.Image) -> sitk.Image:
    """The same image with its axes permuted / flipped to LPS (no resampling)."""
    return sitk.DICOMOrient(img, CANONICAL_ORIENTATION)


def read_image(path: str | Path, *, patient_id: str | None = None, role: str = "image") -> sitk.Image:
    """``read_native`` then reorient to LPS."""
    return canonical(read_native(path, patient_id=patient_id, role=role))


def _boxes_to_mask(path: Path, t2_native: sitk.Image, who: str, patient_id: str | None) -> sitk.Image:
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise RoiError(f"{who} box file {path} has no boxes", patient_id=patient_id, path=str(path))
    missing = [c for c in BOX_COLUMNS if c not in rows[0]]
    if missing:
        raise RoiError(f"{who} box file {path} lacks columns {missing}; expected {list(BOX_COLUMNS)}",
                       patient_id=patient_id, path=str(path))
    size = t2_native.GetSize()  # (i, j, k)
    mask = np.zeros(size[::-1], dtype=np.uint8)
    for n, row in enumerate(rows, start=2):
        try:
            k, i0, i1, j0, j1 = (int(row[c]) for c in BOX_COLUMNS)
        except ValueError:
            raise RoiError(f"{who} box file {path}, line {n}: indices must be whole numbers",
                           patient_id=patient_id, path=str(path)) from None
        if not (0 <= k < size[2] and 0 <= i0 <= i1 < size[0] and 0 <= j0 <= j1 < size[1]):
            raise RoiError(f"{who} box file {path}, line {n}: box outside the T2 volume of size {size}",
                           patient_id=patient_id, path=str(path))
        mask[k, j0:j1 + 1, i0:i1 + 1] = 1
    out = sitk.GetImageFromArray(mask)
    out.CopyInformation(t2_native)
    return out


def read_roi(path: str | Path, t2_native: sitk.Image, *, patient_id: str | None = None) -> sitk.Image:
    """The ROI as a binary uint8 mask on the T2's native grid (before reorientation).

    ``path`` is a mask image (any non-zero voxel is ROI: BraTS-style label maps give the union of
    their labels), on the T2's grid or any grid overlapping it (resampled, nearest neighbour), or
    a CSV of per-slice boxes (``BOX_COLUMNS``, indices into the T2 as stored).

    Raises:
        MissingFileError, ImageFileError, ImageContentError: as ``read_native``.
        RoiError: the ROI is empty, or lies outside the T2.
    """
    path = Path(path)
    who = _who(patient_id, "ROI")
    if path.suffix.lower() == ".csv":
        if not path.exists():
            raise MissingFileError(f"{who} file not found: {path}", patient_id=patient_id, path=str(path))
        mask = _boxes_to_mask(path, t2_native, who, patient_id)
    else:
        roi = read_native(path, patient_id=patient_id, role="ROI", allow_constant=True)
        binary = sitk.Cast(sitk.NotEqual(roi, 0.0), sitk.sitkUInt8)
        if not sitk.GetArrayViewFromImage(binary).any():
            raise RoiError(f"{who} {path} is empty (no non-zero voxel)", patient_id=patient_id, path=str(path))
        same_grid = (
            roi.GetSize() == t2_native.GetSize()
            and np.allclose(roi.GetSpacing(), t2_native.GetSpacing(), atol=1e-3)
            and np.allclose(roi.GetOrigin(), t2_native.GetOrigin(), atol=1e-2)
            and np.allclose(roi.GetDirection(), t2_native.GetDirection(), atol=1e-4)
        )
        if same_grid:
            binary.CopyInformation(t2_native)
            mask = binary
        else:
            mask = sitk.Resample(binary, t2_native, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
            if not sitk.GetArrayViewFromImage(mask).any():
                raise RoiError(f"{who} {path} lies outside the T2 image (no ROI voxel falls inside it)",
                               patient_id=patient_id, path=str(path))
    if not sitk.GetArrayViewFromImage(mask).any():
        raise RoiError(f"{who} {path} is empty", patient_id=patient_id, path=str(path))
    return mask
