"""``gbmmet manifest`` end to end: real and synthetic BraTS folders, DICOM patients with several
series, the written manifest checked by gbmmet.manifest and its images read by gbmmet.io."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from gbmmet import constants as C
from gbmmet.io import read_image, read_native, read_roi
from gbmmet.manifest import load_manifests
from pipelines.cli import EXIT_USAGE, main
from tests.conftest import SHARED
from tests.preprocess.dicom_util import volume, write_series
from tests.test_layouts import new_case, old_case

BRATS = SHARED / "data" / "brats2018"


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def build(capsys, *args) -> tuple[int, str]:
    code = main(["manifest", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.mark.skipif(not BRATS.is_dir(), reason=f"real cases not found at {BRATS}")
def test_the_real_brats_cases_give_a_valid_manifest_whose_images_load(tmp_path, capsys):
    out = tmp_path / "manifest.csv"
    code, text = build(capsys, BRATS, "--layout", "brats", "--out", out, "--split", C.EXTERNAL, "--site", "brats")
    assert code == 0, text
    entries, _ = load_manifests([out])
    assert [(e.patient_id, e.label, e.split) for e in entries] == [
        ("Brats18_2013_3_1", C.GBM, C.EXTERNAL), ("Brats18_TCIA03_265_1", C.GBM, C.EXTERNAL)]
    e = entries[0]
    t1c, t2 = read_image(e.t1c_path, patient_id=e.patient_id), read_native(e.t2_path, patient_id=e.patient_id)
    roi = read_roi(e.roi_path, t2, patient_id=e.patient_id)
    assert t1c.GetSize() == (240, 240, 155) and roi.GetSize() == t2.GetSize()


def test_a_synthetic_brats_2018_folder_gives_a_valid_manifest_with_paths_beside_it(tmp_path, rng, capsys):
    data = tmp_path / "site" / "HGG"
    for i in range(5):
        old_case(data, f"Brats18_CBICA_A{i:02d}_1", rng)
    out = tmp_path / "site" / "manifest.csv"
    code, text = build(capsys, data, "--layout", "brats", "--out", out)
    assert code == 0, text
    entries, _ = load_manifests([out])
    assert len(entries) == 5 and {e.site for e in entries} == {"HGG"}
    assert rows(out)[0][C.COL_T1C_PATH] == "HGG/Brats18_CBICA_A00_1/Brats18_CBICA_A00_1_t1ce.nii.gz"
    read_image(entries[0].t1c_path)


def test_brats_2023_glioma_and_metastasis_folders_take_their_default_labels(tmp_path, rng, capsys):
    new_case(tmp_path / "gli", "BraTS-GLI-00000-000", rng)
    new_case(tmp_path / "met", "BraTS-MET-00001-000", rng)
    for layout, folder, label in (("brats", "gli", C.GBM), ("brats-mets", "met", C.MET)):
        out = tmp_path / f"{folder}.csv"
        code, text = build(capsys, tmp_path / folder, "--layout", layout, "--out", out, "--split", C.TEST)
        assert code == 0, text
        (entry,), _ = load_manifests([out])
        assert entry.label == label and Path(entry.t2_path).name.endswith("-t2w.nii.gz")


def test_a_missing_file_stops_the_command_naming_the_case_and_the_file(tmp_path, rng, capsys):
    old_case(tmp_path, "Brats18_2013_2_1", rng, seqs=("t1ce", "seg"))
    out = tmp_path / "manifest.csv"
    code, text = build(capsys, tmp_path, "--layout", "brats", "--out", out)
    assert code == EXIT_USAGE
    assert "case Brats18_2013_2_1" in text and "Brats18_2013_2_1_t2.nii.gz" in text and "nothing was written" in text
    assert not out.exists()


def test_the_same_seed_writes_the_same_split_and_records_rule_seed_and_counts(tmp_path, rng, capsys):
    for i in range(10):
        new_case(tmp_path / "data", f"BraTS-GLI-{i:05d}-000", rng, seqs=("t1c", "t2w", "seg"))
    splits = []
    for name in ("a", "b"):
        out = tmp_path / name / "manifest.csv"
        code, text = build(capsys, tmp_path / "data", "--layout", "brats", "--out", out,
                           "--splits", "train=0.6,val=0.2,test=0.2", "--seed", 11)
        assert code == 0, text
        splits.append([(r[C.COL_PATIENT_ID], r[C.COL_SPLIT]) for r in rows(out)])
    assert splits[0] == splits[1]
    record = json.loads((tmp_path / "a" / "manifest.build.json").read_text())
    assert record["split"]["seed"] == 11 and "stratified" in record["split"]["rule"]
    assert record["split"]["counts_by_stratum"] == {"data/GBM": {C.TRAIN: 6, C.VAL: 2, C.TEST: 2}}


def test_boxes_of_many_patients_become_one_box_file_each(tmp_path, rng, capsys):
    for case in ("BraTS-GLI-00001-000", "BraTS-GLI-00002-000"):
        new_case(tmp_path / "data", case, rng, seqs=("t1c", "t2w"))
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("patient_id,slice_index,i_min,i_max,j_min,j_max\n"
                     "BraTS-GLI-00001-000,1,0,2,0,2\nBraTS-GLI-00002-000,0,1,3,1,3\nBraTS-GLI-00002-000,1,1,3,1,3\n")
    out = tmp_path / "manifest.csv"
    code, text = build(capsys, tmp_path / "data", "--layout", "brats", "--out", out, "--roi-boxes", boxes,
                       "--split", C.TRAIN)
    assert code == 0, text
    entries, _ = load_manifests([out])
    e = entries[1]
    assert e.roi_path == str(tmp_path / "manifest_boxes" / "BraTS-GLI-00002-000.csv")
    mask = read_roi(e.roi_path, read_native(e.t2_path), patient_id=e.patient_id)
    assert int(np.count_nonzero(sitk.GetArrayFromImage(mask))) == 18  # 2 boxes of 3 x 3 voxels on 2 slices


def test_an_existing_manifest_is_kept_unless_overwrite_is_given(tmp_path, rng, capsys):
    new_case(tmp_path / "data", "BraTS-GLI-00001-000", rng)
    out = tmp_path / "manifest.csv"
    out.write_text("mine\n")
    code, text = build(capsys, tmp_path / "data", "--layout", "brats", "--out", out)
    assert code == EXIT_USAGE and "--overwrite" in text and out.read_text() == "mine\n"
    assert build(capsys, tmp_path / "data", "--layout", "brats", "--out", out, "--overwrite")[0] == 0


# --- DICOM ---------------------------------------------------------------------------------------

SERIES = {  # number: (folder, tags)
    "1": ("loc", {"0008|103e": "3-plane loc", "0008|0008": "ORIGINAL\\PRIMARY\\LOCALIZER", "0018|0081": "2",
                  "0018|0080": "8", "0018|0020": "GR"}),
    "2": ("t1_pre", {"0008|103e": "AX T1 SE", "0018|0081": "12", "0018|0080": "500", "0018|0020": "SE"}),
    "3": ("t2", {"0008|103e": "AX T2 TSE", "0018|0081": "100", "0018|0080": "4000", "0018|0020": "SE"}),
    "4": ("flair", {"0008|103e": "AX FLAIR", "0018|0081": "120", "0018|0080": "9000", "0018|0082": "2500",
                    "0018|0020": "SE\\IR"}),
    "5": ("t1_post", {"0008|103e": "AX T1 SE +C", "0018|0081": "12", "0018|0080": "500", "0018|0020": "SE",
                      "0018|0010": "Gadovist"}),
}


def dicom_patient(root: Path, rng, extra: dict[str, tuple[str, dict]] | None = None) -> Path:
    """A patient folder with the five SERIES (and ``extra``), its age and sex, and an ROI mask."""
    for number, (name, tags) in {**SERIES, **(extra or {})}.items():
        img = volume(rng, size=(16, 16, 3 if name == "loc" else 12))
        common = {"0020|0011": number, "0008|0008": "ORIGINAL\\PRIMARY\\M", "0010|1010": "063Y", "0010|0040": "F"}
        uid = f"1.2.826.0.1.3680043.2.1125.{int(root.name[1:])}.{number}"  # P001 -> ...1125.1.<number>
        write_series(img, root / f"s{number}_{name}", uid, tags={**common, **tags})
    t2 = read_native(root / "s3_t2")
    mask = np.zeros(t2.GetSize()[::-1], np.uint8)
    mask[4:7, 5:9, 5:9] = 1
    roi = sitk.GetImageFromArray(mask)
    roi.CopyInformation(t2)
    sitk.WriteImage(roi, str(root / "roi.nii.gz"))
    return root


def test_a_dicom_patient_with_five_series_gets_its_ce_t1_and_t2_and_a_report_of_each(tmp_path, rng, capsys):
    dicom_patient(tmp_path / "site" / "P001", rng)
    out = tmp_path / "manifest.csv"
    code, text = build(capsys, tmp_path / "site", "--layout", "dicom", "--label", "MET", "--out", out,
                       "--split", C.TEST)
    assert code == 0, text
    (e,), _ = load_manifests([out])
    assert (Path(e.t1c_path).name, Path(e.t2_path).name, Path(e.roi_path).name) == ("s5_t1_post", "s3_t2",
                                                                                     "roi.nii.gz")
    assert (e.patient_id, e.label, e.age, e.sex) == ("P001", C.MET, 63, "F")
    t1c = read_image(e.t1c_path, patient_id=e.patient_id)
    assert t1c.GetSize() == (16, 16, 12) and np.allclose(t1c.GetSpacing(), (1.0, 1.2, 3.0), atol=1e-4)
    report = {r["series_number"]: r for r in rows(tmp_path / "manifest.series.csv")}
    assert {n: r["decision"] for n, r in report.items()} == {"1": "rejected", "2": "rejected", "3": "t2",
                                                            "4": "rejected", "5": "t1c"}
    assert report["2"]["t1c"].startswith("refused: contrast required")
    assert report["4"]["t2"].startswith("refused: description 'AX FLAIR' matches reject pattern 'flair'")
    assert report["1"]["t1c"] == "refused: ImageType LOCALIZER"


def test_a_patient_with_two_equally_good_ce_t1_is_listed_in_the_report_and_left_out(tmp_path, rng, capsys):
    dicom_patient(tmp_path / "site" / "P001", rng)
    twin = {"6": ("t1_post2", {"0008|103e": "AX T1 SE POST", "0018|0081": "12", "0018|0080": "500",
                               "0018|0020": "SE", "0018|0010": "Gadovist"})}
    dicom_patient(tmp_path / "site" / "P002", rng, extra=twin)
    out = tmp_path / "manifest.csv"
    code, text = build(capsys, tmp_path / "site", "--layout", "dicom", "--label", "GBM", "--out", out,
                       "--split", C.TRAIN)
    assert code == 0, text
    assert [r[C.COL_PATIENT_ID] for r in rows(out)] == ["P001"]
    assert "1 patient(s) left out" in text
    p2 = [r for r in rows(tmp_path / "manifest.series.csv") if r["patient_id"] == "P002"]
    assert {r["patient_status"] for r in p2} == {"left out: 2 t1c candidates equally good (score 6): series 5 "
                                                 "'AX T1 SE +C', series 6 'AX T1 SE POST'"}
    assert json.loads((tmp_path / "manifest.build.json").read_text())["left_out"].keys() == {"P002"}


def test_a_site_rules_file_can_refuse_what_the_defaults_accept(tmp_path, rng, capsys):
    dicom_patient(tmp_path / "site" / "P001", rng)
    rules = tmp_path / "rules.toml"
    rules.write_text("[t2]\necho_time_ms = [150, 400]\n")
    code, text = build(capsys, tmp_path / "site", "--layout", "dicom", "--label", "GBM", "--out",
                       tmp_path / "manifest.csv", "--rules", rules)
    assert code == EXIT_USAGE and "no patient of" in text
    (p1,) = {r["patient_status"] for r in rows(tmp_path / "manifest.series.csv")}
    assert p1 == "left out: no t2 candidate"


def test_a_damaged_dicom_file_stops_the_command_naming_the_patient_and_the_file(tmp_path, rng, capsys):
    dicom_patient(tmp_path / "site" / "P001", rng)
    (tmp_path / "site" / "P001" / "s3_t2" / "IM0099.dcm").write_bytes(b"not dicom at all")
    code, text = build(capsys, tmp_path / "site", "--layout", "dicom", "--label", "GBM", "--out",
                       tmp_path / "manifest.csv")
    assert code == EXIT_USAGE
    assert "patient P001: file" in text and "IM0099.dcm is named as DICOM but is not DICOM" in text
    assert not (tmp_path / "manifest.csv").exists()


@pytest.mark.parametrize("args, message", [
    (["--layout", "brats", "--split", "test", "--splits", "train=1"], "not both"),
    (["--layout", "dicom"], "needs --label"),
    (["--layout", "nifti"], "--layout must be one of"),
    (["--layout", "brats", "--rules", "r.toml"], "applies to --layout dicom only"),
    (["--layout", "brats", "--site", "site A"], "--site 'site A' must be"),
])
def test_impossible_options_are_refused_before_anything_is_read(tmp_path, capsys, args, message):
    code, text = build(capsys, tmp_path, "--out", tmp_path / "m.csv", *args)
    assert code == EXIT_USAGE and message in text and not (tmp_path / "m.csv").exists()
