"""The lake's files and the DuckDB catalog, on real Parquet and a real DuckDB."""

from __future__ import annotations

import datetime as dt

import duckdb
import pyarrow as pa
import pytest

from gbmmet import constants as C
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


def test_writes_are_atomic_and_hidden_temporaries_are_never_read(tmp_path):
    lake = Lake(tmp_path / "lake").ensure()
    lake.write(C.TABLE_PATIENTS, pa.Table.from_pylist([_patient("p1")]), "p1.parquet")
    # a temporary file a killed writer left behind, with garbage in it
    (tmp_path / "lake" / C.TABLE_PATIENTS / ".p2.parquet.tmp").write_bytes(b"half a file")
    assert lake.read(C.TABLE_PATIENTS).column(C.COL_PATIENT_ID).to_pylist() == ["p1"]
    assert catalog.query(lake, "select count(*) as n from patients").column("n").to_pylist() == [1]
    with pytest.raises(ValueError, match="bad lake file name"):
        lake.write(C.TABLE_PATIENTS, pa.Table.from_pylist([_patient("p3")]), ".p3.parquet")


def test_query_takes_parameters(tmp_path):
    lake = Lake(tmp_path / "lake").ensure()
    for pid in ("p1", "p2", "p3"):
        lake.write(C.TABLE_PATIENTS, pa.Table.from_pylist([_patient(pid, split="test" if pid == "p2" else "train")]),
                   f"{pid}.parquet")
    t = catalog.query(lake, "select patient_id from patients where split = ? order by 1", ["train"])
    assert t.column(C.COL_PATIENT_ID).to_pylist() == ["p1", "p3"]
    # a value that would break a formatted string is just a value
    t = catalog.query(lake, "select count(*) as n from patients where split = ?", ["x' or '1'='1"])
    assert t.column("n").to_pylist() == [0]


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
