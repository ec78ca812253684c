"""Write synthetic patients the way a site hands data over.

Layout of one site folder::

    <out>/<site>/manifest.csv          one row per patient (paths relative to this folder)
    <out>/<site>/reads.csv             reader reads of the test cohorts
    <out>/<site>/images/<id>/t1c.nii.gz, t2.nii.gz, roi.nii.gz
    <out>/<site>/truth/<id>/labels_t1c.nii.gz, labels_t2.nii.gz, truth.json   (with --truth)

Each patient's folder is written under a temporary name and renamed when complete, so a killed
run never leaves a half-written patient under its real name.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from isal import isal_zlib

from gbmmet import constants as C
from gbmmet.synth.cohort import PatientSpec
from gbmmet.synth.lesion import PART_NAMES
from gbmmet.synth.render import SyntheticPatient

IMAGES_DIR = "images"
TRUTH_DIR = "truth"
TRUTH_FILE = "truth.json"


#: gzip level of the written images, with ISA-L's deflate (the ``isal`` package): several times
#: faster than zlib's level 1, and the files no larger (an MR volume is mostly noise, which no
#: level compresses much).
GZIP_LEVEL = 2


def _write_image(img: sitk.Image, path: Path) -> None:
    """``img`` as NIfTI at ``path`` (``.nii.gz``): SimpleITK writes the file uncompressed beside
    it (the header is SimpleITK's own), then it is gzipped here (no time stamp: the same image
    gives the same bytes)."""
    raw = path.with_name(path.name.removesuffix(".gz"))
    sitk.WriteImage(img, str(raw), useCompression=False)
    deflate = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, 16 + isal_zlib.MAX_WBITS)
    with path.open("wb") as fh:
        fh.write(deflate.compress(raw.read_bytes()))
        fh.write(deflate.flush())
    raw.unlink()


def _atomic_dir(final: Path) -> Path:
    tmp = final.parent / f".{final.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _commit_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def transform_record(t: sitk.Transform) -> dict:
    """A rigid/affine transform as JSON: x -> matrix @ (x - center) + center + translation."""
    t = sitk.Euler3DTransform(t) if not isinstance(t, sitk.Euler3DTransform) else t
    return {
        "convention": "SimpleITK, LPS mm: maps a T2 physical point to the CE-T1 physical point "
        "(the transform a registration with T2 fixed and CE-T1 moving recovers)",
        "matrix": list(t.GetMatrix()),
        "translation": list(t.GetTranslation()),
        "center": list(t.GetCenter()),
        "angles_deg": [float(np.rad2deg(a)) for a in (t.GetAngleX(), t.GetAngleY(), t.GetAngleZ())],
    }


def euler_from_record(record: dict) -> sitk.Euler3DTransform:
    """Inverse of ``transform_record``."""
    t = sitk.Euler3DTransform()
    t.SetCenter(record["center"])
    t.SetMatrix(record["matrix"])
    t.SetTranslation(record["translation"])
    return t


def write_patient(sp: SyntheticPatient, site_dir: Path, truth: bool = False) -> dict:
    """Write one patient's files under ``site_dir``; return its manifest row."""
    pid = sp.spec.patient_id
    final = site_dir / IMAGES_DIR / pid
    tmp = _atomic_dir(final)
    _write_image(sp.t1c, tmp / "t1c.nii.gz")
    _write_image(sp.t2, tmp / "t2.nii.gz")
    _write_image(sp.roi, tmp / "roi.nii.gz")
    _commit_dir(tmp, final)
    if truth:
        tfinal = site_dir / TRUTH_DIR / pid
        ttmp = _atomic_dir(tfinal)
        _write_image(sp.labels_t1c, ttmp / "labels_t1c.nii.gz")
        _write_image(sp.labels_t2, ttmp / "labels_t2.nii.gz")
        record = {
            "patient": sp.spec.to_dict(),
            "lesion": sp.lesion.to_dict(),
            "label_names": {str(k): v for k, v in PART_NAMES.items()},
            "t2_to_t1c": transform_record(sp.t2_to_t1c),
            "roi_slices": sp.roi_slices,
        }
        (ttmp / TRUTH_FILE).write_text(json.dumps(record, indent=1, sort_keys=True))
        _commit_dir(ttmp, tfinal)
    return manifest_row(sp.spec)


def manifest_row(spec: PatientSpec) -> dict:
    """The manifest row of a patient written by ``write_patient`` (paths relative to the site)."""
    rel = Path(IMAGES_DIR) / spec.patient_id
    return {
        C.COL_PATIENT_ID: spec.patient_id,
        C.COL_SITE: spec.site,
        C.COL_SPLIT: spec.split,
        C.COL_LABEL: spec.label,
        C.COL_AGE: spec.age,
        C.COL_SEX: spec.sex,
        C.COL_LOCATION: spec.location,
        C.COL_PRIMARY: spec.primary_tumor,
        C.COL_T1C_PATH: str(rel / "t1c.nii.gz"),
        C.COL_T2_PATH: str(rel / "t2.nii.gz"),
        C.COL_ROI_PATH: str(rel / "roi.nii.gz"),
    }


def patient_complete(site_dir: Path, patient_id: str, truth: bool) -> bool:
    """Whether a patient's files were all written (folders appear only when complete)."""
    ok = all((site_dir / IMAGES_DIR / patient_id / f).is_file() for f in ("t1c.nii.gz", "t2.nii.gz", "roi.nii.gz"))
    if truth:
        ok = ok and (site_dir / TRUTH_DIR / patient_id / TRUTH_FILE).is_file()
    return ok


def write_table(rows: list[dict], columns: tuple[str, ...], path: Path) -> None:
    """Write rows as CSV with a fixed column order, atomically."""
    import csv

    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})
    os.replace(tmp, path)
