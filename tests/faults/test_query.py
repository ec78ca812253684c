"""``gbmmet query`` is read-only for everything: it writes no file, reads no file but the lake's
tables, and runs on a lake this user cannot write. Each test runs on a small real lake and checks
the refusal, its message, and that the lake holds the same files afterwards."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

from gbmmet import constants as C
from gbmmet.errors import ConfigError, LakeError
from pipelines.cli import EXIT_USAGE, main
from storage import catalog
from storage.lake import SECRET_DIR, SECRET_FILE, Lake
from tests.conftest import s3_uri
from tests.faults.test_lake import (
    listing,
    make_read_only,
    make_writable,
    patient_row,
    refuse_if_writable,
    run_without_write_override,
    small_lake,
)


@pytest.fixture
def lake(tmp_path) -> Lake:
    return small_lake(tmp_path / "lake")[0]


def _refused(lake: Lake, sql: str) -> str:
    """The message of the refusal of ``sql``; checks the lake is unchanged."""
    root = lake.local_root
    before = listing(root)
    with pytest.raises(ConfigError, match="read-only") as err:
        catalog.query(lake, sql)
    assert listing(root) == before
    return str(err.value)


def test_a_select_reads_the_lake_and_writes_nothing(lake):
    before = listing(lake.local_root)
    t = catalog.query(lake, "select p.patient_id, r.status from patients p join preprocess_runs r using (patient_id) "
                            "where p.site = ?", ["siteA"])
    assert t.num_rows == 1 and t.column("status").to_pylist() == ["ok"]
    assert listing(lake.local_root) == before  # not even catalog.duckdb
    assert not (lake.local_root / catalog.CATALOG_FILE).exists()


def test_copy_to_a_file_in_the_lake_is_refused(lake):
    target = lake.local_root / C.TABLE_PATIENTS / "dup.parquet"
    msg = _refused(lake, f"copy (select * from patients) to '{target}' (format parquet)")
    assert "COPY" in msg and not target.exists()
    assert catalog.query(lake, "select count(*) n from patients").column("n").to_pylist() == [1]


def test_the_cli_exits_2_for_a_copy_and_says_why(lake, capsys):
    target = lake.local_root / C.TABLE_PATIENTS / "dup.parquet"
    before = listing(lake.local_root)
    code = main(["query", "--lake", str(lake.local_root), f"copy patients to '{target}' (format parquet)"])
    assert code == EXIT_USAGE
    assert "read-only" in capsys.readouterr().err
    assert listing(lake.local_root) == before


def test_read_blob_cannot_print_the_pseudonym_key(lake):
    key = lake.local_root / SECRET_DIR / SECRET_FILE
    msg = _refused(lake, f"select content from read_blob('{key}')")
    assert "never a file" in msg and key.read_bytes().hex() not in msg


@pytest.mark.parametrize("reader", ["read_csv", "read_text"])
def test_files_outside_the_lake_cannot_be_read(lake, tmp_path, reader):
    outside = tmp_path / "site-secrets.csv"
    outside.write_text("raw_id,pseudonym\nA0001,p123\n")
    msg = _refused(lake, f"select * from {reader}('{outside}')")
    assert str(outside) in msg and "A0001" not in msg


def test_the_lake_files_are_read_only_through_the_views(lake):
    _refused(lake, f"select * from read_parquet('{lake.local_root}/{C.TABLE_PATIENTS}/*.parquet')")


@pytest.mark.parametrize(("sql", "kind"), [
    ("attach '{root}/other.duckdb' as other", "ATTACH"),
    ("install httpfs", "LOAD"),  # DuckDB parses INSTALL as a LOAD statement
    ("load httpfs", "LOAD"),
    ("set enable_external_access = true", "SET"),
    ("set lock_configuration = false", "SET"),
    ("create table copied as select * from patients", "CREATE"),
    ("pragma version", "PRAGMA"),
    ("select 1; copy patients to '{root}/patients/dup.parquet'", "SELECT, COPY"),
    ("export database '{root}/export'", "EXPORT"),
], ids=["attach", "install", "load", "set-external-access", "unlock", "create-table", "pragma", "two-statements",
        "export"])
def test_statements_other_than_one_select_are_refused(lake, sql, kind):
    msg = _refused(lake, sql.format(root=lake.local_root))
    assert f"got {kind}" in msg and "exactly one SELECT" in msg


def test_the_views_connection_cannot_turn_file_access_back_on(lake):
    """The dashboard's connection (``memory_connection``) is locked too, whatever it is sent."""
    con = catalog.memory_connection(lake)
    try:
        with pytest.raises(duckdb.InvalidInputException, match="locked"):
            con.execute("set enable_external_access = true")
        with pytest.raises(duckdb.PermissionException):
            con.execute(f"copy patients to '{lake.local_root}/patients/dup.parquet'")
        assert con.execute("select count(*) from patients").fetchone() == (1,)
    finally:
        con.close()
    assert not (lake.local_root / C.TABLE_PATIENTS / "dup.parquet").exists()


def test_out_inside_the_lake_is_refused(lake, capsys):
    before = listing(lake.local_root)
    out = lake.local_root / C.TABLE_PATIENTS / "dup.parquet"
    code = main(["query", "--lake", str(lake.local_root), "--format", "parquet", "--out", str(out),
                 "select * from patients"])
    assert code == EXIT_USAGE and "inside the lake" in capsys.readouterr().err
    assert listing(lake.local_root) == before


def test_a_lake_that_is_a_file_is_refused_by_the_cli(tmp_path, capsys):
    path = tmp_path / "lake"
    path.write_bytes(b"x")
    assert main(["query", "--lake", str(path), "select 1"]) == EXIT_USAGE
    assert f"the lake {path} is a file" in capsys.readouterr().err
    with pytest.raises(LakeError):
        catalog.query(Lake(path), "select 1")


def test_a_read_only_lake_can_be_queried(lake):
    root = lake.local_root
    before = listing(root)
    make_read_only(root)
    try:
        proc = run_without_write_override(refuse_if_writable(root) + f"""
    from pipelines.cli import main
    code = main(["query", "--lake", {str(root)!r}, "--format", "csv", "select patient_id, site from patients"])
    print("exit", code)
    """)
    finally:
        make_writable(root)
    assert proc.returncode == 0, proc.stderr
    assert "patient_id" in proc.stdout and "siteA" in proc.stdout and "exit 0" in proc.stdout
    assert listing(root) == before


def test_a_copy_on_object_storage_is_refused(s3_server, tmp_path):
    lake = Lake(s3_uri(s3_server, "faults-query", "lake")).check_writable()
    lake.append(C.TABLE_PATIENTS, pa.Table.from_pylist([patient_row("p1")]))
    with pytest.raises(ConfigError, match="read-only"):
        catalog.query(lake, f"copy patients to '{tmp_path}/dup.parquet'")
    assert not (tmp_path / "dup.parquet").exists()
    assert catalog.query(lake, "select patient_id from patients").column(0).to_pylist() == ["p1"]


def test_version_answers_from_that_version_of_a_table(lake, capsys):
    lake.append(C.TABLE_PATIENTS, pa.Table.from_pylist([patient_row("p9")]))
    sql = "select count(*) as n from patients"
    assert main(["query", sql, "--lake", str(lake.local_root), "--format", "csv", "--version", "patients=0"]) == 0
    assert main(["query", sql, "--lake", str(lake.local_root), "--format", "csv"]) == 0
    old, new = capsys.readouterr().out.split('"n"')[1:]
    assert int(old) + 1 == int(new)


@pytest.mark.parametrize(("option", "said"), [
    (["--version", "patient=0"], "give TABLE=VERSION"),
    (["--version", "patients=latest"], "give TABLE=VERSION"),
    (["--version", "patients=99"], "has no version 99"),
    (["--as-of", "no-such-run"], "no-such-run"),
])
def test_a_version_or_run_that_does_not_exist_fails_and_says_which(lake, capsys, option, said):
    code = main(["query", "select 1", "--lake", str(lake.local_root), *option])
    assert code in (1, EXIT_USAGE) and said in capsys.readouterr().err
