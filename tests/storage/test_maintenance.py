"""Lake maintenance (``storage.maintenance``, ``gbmmet lake``) on real Delta tables in
``tmp_path``: stats, compaction, vacuum, erasing a patient, migrating an old-layout lake."""

from __future__ import annotations

import datetime as dt
import math
import os
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gbmmet import constants as C
from gbmmet.errors import LakeError
from gbmmet.pseudonym import pseudonymise
from storage import catalog
from storage import maintenance as M
from storage.lake import SECRET_DIR, Lake
from storage.schemas import SCHEMAS
from tests.faults.test_lake import listing, patient_row, run_row

SITES = ("siteA", "siteB")
SPLITS = (C.TRAIN, C.TEST)
PATIENT_TABLES = [n for n in SCHEMAS if C.COL_PATIENT_ID in SCHEMAS[n].names]


# -- helpers ----------------------------------------------------------------------------------
def row_of(name: str, **values) -> dict:
    """A row of table ``name``: ``values``, every other column null."""
    return dict.fromkeys(SCHEMAS[name].names) | values


def slice_rows(pid: str, n: int = 2, size: int = 1500, seed: int = 0) -> pa.Table:
    """``n`` slices of patient ``pid`` with ``size`` random (incompressible) image bytes each."""
    rng = np.random.default_rng(seed)
    return pa.Table.from_pylist([row_of(C.TABLE_SLICES, **{C.COL_PATIENT_ID: pid, C.COL_LABEL: C.GBM},
                                        slice_index=i, image=rng.integers(0, 256, size, dtype=np.uint8).tobytes())
                                 for i in range(n)], schema=SCHEMAS[C.TABLE_SLICES])


def patient_lake(root: Path, raw_ids=("A0001", "A0002", "A0003")) -> tuple[Lake, list[str]]:
    """A lake whose patients of siteA are in every table with a patient column; (lake, pseudonyms)."""
    lake = Lake(root).ensure()
    key = lake.secret()
    pids = [pseudonymise(key, "siteA", raw) for raw in raw_ids]
    for k, pid in enumerate(pids):
        lake.append(C.TABLE_PATIENTS, pa.Table.from_pylist([patient_row(pid)]))
        lake.append(C.TABLE_PREPROCESS_RUNS, pa.Table.from_pylist([run_row(pid)]))
        lake.append(C.TABLE_SLICES, slice_rows(pid, seed=k), {C.COL_SITE: "siteA", C.COL_SPLIT: C.TRAIN})
    rows = {
        C.TABLE_FEATURES: dict(site="siteA", split=C.TRAIN, label=C.GBM, slice_index=0, weights_sha256="w",
                               params_hash="p", vector=[0.5, 0.25], backbone="b@1"),
        C.TABLE_FOLDS: dict(run_id="r1", fold=0),
        C.TABLE_SLICE_PREDICTIONS: dict(run_id="r1", slice_index=0, model="fold0", prob_gbm=0.7),
        C.TABLE_PATIENT_PREDICTIONS: dict(run_id="r1", cutoff_kind="val_youden_ensemble", predictive_index=0.5),
        C.TABLE_READS: {C.COL_READER_ID: "reader1", C.COL_ASSISTED: False, C.COL_CALL: C.GBM},
        C.TABLE_CAMS: dict(run_id="r1", slice_index=0, cam=b"\x00\x01"),
        C.TABLE_ACCESS_LOG: {C.COL_USER: "a@x.org", C.COL_TIME: dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
                             C.COL_PAGE: "patient", C.COL_SITE: "siteA", "run_id": "r1"},
        C.TABLE_QC_PANELS: dict(site="siteA", attempt_id="a1", panel="roi_slices", png=b"\x89PNG"),
    }
    for name, values in rows.items():
        table = pa.Table.from_pylist([row_of(name, **values, **{C.COL_PATIENT_ID: pid}) for pid in pids])
        lake.append(name, table)
    lake.append(C.TABLE_RUNS, pa.Table.from_pylist([row_of(C.TABLE_RUNS, run_id="r1", kind="train")]))
    return lake, pids


def data_files_on_disk(root: Path, name: str) -> set[str]:
    """The Parquet data files in table ``name``'s folder (its log and other folders aside)."""
    base = root / name
    return {p.relative_to(base).as_posix() for p in base.rglob("part-*.parquet")}


def current_files(lake: Lake, name: str) -> set[str]:
    return {os.path.relpath(f, lake.path(name)) for f in lake.files(name)}


def sorted_rows(table: pa.Table, key=(C.COL_PATIENT_ID, "slice_index")) -> list[dict]:
    return sorted(table.to_pylist(), key=lambda r: tuple(str(r.get(k)) for k in key))


def age(path: Path, hours: float) -> None:
    """Make ``path`` (and, for a folder, everything in it) ``hours`` old."""
    then = dt.datetime.now().timestamp() - hours * 3600
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(p, (then, then))


# -- stats ------------------------------------------------------------------------------------
def test_stats_gives_each_tables_version_files_bytes_rows_and_log_entries(tmp_path):
    lake, _ = patient_lake(tmp_path / "lake")
    by_name = {s.name: s for s in M.stats(lake)}
    assert list(by_name) == list(SCHEMAS)
    slices = by_name[C.TABLE_SLICES]
    assert (slices.version, slices.files, slices.rows, slices.log_entries) == (2, 3, 6, 3)
    assert slices.bytes == sum(os.path.getsize(f) for f in lake.files(C.TABLE_SLICES))
    assert by_name[C.TABLE_METRICS] == M.TableStats(C.TABLE_METRICS, None, 0, 0, 0, 0)


# -- compaction -------------------------------------------------------------------------------
def staged_patients(lake: Lake, n: int, size: int = 6000) -> None:
    """``n`` patients' slices, one data file each (as preprocessing stages them) over two sites
    and two splits, committed together."""
    staged = [lake.stage(C.TABLE_SLICES, slice_rows(f"p{k:04d}", n=1, size=size, seed=k),
                         {C.COL_SITE: SITES[k % 2], C.COL_SPLIT: SPLITS[k // 2 % 2]}) for k in range(n)]
    lake.commit(C.TABLE_SLICES, staged)


def test_compaction_of_a_lake_scaled_like_2000_patients_leaves_under_50_files(tmp_path):
    # 2,000 patients' slices are ~9 GB: 35 target files of 256 MB. Here 200 one-patient files,
    # with the target at the same share (1/35) of the table.
    lake = Lake(tmp_path / "lake").ensure()
    staged_patients(lake, 200)
    before = lake.read(C.TABLE_SLICES)
    total = M.stats(lake)[1].bytes
    result = M.compact(lake, [C.TABLE_SLICES], target_size=total // 35)
    r = result[C.TABLE_SLICES]
    assert r["files_before"] == 200 and r["files_after"] <= 50
    assert r["files_after"] <= math.ceil(r["bytes_before"] / (total // 35)) + len(SITES) * len(SPLITS)
    assert len(lake.files(C.TABLE_SLICES)) == r["files_after"]
    assert sorted_rows(lake.read(C.TABLE_SLICES)) == sorted_rows(before)


def test_compaction_is_one_commit_and_a_second_one_changes_nothing(tmp_path):
    lake = Lake(tmp_path / "lake").ensure()
    staged_patients(lake, 20)
    version = lake.version(C.TABLE_SLICES)
    M.compact(lake, [C.TABLE_SLICES], target_size=1 << 20)
    assert lake.version(C.TABLE_SLICES) == version + 1
    again = M.compact(lake, [C.TABLE_SLICES], target_size=1 << 20)[C.TABLE_SLICES]
    assert again["files_before"] == again["files_after"] and lake.version(C.TABLE_SLICES) == version + 1


def test_compaction_rebuilds_the_catalog_onto_the_new_files(tmp_path):
    lake = Lake(tmp_path / "lake").ensure()
    staged_patients(lake, 20)
    catalog.refresh(lake)
    M.compact(lake, [C.TABLE_SLICES], target_size=1 << 20)
    M.vacuum(lake, retain_hours=0)
    con = duckdb.connect(str(tmp_path / "lake" / catalog.CATALOG_FILE), read_only=True)
    try:
        assert con.execute("select count(*) from slices").fetchone()[0] == 20
    finally:
        con.close()


def test_compact_small_compacts_only_tables_with_many_small_files(tmp_path):
    lake = Lake(tmp_path / "lake").ensure()
    staged_patients(lake, 20)
    for k in range(3):
        lake.append(C.TABLE_PATIENTS, pa.Table.from_pylist([patient_row(f"p{k}")]))
    done = M.compact_small(lake, max_files=16)
    assert list(done) == [C.TABLE_SLICES] and done[C.TABLE_SLICES]["files_after"] < 16
    assert len(lake.files(C.TABLE_PATIENTS)) == 3
    assert M.compact_small(lake, max_files=16) == {}



def test_a_ray_driver_compacts_in_a_ray_task_with_the_same_result(tmp_path, ray_local, monkeypatch):
    lake = Lake(tmp_path / "lake").ensure()
    staged_patients(lake, 20)
    before = sorted_rows(lake.read(C.TABLE_SLICES))

    def not_here(*_, **__):
        raise AssertionError("compacted in the driver")

    monkeypatch.setattr(M, "compact_small", not_here)  # this process only: a Ray worker has the real one
    done = M.compact_small_on_cluster(lake, max_files=16)
    assert list(done) == [C.TABLE_SLICES] and done[C.TABLE_SLICES]["files_after"] < 16
    assert sorted_rows(lake.read(C.TABLE_SLICES)) == before


# -- vacuum -----------------------------------------------------------------------------------
def test_vacuum_zero_leaves_only_the_latest_files_and_keeps_training_checkpoints(tmp_path):
    lake = Lake(tmp_path / "lake").ensure()
    staged_patients(lake, 20)
    M.compact(lake, [C.TABLE_SLICES], target_size=1 << 20)
    killed = lake.stage(C.TABLE_SLICES, slice_rows("p9999"), {C.COL_SITE: "siteA", C.COL_SPLIT: C.TRAIN})
    lake.append(C.TABLE_RUNS, pa.Table.from_pylist([row_of(C.TABLE_RUNS, run_id="r1", kind="train")]))
    checkpoint = tmp_path / "lake" / C.TABLE_RUNS / "r1" / "fold0" / "checkpoint_000000" / "state.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"weights")
    age(checkpoint.parents[2], 24 * 30)
    before = sorted_rows(lake.read(C.TABLE_SLICES))

    done = M.vacuum(lake, retain_hours=0)
    assert done[C.TABLE_SLICES]["files_removed"] == 21  # 20 compacted away, 1 never committed
    assert data_files_on_disk(tmp_path / "lake", C.TABLE_SLICES) == current_files(lake, C.TABLE_SLICES)
    assert killed.path not in data_files_on_disk(tmp_path / "lake", C.TABLE_SLICES)
    assert checkpoint.read_bytes() == b"weights"
    assert sorted_rows(lake.read(C.TABLE_SLICES)) == before


def test_vacuum_keeps_what_is_younger_than_the_retention(tmp_path):
    lake = Lake(tmp_path / "lake").ensure()
    staged_patients(lake, 20)
    version = lake.version(C.TABLE_SLICES)
    M.compact(lake, [C.TABLE_SLICES], target_size=1 << 20)
    killed = lake.stage(C.TABLE_SLICES, slice_rows("p9999"), {C.COL_SITE: "siteA", C.COL_SPLIT: C.TRAIN})
    on_disk = data_files_on_disk(tmp_path / "lake", C.TABLE_SLICES)

    done = M.vacuum(lake, retain_hours=1)
    assert done[C.TABLE_SLICES] == {"files_removed": 0, "log_entries_removed": 0}
    assert data_files_on_disk(tmp_path / "lake", C.TABLE_SLICES) == on_disk
    assert lake.at({C.TABLE_SLICES: version}).read(C.TABLE_SLICES).num_rows == 20  # time travel still works
    age(tmp_path / "lake" / C.TABLE_SLICES / killed.path, 2)
    assert M.vacuum(lake, retain_hours=1)[C.TABLE_SLICES]["files_removed"] == 1


def test_vacuum_removes_a_killed_jobs_files_from_a_table_never_committed(tmp_path):
    lake = Lake(tmp_path / "lake").ensure()
    staged = lake.stage(C.TABLE_CAMS, pa.Table.from_pylist([row_of(C.TABLE_CAMS, run_id="r", patient_id="p",
                                                                   slice_index=0, cam=b"x")]))
    assert M.vacuum(lake, retain_hours=0)[C.TABLE_CAMS]["files_removed"] == 1
    assert not (tmp_path / "lake" / C.TABLE_CAMS / staged.path).exists()


def test_vacuum_ends_time_travel_to_versions_older_than_the_retention(tmp_path):
    lake, _ = patient_lake(tmp_path / "lake")
    old = lake.version(C.TABLE_PATIENTS) - 1
    logs = len(M._log_entries(lake, C.TABLE_PATIENTS))
    done = M.vacuum(lake, retain_hours=0)
    assert done[C.TABLE_PATIENTS]["log_entries_removed"] >= logs
    with pytest.raises(LakeError, match=f"no version {old}"):
        lake.at({C.TABLE_PATIENTS: old}).read(C.TABLE_PATIENTS)
    assert lake.read(C.TABLE_PATIENTS).num_rows == 3
    config = lake.delta_latest(C.TABLE_PATIENTS).metadata().configuration
    assert config[M.LOG_RETENTION] == "interval 7 days"  # the lake's week, set back


# -- forget -----------------------------------------------------------------------------------
def every_file(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_a_forgotten_patient_is_in_no_file_of_the_lake_after_vacuum(tmp_path):
    root = tmp_path / "lake"
    lake, (keep1, gone, keep2) = patient_lake(root)
    lake.stage(C.TABLE_SLICES, slice_rows(gone), {C.COL_SITE: "siteA", C.COL_SPLIT: C.TRAIN})  # a killed job's
    M.compact(lake, target_size=1 << 20)  # the patient's rows now in old and new files
    lake.replace(C.TABLE_PATIENTS, pa.Table.from_pylist([patient_row(gone)]), {C.COL_PATIENT_ID: [gone]})
    catalog.refresh(lake)
    counts = {n: lake.read(n).num_rows for n in PATIENT_TABLES}

    report = M.forget(lake, "siteA", "A0002")
    assert report.pseudonym == gone and report.catalog == str(root / catalog.CATALOG_FILE)
    assert report.removed == {n: (2 if n == C.TABLE_SLICES else 1) for n in PATIENT_TABLES}
    M.vacuum(lake, retain_hours=0)

    for name in PATIENT_TABLES:
        ids = lake.read(name).column(C.COL_PATIENT_ID).to_pylist()
        assert gone not in ids and keep1 in ids and keep2 in ids
        assert len(ids) == counts[name] - report.removed[name]
    parquet = [p for p in every_file(root) if p.name.endswith(".parquet")]
    assert any("checkpoint" in p.name for p in parquet)
    for path in parquet:
        assert gone not in str(pq.read_table(path).to_pylist()), path
    for path in every_file(root):
        assert gone.encode() not in path.read_bytes(), path
        assert b"A0002" not in path.read_bytes(), path
    con = duckdb.connect(str(root / catalog.CATALOG_FILE), read_only=True)
    try:
        for name in PATIENT_TABLES:
            assert con.execute(f'select count(*) from "{name}" where patient_id = ?', [gone]).fetchone()[0] == 0
            assert con.execute(f'select count(*) from "{name}" where patient_id = ?', [keep1]).fetchone()[0] > 0
    finally:
        con.close()


def test_forget_keeps_the_rows_in_older_versions_until_vacuum(tmp_path):
    lake, (_, gone, _) = patient_lake(tmp_path / "lake")
    version = lake.version(C.TABLE_PATIENTS)
    M.forget(lake, "siteA", "A0002")
    ids = lake.at({C.TABLE_PATIENTS: version}).read(C.TABLE_PATIENTS).column(C.COL_PATIENT_ID).to_pylist()
    assert gone in ids


def test_forgetting_a_patient_no_table_holds_removes_nothing_and_says_why(tmp_path):
    lake, _ = patient_lake(tmp_path / "lake")
    versions = lake.versions()
    with pytest.raises(LakeError, match="no table of the lake .* holds this patient of site 'siteB'") as err:
        M.forget(lake, "siteB", "A0002")
    assert "pseudonymised with this lake's key" in str(err.value) and "nothing was removed" in str(err.value)
    assert lake.versions() == versions


def test_forget_on_a_lake_without_patients_makes_no_key(tmp_path):
    lake = Lake(tmp_path / "lake").ensure()
    with pytest.raises(LakeError, match="holds no patient"):
        M.forget(lake, "siteA", "A0001")
    assert not (tmp_path / "lake" / SECRET_DIR).exists()


def test_forget_and_vacuum_erase_a_patient_on_object_storage(s3_server):
    import pyarrow.fs as pafs

    from tests.conftest import s3_uri

    lake, (keep1, gone, keep2) = patient_lake(s3_uri(s3_server, "maintenance", "lake"))
    M.compact(lake, target_size=1 << 20)
    report = M.forget(lake, "siteA", "A0002")
    assert report.catalog is None and report.removed[C.TABLE_PATIENTS] == 1
    M.vacuum(lake, retain_hours=0)
    ids = lake.read(C.TABLE_PATIENTS).column(C.COL_PATIENT_ID).to_pylist()
    assert sorted(ids) == sorted([keep1, keep2])
    infos = lake.fs.get_file_info(pafs.FileSelector(lake.base, recursive=True))
    objects = [i.path for i in infos if i.type == pafs.FileType.File]
    assert any(p.endswith(".checkpoint.parquet") for p in objects)
    for path in objects:
        with lake.fs.open_input_stream(path) as fh:
            assert gone.encode() not in fh.read(), path


# -- migration --------------------------------------------------------------------------------
def old_lake(root: Path) -> dict[str, list[dict]]:
    """A lake of the old layout, written with plain pyarrow: one file per patient, attempt or
    run; slices in site=/split= folders without those columns; older files lacking columns
    added since. Returns the rows each table should hold after migration."""
    root.mkdir(parents=True)
    pids = ["p00000000000000a1", "p00000000000000b2", "p00000000000000c3"]
    expected: dict[str, list[dict]] = {C.TABLE_PATIENTS: [], C.TABLE_PREPROCESS_RUNS: [], C.TABLE_SLICES: [],
                                       C.TABLE_RUNS: []}
    for k, pid in enumerate(pids):
        site, split = SITES[k % 2], SPLITS[k // 2]
        patient = patient_row(pid, site, split)
        pq.write_table(pa.Table.from_pylist([patient], schema=SCHEMAS[C.TABLE_PATIENTS]),
                       _mkdir(root / C.TABLE_PATIENTS) / f"{pid}.parquet")
        expected[C.TABLE_PATIENTS].append(patient)
        older = [c for c in SCHEMAS[C.TABLE_PREPROCESS_RUNS].names if c not in ("split", "label", "warnings",
                                                                                "registration_suspect")]
        attempt = run_row(pid) | {"status": "ok", "total_s": 1.5}
        pq.write_table(pa.Table.from_pylist([{c: attempt[c] for c in older}]).cast(
            pa.schema([SCHEMAS[C.TABLE_PREPROCESS_RUNS].field(c) for c in older])),
            _mkdir(root / C.TABLE_PREPROCESS_RUNS) / f"{pid}-a1.parquet")
        expected[C.TABLE_PREPROCESS_RUNS].append(attempt)
        rows = slice_rows(pid, seed=k)
        pq.write_table(rows, _mkdir(root / C.TABLE_SLICES / f"site={site}" / f"split={split}") / f"{pid}.parquet")
        expected[C.TABLE_SLICES] += [r | {C.COL_SITE: site, C.COL_SPLIT: split} for r in rows.to_pylist()]
    run = row_of(C.TABLE_RUNS, run_id="r1", kind="train", status="ok")
    older = [c for c in SCHEMAS[C.TABLE_RUNS].names if c != "lake_versions"]
    pq.write_table(pa.Table.from_pylist([{c: run[c] for c in older}],
                                        schema=pa.schema([SCHEMAS[C.TABLE_RUNS].field(c) for c in older])),
                   _mkdir(root / C.TABLE_RUNS) / "r1-train.parquet")
    expected[C.TABLE_RUNS].append(run)
    checkpoint = _mkdir(root / C.TABLE_RUNS / "r1" / "fold0" / "checkpoint_000000") / "state.pt"
    checkpoint.write_bytes(b"weights")
    return expected


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_an_old_layout_lake_is_refused_until_migrated(tmp_path):
    old_lake(tmp_path / "lake")
    with pytest.raises(LakeError, match="gbmmet lake migrate"):
        Lake(tmp_path / "lake").read(C.TABLE_PATIENTS)


def test_migrate_converts_every_old_table_with_its_rows(tmp_path):
    root = tmp_path / "lake"
    expected = old_lake(root)
    old_files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.parquet"))
    lake = Lake(root)
    m = M.migrate(lake)
    assert m.tables == {C.TABLE_PATIENTS: {"old_files": 3, "rows": 3}, C.TABLE_SLICES: {"old_files": 3, "rows": 6},
                        C.TABLE_PREPROCESS_RUNS: {"old_files": 3, "rows": 3}, C.TABLE_RUNS: {"old_files": 1, "rows": 1}}
    for name, rows in expected.items():
        assert lake.version(name) == 0  # one commit per table
        assert sorted_rows(lake.read(name), key=(C.COL_PATIENT_ID, "slice_index", "run_id")) == \
            sorted_rows(pa.Table.from_pylist(rows, schema=lake.full_schema(name)), key=(C.COL_PATIENT_ID, "slice_index", "run_id"))
    backup = root / m.backup
    assert m.backup.startswith(M.BACKUP_PREFIX) and not (backup / M.MIGRATING).exists()
    assert sorted(p.relative_to(backup).as_posix() for p in backup.rglob("*.parquet")) == old_files
    assert (root / C.TABLE_RUNS / "r1" / "fold0" / "checkpoint_000000" / "state.pt").read_bytes() == b"weights"
    n = catalog.query(lake, "select count(*) as n from slices where site = ?", ["siteB"]).column("n").to_pylist()
    assert n == [2]


def test_migrating_a_delta_lake_has_nothing_to_do(tmp_path):
    old_lake(tmp_path / "lake")
    lake = Lake(tmp_path / "lake")
    M.migrate(lake)
    before = listing(tmp_path / "lake")
    assert M.migrate(lake) == M.Migration({}, None, False)
    assert listing(tmp_path / "lake") == before


def test_a_lake_partly_delta_and_partly_old_is_refused(tmp_path):
    old_lake(tmp_path / "lake")
    lake = Lake(tmp_path / "lake")
    lake.append(C.TABLE_READS, pa.Table.from_pylist([row_of(C.TABLE_READS, reader_id="r", patient_id="p",
                                                            assisted=False, call=C.GBM)]))
    before = listing(tmp_path / "lake")
    with pytest.raises(LakeError, match=r"partly Delta tables \(reads\) and partly old-layout") as err:
        M.migrate(lake)
    assert "Move the Delta tables' folders out of the lake" in str(err.value)
    assert listing(tmp_path / "lake") == before


def test_a_migration_killed_after_moving_a_tables_files_resumes_from_the_backup(tmp_path):
    root = tmp_path / "lake"
    expected = old_lake(root)
    backup = root / f"{M.BACKUP_PREFIX}20260101T000000Z"
    (backup / M.MIGRATING).parent.mkdir()
    (backup / M.MIGRATING).write_bytes(b"")
    shutil.move(root / C.TABLE_SLICES / "site=siteA", _mkdir(backup / C.TABLE_SLICES) / "site=siteA")
    lake = Lake(root)
    with pytest.raises(LakeError, match="half-way through a migration"):  # not read as if it had no rows
        lake.read(C.TABLE_SLICES)
    m = M.migrate(lake)
    assert m.resumed and m.backup == backup.name
    assert m.tables[C.TABLE_SLICES] == {"old_files": 3, "rows": 6}
    assert sorted_rows(lake.read(C.TABLE_SLICES)) == sorted_rows(
        pa.Table.from_pylist(expected[C.TABLE_SLICES], schema=lake.full_schema(C.TABLE_SLICES)))
    assert len(list((backup / C.TABLE_SLICES).rglob("*.parquet"))) == 3
    assert not (backup / M.MIGRATING).exists()


def test_a_migration_killed_after_a_tables_commit_does_not_commit_it_twice(tmp_path):
    root = tmp_path / "lake"
    old_lake(root)
    lake = Lake(root)
    m = M.migrate(lake)
    (root / m.backup / M.MIGRATING).write_bytes(b"")  # as if killed before the end
    again = M.migrate(lake)
    assert again == M.Migration({}, m.backup, True)
    assert lake.read(C.TABLE_PATIENTS).num_rows == 3 and lake.version(C.TABLE_PATIENTS) == 0
    assert not (root / m.backup / M.MIGRATING).exists()


def test_an_old_file_that_does_not_convert_stops_its_table_and_a_rerun_finishes(tmp_path):
    root = tmp_path / "lake"
    old_lake(root)
    bad = root / C.TABLE_RUNS / "r2-train.parquet"
    bad.write_bytes(b"not parquet")
    lake = Lake(root)
    with pytest.raises(LakeError, match=f"cannot convert the old file {bad} of table runs"):
        M.migrate(lake)
    assert lake.read(C.TABLE_PATIENTS).num_rows == 3  # tables before it are done
    with pytest.raises(LakeError, match="gbmmet lake migrate"):  # its own files are where they were
        lake.read(C.TABLE_RUNS)
    bad.unlink()
    again = M.migrate(lake)
    assert again.resumed and again.tables == {C.TABLE_RUNS: {"old_files": 1, "rows": 1}}
    assert lake.read(C.TABLE_RUNS).column("run_id").to_pylist() == ["r1"]


def test_vacuum_deletes_a_migration_backup_older_than_the_retention(tmp_path):
    old_lake(tmp_path / "lake")
    lake = Lake(tmp_path / "lake")
    m = M.migrate(lake)
    assert m.backup not in M.vacuum(lake, retain_hours=1) and (tmp_path / "lake" / m.backup).is_dir()
    assert M.vacuum(lake, retain_hours=0)[m.backup]["files_removed"] == 10
    assert not (tmp_path / "lake" / m.backup).exists()


# -- gbmmet lake ------------------------------------------------------------------------------
def lake_cli(capsys, *args: str) -> tuple[int, str]:
    """Run ``gbmmet lake ARGS``; (exit code, what it printed on stdout and stderr)."""
    from pipelines.cli import main

    capsys.readouterr()
    code = main(["lake", *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_lake_stats_prints_every_table(tmp_path, capsys):
    patient_lake(tmp_path / "lake")
    code, output = lake_cli(capsys, "stats", "--lake", str(tmp_path / "lake"))
    assert code == 0, output
    for name in SCHEMAS:
        assert name in output


def test_lake_forget_prints_the_rows_removed_and_reminds_to_vacuum(tmp_path, capsys):
    patient_lake(tmp_path / "lake")
    code, output = lake_cli(capsys, "forget", "--lake", str(tmp_path / "lake"), "--site", "siteA", "--patient", "A0001")
    assert code == 0, output
    assert f"removed {len(PATIENT_TABLES) + 1} rows" in output and "gbmmet lake vacuum" in output  # slices: 2
    assert "--retain-hours 0" in output


def test_lake_forget_of_an_unknown_patient_exits_2(tmp_path, capsys):
    patient_lake(tmp_path / "lake")
    code, output = lake_cli(capsys, "forget", "--lake", str(tmp_path / "lake"), "--site", "siteA", "--patient", "Z9")
    assert code == 2 and "error: no table of the lake" in output


def test_lake_compact_and_vacuum_print_what_they_did(tmp_path, capsys):
    lake = Lake(tmp_path / "lake").ensure()
    staged_patients(lake, 20)
    code, output = lake_cli(capsys, "compact", "--lake", str(tmp_path / "lake"), "--table", C.TABLE_SLICES)
    assert code == 0, output
    assert "slices" in output and "20" in output and "gbmmet lake vacuum" in output
    code, output = lake_cli(capsys, "vacuum", "--lake", str(tmp_path / "lake"), "--retain-hours", "0")
    assert code == 0, output
    assert "can no longer be read" in output and "slices" in output


def test_lake_migrate_says_where_the_old_files_went_then_that_nothing_is_left(tmp_path, capsys):
    old_lake(tmp_path / "lake")
    code, output = lake_cli(capsys, "migrate", "--lake", str(tmp_path / "lake"))
    assert code == 0, output
    assert f"moved to {tmp_path / 'lake'}/{M.BACKUP_PREFIX}" in output
    code, output = lake_cli(capsys, "migrate", "--lake", str(tmp_path / "lake"))
    assert code == 0 and "nothing to do" in output


def test_lake_commands_refuse_a_missing_lake(tmp_path, capsys):
    code, output = lake_cli(capsys, "stats", "--lake", str(tmp_path / "nowhere"))
    assert code == 2 and "no lake at" in output
    assert not (tmp_path / "nowhere").exists()
