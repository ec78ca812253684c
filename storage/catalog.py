"""The DuckDB catalog: ``catalog.duckdb`` at the lake root with one view per table, which plain
``duckdb lake/catalog.duckdb`` opens.

Each view reads the data files of the table's current Delta version, listed by name, with
``read_parquet([...], hive_partitioning = true)``; a table without files yet is an empty view with
the table's columns, so queries never fail for a missing table. Views hold the files' absolute
paths, so the catalog is rebuilt (``refresh``) by every job after its commits. ``gbmmet query`` and the dashboard never write it: they read through an
in-memory, read-only database of views (``memory_connection``), which works on a read-only lake.

SQL values always travel as parameters (``?``). The only text built here is the views' DDL, from
the lake's own path (quoted) and the fixed table names: DuckDB does not take parameters in DDL.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs

from gbmmet import constants as C
from gbmmet.errors import ConfigError
from storage.lake import Lake
from storage.schemas import PARTITIONS, SCHEMAS

CATALOG_FILE = "catalog.duckdb"

_DUCK_TYPES = {
    pa.string(): "VARCHAR",
    pa.int8(): "TINYINT",
    pa.int16(): "SMALLINT",
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.float32(): "FLOAT",
    pa.float64(): "DOUBLE",
    pa.binary(): "BLOB",
    pa.bool_(): "BOOLEAN",
}


def _duck_type(t: pa.DataType) -> str:
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ" if t.tz else "TIMESTAMP"
    if pa.types.is_list(t) or pa.types.is_fixed_size_list(t):
        return _duck_type(t.value_type) + "[]"
    return _DUCK_TYPES[t]


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _typed_empty(name: str) -> str:
    """A query with the table's columns (and partition columns), typed, and no rows."""
    cols = [f'CAST(NULL AS {_duck_type(f.type)}) AS "{f.name}"' for f in SCHEMAS[name]]
    cols += [f'CAST(NULL AS VARCHAR) AS "{c}"' for c in PARTITIONS.get(name, ())]
    return f"SELECT {', '.join(cols)} WHERE false"


def view_sql(lake: Lake, name: str) -> str:
    """The CREATE VIEW statement of one table: its current data files (from the Delta log).

    Every data file of a Delta table has the table's columns (every write and compaction goes
    through the table's schema), so DuckDB takes them from the first file and opens no other
    footer (``union_by_name`` would open them all: 5x slower at 2,000 files); the view always has
    every column of the schema (``UNION ALL BY NAME`` with the typed empty table).
    """
    files = lake.files(name)
    if files:
        listed = ", ".join(_quote(f) for f in files)
        hive = "true" if PARTITIONS.get(name) else "false"
        return (f'CREATE OR REPLACE VIEW "{name}" AS SELECT * FROM read_parquet([{listed}], '
                f"hive_partitioning = {hive}) UNION ALL BY NAME {_typed_empty(name)}")
    return f'CREATE OR REPLACE VIEW "{name}" AS {_typed_empty(name)}'


#: Catalog builds tried while other jobs keep committing (each of them refreshes after its commit).
REFRESH_TRIES = 3


def refresh(lake: Lake) -> Path:
    """(Re)build the catalog of a local lake atomically; return its path. Built again if a commit
    landed while it was being built, so two jobs refreshing at once leave the newer listing."""
    if lake.local_root is None:
        raise NotImplementedError("a DuckDB catalog file is written for local lakes; for object "
                                  "storage query through `gbmmet query --lake URI`")
    lake.ensure()
    final = lake.local_root / CATALOG_FILE
    tmp = lake.local_root / f".{CATALOG_FILE}.{os.getpid()}.tmp"
    for _ in range(REFRESH_TRIES):  # another job's commit meanwhile: list its files too
        before = stamp(lake, SCHEMAS)
        tmp.unlink(missing_ok=True)
        con = duckdb.connect(str(tmp))
        try:
            for name in SCHEMAS:
                con.execute(view_sql(lake, name))
        finally:
            con.close()
        if stamp(lake, SCHEMAS) == before:
            break
    os.replace(tmp, final)
    return final


def memory_connection(lake: Lake, versions: dict[str, int | None] | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB database with one view per table of ``lake``, read-only; writes nothing.

    For readers that must not touch the lake (the dashboard, ``gbmmet query``), local or on object
    storage. The views read the tables as Arrow datasets through pyarrow's filesystem (DuckDB's own
    S3 extension downloads at run time and is pinned to other DuckDB versions), so DuckDB itself
    needs no file access: once the views exist, external access is turned off and the configuration
    locked. A query on this connection can then neither write a file (``COPY ... TO``,
    ``ATTACH``, ``INSTALL``) nor read one (``read_blob``, ``read_csv``: the pseudonym key, or
    anything else the process can read), and cannot turn that back on. Statements still run in
    memory (``CREATE TABLE``); ``query`` refuses every statement but one SELECT.

    The views list the table's files when made: a table that gains files needs a new connection
    (``stamp`` tells when). ``versions`` (table -> Delta version) answers as of that state: the
    versions a run recorded as read (``runs.lake_versions``). Raises LakeError where the lake's
    root is a file.
    """
    if versions is not None:
        lake = lake.at(versions)
    con = duckdb.connect(":memory:")
    for name in SCHEMAS:
        data = lake.dataset(name)
        if data is None:
            con.execute(f'CREATE VIEW "{name}" AS {_typed_empty(name)}')
        else:
            con.register(f"_arrow_{name}", data)
            con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM "_arrow_{name}" '
                        f"UNION ALL BY NAME {_typed_empty(name)}")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


#: Tables ``stamp`` leaves out by default: the access log, which the dashboard itself appends to
#: on every patient it shows and reads nothing from (a commit there must not make it drop its caches).
UNSTAMPED = (C.TABLE_ACCESS_LOG,)


def stamp(lake: Lake, tables=None) -> str:
    """A short digest of the names of the Delta log entries of ``tables`` (default: every table
    but ``UNSTAMPED``), which changes with every commit to them (and only then): a cache key for
    readers. One listing per table, no file opened."""
    import hashlib

    h = hashlib.sha256()
    for name in (tables if tables is not None else [n for n in SCHEMAS if n not in UNSTAMPED]):
        log = lake.path(name, "_delta_log")
        if lake.fs.get_file_info(log).type != pafs.FileType.Directory:
            continue
        entries = [i.base_name for i in lake.fs.get_file_info(pafs.FileSelector(log))
                   if i.base_name.endswith(".json")]
        h.update(f"{name}\0{max(entries, default='')}\0{len(entries)}\n".encode())
    return h.hexdigest()[:16]


def connect(lake: Lake, *, refresh_first: bool = True) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the lake's catalog (rebuilt first by default: for the job that
    just wrote the lake); for a lake on object storage, an in-memory one (``memory_connection``)."""
    if lake.local_root is None:
        return memory_connection(lake)
    path = refresh(lake) if refresh_first else lake.local_root / CATALOG_FILE
    return duckdb.connect(str(path), read_only=True)


#: Statements ``query`` runs: one SELECT (which includes WITH, VALUES, FROM-first, DESCRIBE,
#: SHOW and SUMMARIZE).
READ_STATEMENTS = (duckdb.StatementType.SELECT,)


def query(lake: Lake, sql: str, params: list | tuple | None = None,
          versions: dict[str, int | None] | None = None) -> pa.Table:
    """Run one SELECT ``sql`` with ``?`` parameters against the lake; return an Arrow table.

    Read-only for everything, and works on a lake this process cannot write: nothing is written
    (not even ``catalog.duckdb``) and no file is read but the lake's tables, through their views
    (``memory_connection``). ``versions`` pins tables to Delta versions (``run_versions``).

    Raises:
        ConfigError: ``sql`` is not exactly one SELECT statement (``COPY``, ``ATTACH``,
            ``INSTALL``, ``SET``, ``PRAGMA``, DDL, several statements...), or reaches for a file
            (``read_blob``, ``read_csv``, ``read_parquet``...).
        duckdb.Error: any other failure of the query (a syntax error, an unknown column).
    """
    con = memory_connection(lake, versions)
    try:
        statements = con.extract_statements(sql)
        kinds = [s.type.name for s in statements]
        if len(statements) != 1 or statements[0].type not in READ_STATEMENTS:
            got = ", ".join(kinds) or "no statement"
            raise ConfigError(f"gbmmet query is read-only: it runs exactly one SELECT statement "
                              f"(or DESCRIBE / SHOW / SUMMARIZE) over the lake's views; got {got}")
        try:
            return con.sql(sql, params=list(params or [])).to_arrow_table()
        except duckdb.PermissionException as exc:
            raise ConfigError(f"gbmmet query is read-only and reads the lake only through its views "
                              f"(`show tables` lists them), never a file: {exc}") from None
    finally:
        con.close()
