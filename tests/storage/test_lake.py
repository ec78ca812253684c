"""The lake's files and the DuckDB catalog, on real Parquet and a real DuckDB."""

from __future__ import annotations

import datetime as dt

import duckdb
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pytest

from gbmmet import constants as C
from gbmmet.errors import LakeError
from gbmmet.pseudonym import pseudonymise
from storage import catalog
from storage.lake import Lake
from storage.schemas import SCHEMAS


def _patient(pid, site="siteA", split="train"):
    return {C.COL_PATIENT_ID: pid, C.COL_SITE: site, C.COL_SPLIT: split, C.COL_LABEL: C.GBM, C.COL_AGE: 50,
            C.COL_SEX: "F", C.COL_LOCATION: C.SUPRA, C.COL_PRIMARY: "", "n_slices": 3, "input_hash": "i",
            "params_hash": "p", "preprocessed_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)}


def test_an_empty_lake_has_every_view_with_its_columns(tmp_path):
    lake = Lake(tmp_path / "lake")
    path = catalog.refresh(lake)
    con = duckdb.connect(str(path), read_only=True)
    try:
        for name, schema in SCHEMAS.items():
            cols = [r[0] for r in con.execute(f'describe "{name}"').fetchall()]
            assert cols[: len(schema)] == schema.names
            assert con.execute(f'select count(*) from "{name}"').fetchone()[0] == 0
    finally:
        con.close()
    assert lake.read(C.TABLE_SLICES).num_rows == 0


def _patients(*pids, split="train"):
    return pa.Table.from_pylist([_patient(pid, split=split) for pid in pids])


def _ids(table):
    return sorted(table.column(C.COL_PATIENT_ID).to_pylist())


def _slices(pid, n=3):
    return pa.Table.from_pylist([{C.COL_PATIENT_ID: pid, C.COL_LABEL: C.GBM, "slice_index": i, "image": b"abc"}
                                 for i in range(n)], schema=SCHEMAS[C.TABLE_SLICES])


def test_each_write_is_one_commit_and_replace_swaps_only_the_matching_rows(tmp_path):
    lake = Lake(tmp_path / "lake")
    assert lake.append(C.TABLE_PATIENTS, _patients("p1", "p2")) == 0
    assert lake.replace(C.TABLE_PATIENTS, _patients("p1", split="test"), {C.COL_PATIENT_ID: "p1"}) == 1
    rows = {r[C.COL_PATIENT_ID]: r[C.COL_SPLIT] for r in lake.read(C.TABLE_PATIENTS).to_pylist()}
    assert rows == {"p1": "test", "p2": "train"}


def test_a_reader_pinned_before_a_commit_still_sees_the_state_it_pinned(tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.append(C.TABLE_PATIENTS, _patients("p1", "p2"))
    snapshot = lake.pinned()
    lake.replace(C.TABLE_PATIENTS, _patients("p2", split="test"), {C.COL_PATIENT_ID: ["p1", "p2"]})
    assert _ids(snapshot.read(C.TABLE_PATIENTS)) == ["p1", "p2"]
    assert [(r[C.COL_PATIENT_ID], r[C.COL_SPLIT]) for r in lake.read(C.TABLE_PATIENTS).to_pylist()] == [("p2", "test")]
    assert snapshot.versions()[C.TABLE_PATIENTS] == 0 and lake.versions()[C.TABLE_PATIENTS] == 1
    assert snapshot.versions()[C.TABLE_RUNS] is None and snapshot.read(C.TABLE_RUNS).num_rows == 0


def test_delete_reports_the_rows_removed_and_commits_nothing_when_none_match(tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.append(C.TABLE_PATIENTS, _patients("p1", "p2", "p3"))
    assert lake.delete(C.TABLE_PATIENTS, {C.COL_PATIENT_ID: ["p1", "p3"]}) == 2
    assert lake.delete(C.TABLE_PATIENTS, {C.COL_PATIENT_ID: "nobody"}) == 0
    assert lake.delete(C.TABLE_PATIENTS, {C.COL_PATIENT_ID: []}) == 0
    assert _ids(lake.read(C.TABLE_PATIENTS)) == ["p2"] and lake.version(C.TABLE_PATIENTS) == 1


def test_a_replace_refuses_new_rows_outside_its_key(tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.append(C.TABLE_PATIENTS, _patients("p1"))
    with pytest.raises(ValueError, match="1 of the 1 new rows do not match"):
        lake.replace(C.TABLE_PATIENTS, _patients("p2"), {C.COL_PATIENT_ID: "p1"})
    assert _ids(lake.read(C.TABLE_PATIENTS)) == ["p1"] and lake.version(C.TABLE_PATIENTS) == 0


def test_rows_left_by_a_delete_still_filter_and_query_as_strings(tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.append(C.TABLE_PATIENTS, pa.concat_tables([_patients("p1", "p2"), _patients("p3", split="test")]))
    lake.delete(C.TABLE_PATIENTS, {C.COL_PATIENT_ID: "p1"})
    assert _ids(lake.read(C.TABLE_PATIENTS, filter=pa.compute.field(C.COL_SPLIT) == "train")) == ["p2"]
    t = catalog.query(lake, "select patient_id from patients where split = ?", ["test"])
    assert t.column(C.COL_PATIENT_ID).to_pylist() == ["p3"]


def test_a_key_holding_sql_is_only_a_value(tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.append(C.TABLE_PATIENTS, _patients("p1", "p2"))
    assert lake.delete(C.TABLE_PATIENTS, {C.COL_PATIENT_ID: "x' or '1'='1"}) == 0
    lake.append(C.TABLE_PATIENTS, _patients("o'brien"))
    assert lake.delete(C.TABLE_PATIENTS, {C.COL_PATIENT_ID: "o'brien"}) == 1
    assert _ids(lake.read(C.TABLE_PATIENTS)) == ["p1", "p2"]


def test_staged_files_are_invisible_until_the_driver_commits_them_in_one_version(tmp_path):
    lake = Lake(tmp_path / "lake")
    staged = [lake.stage(C.TABLE_SLICES, _slices(pid), {C.COL_SITE: "siteA", C.COL_SPLIT: "train"})
              for pid in ("p1", "p2")]
    assert lake.read(C.TABLE_SLICES).num_rows == 0 and lake.version(C.TABLE_SLICES) is None
    assert catalog.query(lake, "select count(*) as n from slices").column("n").to_pylist() == [0]
    assert lake.commit(C.TABLE_SLICES, staged) == 0
    assert lake.read(C.TABLE_SLICES).num_rows == 6
    assert set(lake.read(C.TABLE_SLICES).column(C.COL_SITE).to_pylist()) == {"siteA"}


def test_a_commit_replaces_a_patients_old_rows_even_in_another_partition(tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.commit(C.TABLE_SLICES, [lake.stage(C.TABLE_SLICES, _slices("p1", 3), {C.COL_SITE: "siteA", C.COL_SPLIT: "train"}),
                                 lake.stage(C.TABLE_SLICES, _slices("p2", 3), {C.COL_SITE: "siteA", C.COL_SPLIT: "train"})])
    moved = lake.stage(C.TABLE_SLICES, _slices("p1", 2), {C.COL_SITE: "siteA", C.COL_SPLIT: "test"})
    assert lake.commit(C.TABLE_SLICES, [moved], where={C.COL_PATIENT_ID: ["p1"]}) == 1
    rows = lake.read(C.TABLE_SLICES).to_pylist()
    assert sorted((r[C.COL_PATIENT_ID], r[C.COL_SPLIT]) for r in rows) == [("p1", "test")] * 2 + [("p2", "train")] * 3
    assert not any(f.endswith(moved.path.rsplit("/", 1)[-1]) for f in lake.files(C.TABLE_SLICES))  # rewritten
    con = duckdb.connect(str(catalog.refresh(lake)), read_only=True)  # files written by gbmmet and by delta-rs
    try:
        assert con.execute("select split, count(*) from slices group by all order by 1").fetchall() == [
            ("test", 2), ("train", 3)]
    finally:
        con.close()


def test_concurrent_writers_all_land(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    lake_dir = tmp_path / "lake"
    Lake(lake_dir).append(C.TABLE_PATIENTS, _patients("p0"))
    pids = [f"p{i}" for i in range(1, 9)]
    with ThreadPoolExecutor(4) as pool:  # each thread its own Lake, as separate jobs would have
        list(pool.map(lambda pid: Lake(lake_dir).replace(C.TABLE_PATIENTS, _patients(pid), {C.COL_PATIENT_ID: pid}),
                      pids))
    lake = Lake(lake_dir)
    assert _ids(lake.read(C.TABLE_PATIENTS)) == sorted(["p0", *pids])
    assert lake.version(C.TABLE_PATIENTS) == len(pids)  # one commit each, none lost


def test_an_unknown_version_says_what_there_is(tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.append(C.TABLE_PATIENTS, _patients("p1"))
    with pytest.raises(LakeError, match="no version 7 .latest: 0"):
        lake.at({C.TABLE_PATIENTS: 7}).read(C.TABLE_PATIENTS)


def test_a_lake_in_the_old_file_per_patient_layout_is_refused_with_the_way_out(tmp_path):
    import pyarrow.parquet as pq

    (tmp_path / "lake" / C.TABLE_PATIENTS).mkdir(parents=True)
    pq.write_table(_patients("p1"), tmp_path / "lake" / C.TABLE_PATIENTS / "p1.parquet")
    with pytest.raises(LakeError, match="gbmmet lake migrate"):
        Lake(tmp_path / "lake").read(C.TABLE_PATIENTS)


def test_query_takes_parameters(tmp_path):
    lake = Lake(tmp_path / "lake").ensure()
    lake.append(C.TABLE_PATIENTS, _patients("p1", "p3"))
    lake.append(C.TABLE_PATIENTS, _patients("p2", split="test"))
    t = catalog.query(lake, "select patient_id from patients where split = ? order by 1", ["train"])
    assert t.column(C.COL_PATIENT_ID).to_pylist() == ["p1", "p3"]
    # a value that would break a formatted string is just a value
    t = catalog.query(lake, "select count(*) as n from patients where split = ?", ["x' or '1'='1"])
    assert t.column("n").to_pylist() == [0]


def test_a_query_pinned_to_versions_answers_from_that_state(tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.append(C.TABLE_PATIENTS, _patients("p1"))
    lake.append(C.TABLE_PATIENTS, _patients("p2"))
    sql = "select count(*) as n from patients"
    assert catalog.query(lake, sql, versions={C.TABLE_PATIENTS: 0}).column("n").to_pylist() == [1]
    assert catalog.query(lake, sql).column("n").to_pylist() == [2]


def test_the_catalog_file_views_list_only_the_current_files(tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.append(C.TABLE_PATIENTS, _patients("p1", "p2"))
    lake.replace(C.TABLE_PATIENTS, _patients("p1"), {C.COL_PATIENT_ID: "p1"})  # the old file stays on disk
    con = duckdb.connect(str(catalog.refresh(lake)), read_only=True)
    try:
        assert con.execute("select count(*) from patients").fetchone()[0] == 2
    finally:
        con.close()


def test_the_stamp_changes_with_each_commit_and_only_then(tmp_path):
    lake = Lake(tmp_path / "lake")
    before = catalog.stamp(lake)
    lake.stage(C.TABLE_SLICES, _slices("p1"), {C.COL_SITE: "siteA", C.COL_SPLIT: "train"})
    assert catalog.stamp(lake) == before  # a staged file is not a change
    lake.append(C.TABLE_PATIENTS, _patients("p1"))
    after = catalog.stamp(lake)
    assert after != before and catalog.stamp(lake) == after


def test_the_stamp_leaves_out_the_access_log_unless_asked(tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.append(C.TABLE_PATIENTS, _patients("p1"))
    before, every = catalog.stamp(lake), catalog.stamp(lake, SCHEMAS)
    row = {C.COL_USER: "a@x.org", C.COL_TIME: dt.datetime(2026, 1, 1, tzinfo=dt.UTC), C.COL_PAGE: "patient",
           C.COL_PATIENT_ID: "p1", C.COL_SITE: "siteA", "run_id": "r1"}
    lake.append(C.TABLE_ACCESS_LOG, pa.Table.from_pylist([row], schema=SCHEMAS[C.TABLE_ACCESS_LOG]))
    assert catalog.stamp(lake) == before  # the dashboard's own log row: its caches stand
    assert catalog.stamp(lake, SCHEMAS) != every  # the catalog's rebuild still sees the commit
    assert catalog.query(lake, "select user, page from access_log").to_pylist() == [
        {C.COL_USER: "a@x.org", C.COL_PAGE: "patient"}]


def test_file_uri_is_a_local_lake(tmp_path):
    lake = Lake(f"file://{tmp_path}/lake")
    assert lake.local_root == (tmp_path / "lake").resolve()


def test_secret_is_stable_and_private(tmp_path):
    lake = Lake(tmp_path / "lake").ensure()
    key = lake.secret()
    assert len(key) == 32 and Lake(tmp_path / "lake").secret() == key
    assert (tmp_path / "lake" / ".gbmmet" / "pseudonym.key").stat().st_mode & 0o777 == 0o600
    a = pseudonymise(key, "siteA", "A0001")
    assert a == pseudonymise(key, "siteA", "A0001") != pseudonymise(key, "siteB", "A0001")
    assert a != pseudonymise(Lake(tmp_path / "other").ensure().secret(), "siteA", "A0001")
    assert a.startswith("p") and len(a) == 17 and "A0001" not in a


def _create_concurrently(root, pid, barrier, results):
    lake = Lake(root)
    staged = lake.stage(C.TABLE_SLICES, _slices(pid), {C.COL_SITE: pid, C.COL_SPLIT: "train"})
    barrier.wait(30)
    try:
        lake.commit(C.TABLE_SLICES, [staged], where={C.COL_PATIENT_ID: [pid]})
        lake.replace(C.TABLE_PATIENTS, _patients(pid), {C.COL_PATIENT_ID: pid})
        results.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported to the test
        results.put(f"{type(exc).__name__}: {exc}")


def test_two_jobs_creating_the_same_tables_at_once_both_land(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    for attempt in range(3):  # the race is lost about half of the time: three rounds
        root = str(tmp_path / f"lake{attempt}")
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_create_concurrently, args=(root, pid, barrier, results)) for pid in ("pa", "pb")]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        assert [results.get(timeout=5) for _ in procs] == ["ok", "ok"]
        lake = Lake(root)
        assert _ids(lake.read(C.TABLE_PATIENTS)) == ["pa", "pb"] and lake.read(C.TABLE_SLICES).num_rows == 6
        assert lake.version(C.TABLE_SLICES) == lake.version(C.TABLE_PATIENTS) == 1


def test_a_table_written_before_its_schema_gained_columns_takes_them_with_nulls_in_old_rows(tmp_path):
    from deltalake import write_deltalake

    from storage.schemas import PATIENT_PREDICTIONS

    lake = Lake(tmp_path / "lake")
    older = pa.schema([f for f in PATIENT_PREDICTIONS if f.name not in (C.COL_OOD, C.set_column(0.9))])
    write_deltalake(lake.table_uri(C.TABLE_PATIENT_PREDICTIONS),
                    pa.Table.from_pylist([{"run_id": "old", C.COL_PATIENT_ID: "p1", "cutoff_kind": "k"}], schema=older),
                    mode="append")
    new = pa.Table.from_pylist([{"run_id": "new", C.COL_PATIENT_ID: "p1", "cutoff_kind": "k", C.COL_OOD: True,
                                 C.set_column(0.9): "GBM"}], schema=PATIENT_PREDICTIONS)
    assert lake.replace(C.TABLE_PATIENT_PREDICTIONS, new, {"run_id": "new"}) == 1  # one commit
    rows = sorted(lake.read(C.TABLE_PATIENT_PREDICTIONS, columns=["run_id", C.COL_OOD, C.set_column(0.9)]).to_pylist(),
                  key=lambda r: r["run_id"])
    assert rows == [{"run_id": "new", C.COL_OOD: True, C.set_column(0.9): "GBM"},
                    {"run_id": "old", C.COL_OOD: None, C.set_column(0.9): None}]
    assert {f.name for f in lake.delta(C.TABLE_PATIENT_PREDICTIONS).schema().fields} >= set(PATIENT_PREDICTIONS.names)
    catalog.refresh(lake)
    got = catalog.query(lake, f"select run_id, {C.COL_OOD} from {C.TABLE_PATIENT_PREDICTIONS} order by run_id")
    assert got.column(C.COL_OOD).to_pylist() == [True, None]


def test_a_ray_dataset_of_a_table_holds_the_rows_of_the_partitions_asked_for(tiny_lake, ray_local):
    lake = Lake(tiny_lake[0]).pinned()
    cols = [C.COL_PATIENT_ID, C.COL_SPLIT, "slice_index"]
    ds = lake.ray_dataset(C.TABLE_SLICES, columns=cols, where={C.COL_SPLIT: C.TRAIN})
    got = sorted((r[C.COL_PATIENT_ID], r[C.COL_SPLIT], r["slice_index"]) for r in ds.take_all())
    want = lake.read(C.TABLE_SLICES, columns=cols, filter=pa.compute.field(C.COL_SPLIT) == C.TRAIN).to_pylist()
    assert got == sorted((r[C.COL_PATIENT_ID], r[C.COL_SPLIT], r["slice_index"]) for r in want) and got
    assert lake.ray_dataset(C.TABLE_SLICES, columns=cols, where={C.COL_SPLIT: "nosuchsplit"}).count() == 0
    with pytest.raises(ValueError, match=r"table slices is not partitioned by \['label'\]"):
        lake.ray_dataset(C.TABLE_SLICES, where={C.COL_LABEL: C.GBM})


def test_a_ray_dataset_filters_rows_as_it_reads_and_takes_no_cpu_beside_actors_holding_all(tiny_lake, ray_local):
    import ray

    lake = Lake(tiny_lake[0]).pinned()
    one = lake.read(C.TABLE_SLICES, columns=[C.COL_PATIENT_ID]).column(C.COL_PATIENT_ID)[0].as_py()

    @ray.remote(num_cpus=1)
    class Hold:
        def ready(self):
            return True

    holders = [Hold.remote() for _ in range(int(ray.cluster_resources()["CPU"]))]  # every CPU taken
    ray.get([h.ready.remote() for h in holders])
    ds = lake.ray_dataset(C.TABLE_SLICES, columns=[C.COL_PATIENT_ID, "slice_index"],
                          filter=pa.compute.field(C.COL_PATIENT_ID) == one)
    got = {r[C.COL_PATIENT_ID] for r in ds.take_all()}
    for h in holders:
        ray.kill(h)
    assert got == {one}
