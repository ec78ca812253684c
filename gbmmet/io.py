"""Reading images (NIfTI files or DICOM series folders) and ROIs, with checks that name the
patient and the file.

Every image is brought to one canonical orientation (LPS: array axes i, j, k run towards the
patient's left, posterior and superior) as it is read, so a flipped or axis-permuted copy of a
volume gives the same arrays downstream.

NIfTI files are checked beyond what ITK's reader does (it reads a cut-short ``.nii.gz`` with zeros,
a zero spacing as 1 mm, NaN as 0): the whole gzip stream, the data length and the header. The
check decompresses the file once more, about as long again as ITK's own read.
"""

from __future__ import annotations

import csv
import io as _bytesio
import warnings
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from gbmmet.errors import (
    ImageContentError,
    ImageFileError,
    ImageHeaderError,
    InputWarning,
    MissingFileError,
    MixedSeriesError,
    RoiError,
    RoiGridError,
    TruncatedImageError,
)

CANONICAL_ORIENTATION = "LPS"
#: Columns of an ROI given as per-slice boxes (indices into the T2 volume as stored, inclusive).
BOX_COLUMNS = ("slice_index", "i_min", "i_max", "j_min", "j_max")

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: An sform and a qform (both set) must agree to within these, or the file is refused: readers
#: differ in which of the two they use, so a disagreement makes voxel positions ambiguous.
SFORM_QFORM_TRANSLATION_MM = 1.0
SFORM_QFORM_DIRECTION_TOL = 1e-3  # largest difference of a direction cosine
SFORM_QFORM_SPACING_RTOL = 1e-3  # largest relative difference of a voxel size
#: An ROI mask is on the T2's grid when it has the T2's size and each of its voxel centres lies
#: within this many T2 voxels (along every axis) of the T2 voxel with the same index.
ROI_GRID_TOL_VOXELS = 0.1
#: InputWarning kinds raised here.
WARN_ROI_PARTLY_OUTSIDE = "roi_partly_outside"

_REDO = "copy it again from the source, or re-export it from PACS"
_GZIP_CHUNK = 1 << 20


def _who(patient_id: str | None, role: str) -> str:
    return f"patient {patient_id}: {role}" if patient_id else role


def _read_dicom_folder(folder: Path, who: str, patient_id: str | None = None) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise ImageFileError(f"{who} folder {folder} holds no DICOM series", patient_id=patient_id,
                             path=str(folder))
    if len(series) > 1:
        counts = ", ".join(f"{uid} ({len(reader.GetGDCMSeriesFileNames(str(folder), uid))} files)"
                           for uid in series)
        raise MixedSeriesError(
            f"{who} folder {folder} holds {len(series)} DICOM series, expected one: {counts}; "
            "put each series in its own folder and name the right one in the manifest",
            patient_id=patient_id, path=str(folder),
        )
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), series[0]))
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise ImageFileError(f"{who} DICOM series in {folder} cannot be read: {_first_line(exc)}",
                             patient_id=patient_id, path=str(folder)) from None


def _first_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if "Description:" in ln or "ERROR" in ln.upper()]
    return (useful or lines or ["unknown error"])[-1][:300]


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _gunzip(data: bytes) -> tuple[bytes, str | None]:
    """The whole decompressed stream, every member's CRC and length checked, and what is wrong.

    Returns what could be decompressed and ``None``, or a short reason (``"ends early"`` when
    the stream stops before its end marker). Zero padding after the last member is allowed.
    """
    if data[:2] != b"\x1f\x8b":
        return b"", "not gzip"
    parts: list[bytes] = []
    pos = 0
    while True:
        d = zlib.decompressobj(wbits=31)  # 31: gzip wrapper, CRC-32 and length checked at the end
        while not d.eof:
            if pos >= len(data):
                return b"".join(parts), "ends early"
            chunk = data[pos:pos + _GZIP_CHUNK]
            pos += len(chunk)
            try:
                parts.append(d.decompress(chunk))
            except zlib.error as exc:
                return b"".join(parts), f"is damaged ({exc})"
        pos -= len(d.unused_data)
        rest = data[pos:pos + 2]
        if not rest or not data[pos:].strip(b"\0"):
            return b"".join(parts), None
        if rest != b"\x1f\x8b":
            return b"".join(parts), f"is followed by {len(data) - pos} bytes that are not gzip"


def _gunzip_head(data: bytes, n: int = 1024) -> bytes:
    """The first ``n`` decompressed bytes (enough for the header), without reaching the CRC check."""
    try:
        return zlib.decompressobj(wbits=31).decompress(data[:1 << 16], n)
    except zlib.error:
        return b""


def _nifti_header(raw: bytes):
    """nibabel's NIfTI-1 or NIfTI-2 header from the file's first bytes, or None."""
    import nibabel as nib

    for klass in (nib.Nifti1Header, nib.Nifti2Header):
        if klass.may_contain_header(raw[:klass.sizeof_hdr]):
            return klass.from_fileobj(_bytesio.BytesIO(raw[:klass.sizeof_hdr]), check=False)
    return None


def _fmt_affine(a: np.ndarray) -> str:
    rows = ("[" + " ".join(f"{v:.4g}" for v in row) + "]" for row in a[:3])
    return "[" + " ".join(rows) + "]"


def _check_nifti_header(hdr, path: Path, who: str, patient_id: str | None) -> None:
    """What ITK's NIfTI reader would silently repair or misread: voxel type, spacing, orientation."""
    def fail(what: str) -> ImageHeaderError:
        return ImageHeaderError(f"{who} file {path} {what}", patient_id=patient_id, path=str(path))

    code = int(hdr["datatype"])
    try:
        dtype = hdr.get_data_dtype()
    except Exception:  # noqa: BLE001 - nibabel raises various errors for unknown codes
        dtype = None
    if dtype is None or dtype.kind not in "iuf":
        raise fail(f"has voxel type {dtype if dtype is not None else 'unknown'} (NIfTI datatype code {code}); "
                   "expected real scalar voxels (integer or float): save the magnitude (not complex) or a "
                   "single-channel (not RGB) image")
    shape = hdr.get_data_shape()
    pixdim = np.asarray(hdr["pixdim"][1:1 + min(3, len(shape))], dtype=float)
    if not (np.all(np.isfinite(pixdim)) and np.all(pixdim > 0)):
        raise fail(f"has voxel spacing {pixdim.tolist()} in its header (pixdim); spacing must be finite and "
                   "> 0 (ITK would silently use 1 mm): check the converter that wrote it and convert the "
                   "series again")
    slope, inter = float(hdr["scl_slope"]), float(hdr["scl_inter"])
    if np.isinf(slope) or np.isinf(inter):
        raise fail(f"has an infinite intensity scaling (scl_slope {slope}, scl_inter {inter}); "
                   "check the converter that wrote it")
    qcode, scode = int(hdr["qform_code"]), int(hdr["sform_code"])
    if qcode <= 0 and scode <= 0:
        raise fail("has no orientation (qform_code and sform_code are both 0), so left and right cannot "
                   "be told apart; convert the series again with a converter that writes the qform/sform "
                   "(e.g. dcm2niix)")
    if scode > 0:
        sform = hdr.get_sform()
        if not np.all(np.isfinite(sform)) or abs(np.linalg.det(sform[:3, :3])) < 1e-12:
            raise fail(f"has an unusable sform {_fmt_affine(sform)} (not finite or singular); check the "
                       "converter that wrote it")
    if qcode > 0 and scode > 0:
        q, s = hdr.get_qform(), hdr.get_sform()
        qn, sn = np.linalg.norm(q[:3, :3], axis=0), np.linalg.norm(s[:3, :3], axis=0)
        d_dir = float(np.abs(q[:3, :3] / qn - s[:3, :3] / sn).max())
        d_sp = float(np.abs(qn - sn).max() / qn.min())
        d_t = float(np.abs(q[:3, 3] - s[:3, 3]).max())
        if (d_t > SFORM_QFORM_TRANSLATION_MM or d_dir > SFORM_QFORM_DIRECTION_TOL
                or d_sp > SFORM_QFORM_SPACING_RTOL):
            raise fail(
                f"has a qform and an sform that disagree (by {d_t:.3g} mm in translation, {d_dir:.3g} in "
                f"direction cosines, {d_sp:.3g} relative in voxel size; tolerance "
                f"{SFORM_QFORM_TRANSLATION_MM} mm, {SFORM_QFORM_DIRECTION_TOL}, {SFORM_QFORM_SPACING_RTOL}): "
                f"qform {_fmt_affine(q)}, sform {_fmt_affine(s)}; readers differ in which one they use, "
                "so voxel positions are ambiguous: check the converter or the tool that last edited "
                "the header, and write the file again with one affine")


def _check_nifti(path: Path, who: str, patient_id: str | None) -> int:
    """Checks of a ``.nii`` / ``.nii.gz`` file that ITK's reader skips; returns its NaN / inf count.

    ITK reads a ``.nii.gz`` cut short with the missing voxels as zeros, uses 1 mm for a zero
    spacing, turns NaN into 0 and picks one of a disagreeing qform / sform, so the file is checked
    here first: the whole gzip stream decompressed (CRC-32 and length checked), the data as long
    as the header says, the header as ``_check_nifti_header``; float voxels counted for NaN / inf.

    Raises:
        ImageFileError: not gzip although named ``.nii.gz``, or no NIfTI header.
        TruncatedImageError: the gzip stream is damaged or ends early, or the data is shorter
            than the header says.
        ImageHeaderError: as ``_check_nifti_header``.
    """
    def err(cls, what: str):
        return cls(f"{who} file {path} {what}", patient_id=patient_id, path=str(path))

    gz = path.name.lower().endswith(".gz")
    if gz:
        packed = path.read_bytes()
        raw, problem = _gunzip(packed)
        if problem == "not gzip":
            raise err(ImageFileError, "cannot be read as an image: it is named .nii.gz but is not "
                                      "gzip-compressed; if it is an uncompressed NIfTI rename it to .nii, "
                                      f"otherwise {_REDO}")
        size = len(raw)
        head = raw if not problem else _gunzip_head(packed)
    else:
        problem = None
        with path.open("rb") as fh:
            raw = head = fh.read(1024)
        size = path.stat().st_size
    hdr = _nifti_header(head)
    if hdr is None:
        if problem:
            raise err(ImageFileError, f"cannot be read as an image: its gzip stream {problem} before a "
                                      f"NIfTI header could be read; {_REDO}")
        raise err(ImageFileError, f"cannot be read as an image: no NIfTI header (sizeof_hdr 348 or 540 "
                                  f"with magic n+1 / n+2); {_REDO}")
    if hdr.sizeof_hdr != 348:
        raise err(ImageFileError, "cannot be read as an image: it is NIfTI-2, which the image reader (ITK) "
                                  "does not read; save it as NIfTI-1 (e.g. nibabel's Nifti1Image)")
    _check_nifti_header(hdr, path, who, patient_id)
    dtype, shape = hdr.get_data_dtype(), hdr.get_data_shape()
    offset = max(int(hdr.get_data_offset()), hdr.sizeof_hdr + 4)
    count = int(np.prod(shape, dtype=np.int64))
    need = offset + count * dtype.itemsize
    if problem == "ends early":
        raise err(TruncatedImageError, f"is truncated: its gzip stream ends early, after {size} of the {need} "
                                       f"bytes the header declares; {_REDO}")
    if problem:
        raise err(TruncatedImageError, f"is damaged: its gzip stream {problem}; {_REDO}")
    if size < need:
        raise err(TruncatedImageError, f"is truncated: it holds {size} bytes of data and header, the header "
                                       f"declares {need} ({'x'.join(map(str, shape))} voxels of {dtype} "
                                       f"from byte {offset}); {_REDO}")
    if dtype.kind != "f":
        return 0
    if gz:
        data = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
    else:
        data = np.fromfile(path, dtype=dtype, count=count, offset=offset)
    return int(count - np.count_nonzero(np.isfinite(data)))


_NON_REAL = {getattr(sitk, n) for n in ("sitkComplexFloat32", "sitkComplexFloat64") if hasattr(sitk, n)}


def _check_voxels_and_spacing(img: sitk.Image, path: Path, who: str, patient_id: str | None) -> None:
    """Checks that apply to any format (DICOM too): a real scalar voxel type, spacing > 0."""
    if img.GetPixelID() in _NON_REAL or img.GetNumberOfComponentsPerPixel() != 1:
        raise ImageHeaderError(
            f"{who} {path} has voxel type {img.GetPixelIDTypeAsString()} "
            f"({img.GetNumberOfComponentsPerPixel()} components per voxel); expected a real scalar volume: "
            "save the magnitude (not complex) or a single-channel (not RGB) image",
            patient_id=patient_id, path=str(path))
    spacing = np.asarray(img.GetSpacing(), dtype=float)
    if not (np.all(np.isfinite(spacing)) and np.all(spacing > 0)):
        raise ImageHeaderError(f"{who} {path} has voxel spacing {tuple(spacing.tolist())}; spacing must be "
                               "finite and > 0: check the converter or re-export the series from PACS",
                               patient_id=patient_id, path=str(path))


def read_native(path: str | Path, *, patient_id: str | None = None, role: str = "image",
                allow_constant: bool = False) -> sitk.Image:
    """Read a 3D image as stored (no reorientation), float32, checked.

    A ``.nii`` / ``.nii.gz`` file is checked beyond what ITK's reader does (``_check_nifti``):
    the whole gzip stream, the data length, voxel type, spacing and orientation in the header.

    Raises:
        MissingFileError: the path does not exist.
        ImageFileError: not a readable image (corrupt file, folder without one DICOM series).
        TruncatedImageError: a NIfTI file cut short or with damaged compression.
        ImageHeaderError: a non-real voxel type (complex, RGB), spacing not > 0, no orientation,
            disagreeing sform / qform.
        ImageContentError: not a 3D volume, or NaN / inf voxels.
    """
    path = Path(path)
    who = _who(patient_id, role)
    if not path.exists():
        raise MissingFileError(f"{who} file not found: {path}", patient_id=patient_id, path=str(path))
    bad = 0
    if path.is_dir():
        img = _read_dicom_folder(path, who, patient_id)
    else:
        if _is_nifti(path):
            bad = _check_nifti(path, who, patient_id)
        try:
            img = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise ImageFileError(f"{who} file {path} cannot be read as an image: {_first_line(exc)}",
                                 patient_id=patient_id, path=str(path)) from None
    _check_voxels_and_spacing(img, path, who, patient_id)
    size = img.GetSize()
    if img.GetDimension() != 3 or min(size) < 2:
        kind = f"{img.GetDimension()}D" if img.GetDimension() != 3 else "a single slice"
        raise ImageContentError(f"{who} {path} is {kind} (size {size}); expected a 3D volume",
                                patient_id=patient_id, path=str(path))
    img = sitk.Cast(img, sitk.sitkFloat32)
    arr = sitk.GetArrayViewFromImage(img)
    bad = bad or int(np.count_nonzero(~np.isfinite(arr)))
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
    """Boxes drawn on the T2 as a mask; boxes reaching past the volume are clipped, with a warning."""
    # utf-8-sig: spreadsheet programs start a CSV with a byte-order mark, which would otherwise
    # become part of the first column's name
    with path.open(newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise RoiError(f"{who} box file {path} has no boxes", patient_id=patient_id, path=str(path))
    missing = [c for c in BOX_COLUMNS if c not in rows[0]]
    if missing:
        raise RoiError(f"{who} box file {path} lacks columns {missing}; expected {list(BOX_COLUMNS)}",
                       patient_id=patient_id, path=str(path))
    size = t2_native.GetSize()  # (i, j, k)
    mask = np.zeros(size[::-1], dtype=np.uint8)
    drawn = inside = 0  # box areas in voxels, as drawn and within the volume
    clipped = []
    for n, row in enumerate(rows, start=2):
        try:
            k, i0, i1, j0, j1 = (int(row[c]) for c in BOX_COLUMNS)
        except (TypeError, ValueError):
            raise RoiError(f"{who} box file {path}, line {n}: indices must be whole numbers",
                           patient_id=patient_id, path=str(path)) from None
        if i0 > i1 or j0 > j1:
            raise RoiError(f"{who} box file {path}, line {n}: i_min > i_max or j_min > j_max",
                           patient_id=patient_id, path=str(path))
        area = (i1 - i0 + 1) * (j1 - j0 + 1)
        ci0, ci1, cj0, cj1 = max(i0, 0), min(i1, size[0] - 1), max(j0, 0), min(j1, size[1] - 1)
        kept = (ci1 - ci0 + 1) * (cj1 - cj0 + 1) if 0 <= k < size[2] and ci0 <= ci1 and cj0 <= cj1 else 0
        drawn, inside = drawn + area, inside + kept
        if kept < area:
            clipped.append(n)
        if kept:
            mask[k, cj0:cj1 + 1, ci0:ci1 + 1] = 1
    if not inside:
        raise RoiError(f"{who} box file {path}: every box lies outside the T2 volume of size {size} (i, j, k); "
                       "check that the boxes were drawn on this T2, with indices from 0 as stored",
                       patient_id=patient_id, path=str(path))
    if clipped:
        share = 1.0 - inside / drawn
        lines = ", ".join(map(str, clipped[:10])) + (", ..." if len(clipped) > 10 else "")
        warnings.warn(InputWarning(
            f"{who} box file {path}: {share:.1%} of the box area lies outside the T2 volume of size {size} "
            f"(i, j, k) (line {lines}) and was clipped; check that the boxes were drawn on this T2, with "
            "indices from 0 as stored", kind=WARN_ROI_PARTLY_OUTSIDE, patient_id=patient_id, path=str(path)),
            stacklevel=3)
    out = sitk.GetImageFromArray(mask)
    out.CopyInformation(t2_native)
    return out


def _index_to_point(img: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """(A, o) with physical point = A @ index + o."""
    a = np.array(img.GetDirection(), dtype=float).reshape(3, 3) * np.array(img.GetSpacing(), dtype=float)
    return a, np.array(img.GetOrigin(), dtype=float)


def _vec(v) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"


def _grid(img: sitk.Image) -> str:
    return (f"size {tuple(img.GetSize())}, spacing {_vec(img.GetSpacing())}, origin {_vec(img.GetOrigin())}, "
            f"direction {_vec(img.GetDirection())}")


def _grid_offset_voxels(roi: sitk.Image, t2: sitk.Image) -> float:
    """Largest distance, in T2 voxels along any axis, between an ROI voxel centre and the T2 voxel
    centre with the same index (both maps are affine, so the grid's corners give the largest)."""
    a_r, o_r = _index_to_point(roi)
    a_t, o_t = _index_to_point(t2)
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in roi.GetSize()], indexing="ij"), dtype=float).reshape(3, -1)
    in_t2 = np.linalg.solve(a_t, a_r @ corners + (o_r - o_t)[:, None])
    return float(np.abs(in_t2 - corners).max())


def _share_outside(roi_arr: np.ndarray, roi: sitk.Image, t2: sitk.Image) -> float:
    """Share of the ROI's non-zero voxels whose centre falls outside the T2 volume."""
    a_r, o_r = _index_to_point(roi)
    a_t, o_t = _index_to_point(t2)
    idx = np.nonzero(roi_arr)[::-1]  # (i, j, k)
    pts = np.linalg.solve(a_t, a_r @ np.array(idx, dtype=float) + (o_r - o_t)[:, None])
    size = np.array(t2.GetSize(), dtype=float)[:, None]
    outside = np.any((pts < -0.5) | (pts > size - 0.5), axis=0)
    return float(outside.mean()) if outside.size else 0.0


def read_roi(path: str | Path, t2_native: sitk.Image, *, patient_id: str | None = None) -> sitk.Image:
    """The ROI as a binary uint8 mask on the T2's native grid (before reorientation).

    ``path`` is a mask image on the T2's grid (any non-zero voxel is ROI: BraTS-style label maps
    give the union of their labels; grid tolerance ``ROI_GRID_TOL_VOXELS``), or a CSV of per-slice
    boxes (``BOX_COLUMNS``, indices into the T2 as stored; a UTF-8 byte-order mark is accepted).
    Boxes reaching past the T2 volume are clipped to it with an ``InputWarning`` of kind
    ``WARN_ROI_PARTLY_OUTSIDE`` giving the share of box area outside.

    Raises:
        MissingFileError, ImageFileError, ImageContentError: as ``read_native``.
        RoiGridError: a mask whose grid (size, spacing, origin, direction) is not the T2's.
        RoiError: the ROI is empty, or lies wholly outside the T2.
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
        arr = sitk.GetArrayViewFromImage(binary)
        if not arr.any():
            raise RoiError(f"{who} {path} is empty (no non-zero voxel)", patient_id=patient_id, path=str(path))
        same_size = roi.GetSize() == t2_native.GetSize()
        offset = _grid_offset_voxels(roi, t2_native) if same_size else float("inf")
        if offset > ROI_GRID_TOL_VOXELS:
            outside = _share_outside(arr, roi, t2_native)
            grids = f"ROI grid: {_grid(roi)}; T2 grid: {_grid(t2_native)}"
            if outside == 1.0:
                raise RoiError(f"{who} {path} lies outside the T2 image (no ROI voxel falls inside it); {grids}; "
                               "check that the ROI belongs to this patient's T2",
                               patient_id=patient_id, path=str(path))
            moved = f", voxel centres moved by up to {offset:.3g} T2 voxels" if same_size else ""
            raise RoiGridError(
                f"{who} {path} is not on the T2's grid (tolerance {ROI_GRID_TOL_VOXELS} voxel{moved}; "
                f"{outside:.1%} of the ROI falls outside the T2): {grids}; save the ROI on the T2 named in "
                "the manifest (not on a resampled, cropped or other series)",
                patient_id=patient_id, path=str(path))
        binary.CopyInformation(t2_native)
        mask = binary
    if not sitk.GetArrayViewFromImage(mask).any():
        raise RoiError(f"{who} {path} is empty", patient_id=patient_id, path=str(path))
    return mask
