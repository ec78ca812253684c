"""How ``gbmmet preprocess`` looks at its inputs (issue 14): the driver only stats them (a re-run
skips a patient by its files' sizes and mtimes, reading no byte), hashes only the files whose
size collides with another patient's to refuse duplicates, keeps a bounded window of tasks in
flight, and a task retries a transient read error while a missing file fails its patient at once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gbmmet import constants as C
from gbmmet.errors import TransientIOError
from gbmmet.manifest import load_manifests
from gbmmet.pseudonym import pseudonymise
from pipelines.preprocess import (
    PatientJob,
    _plan,
    input_hash,
    input_stamp,
    preprocess_one,
    run_preprocess,
    size_collisions,
)
from storage.lake import Lake
from tests import eio_once
from tests.pipelines.test_preprocess import _small_site

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def eio_marker(tmp_path):
    """The marker of ``tests.eio_once.fail_once``: while it exists, the next input read fails with EIO."""
    marker = tmp_path / "eio-once"
    marker.write_text("")
    return marker


def _entries(manifest: Path):
    return load_manifests([str(manifest)])[0]


def _files(manifest: Path) -> list[Path]:
    return [Path(p) for e in _entries(manifest) for p in (e.t1c_path, e.t2_path, e.roi_path)]


def _runs(lake_dir: Path) -> list[dict]:
    return sorted(Lake(lake_dir).read(C.TABLE_PREPROCESS_RUNS).to_pylist(), key=lambda r: r["attempt_id"])


def _job(entry, lake: Lake, params) -> PatientJob:
    return PatientJob(entry, pseudonymise(lake.secret(), entry.site, entry.patient_id), input_stamp(entry), params,
                      params.hash(), lake.uri)


# -- the driver stats, it does not read ----------------------------------------------------------
def test_a_rerun_skips_by_size_and_mtime_without_reading_and_a_touched_file_reruns_its_patient(
        tiny_cohort, tmp_path, fast_params):
    manifest = _small_site(tiny_cohort, tmp_path, 3)
    lake_dir = tmp_path / "lake"
    first = run_preprocess([manifest], lake_dir, params=fast_params, workers=0, show_progress=False)
    assert len(first.ok) == 3
    # every input's bytes replaced by garbage of the same size, its mtime put back: were a byte
    # read before deciding, the patients would run again (and fail on the garbage)
    rng = np.random.default_rng(0)
    kept = {}
    for f in _files(manifest):
        st, kept[f] = f.stat(), f.read_bytes()
        f.write_bytes(rng.integers(0, 256, st.st_size, dtype=np.uint8).tobytes())
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = run_preprocess([manifest], lake_dir, params=fast_params, workers=0, show_progress=False)
    assert sorted(again.skipped) == sorted(first.ok) and not again.ok and not again.failed
    for f, data in kept.items():  # the same bytes back, the same mtimes
        st = f.stat()
        f.write_bytes(data)
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    touched = _entries(manifest)[1]
    st = Path(touched.t2_path).stat()
    os.utime(touched.t2_path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    third = run_preprocess([manifest], lake_dir, params=fast_params, workers=0, show_progress=False)
    assert third.ok == [touched.patient_id] and len(third.skipped) == 2
    old, new = [r for r in _runs(lake_dir) if r[C.COL_PATIENT_ID] == _job(touched, Lake(lake_dir), fast_params).pseudo_id]
    assert new["input_hash"] == old["input_hash"]  # the same content, found again by the task
    assert new["input_stamp"] != old["input_stamp"] and new["input_stamp"] == input_stamp(touched)


def test_a_changed_manifest_row_changes_the_stamp_without_any_file_touched(tiny_cohort, tmp_path):
    (entry,) = _entries(_small_site(tiny_cohort, tmp_path, 1))
    from dataclasses import replace

    assert input_stamp(entry) == input_stamp(entry)
    assert input_stamp(replace(entry, split=C.TEST)) != input_stamp(entry)


# -- duplicates: only colliding sizes are hashed ---------------------------------------------------
def test_only_files_whose_size_another_patients_file_has_are_hashed():
    keys = {("A", C.COL_T1C_PATH): (False, 100), ("A", C.COL_T2_PATH): (False, 200),
            ("B", C.COL_T1C_PATH): (False, 300), ("B", C.COL_T2_PATH): (False, 100),
            ("C", C.COL_T1C_PATH): (False, 400), ("C", C.COL_T2_PATH): (False, 400),  # its own two: no
            ("D", C.COL_T1C_PATH): (True, 200), ("D", C.COL_T2_PATH): (False, 500)}  # a folder: no
    assert size_collisions(keys) == {("A", C.COL_T1C_PATH), ("B", C.COL_T2_PATH)}


def test_the_driver_hashes_only_the_shared_files_and_still_warns_of_the_duplicate(tiny_cohort, tmp_path,
                                                                                 fast_params):
    from tests.faults.test_preprocess import _rows, _site, _write

    a = _site(tiny_cohort, tmp_path, ["A0001", "A0002", "A0003"])
    row = _rows(a)["A0001"]
    (tmp_path / "siteB").mkdir()
    b = _write(tmp_path / "siteB" / C.MANIFEST_FILE, [dict(
        row, patient_id="B7001", site="siteB", split=C.EXTERNAL,
        **{col: str(a.parent / row[col]) for col in (C.COL_T1C_PATH, C.COL_T2_PATH, C.COL_ROI_PATH)})])
    sizes = [Path(getattr(e, c)).stat().st_size for e in _entries(a) for c in (C.COL_T1C_PATH, C.COL_T2_PATH)]
    assert len(set(sizes)) == len(sizes)  # no chance collision among the tiny cohort's images
    plan = _plan([a, b], tmp_path / "lake", fast_params, keep_going=False)
    assert plan.hashed == 2  # A0001's CE-T1 and T2, once each, though two patients name them
    assert sorted(plan.duplicates) == ["A0001", "B7001"]


# -- a bounded window --------------------------------------------------------------------------
def test_a_run_keeps_no_more_patients_in_flight_than_its_window(tiny_cohort, tmp_path, ray_local, fast_params):
    manifest = _small_site(tiny_cohort, tmp_path, 3)
    summary = run_preprocess([manifest], tmp_path / "lake", params=fast_params, window=2, show_progress=False,
                             qc=False)
    assert len(summary.ok) == 3 and summary.window == 2 and summary.max_in_flight == 2


def test_an_impossible_window_is_refused_before_any_work(tmp_path):
    from gbmmet.errors import ConfigError

    with pytest.raises(ConfigError, match="window"):
        run_preprocess([tmp_path / "none.csv"], tmp_path / "lake", window=0, show_progress=False)
    assert not (tmp_path / "lake").exists()


# -- transient and permanent read errors -----------------------------------------------------------
def test_a_read_failing_once_with_eio_is_retried_in_process_and_the_patient_ends_ok(tiny_cohort, tmp_path,
                                                                                   fast_params, eio_marker,
                                                                                   monkeypatch):
    import pipelines.preprocess as pre

    manifest = _small_site(tiny_cohort, tmp_path, 1)
    (entry,) = _entries(manifest)
    expected_hash = input_hash(entry)
    monkeypatch.setattr(pre, "_hash_path", eio_once.fail_once(pre._hash_path, eio_marker))
    lake_dir = tmp_path / "lake"
    summary = run_preprocess([manifest], lake_dir, params=fast_params, workers=0, show_progress=False, qc=False)
    assert not eio_marker.exists()  # the fault fired
    assert summary.ok == [entry.patient_id] and not summary.failed
    (run,) = _runs(lake_dir)  # the failed read left no attempt behind: it was retried, not recorded
    assert run["status"] == "ok" and run["input_hash"] == expected_hash


def test_a_read_failing_once_with_eio_in_a_ray_task_is_retried_by_ray_and_the_patient_ends_ok(tiny_cohort,
                                                                                             tmp_path, eio_marker):
    manifest = _small_site(tiny_cohort, tmp_path, 1)
    # PYTHONPATH: Ray's workers import the hook's module (tests/ is not installed, as gbmmet is)
    env = {**os.environ, "RAY_RUNTIME_ENV_HOOK": "tests.eio_once.add_setup_hook", eio_once.MARKER_ENV: str(eio_marker),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "tests.eio_once", str(manifest), str(tmp_path / "lake")], cwd=ROOT,
                          env=env, capture_output=True, text=True, encoding="utf-8", timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    said = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not eio_marker.exists()  # the fault fired, in a Ray worker
    (entry,) = _entries(manifest)
    assert said["ok"] == [entry.patient_id] and not said["failed"]
    # the failed read left no attempt behind: Ray retried the task, nothing was recorded
    assert said["runs"] == [{"status": "ok", "input_hash": input_hash(entry)}]


def test_a_file_that_keeps_failing_with_eio_fails_its_patient_after_the_retries_alone(tiny_cohort, tmp_path,
                                                                                     ray_local, fast_params):
    manifest = _small_site(tiny_cohort, tmp_path, 2)
    bad, good = _entries(manifest)
    Path(bad.t2_path).unlink()
    Path(bad.t2_path).symlink_to("/proc/self/mem")  # a real file whose every read fails with EIO
    summary = run_preprocess([manifest], tmp_path / "lake", params=fast_params, show_progress=False, qc=False)
    assert summary.ok == [good.patient_id]
    assert summary.failed[bad.patient_id].startswith("io_error: TransientIOError: [Errno 5] ")
    assert "still failing after 3 retries" in summary.failed[bad.patient_id]
    failed = [r for r in _runs(tmp_path / "lake") if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["error_kind"] == "io_error"
    assert bad.patient_id not in failed[0]["error_message"] and "t2.nii.gz" in failed[0]["error_message"]


def test_a_task_raises_a_transient_read_error_for_ray_to_retry(tiny_cohort, tmp_path, fast_params):
    (entry,) = _entries(_small_site(tiny_cohort, tmp_path, 1))
    Path(entry.t1c_path).unlink()
    Path(entry.t1c_path).symlink_to("/proc/self/mem")
    with pytest.raises(TransientIOError, match=f"patient {entry.patient_id}: t1c_path"):
        preprocess_one(_job(entry, Lake(tmp_path / "lake").check_writable(), fast_params))


def test_a_file_gone_when_its_task_reads_it_fails_its_patient_at_once(tiny_cohort, tmp_path, fast_params):
    (entry,) = _entries(_small_site(tiny_cohort, tmp_path, 1))
    job = _job(entry, Lake(tmp_path / "lake").check_writable(), fast_params)
    shutil.move(entry.t2_path, tmp_path / "elsewhere.nii.gz")  # gone after the driver looked
    out = preprocess_one(job)  # returned, not raised: no retry
    assert out["status"] == "failed" and out["kind"] == "missing_file"
    assert out["message"] == f"patient {entry.patient_id}: t2_path {entry.t2_path} does not exist (any more)"
    assert out["run"]["error_kind"] == "missing_file" and out["run"]["input_stamp"] == job.input_stamp


def test_pinned_sites_take_turns_in_the_window_each_in_its_own_order():
    from pipelines.preprocess import round_robin

    todo = [(pid, ()) for pid in ("A1", "A2", "A3", "B1", "C1", "C2")]
    order = [pid for pid, _ in round_robin(todo, {pid: pid[0] for pid, _ in todo})]
    assert order == ["A1", "B1", "C1", "A2", "C2", "A3"]
