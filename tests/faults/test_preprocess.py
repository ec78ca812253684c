"""Bad input never passes silently through ``gbmmet preprocess``: recorded warnings, the
registration QC rule, duplicate images under two ids, a failed re-attempt keeping the good rows,
whole-token scrubbing of short ids, an unusable lake refused before any patient."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from gbmmet import constants as C
from gbmmet.errors import ManifestError
from gbmmet.manifest import PatientEntry
from gbmmet.preprocess import qc
from pipelines.cli import main
from pipelines.preprocess import ID_MAP_FILE, SITE_FOLDER, _scrub, run_preprocess
from storage.lake import Lake

HEADER = list(C.MANIFEST_COLUMNS)


# -- helpers ----------------------------------------------------------------------------------
def _rows(manifest: Path) -> dict[str, dict]:
    with manifest.open() as fh:
        return {r[C.COL_PATIENT_ID]: r for r in csv.DictReader(fh)}


def _write(manifest: Path, rows: list[dict]) -> Path:
    with manifest.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=HEADER)
        w.writeheader()
        w.writerows(rows)
    return manifest


def _site(tiny_cohort: Path, tmp_path: Path, rows: list[dict | str], site: str = "siteA") -> Path:
    """A copy of ``site``'s folder whose manifest holds ``rows`` (ids of the original, or dicts)."""
    folder = tmp_path / site
    shutil.copytree(tiny_cohort / site, folder)
    orig = _rows(folder / C.MANIFEST_FILE)
    return _write(folder / C.MANIFEST_FILE, [orig[r] if isinstance(r, str) else r for r in rows])


def _pseudo(manifest: Path) -> dict[str, str]:
    with (manifest.parent / ID_MAP_FILE).open() as fh:
        return {r[C.COL_PATIENT_ID]: r["pseudonym"] for r in csv.DictReader(fh)}


def _runs(lake_dir: Path) -> list[dict]:
    return sorted(Lake(lake_dir).read(C.TABLE_PREPROCESS_RUNS).to_pylist(), key=lambda r: r["attempt_id"])


def _run(manifests, lake_dir, params, **kw):
    return run_preprocess([Path(m) for m in manifests], lake_dir, params=params, workers=0, show_progress=False,
                          **kw)


def _box_csv_partly_outside(roi_path: Path, out: Path) -> int:
    """The ROI mask as per-slice boxes, the last reaching 4 voxels past the volume; returns the
    number of boxes."""
    roi = sitk.ReadImage(str(roi_path))
    arr = sitk.GetArrayViewFromImage(roi)  # (k, j, i)
    rows = []
    for k in np.nonzero(arr.reshape(arr.shape[0], -1).any(axis=1))[0]:
        jj, ii = np.nonzero(arr[k])
        rows.append([int(k), int(ii.min()), int(ii.max()), int(jj.min()), int(jj.max())])
    rows[-1][2] = roi.GetSize()[0] + 3
    with out.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["slice_index", "i_min", "i_max", "j_min", "j_max"])
        w.writerows(rows)
    return len(rows)


# -- 1. input warnings ------------------------------------------------------------------------
def test_an_input_warning_is_recorded_with_the_attempt_and_listed_by_the_cli(tiny_cohort, tmp_path, capsys,
                                                                              fast_params):
    manifest = _site(tiny_cohort, tmp_path, ["A0001"])
    row = _rows(manifest)["A0001"]
    _box_csv_partly_outside(manifest.parent / row[C.COL_ROI_PATH], manifest.parent / "A0001_boxes.csv")
    _write(manifest, [dict(row, roi_path="A0001_boxes.csv")])
    lake_dir = tmp_path / "lake"
    code = main(["preprocess", "--manifest", str(manifest), "--lake", str(lake_dir), "--workers", "0"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "1 patient(s) with warnings (roi_partly_outside 1" in out.err
    assert "warning A0001: roi_partly_outside: patient A0001:" in out.err and "A0001_boxes.csv" in out.err
    pseudo = _pseudo(manifest)["A0001"]
    (run,) = _runs(lake_dir)
    assert run["status"] == "ok" and run[C.COL_PATIENT_ID] == pseudo
    (w,) = json.loads(run["warnings"])
    assert w["kind"] == "roi_partly_outside"
    assert w["message"].startswith(f"patient {pseudo}: ROI box file {SITE_FOLDER}/{pseudo}_boxes.csv:")
    assert "A0001" not in run["warnings"]  # scrubbed like the error messages
    assert len(Lake(lake_dir).read(C.TABLE_PATIENTS)) == 1  # a warning does not stop the patient


# -- 2. registration QC -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def swapped(tiny_cohort, tiny_lake, tmp_path_factory, fast_params):
    """The tiny lake (copied) plus one siteA patient whose CE-T1 is another patient's."""
    lake_src, _, _ = tiny_lake
    tmp = tmp_path_factory.mktemp("swapped")
    lake_dir = tmp / "lake"
    shutil.copytree(lake_src, lake_dir)
    folder = tmp / "siteA"
    shutil.copytree(tiny_cohort / "siteA", folder)
    orig = _rows(folder / C.MANIFEST_FILE)
    row = dict(orig["A0001"], patient_id="A9001", split=C.TEST, t1c_path=orig["A0002"][C.COL_T1C_PATH])
    manifest = _write(folder / C.MANIFEST_FILE, [row])
    summary = _run([manifest], lake_dir, fast_params)
    return lake_dir, manifest, summary


def test_another_patients_ce_t1_is_flagged_registration_suspect_with_the_rule_and_numbers(swapped):
    lake_dir, manifest, summary = swapped
    assert summary.ok == ["A9001"] and summary.suspect == ["A9001"] and not summary.failed
    pseudo = _pseudo(manifest)["A9001"]
    (run,) = [r for r in _runs(lake_dir) if r[C.COL_PATIENT_ID] == pseudo]
    assert run["status"] == "ok" and run["registration_suspect"] is True
    (w,) = json.loads(run["warnings"])
    assert w["kind"] == "registration_suspect"
    assert w["message"].startswith(f"patient {pseudo}: CE-T1 {SITE_FOLDER}/t1c.nii.gz onto T2 ")
    assert "Mattes MI" in w["message"] and "z +" in w["message"] and "site siteA" in w["message"]
    assert f"suspect above {qc.THRESHOLD}" in w["message"]
    z = float(re.search(r"\bz ([+-][0-9.]+)", w["message"]).group(1))
    assert z > qc.THRESHOLD
    # flagged, not failed: its rows stay for a person to look at
    assert pseudo in Lake(lake_dir).read(C.TABLE_PATIENTS).column(C.COL_PATIENT_ID).to_pylist()
    assert "A9001" in summary.warnings and summary.warnings["A9001"][0]["kind"] == "registration_suspect"


def test_every_same_patient_registration_of_the_tiny_cohort_passes_the_qc(tiny_lake):
    lake_dir, summary, _ = tiny_lake
    runs = [r for r in _runs(lake_dir) if r["status"] == "ok"]
    assert len(runs) == 20 and not summary.suspect
    assert all(r["registration_suspect"] is False for r in runs)  # each has a verdict


def test_predict_applies_the_same_rule_against_the_lakes_cohort(swapped, fast_params):
    from pipelines.predict import registration_check

    lake_dir, manifest, _ = swapped
    lake = Lake(lake_dir)
    pseudo = _pseudo(manifest)["A9001"]
    runs = [r for r in _runs(lake_dir) if r["status"] == "ok"]
    bad = next(r["registration_metric"] for r in runs if r[C.COL_PATIENT_ID] == pseudo)
    good = next(r["registration_metric"] for r in runs if r[C.COL_PATIENT_ID] != pseudo)
    flagged, passed = registration_check(lake, fast_params, bad), registration_check(lake, fast_params, good)
    assert flagged.suspect is True and passed.suspect is False
    assert flagged.n_cohort == 20 and flagged.scope == "all sites"  # the suspect one is left out
    assert flagged.describe().startswith("registration QC SUSPECT")


def test_registration_qc_waits_for_a_cohort_large_enough(tiny_cohort, tmp_path, fast_params):
    manifest = _site(tiny_cohort, tmp_path, ["A0001", "A0003"])
    lake_dir = tmp_path / "lake"
    summary = _run([manifest], lake_dir, fast_params)
    assert sorted(summary.ok) == ["A0001", "A0003"] and sorted(summary.qc_pending) == ["A0001", "A0003"]
    assert not summary.suspect
    assert [r["registration_suspect"] for r in _runs(lake_dir)] == [None, None]  # no verdict yet
    res = qc.registration_qc(-0.5, [-1.1] * 2, [-1.1] * 2, site="siteA")
    assert res.suspect is None and "8 needed" in res.describe()


def test_robust_z_has_a_floor_on_the_scale():
    # a cohort of identical values: a tiny difference is not an outlier
    res = qc.registration_qc(-1.0 + 0.01, [-1.0] * 10, site="s")
    assert res.scale == qc.SCALE_FLOOR and res.suspect is False


# -- 3. duplicate inputs ----------------------------------------------------------------------
def test_the_same_images_under_two_ids_in_one_site_are_refused_before_any_patient(tiny_cohort, tmp_path,
                                                                                  fast_params):
    folder = tmp_path / "siteA"
    shutil.copytree(tiny_cohort / "siteA", folder)
    orig = _rows(folder / C.MANIFEST_FILE)
    copy = dict(orig["A0001"], patient_id="A0001b", split=C.TEST)
    manifest = _write(folder / C.MANIFEST_FILE, [orig["A0001"], orig["A0002"], copy])
    lake_dir = tmp_path / "lake"
    with pytest.raises(ManifestError) as err:
        _run([manifest], lake_dir, fast_params)
    msg = str(err.value)
    assert "nothing was run" in msg and "identical image content" in msg
    assert f"{manifest} line 4 (patient A0001b)" in msg and f"{manifest} line 2 (patient A0001)" in msg
    assert "t1c_path" in msg and "t2_path" in msg and str(folder / orig["A0001"][C.COL_T2_PATH]) in msg
    assert "A0002" not in msg
    assert not _runs(lake_dir) and not Lake(lake_dir).files(C.TABLE_SLICES)


def test_a_shared_t2_with_a_different_ce_t1_is_a_duplicate_too(tiny_cohort, tmp_path, fast_params):
    folder = tmp_path / "siteA"
    shutil.copytree(tiny_cohort / "siteA", folder)
    orig = _rows(folder / C.MANIFEST_FILE)
    shared = dict(orig["A0002"], t2_path=orig["A0001"][C.COL_T2_PATH])
    manifest = _write(folder / C.MANIFEST_FILE, [orig["A0001"], shared])
    with pytest.raises(ManifestError) as err:
        _run([manifest], tmp_path / "lake", fast_params)
    msg = str(err.value)
    assert msg.count("identical image content") == 1 and "(patient A0002)" in msg and "(patient A0001)" in msg
    assert "t2_path" in msg and "t1c_path" not in msg.split("identical image content")[1]
    assert not _runs(tmp_path / "lake")


def test_the_same_images_in_two_sites_are_processed_and_warned_on_both(tiny_cohort, tmp_path, fast_params):
    a = _site(tiny_cohort, tmp_path, ["A0001"])
    b_folder = tmp_path / "siteB"
    b_folder.mkdir()
    row = _rows(a)["A0001"]
    b_row = dict(row, patient_id="B7001", site="siteB", split=C.EXTERNAL,
                 **{col: str(a.parent / row[col]) for col in (C.COL_T1C_PATH, C.COL_T2_PATH, C.COL_ROI_PATH)})
    b = _write(b_folder / C.MANIFEST_FILE, [b_row])
    lake_dir = tmp_path / "lake"
    summary = _run([a, b], lake_dir, fast_params)
    assert sorted(summary.ok) == ["A0001", "B7001"] and not summary.failed
    assert {w["kind"] for w in summary.warnings["A0001"]} == {"duplicate_input"}
    assert "patient B7001" in summary.warnings["A0001"][0]["message"]  # the console names both raw ids
    pa_, pb = _pseudo(a)["A0001"], _pseudo(b)["B7001"]
    by_pid = {r[C.COL_PATIENT_ID]: r for r in _runs(lake_dir)}
    for me, other in ((pa_, pb), (pb, pa_)):
        found = json.loads(by_pid[me]["warnings"])
        assert [w["kind"] for w in found] == ["duplicate_input", "duplicate_input"]  # CE-T1 and T2
        assert all(w["message"].startswith(f"patient {me}: its ") and f"patient {other}" in w["message"]
                   for w in found)
        assert "A0001" not in by_pid[me]["warnings"] and "B7001" not in by_pid[me]["warnings"]


def test_one_image_in_two_sites_and_twice_in_one_is_refused_and_warned_pairwise():
    from pipelines.preprocess import find_duplicates

    def entry(pid, site, t1c, t2, line):
        return PatientEntry(pid, site, C.TRAIN, C.GBM, None, "", "", "", t1c, t2, "roi.csv", f"/{site}/manifest.csv",
                            line)

    es = [entry("A1", "siteA", "/a/x", "/a/y", 2), entry("B1", "siteB", "/b/x", "/b/q", 2),
          entry("B2", "siteB", "/b/x2", "/b/z", 3)]
    digests = {"A1": ("X", "Y"), "B1": ("X", "Q"), "B2": ("X", "Z")}
    problems, warned = find_duplicates(
        es, {pid: {C.COL_T1C_PATH: a, C.COL_T2_PATH: b} for pid, (a, b) in digests.items()},
        {e.patient_id: f"p{e.patient_id}" for e in es})
    assert problems == ["/siteB/manifest.csv line 3 (patient B2) and /siteB/manifest.csv line 2 (patient B1): "
                        "identical image content, t1c_path /b/x2 and t1c_path /b/x (sha256 X); one patient under "
                        "two ids leaks its images across splits (train, train): keep one row"]
    assert sorted(warned) == ["A1", "B1", "B2"]
    assert [m for _, _, m in warned["A1"]] == ["patient A1: its t1c_path has the same content as the t1c_path of "
                                               "patient pB1 (siteB, train), sha256 X"]


# -- 4. a changed patient keeps its rows until its new attempt succeeds -------------------------
def test_a_changed_input_that_fails_keeps_the_old_rows(tiny_cohort, tmp_path, fast_params):
    manifest = _site(tiny_cohort, tmp_path, ["A0001"])
    lake_dir = tmp_path / "lake"
    assert _run([manifest], lake_dir, fast_params).ok == ["A0001"]
    lake = Lake(lake_dir)
    before = (lake.read(C.TABLE_PATIENTS).to_pylist(), lake.files(C.TABLE_SLICES), len(lake.read(C.TABLE_SLICES)),
              lake.version(C.TABLE_SLICES), lake.version(C.TABLE_PATIENTS))
    t1c = manifest.parent / _rows(manifest)["A0001"][C.COL_T1C_PATH]
    t1c.write_bytes(b"not an image at all")
    summary = _run([manifest], lake_dir, fast_params)
    assert list(summary.failed) == ["A0001"] and summary.failed["A0001"].startswith("unreadable_image")
    pseudo = _pseudo(manifest)["A0001"]
    last = _runs(lake_dir)[-1]
    assert last["status"] == "failed" and last["error_kind"] == "unreadable_image"
    assert last["error_message"].startswith(f"patient {pseudo}: ") and f"{SITE_FOLDER}/t1c.nii.gz" in last["error_message"]
    after = (lake.read(C.TABLE_PATIENTS).to_pylist(), lake.files(C.TABLE_SLICES), len(lake.read(C.TABLE_SLICES)),
             lake.version(C.TABLE_SLICES), lake.version(C.TABLE_PATIENTS))
    assert after == before  # the good rows are still there, untouched: no commit but the failed attempt's row


def _slice_places(lake: Lake) -> set[tuple[str, str, str]]:
    """(patient, site, split) of every visible slice."""
    t = lake.read(C.TABLE_SLICES, columns=[C.COL_PATIENT_ID, C.COL_SITE, C.COL_SPLIT])
    return set(zip(*(t.column(c).to_pylist() for c in t.column_names), strict=True))


def test_a_changed_split_moves_the_slices_in_one_commit_only_after_success(tiny_cohort, tmp_path, fast_params):
    manifest = _site(tiny_cohort, tmp_path, ["A0001"])
    lake_dir = tmp_path / "lake"
    _run([manifest], lake_dir, fast_params)
    lake = Lake(lake_dir)
    pseudo = _pseudo(manifest)["A0001"]
    n_slices, version = len(lake.read(C.TABLE_SLICES)), lake.version(C.TABLE_SLICES)
    row = _rows(manifest)["A0001"]
    assert row[C.COL_SPLIT] == C.TRAIN
    _write(manifest, [dict(row, split=C.TEST)])
    summary = _run([manifest], lake_dir, fast_params)
    assert summary.ok == ["A0001"]
    assert _slice_places(lake) == {(pseudo, "siteA", C.TEST)} and len(lake.read(C.TABLE_SLICES)) == n_slices
    files = [Path(f).relative_to(lake_dir / C.TABLE_SLICES).as_posix() for f in lake.files(C.TABLE_SLICES)]
    assert all(f.startswith(f"{C.COL_SITE}=siteA/{C.COL_SPLIT}={C.TEST}/") for f in files)
    # one commit took the old slices away and brought the new ones: no version holds both or neither
    assert lake.version(C.TABLE_SLICES) == version + 1
    assert _slice_places(lake.at({C.TABLE_SLICES: version})) == {(pseudo, "siteA", C.TRAIN)}
    (patient,) = lake.read(C.TABLE_PATIENTS).to_pylist()
    assert patient[C.COL_SPLIT] == C.TEST


# -- 5. short ids are replaced as whole tokens only ----------------------------------------------
def _entry(pid: str, folder: str = "/data/siteA/images") -> PatientEntry:
    return PatientEntry(pid, "siteA", C.TRAIN, C.GBM, None, "", "", "", f"{folder}/{pid}/t1c.nii.gz",
                        f"{folder}/{pid}/t2.nii.gz", f"{folder}/{pid}_roi.nii.gz", "/data/siteA/manifest.csv", 2)


@pytest.mark.parametrize("pid", ["T2", "1", "A"])
def test_a_short_id_is_scrubbed_as_a_whole_token_only(pid):
    e = _entry(pid)
    msg = (f"patient {pid}: CE-T1 and T2 do not overlap (1% of the smaller field of view); T2 {e.t2_path} "
           f"spacing (1.0, 1.0, 5.0), ROI {e.roi_path} A 1 T2")
    got = _scrub(msg, e, "pX")
    assert got == ("patient pX: CE-T1 and T2 do not overlap (1% of the smaller field of view); T2 "
                   f"{SITE_FOLDER}/t2.nii.gz spacing (1.0, 1.0, 5.0), ROI {SITE_FOLDER}/pX_roi.nii.gz A 1 T2")


def test_a_long_id_is_scrubbed_wherever_it_stands_as_a_token():
    e = _entry("A0001")
    got = _scrub("KeyError: 'A0001' in A0001_t1c and A00012, patient A0001", e, "pX")
    assert got == "KeyError: 'pX' in pX_t1c and A00012, patient pX"


def test_a_short_id_failing_for_real_keeps_its_message_readable(tiny_cohort, tmp_path, fast_params):
    folder = tmp_path / "siteA"
    shutil.copytree(tiny_cohort / "siteA", folder)
    row = _rows(folder / C.MANIFEST_FILE)["A0001"]
    t1c = sitk.ReadImage(str(folder / row[C.COL_T1C_PATH]))
    t1c.SetOrigin([o + 500.0 for o in t1c.GetOrigin()])  # no overlap with its T2
    sitk.WriteImage(t1c, str(folder / "far_t1c.nii.gz"))
    manifest = _write(folder / C.MANIFEST_FILE, [dict(row, patient_id="T2", t1c_path="far_t1c.nii.gz")])
    summary = _run([manifest], tmp_path / "lake", fast_params)
    assert summary.failed["T2"].startswith("registration_failed: patient T2: CE-T1 and T2 do not overlap")
    pseudo = _pseudo(manifest)["T2"]
    (run,) = _runs(tmp_path / "lake")
    assert run["error_kind"] == "registration_failed"
    assert run["error_message"].startswith(f"patient {pseudo}: CE-T1 and T2 do not overlap (")


# -- 7. an unusable lake fails before any patient -----------------------------------------------
def test_a_read_only_lake_fails_before_any_patient(tiny_cohort, tmp_path):
    from tests.faults.test_lake import (
        make_read_only,
        make_writable,
        refuse_if_writable,
        run_without_write_override,
    )

    manifest = _site(tiny_cohort, tmp_path, ["A0001"])
    root = tmp_path / "lake"
    Lake(root).check_writable()
    before = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
    make_read_only(root)
    try:
        proc = run_without_write_override(refuse_if_writable(root) + f"""
    from gbmmet.errors import LakeError
    from pipelines.preprocess import run_preprocess
    try:
        run_preprocess([{str(manifest)!r}], {str(root)!r}, workers=0, show_progress=False)
    except LakeError as exc:
        print("LakeError:", exc)
    """)
    finally:
        make_writable(root)
    assert proc.returncode == 0, proc.stderr
    assert f"LakeError: the lake {root} is not writable" in proc.stdout
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == before


def test_a_batch_whose_commit_fails_stops_the_run_and_the_next_run_redoes_its_patients(tiny_cohort, tmp_path,
                                                                                         fast_params):
    from tests.faults.test_lake import make_read_only, make_writable, run_without_write_override

    manifest = _site(tiny_cohort, tmp_path, ["A0001"])
    lake_dir = tmp_path / "lake"
    _run([manifest], lake_dir, fast_params)
    _site(tiny_cohort, tmp_path / "more", ["A0001", "A0002"])
    manifest = shutil.copy(tmp_path / "more" / "siteA" / C.MANIFEST_FILE, manifest)
    log = lake_dir / C.TABLE_PATIENTS / "_delta_log"
    make_read_only(log)  # the patients commit of the next batch cannot be written
    try:
        proc = run_without_write_override(f"""
    import os, sys
    try:
        open(os.path.join({str(log)!r}, ".w"), "wb").close()
    except OSError:
        pass
    else:
        sys.exit(77)
    from gbmmet.errors import LakeError
    from gbmmet.preprocess.params import PreprocessParams
    from pipelines.preprocess import run_preprocess
    try:
        run_preprocess([{str(manifest)!r}], {str(lake_dir)!r}, params=PreprocessParams(iso_mm=2.0), workers=0,
                       show_progress=False)
    except LakeError as exc:
        print("LakeError:", str(exc).encode("ascii", "replace").decode())  # read with the parent's locale
    """)
    finally:
        make_writable(log)
    assert proc.returncode == 0, proc.stderr
    assert "LakeError: preprocess stopped: a batch of 1 finished patient(s) could not be committed" in proc.stdout
    assert "re-run the same command to redo them" in proc.stdout
    pseudo = _pseudo(manifest)
    lake = Lake(lake_dir)
    assert lake.read(C.TABLE_PATIENTS).column(C.COL_PATIENT_ID).to_pylist() == [pseudo["A0001"]]  # not done
    summary = _run([manifest], lake_dir, fast_params)
    assert summary.ok == ["A0002"] and summary.skipped == ["A0001"]
    patients = lake.read(C.TABLE_PATIENTS).to_pylist()
    slices = lake.read(C.TABLE_SLICES, columns=[C.COL_PATIENT_ID]).column(0).to_pylist()
    assert {p[C.COL_PATIENT_ID]: p["n_slices"] for p in patients} == {pid: slices.count(pid) for pid in set(slices)}


def test_a_lake_root_that_is_a_file_fails_in_the_cli_before_any_patient(tiny_cohort, tmp_path, capsys):
    manifest = _site(tiny_cohort, tmp_path, ["A0001"])
    root = tmp_path / "lake"
    root.write_bytes(b"x")
    code = main(["preprocess", "--manifest", str(manifest), "--lake", str(root), "--workers", "0"])
    err = capsys.readouterr().err
    assert code == 2 and f"error: the lake {root} is a file" in err
    assert root.read_bytes() == b"x" and not (manifest.parent / ID_MAP_FILE).exists()
