"""The written images: contrast, geometry, site effects, ROI, misalignment, determinism.

All on the ``tiny`` preset written with ``--truth`` (session fixture, no Ray).
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from gbmmet import constants as C
from gbmmet.synth import lesion as L
from gbmmet.synth.cohort import build_cohort, get_preset
from gbmmet.synth.render import ROI_MIN_AREA_MM2, synthesize_patient
from gbmmet.synth.writer import euler_from_record


def _patients(cohort: Path):
    for manifest in sorted(cohort.glob(f"*/{C.MANIFEST_FILE}")):
        with manifest.open() as fh:
            for row in csv.DictReader(fh):
                yield manifest.parent, row


def _load(site_dir: Path, row: dict):
    pid = row[C.COL_PATIENT_ID]
    truth_dir = site_dir / "truth" / pid
    return {
        "t1c": sitk.ReadImage(str(site_dir / row[C.COL_T1C_PATH])),
        "t2": sitk.ReadImage(str(site_dir / row[C.COL_T2_PATH])),
        "roi": sitk.ReadImage(str(site_dir / row[C.COL_ROI_PATH])),
        "lab_t1c": sitk.ReadImage(str(truth_dir / "labels_t1c.nii.gz")),
        "lab_t2": sitk.ReadImage(str(truth_dir / "labels_t2.nii.gz")),
        "truth": json.loads((truth_dir / "truth.json").read_text()),
    }


def _median(img: sitk.Image, lab: sitk.Image, label: int) -> float:
    a, m = sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(lab)
    return float(np.median(a[m == label]))


def test_every_patient_is_written_with_manifest_and_reads(tiny_cohort):
    rows = list(_patients(tiny_cohort))
    assert len(rows) == len(build_cohort("tiny", 0))
    for site_dir, row in rows:
        for col in (C.COL_T1C_PATH, C.COL_T2_PATH, C.COL_ROI_PATH):
            assert (site_dir / row[col]).is_file()
        assert set(row) == set(C.MANIFEST_COLUMNS)
    for site_dir in {d for d, _ in rows}:
        with (site_dir / C.READS_FILE).open() as fh:
            reads = list(csv.DictReader(fh))
        test_ids = {r[C.COL_PATIENT_ID] for d, r in rows if d == site_dir and r[C.COL_SPLIT] in C.TEST_COHORTS}
        assert {r[C.COL_PATIENT_ID] for r in reads} == test_ids
        # two readers per test patient, unassisted (assisted reads need a model's calls)
        assert len(reads) == 2 * len(test_ids)
        assert {r[C.COL_ASSISTED] for r in reads} == {"False"}
        assert {r[C.COL_CALL] for r in reads} <= set(C.LABELS)


def test_tissue_contrast_is_right_for_each_sequence(tiny_cohort):
    for site_dir, row in _patients(tiny_cohort):
        p = _load(site_dir, row)
        t1 = {k: _median(p["t1c"], p["lab_t1c"], k) for k in (L.LABEL_CSF, L.LABEL_GM, L.LABEL_WM)}
        t2 = {k: _median(p["t2"], p["lab_t2"], k) for k in (L.LABEL_CSF, L.LABEL_GM, L.LABEL_WM)}
        pid = row[C.COL_PATIENT_ID]
        assert t1[L.LABEL_WM] > t1[L.LABEL_GM] > t1[L.LABEL_CSF], (pid, t1)
        assert t2[L.LABEL_CSF] > t2[L.LABEL_GM] > t2[L.LABEL_WM], (pid, t2)


def test_lesion_parts_have_their_own_contrast(tiny_cohort):
    enhancing_over_wm, edema_over_wm_t2, edema_under_wm_t1 = [], [], []
    for site_dir, row in _patients(tiny_cohort):
        p = _load(site_dir, row)
        wm1 = _median(p["t1c"], p["lab_t1c"], L.LABEL_WM)
        wm2 = _median(p["t2"], p["lab_t2"], L.LABEL_WM)
        lab1 = sitk.GetArrayFromImage(p["lab_t1c"])
        lab2 = sitk.GetArrayFromImage(p["lab_t2"])
        if (lab1 == L.LABEL_ENHANCING).sum() > 20:
            enhancing_over_wm.append(_median(p["t1c"], p["lab_t1c"], L.LABEL_ENHANCING) / wm1)
        if (lab2 == L.LABEL_EDEMA).sum() > 20 and (lab1 == L.LABEL_EDEMA).sum() > 20:
            edema_over_wm_t2.append(_median(p["t2"], p["lab_t2"], L.LABEL_EDEMA) / wm2)
            edema_under_wm_t1.append(_median(p["t1c"], p["lab_t1c"], L.LABEL_EDEMA) / wm1)
    assert len(enhancing_over_wm) >= 15 and len(edema_over_wm_t2) >= 15
    # Enhancing tumour brighter than white matter on CE-T1 (partial volume blurs thin rims).
    assert np.median(enhancing_over_wm) > 1.05
    # Oedema bright on T2, dark on CE-T1.
    assert min(edema_over_wm_t2) > 1.3
    assert max(edema_under_wm_t1) < 0.95


def test_native_geometry_is_the_sites_not_1mm_isotropic():
    preset = get_preset("demo")
    spec = next(s for s in build_cohort(preset, 0) if s.site == C.SITE_INTERNAL)
    p = synthesize_patient(spec, get_preset("tiny"))  # tiny grid: same axes, coarser voxels
    t2_spacing = p.t2.GetSpacing()
    assert t2_spacing[2] >= 4.0 and t2_spacing[0] < t2_spacing[2] / 2
    # siteA's CE-T1 is a sagittal 3D acquisition: its first stored axis runs anterior-posterior.
    direction = np.array(p.t1c.GetDirection()).reshape(3, 3)
    assert abs(direction[1, 0]) == 1.0 and abs(direction[0, 2]) == 1.0


def test_sites_differ_in_scale_noise_and_geometry(tiny_cohort):
    wm = {}
    for site_dir, row in _patients(tiny_cohort):
        p = _load(site_dir, row)
        wm.setdefault(row[C.COL_SITE], []).append(_median(p["t1c"], p["lab_t1c"], L.LABEL_WM))
        bg = sitk.GetArrayFromImage(p["t2"])[sitk.GetArrayFromImage(p["lab_t2"]) == L.LABEL_BACKGROUND]
        assert bg.std() > 0  # Rician noise in the background
        assert p["t1c"].GetSpacing() != p["t2"].GetSpacing()
    ratio = np.median(wm[C.SITE_EXTERNAL]) / np.median(wm[C.SITE_INTERNAL])
    assert ratio > 2.0  # another vendor's arbitrary intensity scale


def test_bias_field_makes_white_matter_uneven():
    preset = get_preset("tiny")
    spec = build_cohort(preset, 0)[0]
    p = synthesize_patient(spec, preset)
    a, lab = sitk.GetArrayFromImage(p.t2).astype(float), sitk.GetArrayFromImage(p.labels_t2)
    wm = lab == L.LABEL_WM
    ks = np.nonzero(wm.any(axis=(1, 2)))[0]
    lower, upper = ks[: len(ks) // 2], ks[len(ks) // 2:]
    left = np.median(a[lower][wm[lower]])
    right = np.median(a[upper][wm[upper]])
    # white matter differs by several percent between the lower and upper halves of the brain
    assert abs(left / right - 1.0) > 0.01


def test_lesion_is_inside_the_roi_on_every_roi_slice(tiny_cohort):
    for site_dir, row in _patients(tiny_cohort):
        p = _load(site_dir, row)
        roi = sitk.GetArrayFromImage(p["roi"]).astype(bool)
        lab = sitk.GetArrayFromImage(p["lab_t2"])
        mass = (lab == L.LABEL_ENHANCING) | (lab == L.LABEL_NECROSIS)
        sx, sy, _ = p["t2"].GetSpacing()
        roi_slices = [k for k in range(roi.shape[0]) if roi[k].any()]
        assert roi_slices, row[C.COL_PATIENT_ID]
        assert roi_slices == p["truth"]["roi_slices"]
        for k in range(roi.shape[0]):
            seen = mass[k].sum() * sx * sy >= ROI_MIN_AREA_MM2
            assert roi[k].any() == seen, (row[C.COL_PATIENT_ID], k)
            if seen:
                assert not (mass[k] & ~roi[k]).any(), (row[C.COL_PATIENT_ID], k)
                # a rectangle: its filled area equals its bounding box
                rows, cols = np.nonzero(roi[k])
                assert roi[k].sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)


def _centroid(lab: sitk.Image, labels) -> np.ndarray:
    a = sitk.GetArrayFromImage(lab)
    idx = np.argwhere(np.isin(a, labels)).mean(axis=0)[::-1]  # (i, j, k)
    return np.array(lab.TransformContinuousIndexToPhysicalPoint(idx.tolist()))


def test_misalignment_is_present_and_recorded_correctly(tiny_cohort):
    shifts, errors_truth, errors_identity = [], [], []
    for site_dir, row in _patients(tiny_cohort):
        p = _load(site_dir, row)
        rec = p["truth"]["t2_to_t1c"]
        t2_to_t1c = euler_from_record(rec)
        for labels in ([L.LABEL_ENHANCING, L.LABEL_NECROSIS], [L.LABEL_CSF, L.LABEL_GM, L.LABEL_WM]):
            c2 = _centroid(p["lab_t2"], labels)
            c1 = _centroid(p["lab_t1c"], labels)
            errors_truth.append(np.linalg.norm(np.array(t2_to_t1c.TransformPoint(c2.tolist())) - c1))
            errors_identity.append(np.linalg.norm(c2 - c1))
        shifts.append(np.linalg.norm(rec["translation"]) + np.abs(rec["angles_deg"]).sum())
    # every patient moved between the two sequences
    assert min(shifts) > 0.1
    # the recorded transform explains the displacement (centroids differ by sampling only)
    assert np.median(errors_truth) < 1.5
    assert np.median(errors_identity) > 2.0 * np.median(errors_truth)


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(folder.rglob("*"))
        if f.is_file()
    }


def test_same_seed_writes_the_same_bytes_in_parallel_on_ray(tiny_cohort, tmp_path, ray_local):
    from pipelines.synth import SynthConfig, run_synth

    out = tmp_path / "again"
    result = run_synth(SynthConfig(preset="tiny", out=out, seed=0, truth=True), workers=2,
                       show_progress=False)
    assert not result.failed
    assert _digest(out) == _digest(tiny_cohort)


def test_another_seed_writes_other_patients(tmp_path):
    preset = get_preset("tiny")
    a = synthesize_patient(build_cohort(preset, 0)[0], preset)
    b = synthesize_patient(build_cohort(preset, 1)[0], preset)
    assert not np.array_equal(sitk.GetArrayFromImage(a.t2), sitk.GetArrayFromImage(b.t2))


@pytest.mark.parametrize("label", C.LABELS)
def test_lesion_parameters_follow_the_class(label):
    from gbmmet.synth.lesion import sample_lesion_params

    rng = np.random.default_rng(0)
    ps = [sample_lesion_params(rng, label, C.SUPRA, None) for _ in range(400)]
    diam = np.mean([p.diameter_mm for p in ps])
    solid = np.mean([p.solid for p in ps])
    ratio = np.mean([p.edema_ratio for p in ps])
    if label == C.GBM:
        assert 44 < diam < 52 and solid < 0.12 and ratio < 1.8
    else:
        assert 28 < diam < 36 and solid > 0.25 and ratio > 1.9
