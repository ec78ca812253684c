"""The lake and Ray Train's storage on object storage: an S3-compatible server on loopback (moto's
server mode), the whole tiny pipeline (`gbmmet run`) into ``s3://`` URIs, then queries and the
dashboard reading from there. Nothing of the lake lands on the local disk."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc
import pytest
from streamlit.testing.v1 import AppTest

from dashboards import names
from gbmmet import constants as C
from pipelines.cli import main
from storage import catalog
from storage.lake import Lake, uri_join
from tests.conftest import s3_uri

APP = Path(__file__).resolve().parents[1] / "dashboards" / "app.py"


def test_lake_uri_keeps_its_query(s3_server):
    uri = s3_uri(s3_server, "b", "lake")
    lake = Lake(uri)
    assert lake.local_root is None and lake.base == "b/lake" and lake.uri == uri
    assert lake.child_uri("runs") == f"s3://b/lake/runs?endpoint_override={s3_server}&allow_bucket_creation=true"
    assert uri_join("/tmp/x", "runs", "r") == "/tmp/x/runs/r"


@pytest.mark.slow
def test_whole_pipeline_on_object_storage_and_the_dashboard_reads_it(s3_server, tmp_path, ray_local, capsys,
                                                                       monkeypatch):
    lake_uri = s3_uri(s3_server, "gbmmet-lake", "lake")
    monkeypatch.chdir(tmp_path)  # anything written to a relative local path would show up here
    args = ["run", "--preset", "tiny", "--lake", lake_uri, "--data", str(tmp_path / "data"), "--epochs", "3",
            "--resamples", "100"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "reader2 + model" in out  # the paper's table, printed from the lake on object storage

    lake = Lake(lake_uri)
    assert lake.read(C.TABLE_PATIENTS).num_rows == 20
    assert lake.read(C.TABLE_FOLDS, filter=pc.field("run_id") == "tiny").num_rows == 10
    assert set(lake.read(C.TABLE_METRICS).column("cohort").to_pylist()) == {C.VAL, C.TEST, C.EXTERNAL}
    assert lake.read(C.TABLE_CAMS).num_rows > 0
    rec = [r for r in lake.read(C.TABLE_RUNS).to_pylist() if r["kind"] == "train"][0]
    checkpoints = json.loads(rec["fold_checkpoints"])
    assert len(checkpoints) == 5 and all(c.startswith("s3://gbmmet-lake/lake/runs/tiny/fold") for c in checkpoints.values())
    assert json.loads(rec["config"])["storage"].startswith("s3://gbmmet-lake/lake/runs/tiny")
    assert lake.exists(".gbmmet", "pseudonym.key")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no local lake, no local runs

    # a re-run reuses every stage, reading its state back from object storage
    assert main(args) == 0
    again = capsys.readouterr().out
    assert "already trained with these settings" in again and "already evaluated" in again

    # DuckDB over the object-storage lake (Arrow datasets through pyarrow's S3 filesystem)
    n = catalog.query(lake, "select count(*) n from slices where split = ?", ["test"]).to_pylist()[0]["n"]
    assert n == lake.read(C.TABLE_SLICES, filter=pc.field(C.COL_SPLIT) == "test").num_rows > 0
    assert main(["query", "select count(*) as n from patients", "--lake", lake_uri, "--format", "csv"]) == 0
    assert capsys.readouterr().out.split() == ['"n"', "20"]  # pyarrow quotes the header

    # the dashboard, on the same URI
    monkeypatch.setenv("GBMMET_LAKE", lake_uri)
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.switch_page("views/overview.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert {m.label: m.value for m in at.metric}["Patients"] == "20"
    at.switch_page("views/readers.py").run()
    assert not at.exception, [e.value for e in at.exception]
    table = next(t.value for t in [*at.table, *at.dataframe] if "specificity" in t.value.columns)
    auc = catalog.query(lake, "select value from metrics where run_id = 'tiny' and cohort = 'external' and "
                        "subgroup = 'all' and rater = 'model' and metric = 'auc' and ci_method = 'delong' limit 1"
                        ).to_pylist()[0]["value"]
    who = names.rater_name(C.MODEL_RATER, None, C.CUTOFF_VAL)
    row = table[(table.cohort == names.cohort_name(C.EXTERNAL)) & (table.rater == who)]
    assert row[names.metric_name("auc")].iloc[0].startswith(f"{auc:.3f}")


def test_delta_commits_on_object_storage_are_conditional_and_none_is_lost(s3_server):
    """delta-rs's own S3 client with conditional puts (``storage_options_for``): concurrent
    writers on one table all land; staged files stay invisible until committed; reads and DuckDB
    see the committed state, and a pinned reader the old one."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa

    from storage.lake import storage_options_for
    from storage.schemas import SCHEMAS

    uri = s3_uri(s3_server, "gbmmet-delta", "lake")
    assert storage_options_for(uri)["AWS_CONDITIONAL_PUT"] == "etag"
    lake = Lake(uri).check_writable()

    def patient(pid):
        return pa.Table.from_pylist([{C.COL_PATIENT_ID: pid, C.COL_SITE: "s", C.COL_SPLIT: "train",
                                      C.COL_LABEL: C.GBM}], schema=SCHEMAS[C.TABLE_PATIENTS])

    lake.append(C.TABLE_PATIENTS, patient("p0"))
    snapshot = lake.pinned()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda pid: Lake(uri).replace(C.TABLE_PATIENTS, patient(pid), {C.COL_PATIENT_ID: pid}),
                      [f"p{i}" for i in range(1, 7)]))
    assert lake.read(C.TABLE_PATIENTS).num_rows == 7 and lake.version(C.TABLE_PATIENTS) == 6
    assert snapshot.read(C.TABLE_PATIENTS).num_rows == 1

    rows = pa.Table.from_pylist([{C.COL_PATIENT_ID: "p1", C.COL_LABEL: C.GBM, "slice_index": 0, "image": b"x"}],
                                schema=SCHEMAS[C.TABLE_SLICES])
    staged = lake.stage(C.TABLE_SLICES, rows, {C.COL_SITE: "s", C.COL_SPLIT: "train"})
    assert catalog.query(lake, "select count(*) n from slices").to_pylist()[0]["n"] == 0
    lake.commit(C.TABLE_SLICES, [staged])
    assert catalog.query(lake, "select count(*) n from slices where split = ?", ["train"]).to_pylist()[0]["n"] == 1
