"""Out-of-distribution patients (``gbmmet synth --ood``): meningioma, no lesion, swapped sequences.

On the ``tiny`` preset (2 mm template): the session's tiny cohort copied, then the OOD kinds added
to it in this process (no Ray), three patients of each.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from gbmmet import constants as C
from gbmmet.io import read_image, read_native, read_roi
from gbmmet.manifest import load_manifests
from gbmmet.synth import lesion as L
from gbmmet.synth.anatomy import load_anatomy
from gbmmet.synth.cohort import build_cohort, get_preset
from gbmmet.synth.ood import (
    COL_OOD_KIND,
    COL_SOURCE_PATIENT,
    MENINGIOMA,
    NO_LESION,
    OOD_DIR,
    OOD_KINDS,
    OOD_MANIFEST_COLUMNS,
    OOD_PLACEHOLDER_LABEL,
    SWAPPED,
    build_ood,
    is_placeholder_label,
    rasterize_meningioma,
    sample_meningioma,
    synthesize_ood,
)
from gbmmet.synth.render import patient_lesion
from pipelines.cli import main
from pipelines.synth import SynthConfig, run_synth

COUNT = 3
#: Voxels and geometry of every image, and the manifests and reads, of the tiny cohort at seed 0
#: as written by generator version 4 (version 3's images at a quarter of the CPU, new noise
#: draws). A change here means existing cohorts change: bump ``gbmmet.synth.GENERATOR_VERSION``
#: (and this value) only if intended.
TINY_FINGERPRINT = "fea2edd73680df9366a1ad39d9acd2eb81f90b58dfc6af8a2b2f3988eb048165"


def _fingerprint(cohort: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(cohort.glob("site*/**/*.nii.gz")):
        img = sitk.ReadImage(str(f))
        h.update(str(f.relative_to(cohort)).encode())
        h.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(img)).tobytes())
        h.update(repr([round(v, 4) for v in (*img.GetSpacing(), *img.GetOrigin(), *img.GetDirection())]).encode())
    for f in sorted(cohort.glob("site*/*.csv")):
        h.update(f.read_bytes())
    return h.hexdigest()


def _digest(folder: Path, skip: str = OOD_DIR) -> dict[str, str]:
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file() and f.relative_to(folder).parts[0] != skip}


@pytest.fixture(scope="module")
def ood_cohort(tiny_cohort, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ood") / "cohort"
    shutil.copytree(tiny_cohort, out)
    result = run_synth(SynthConfig(preset="tiny", out=out, seed=0, truth=True, ood=OOD_KINDS, ood_count=COUNT),
                       workers=0, show_progress=False)
    assert not result.failed
    assert (result.n_written, result.ood_written) == (0, COUNT * len(OOD_KINDS))
    return out


def _rows(cohort: Path, kind: str) -> list[dict]:
    with (cohort / OOD_DIR / kind / C.MANIFEST_FILE).open() as fh:
        return list(csv.DictReader(fh))


def _truth(cohort: Path, kind: str, pid: str) -> dict:
    folder = cohort / OOD_DIR / kind / "truth" / pid
    return {"t1c": sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labels_t1c.nii.gz"))),
            "t2": sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labels_t2.nii.gz"))),
            "record": json.loads((folder / "truth.json").read_text())}


def test_gbm_and_met_cohorts_are_unchanged_by_the_ood_kinds(tiny_cohort):
    assert _fingerprint(tiny_cohort) == TINY_FINGERPRINT


def test_adding_ood_patients_leaves_the_cohort_byte_identical(tiny_cohort, ood_cohort):
    assert _digest(ood_cohort) == _digest(tiny_cohort)


@pytest.mark.parametrize("kind", OOD_KINDS)
def test_each_kind_is_written_with_a_manifest_the_manifest_and_io_code_read(ood_cohort, kind):
    manifest = ood_cohort / OOD_DIR / kind / C.MANIFEST_FILE
    with manifest.open() as fh:
        assert tuple(csv.DictReader(fh).fieldnames) == OOD_MANIFEST_COLUMNS
    entries, missing = load_manifests([manifest])
    assert len(entries) == COUNT and not missing
    assert {e.split for e in entries} == {C.EXTERNAL}
    assert {r[COL_OOD_KIND] for r in _rows(ood_cohort, kind)} == {kind}
    for e in entries:
        t2 = read_native(e.t2_path, patient_id=e.patient_id, role="T2")
        read_image(e.t1c_path, patient_id=e.patient_id, role="CE-T1")
        assert sitk.GetArrayViewFromImage(read_roi(e.roi_path, t2, patient_id=e.patient_id)).sum() > 0


def test_only_meningioma_and_no_lesion_labels_are_placeholders(ood_cohort):
    for kind in (MENINGIOMA, NO_LESION):
        rows = _rows(ood_cohort, kind)
        assert all(is_placeholder_label(r) and r[C.COL_LABEL] == OOD_PLACEHOLDER_LABEL for r in rows)
        assert all(r[COL_SOURCE_PATIENT] == "" for r in rows)
    cohort = {s.patient_id: s for s in build_cohort("tiny", 0)}
    for r in _rows(ood_cohort, SWAPPED):
        assert not is_placeholder_label(r)
        source = cohort[r[COL_SOURCE_PATIENT]]
        assert r[C.COL_LABEL] == source.label and source.split in C.TEST_COHORTS


def test_meningioma_sits_on_the_dura_and_pushes_the_brain_instead_of_replacing_it():
    anatomy = load_anatomy(2.0)
    rng = np.random.default_rng(7)
    skull = (anatomy.skull + anatomy.scalp) > 0.5
    for _ in range(8):
        p = sample_meningioma(rng, anatomy)
        parts, shifted = rasterize_meningioma(p, anatomy)
        box, mass = parts.box, parts.enhancing >= 0.99
        if p.site_kind == "falx":
            assert (np.abs(anatomy.ras[0][box]) < anatomy.spacing)[mass].sum() > 20
        else:  # a broad base on the inner table
            assert (ndimage.binary_dilation(mass) & skull[box]).sum() > 0.05 * mass.sum()
        before = (anatomy.gm + anatomy.wm)[box].sum()
        after = ((shifted.gm + shifted.wm)[box] * (1.0 - parts.enhancing)).sum()
        assert (before - after) / mass.sum() < 0.2, p  # the brain's volume is kept (pushed aside)
    # a GBM or metastasis replaces the brain where it grows
    for spec in build_cohort("tiny", 0)[:6]:
        les = L.rasterize_lesion(patient_lesion(spec, 0.5, anatomy), anatomy)
        mass = les.enhancing + les.necrosis
        assert ((anatomy.gm + anatomy.wm)[les.box] * mass).sum() / (mass > 0.5).sum() > 0.7


def _cv_inside(t1c: np.ndarray, labels: np.ndarray) -> float:
    core = ndimage.binary_erosion((labels == L.LABEL_ENHANCING) | (labels == L.LABEL_NECROSIS))
    values = t1c[core].astype(float)
    return float(values.std() / values.mean())


def test_meningioma_enhances_homogeneously_unlike_a_gbm_ring(ood_cohort, tiny_cohort):
    men = []
    for r in _rows(ood_cohort, MENINGIOMA):
        t1c = sitk.GetArrayFromImage(sitk.ReadImage(str(ood_cohort / OOD_DIR / MENINGIOMA / r[C.COL_T1C_PATH])))
        men.append(_cv_inside(t1c, _truth(ood_cohort, MENINGIOMA, r[C.COL_PATIENT_ID])["t1c"]))
    gbm = []
    for spec in build_cohort("tiny", 0):
        if spec.label == C.GBM:
            site = tiny_cohort / spec.site
            t1c = sitk.GetArrayFromImage(sitk.ReadImage(str(site / "images" / spec.patient_id / "t1c.nii.gz")))
            lab = sitk.GetArrayFromImage(sitk.ReadImage(str(site / "truth" / spec.patient_id / "labels_t1c.nii.gz")))
            gbm.append(_cv_inside(t1c, lab))
    assert max(men) < 0.1, men
    assert max(men) < min(gbm), (men, gbm)


def test_meningioma_has_no_necrosis_and_is_iso_to_slightly_bright_on_t2(ood_cohort):
    for r in _rows(ood_cohort, MENINGIOMA):
        truth = _truth(ood_cohort, MENINGIOMA, r[C.COL_PATIENT_ID])
        assert not (truth["t2"] == L.LABEL_NECROSIS).any()
        t2 = sitk.GetArrayFromImage(sitk.ReadImage(str(ood_cohort / OOD_DIR / MENINGIOMA / r[C.COL_T2_PATH])))
        ratio = np.median(t2[truth["t2"] == L.LABEL_ENHANCING]) / np.median(t2[truth["t2"] == L.LABEL_GM])
        assert 0.95 < ratio < 1.4, ratio


def test_no_lesion_roi_lies_on_normal_brain_without_lesion_voxels(ood_cohort):
    for r in _rows(ood_cohort, NO_LESION):
        truth = _truth(ood_cohort, NO_LESION, r[C.COL_PATIENT_ID])
        roi = sitk.GetArrayFromImage(sitk.ReadImage(str(ood_cohort / OOD_DIR / NO_LESION / r[C.COL_ROI_PATH]))) > 0
        lesion_parts = np.isin(truth["t2"], [L.LABEL_EDEMA, L.LABEL_ENHANCING, L.LABEL_NECROSIS])
        assert roi.sum() > 100 and not lesion_parts.any()
        brain = np.isin(truth["t2"][roi], [L.LABEL_CSF, L.LABEL_GM, L.LABEL_WM]).mean()
        assert brain > 0.7, brain  # boxes around a ball near the cortex take in some skull


def test_swapped_files_hold_the_other_sequence_and_the_roi_still_covers_the_lesion(ood_cohort, tiny_cohort):
    for r in _rows(ood_cohort, SWAPPED):
        folder = ood_cohort / OOD_DIR / SWAPPED
        source = next(s for s in build_cohort("tiny", 0) if s.patient_id == r[COL_SOURCE_PATIENT])
        original = tiny_cohort / source.site / "images" / source.patient_id
        assert (folder / r[C.COL_T1C_PATH]).read_bytes() == (original / "t2.nii.gz").read_bytes()
        assert (folder / r[C.COL_T2_PATH]).read_bytes() == (original / "t1c.nii.gz").read_bytes()
        roi = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / r[C.COL_ROI_PATH]))) > 0
        mass = np.isin(_truth(ood_cohort, SWAPPED, r[C.COL_PATIENT_ID])["t2"], [L.LABEL_ENHANCING, L.LABEL_NECROSIS])
        assert roi[mass].mean() > 0.8


def test_ood_patients_are_deterministic_per_seed():
    preset = get_preset("tiny")
    assert build_ood(preset, 0, OOD_KINDS, 2) == build_ood(preset, 0, OOD_KINDS, 2)
    spec = build_ood(preset, 0, (MENINGIOMA,), 1)[0]
    a, b = synthesize_ood(spec, preset), synthesize_ood(spec, preset)
    other = synthesize_ood(build_ood(preset, 1, (MENINGIOMA,), 1)[0], preset)
    arr = sitk.GetArrayFromImage
    assert np.array_equal(arr(a.t1c), arr(b.t1c)) and np.array_equal(arr(a.roi), arr(b.roi))
    assert a.lesion != other.lesion


def test_a_rerun_reuses_ood_patients_and_other_settings_need_overwrite(ood_cohort, tmp_path):
    out = tmp_path / "cohort"
    shutil.copytree(ood_cohort, out)
    before = _digest(out, skip="")
    again = run_synth(SynthConfig(preset="tiny", out=out, seed=0, truth=True, ood=OOD_KINDS, ood_count=COUNT),
                      workers=0, show_progress=False)
    assert (again.ood_written, again.ood_reused) == (0, COUNT * len(OOD_KINDS))
    assert _digest(out, skip="") == before
    args = ["synth", "--preset", "tiny", "--out", str(out), "--workers", "0", "--truth", "--ood", NO_LESION,
            "--ood-count", "1"]
    assert main(args) == 2
    assert main([*args, "--overwrite"]) == 0
    assert len(_rows(out, NO_LESION)) == 1 and len(_rows(out, MENINGIOMA)) == COUNT


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ood", "tumour"], "'ood' parameter must name kinds among"),
        (["--ood", "meningioma", "--ood-count", "0"], "'ood_count' parameter must be a whole number >= 1"),
        (["--ood", "swapped", "--ood-count", "9"], "exceeds the 8 test-cohort patients"),
    ],
)
def test_impossible_ood_settings_fail_clearly_and_write_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "cohort"
    assert main(["synth", "--preset", "tiny", "--out", str(out), "--workers", "0", *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
