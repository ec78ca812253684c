"""The QC panels preprocessing writes, their flags against the cohort, and ``gbmmet qc``'s page."""

from __future__ import annotations

import csv
import re
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from gbmmet import constants as C
from gbmmet.preprocess import qc_flags, qc_panels
from pipelines.cli import main
from pipelines.preprocess import run_preprocess
from storage.lake import Lake
from storage.qc_report import load_qc

SHIFT_MM = 15.0
SHIFTED = "A0001S"


@pytest.fixture(scope="module")
def shifted_lake(tiny_lake, tmp_path_factory, fast_params):
    """A copy of the tiny lake plus patient A0001 again, as ``SHIFTED``, its CE-T1 moved 15 mm to
    the patient's left (the file's origin, so the image sits 15 mm off where the T2 is)."""
    src, _, cohort = tiny_lake
    root = tmp_path_factory.mktemp("qc")
    lake = root / "lake"
    shutil.copytree(src, lake, ignore=shutil.ignore_patterns("catalog.duckdb"))
    rows = list(csv.DictReader((cohort / "siteA" / C.MANIFEST_FILE).open()))
    row = next(r for r in rows if r[C.COL_PATIENT_ID] == "A0001")
    folder = cohort / "siteA"
    t1c = sitk.ReadImage(str(folder / row[C.COL_T1C_PATH]))
    t1c.SetOrigin((np.array(t1c.GetOrigin()) + np.array([SHIFT_MM, 0.0, 0.0])).tolist())
    shifted = root / "t1c_shifted.nii.gz"
    sitk.WriteImage(t1c, str(shifted))
    new = dict(row, **{C.COL_PATIENT_ID: SHIFTED, C.COL_T1C_PATH: str(shifted)})
    for key in (C.COL_T2_PATH, C.COL_ROI_PATH):
        new[key] = str((folder / row[key]).resolve())
    manifest = root / "shifted" / C.MANIFEST_FILE
    manifest.parent.mkdir()
    with manifest.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(row))
        w.writeheader()
        w.writerow(new)
    summary = run_preprocess([manifest], lake, params=fast_params, workers=0, show_progress=False)
    assert summary.ok == [SHIFTED], summary.failed
    ids = {r["patient_id"]: r["pseudonym"] for r in csv.DictReader((manifest.parent / "pseudonyms.csv").open())}
    ids.update({r["patient_id"]: r["pseudonym"] for r in csv.DictReader((folder / "pseudonyms.csv").open())})
    return lake, ids


def test_every_preprocessed_patient_has_every_panel_under_200_kb_in_the_lake(tiny_lake):
    lake, summary, _ = tiny_lake
    panels = Lake(lake).read(C.TABLE_QC_PANELS).to_pylist()
    patients = {r[C.COL_PATIENT_ID] for r in Lake(lake).read(C.TABLE_PATIENTS).to_pylist()}
    by_patient: dict[str, dict[str, int]] = {}
    for r in panels:
        by_patient.setdefault(r[C.COL_PATIENT_ID], {})[r["panel"]] = len(r["png"])
    totals = [sum(v.values()) for v in by_patient.values()]
    print(f"qc bytes per patient: min {min(totals)}, median {int(np.median(totals))}, max {max(totals)}")
    assert set(by_patient) == patients and len(patients) == len(summary.ok)
    assert all(set(v) == set(qc_panels.PANELS) for v in by_patient.values())
    assert max(totals) < qc_panels.MAX_PATIENT_BYTES


def test_the_shifted_ce_t1_is_flagged_and_the_same_patient_unshifted_is_not(shifted_lake):
    lake, ids = shifted_lake
    report = load_qc(Lake(lake), [C.SITE_INTERNAL], with_panels=False)
    by_id = {p.patient_id: p for p in report.patients}
    shifted, original = by_id[ids[SHIFTED]], by_id[ids["A0001"]]
    for p in (shifted, original):
        print(p.patient_id, [f.detail for f in p.flags])
    # The shift adds SHIFT_MM to every point's displacement, so by the triangle inequality the mean
    # displacement moves to within the patient's own (unshifted) displacement of SHIFT_MM; the
    # synthetic pose differs between the sequences by a few mm, so a fixed margin does not hold.
    d_shifted, d_original = shifted.measures["displacement_mm"], original.measures["displacement_mm"]
    assert abs(d_shifted - SHIFT_MM) <= d_original + 1.0
    assert d_shifted > d_original
    assert qc_flags.FLAG_REG_SHIFT in {f.name for f in shifted.raised}
    assert not original.raised


def test_the_html_page_lists_the_patients_worst_first_with_their_panels_inlined(shifted_lake, tmp_path):
    lake, ids = shifted_lake
    out = tmp_path / "qc.html"
    assert main(["qc", "--lake", str(lake), "--site", C.SITE_INTERNAL, "--out", str(out)]) == 0
    page = out.read_text()
    listed = re.findall(r'<div class="patient[^"]*" id="([^"]+)"', page)
    report = load_qc(Lake(lake), [C.SITE_INTERNAL], with_panels=False)
    assert listed == [p.patient_id for p in report.patients]
    badness = [p.badness for p in report.patients]
    assert badness == sorted(badness, reverse=True) and badness[0] > badness[-1]
    assert listed.index(ids[SHIFTED]) < listed.index(ids["A0001"])
    assert page.count("data:image/png;base64,") == len(listed) * len(qc_panels.PANELS)
    assert C.SITE_EXTERNAL not in re.findall(r"<h2>Site (\w+)", page)


def test_the_qc_command_refuses_a_site_the_lake_does_not_hold(tiny_lake, tmp_path):
    lake, _, _ = tiny_lake
    assert main(["qc", "--lake", str(lake), "--site", "nowhere", "--out", str(tmp_path / "qc.html")]) == 2
    assert not (tmp_path / "qc.html").exists()
