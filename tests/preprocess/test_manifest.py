"""Manifest checks: every problem of every row in one error, and nothing runs."""

from __future__ import annotations

import pytest

from gbmmet.errors import ManifestError
from gbmmet.manifest import load_manifests
from pipelines.cli import main

HEADER = "patient_id,site,split,label,age,sex,location,primary_tumor,t1c_path,t2_path,roi_path\n"


@pytest.fixture
def files(tmp_path):
    for name in ("t1.nii.gz", "t2.nii.gz", "roi.nii.gz"):
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def _row(pid, split="train", label="GBM", site="siteA", t1="t1.nii.gz", age="60"):
    return f"{pid},{site},{split},{label},{age},M,supra,,{t1},t2.nii.gz,roi.nii.gz\n"


def test_a_good_manifest_resolves_paths_relative_to_itself(files):
    m = files / "m.csv"
    m.write_text(HEADER + _row("P1") + _row("P2", "test", "MET"))
    entries, missing = load_manifests([m])
    assert [e.patient_id for e in entries] == ["P1", "P2"] and not missing
    assert entries[0].t1c_path == str(files / "t1.nii.gz")
    assert entries[1].label == "MET" and entries[0].age == 60


def test_every_offending_row_is_listed_once(files, tmp_path):
    m = files / "m.csv"
    m.write_text(
        HEADER
        + _row("P1")
        + _row("P2", label="GLIOMA")
        + _row("P3", split="holdout")
        + _row("P4", t1="absent.nii.gz")
        + _row("P1")  # duplicate
        + _row("P5")
        + _row("P5", split="test")  # one patient in two splits
        + _row("P6", age="sixty")
        + _row("P7", site="site A/../x")
    )
    with pytest.raises(ManifestError) as err:
        load_manifests([m])
    msg = str(err.value)
    assert "7 problem(s)" in msg and "nothing was run" in msg
    assert "line 3 (patient P2): unknown label 'GLIOMA'" in msg
    assert "line 4 (patient P3): unknown split 'holdout'" in msg
    assert "line 5 (patient P4): t1c_path" in msg and "absent.nii.gz does not exist" in msg
    assert "line 6 (patient P1): duplicate patient_id (first at" in msg
    assert "line 8 (patient P5): patient in two splits, 'train'" in msg
    assert "line 9 (patient P6): age 'sixty' is not a number" in msg
    assert "line 10 (patient P7): site 'site A/../x' must be letters" in msg


def test_missing_columns_and_missing_manifest(files):
    m = files / "m.csv"
    m.write_text("patient_id,site,label\nP1,siteA,GBM\n")
    with pytest.raises(ManifestError, match=r"missing columns \['split', 't1c_path', 't2_path', 'roi_path'\]"):
        load_manifests([m])
    with pytest.raises(ManifestError, match="manifest file not found"):
        load_manifests([files / "none.csv"])


def test_duplicates_across_two_site_manifests(files):
    a, b = files / "a.csv", files / "b.csv"
    a.write_text(HEADER + _row("P1"))
    b.write_text(HEADER + _row("P1", site="siteB"))
    with pytest.raises(ManifestError, match="b.csv line 2 .*duplicate patient_id"):
        load_manifests([a, b])


def test_missing_files_can_fail_alone_with_keep_going(files):
    m = files / "m.csv"
    m.write_text(HEADER + _row("P1") + _row("P4", t1="absent.nii.gz"))
    entries, missing = load_manifests([m], allow_missing_files=True)
    assert [e.patient_id for e in entries] == ["P1", "P4"]
    assert list(missing) == ["P4"] and "absent.nii.gz does not exist" in missing["P4"]


def test_cli_refuses_a_bad_manifest_and_creates_no_lake(files, capsys):
    m = files / "m.csv"
    m.write_text(HEADER + _row("P1", label="glioma"))
    lake = files / "lake"
    assert main(["preprocess", "--manifest", str(m), "--lake", str(lake), "--workers", "0"]) == 2
    assert "unknown label 'glioma'" in capsys.readouterr().err
    assert not lake.exists()
