"""The lake: one Delta Lake table per table of ``storage/schemas.py``, on a local folder or any
object store delta-rs reaches (``s3://bucket/prefix?endpoint_override=...``).

Every change is one Delta commit: rows appended (``append``), rows replaced where a predicate holds
(``replace``: the matching rows go and the new ones arrive in the same commit), rows deleted
(``delete``). Workers may write Parquet data files themselves (``stage``); they become visible
only when the driver commits them (``commit``), so a killed job leaves nothing visible that it had
not committed, only unreferenced files that ``vacuum`` removes. Concurrent writers are safe: a
commit that loses the race is retried against the new state (``COMMIT_RETRIES``), and one that
truly conflicts fails with a ``LakeError`` naming the table; no commit is ever lost.

Readers see each table's latest version, or a pinned one (``at``): a job reads every table at
the versions it started from and records them (``versions``), so ``gbmmet query --as-of RUN``
answers from the state that run read. ``compact``, ``vacuum`` and ``forget`` keep the lake small
and let a patient be erased (``storage.maintenance``).

Table statistics (min/max per column) are not collected (``delta.dataSkippingNumIndexedCols`` 0):
the tables are small enough to scan, and the transaction log then never holds a patient's
pseudonym, only file names, so erasing a patient's rows and vacuuming erases it everywhere.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import posixpath
import random
import re
import secrets
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, quote

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from gbmmet import constants as C
from gbmmet.errors import LakeError
from storage.schemas import PARTITIONS, SCHEMAS

SECRET_DIR = ".gbmmet"
SECRET_FILE = "pseudonym.key"
KEY_BYTES = 32
#: Tables keyed by pseudonyms: a lake with files in any of them was written with a key.
KEYED_TABLES = (C.TABLE_PATIENTS, C.TABLE_PREPROCESS_RUNS, C.TABLE_SLICES)


#: Delta table properties of every lake table: no per-column statistics in the log (see above);
#: log entries and removed files kept a week for time travel unless ``vacuum`` says less.
TABLE_CONFIGURATION = {
    "delta.dataSkippingNumIndexedCols": "0",
    "delta.logRetentionDuration": "interval 7 days",
    "delta.deletedFileRetentionDuration": "interval 7 days",
}
#: A migration's backup folder (``.migrated-<time>``) and the marker it holds until it finishes.
MIGRATION_BACKUP_PREFIX = ".migrated-"
MIGRATION_MARKER = "MIGRATING"
#: Commits tried before a write gives up on a table other writers keep changing.
COMMIT_RETRIES = 8


@dataclasses.dataclass(frozen=True)
class Staged:
    """A data file a worker wrote into a table's folder, not yet committed (``Lake.stage``)."""

    table: str
    path: str  # relative to the table's folder
    size: int
    partition_values: dict
    rows: int
    modification_time: int  # ms since the epoch


def flat(exc: BaseException | None) -> str:
    """An error's message on one line: delta-rs's colour codes, arrows and line breaks removed."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    return re.sub(r"\s+", " ", text.replace("\u21b3", " ")).strip()


def table_description(name: str) -> str | None:
    """The Delta table description of ``name``: its schema's metadata as JSON (the slices' image
    dtype and layout), which stays with the table when compaction rewrites its files without it."""
    import json

    meta = SCHEMAS[name].metadata
    if not meta:
        return None
    return json.dumps({k.decode(): v.decode() for k, v in meta.items()}, sort_keys=True)


def _check_name(name: str) -> None:
    if name not in SCHEMAS:
        raise ValueError(f"unknown lake table {name!r}; expected one of {sorted(SCHEMAS)}")


def commit_hooks():
    """Post-commit hooks of every commit: checkpoints as usual, but never a clean-up of old log
    entries behind a job's back (``vacuum`` does that, and says so)."""
    from deltalake import PostCommitHookProperties

    return PostCommitHookProperties(create_checkpoint=True, cleanup_expired_logs=False)


def _literal(value) -> str:
    """``value`` as a SQL literal for a delta-rs predicate (which takes no parameters): strings
    quoted with quotes doubled, numbers and booleans as themselves; anything else refused."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)
    if isinstance(value, str):
        if any(ord(ch) < 32 for ch in value):
            raise ValueError(f"a lake key may not hold control characters: {value!r}")
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"a lake key must be a string or number, not {type(value).__name__}")


def sql_predicate(where: dict) -> str:
    """The delta-rs predicate of ``where`` (column -> value, or list of values; all must hold):
    ``{"run_id": "r1", "patient_id": ["a", "b"]}`` is ``"run_id" = 'r1' AND "patient_id" IN ('a',
    'b')``. An empty list matches nothing: ``"false"``. Column names must be the table's."""
    terms = []
    for col, value in where.items():
        if not col.replace("_", "").isalnum():
            raise ValueError(f"bad column name {col!r}")
        if isinstance(value, (list, tuple, set, frozenset)):
            values = sorted(set(value), key=str)
            if not values:
                return "false"
            terms.append(f'"{col}" IN ({", ".join(_literal(v) for v in values)})')
        else:
            terms.append(f'"{col}" = {_literal(value)}')
    if not terms:
        raise ValueError("a lake predicate needs at least one column")
    return " AND ".join(terms)


def _expression(where: dict) -> ds.Expression:
    """``where`` (as in ``sql_predicate``) as an Arrow filter expression."""
    expr = None
    for col, value in where.items():
        values = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
        e = ds.field(col).isin(values)
        expr = e if expr is None else expr & e
    return expr


def storage_options_for(uri: str) -> dict[str, str]:
    """delta-rs (object_store) options for a lake URI, from its query (``endpoint_override``,
    ``scheme``, ``region``); credentials come from the environment, as for pyarrow.

    Commits on S3 use conditional writes (``If-None-Match``, ``AWS_CONDITIONAL_PUT=etag``): a
    log entry is created only if no other writer created it first, so concurrent jobs never
    overwrite each other's commits, with no lock table to run. (The alternative, a DynamoDB lock,
    needs a table per deployment; ``AWS_S3_ALLOW_UNSAFE_RENAME`` would lose commits.)
    """
    base, _, query = uri.partition("?")
    q = {k: v[-1] for k, v in parse_qs(query).items()}
    opts: dict[str, str] = {}
    if base.startswith(("s3://", "s3a://")):
        opts["AWS_CONDITIONAL_PUT"] = "etag"
        endpoint = q.get("endpoint_override")
        if endpoint:
            if "://" not in endpoint:
                endpoint = f"{q.get('scheme', 'https')}://{endpoint}"
            opts["AWS_ENDPOINT_URL"] = endpoint
            if endpoint.startswith("http://"):
                opts["AWS_ALLOW_HTTP"] = "true"
        region = q.get("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            opts["AWS_REGION"] = region
    return opts


def is_remote(uri: str | os.PathLike) -> bool:
    """True for a filesystem URI other than a local path (``s3://``, ``gs://``, ...)."""
    uri = str(uri)
    return "://" in uri and not uri.startswith("file://")


def uri_join(uri: str, *parts: str) -> str:
    """``uri`` with ``parts`` appended to its path, its query (``?endpoint_override=...``) kept:
    ``uri_join("s3://b/lake?scheme=http", "runs")`` is ``s3://b/lake/runs?scheme=http``."""
    uri = str(uri)
    if not is_remote(uri):
        return str(Path(uri.removeprefix("file://")).joinpath(*parts))
    base, sep, query = uri.partition("?")
    return posixpath.join(base.rstrip("/"), *parts) + sep + query


def filesystem(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) of a local path or a filesystem URI. Object storage
    credentials come from the environment or the machine's identity (pyarrow's S3 defaults)."""
    uri = str(uri)
    if is_remote(uri):
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), Path(uri.removeprefix("file://")).expanduser().resolve().as_posix()


def read_bytes(uri: str | os.PathLike) -> bytes:
    """The bytes of one file, local or on object storage."""
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as fh:
        return fh.read()


def partition_values(path: str) -> dict[str, str]:
    """The hive-style partition values in a data file's path (``.../site=siteA/split=test/x.parquet``)."""
    from urllib.parse import unquote

    return dict(unquote(seg).split("=", 1) for seg in path.split("/")[:-1] if "=" in seg)


def read_data_files(batch: pa.Table, *, fs, columns: list[str], partitions: list[str], schema: pa.Schema,
                    filter=None) -> pa.Table:
    """Ray Data task of ``Lake.ray_dataset``: the rows of the data files named in ``batch["path"]``
    (``columns``, partition columns from each path, cast to the table's ``schema``), ``filter``
    applied."""
    import pyarrow.parquet as pq

    out = []
    for path in batch.column("path").to_pylist():
        values = partition_values(path)
        t = pq.read_table(path, filesystem=fs, columns=[c for c in columns if c not in partitions])
        for k in partitions:
            if k in columns:
                t = t.append_column(schema.field(k), pa.array([values.get(k)] * t.num_rows, pa.string()).cast(
                    schema.field(k).type))
        t = t.select(columns).cast(pa.schema([schema.field(c) for c in columns]))
        out.append(t.filter(filter) if filter is not None else t)
    return pa.concat_tables(out)


class Lake:
    """A lake root: a local folder (default ``./lake``) or a filesystem URI."""

    def __init__(self, root: str | os.PathLike = "lake"):
        root = str(root)
        self.fs, self.base = filesystem(root)
        if is_remote(root):
            base, sep, query = root.partition("?")
            self.uri = base.rstrip("/") + sep + query  # the query (endpoint, scheme) travels with it
            self.local_root: Path | None = None
        else:
            self.local_root = Path(self.base)
            self.uri = self.base
        self.base = self.base.rstrip("/")
        self._root_is_dir = False
        self._pins: dict[str, int | None] = {}
        self._migrating = False

    def child_uri(self, *parts: str) -> str:
        """The URI (or local path) of a place inside the lake, e.g. its ``runs`` folder."""
        return uri_join(self.uri, *parts)

    def __repr__(self) -> str:
        return f"Lake({self.uri!r})"

    def path(self, *parts: str) -> str:
        return posixpath.join(self.base, *parts)

    def ensure(self) -> Lake:
        """Create the lake's folder if missing; return ``self``. LakeError if the root is a file."""
        self._refuse_file_root()
        self.fs.create_dir(self.base, recursive=True)
        return self

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    # -- tables ---------------------------------------------------------------------------
    def table_uri(self, name: str) -> str:
        """The URI delta-rs opens for table ``name`` (a local path, or ``s3://bucket/prefix/name``)."""
        _check_name(name)
        if self.local_root is None:
            return posixpath.join(self.uri.partition("?")[0], name)
        return self.path(name)

    @property
    def storage_options(self) -> dict[str, str]:
        """delta-rs's options for this lake (``storage_options_for``); empty for a local lake."""
        return {} if self.local_root is not None else storage_options_for(self.uri)

    def at(self, versions: dict[str, int | None]) -> Lake:
        """This lake with reads pinned to ``versions`` (table -> Delta version; None: not created
        yet, reads empty); tables not named read their latest version. Writes are unchanged."""
        twin = copy.copy(self)
        twin._pins = dict(versions)
        return twin

    def migrating(self) -> Lake:
        """This lake for ``gbmmet lake migrate`` itself, which reads and commits while its own
        half-way marker stands (every other user is refused then)."""
        twin = copy.copy(self)
        twin._migrating = True
        return twin

    def pinned(self) -> Lake:
        """This lake with every table's reads pinned to its version now: a job's consistent
        snapshot, whose ``versions()`` it records as what it read."""
        return self.at(self.versions())

    def delta(self, name: str, version: int | None = None):
        """The ``deltalake.DeltaTable`` of ``name`` (at ``version``, or the pinned or latest one),
        or None where the table has no commit yet.

        Raises:
            LakeError: the table's folder holds Parquet files of the old file-per-patient layout
                (``gbmmet lake migrate`` converts them).
        """
        from deltalake import DeltaTable
        from deltalake.exceptions import DeltaError, TableNotFoundError

        pins = self._pins
        if version is None and name in pins:
            version = pins[name]
            if version is None:
                return None
        try:
            return DeltaTable(self.table_uri(name), version=version, storage_options=self.storage_options or None)
        except TableNotFoundError:
            if version is not None:
                latest = self.delta_latest(name)
                if latest is None:
                    raise LakeError(f"the lake table {name} has no version {version}: it has no commit yet") from None
                raise LakeError(f"the lake table {name} has no version {version} (latest: {latest.version()}; "
                                f"`gbmmet lake vacuum` removes versions older than its --retain-hours)") from None
            self._refuse_old_layout(name)
            return None
        except DeltaError as exc:
            if version is None:
                raise
            latest = self.delta_latest(name)
            raise LakeError(f"the lake table {name} has no version {version} (latest: "
                            f"{None if latest is None else latest.version()}; `gbmmet lake vacuum` removes versions "
                            f"older than its --retain-hours): {flat(exc)}") from None

    def version(self, name: str) -> int | None:
        """The latest committed version of table ``name`` (None: no commit yet)."""
        table = self.delta(name)
        return None if table is None else table.version()

    def versions(self) -> dict[str, int | None]:
        """The version every table is at now (pinned ones as pinned): what a job records as read."""
        return {name: self.version(name) for name in SCHEMAS}

    def full_schema(self, name: str) -> pa.Schema:
        """Table ``name``'s columns: its schema then its partition columns (strings)."""
        schema = SCHEMAS[name]
        for col in PARTITIONS.get(name, ()):
            schema = schema.append(pa.field(col, pa.string(), nullable=False))
        return schema

    def _conform(self, name: str, table: pa.Table, partition: dict[str, str] | None) -> pa.Table:
        """``table`` with the table's partition columns set from ``partition``, selected and cast
        to the table's full schema."""
        parts = PARTITIONS.get(name, ())
        given = set(partition or {})
        missing = [c for c in parts if c not in given and c not in table.column_names]
        if missing or given - set(parts):
            raise ValueError(f"table {name!r} is partitioned by {parts}; got {partition}")
        for col in parts:
            if col in given:
                value = pa.array([str(partition[col])] * table.num_rows, pa.string())
                if col in table.column_names:
                    table = table.set_column(table.column_names.index(col), col, value)
                else:
                    table = table.append_column(col, value)
        schema = self.full_schema(name)
        return table.select(schema.names).cast(schema)

    def append(self, name: str, table: pa.Table, partition: dict[str, str] | None = None) -> int:
        """Append ``table``'s rows to table ``name`` in one commit; return the new version."""
        return self.replace(name, table, None, partition)

    def replace(self, name: str, table: pa.Table, where: dict | None, partition: dict[str, str] | None = None) -> int:
        """Delete the rows of ``name`` matching ``where`` and add ``table``'s, in one commit
        (``where`` None: only add); return the new version. ``where`` maps columns to a value or
        a list of values (``{"run_id": "r1"}``, ``{"patient_id": [...]}``), all of them holding."""
        from deltalake import write_deltalake

        data = self._conform(name, table, partition)
        predicate = sql_predicate(where) if where else None
        if predicate == "false":
            predicate = None
        if predicate is not None and data.num_rows:
            outside = data.num_rows - data.filter(_expression(where)).num_rows
            if outside:
                raise ValueError(f"replace into {name}: {outside} of the {data.num_rows} new rows do not match "
                                 f"{predicate} (a replace swaps the rows matching its key for new rows with that "
                                 f"key; delete the others first)")
        self._prepare_write()

        def write():
            existing = self.delta_latest(name)
            if existing is not None and self._lacks_columns(name, existing):
                return self._rewrite_with_new_columns(name, existing, data, where)
            if existing is None:
                write_deltalake(self.table_uri(name), data, mode="append", partition_by=list(PARTITIONS.get(name, ())) or None,
                                configuration=TABLE_CONFIGURATION, description=table_description(name),
                                storage_options=self.storage_options or None,
                                post_commithook_properties=commit_hooks())
                return 0
            if predicate is None:
                write_deltalake(existing, data, mode="append", post_commithook_properties=commit_hooks())
            else:
                write_deltalake(existing, data, mode="overwrite", predicate=predicate, post_commithook_properties=commit_hooks())
            return existing.version()

        self.with_retries(name, write)
        return self.version(name)

    def _lacks_columns(self, name: str, existing) -> bool:
        """Whether the Delta table ``existing`` lacks columns the schema of ``name`` gained since."""
        return not {f.name for f in existing.schema().fields} >= set(self.full_schema(name).names)

    def _rewrite_with_new_columns(self, name: str, existing, data: pa.Table, where: dict | None) -> int:
        """``replace`` on a table that lacks columns its schema gained: one commit rewriting the
        whole table (the rows kept, null in the new columns, and ``data``), so that every data
        file has every column (DuckDB's views read the files by position). Tables that gain
        columns are small (evaluation results)."""
        from deltalake import write_deltalake

        old = self.at({}).dataset(name).to_table()  # the dataset's schema is today's: new columns null
        if where:
            match = _expression(where)
            old = old.filter(~match | match.is_null())
        write_deltalake(existing, pa.concat_tables([old, data]), mode="overwrite", schema_mode="overwrite",
                        partition_by=list(PARTITIONS.get(name, ())) or None, post_commithook_properties=commit_hooks())
        return existing.version()

    def delete(self, name: str, where: dict) -> int:
        """Delete the rows of ``name`` matching ``where`` (as in ``replace``) in one commit; return
        how many went (0, and no commit, where none matched or the table is empty)."""
        predicate = sql_predicate(where)
        if predicate == "false":
            return 0
        self._prepare_write()

        def delete():
            # an overwrite of nothing where the predicate holds, not DeltaTable.delete: that one
            # rewrites the surviving rows with string_view columns, which Arrow's filters and
            # DuckDB's views then fail to compare with plain strings (delta-rs 1.6)
            from deltalake import write_deltalake

            table = self.delta_latest(name)
            if table is None or not self._matches(name, where):
                return 0
            n = self.at({}).dataset(name).count_rows(filter=_expression(where))
            write_deltalake(table, self.full_schema(name).empty_table(), mode="overwrite", predicate=predicate,
                            post_commithook_properties=commit_hooks())
            return n

        return self.with_retries(name, delete)

    def delta_latest(self, name: str):
        """The latest ``DeltaTable`` of ``name`` whatever the pins (None: no commit yet)."""
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            return DeltaTable(self.table_uri(name), storage_options=self.storage_options or None)
        except TableNotFoundError:
            self._refuse_old_layout(name)
            return None

    # -- staged writes: workers write data files, the driver commits them ------------------
    def stage(self, name: str, table: pa.Table, partition: dict[str, str] | None = None) -> Staged:
        """Write ``table`` as a new Parquet data file inside table ``name``'s folder, invisible
        until ``commit``; return what the commit needs. Safe in any worker process."""
        data = self._conform(name, table, partition)
        parts = PARTITIONS.get(name, ())
        values = {c: data.column(c)[0].as_py() for c in parts} if data.num_rows else {c: (partition or {}).get(c) for c in parts}
        # partition folders percent-encoded as delta-rs writes them (pyarrow's hive reads decode them)
        rel = posixpath.join(*[f"{c}={quote(str(values[c]), safe='')}" for c in parts],
                             f"part-{uuid.uuid4().hex}.zstd.parquet") if parts else f"part-{uuid.uuid4().hex}.zstd.parquet"
        folder = self.path(name, posixpath.dirname(rel)) if parts else self.path(name)
        self._prepare_write()
        self.fs.create_dir(folder, recursive=True)
        full = self.path(name, rel)
        pq.write_table(data.drop_columns(list(parts)), full, filesystem=self.fs, compression="zstd")
        size = self.fs.get_file_info(full).size
        return Staged(table=name, path=rel, size=size, partition_values=values, rows=data.num_rows,
                      modification_time=int(time.time() * 1000))

    def commit(self, name: str, staged: list[Staged], where: dict | None = None) -> int | None:
        """Make ``staged`` files of table ``name`` visible in one commit, first deleting the rows
        that match ``where`` (in the same commit); return the new version (None: nothing to do).

        Files are committed as written where no row matches ``where``; otherwise their rows are
        rewritten in the commit that replaces the old ones, and the staged files removed.
        """
        from deltalake import Schema as DeltaSchema
        from deltalake import write_deltalake
        from deltalake.transaction import AddAction, create_table_with_add_actions

        staged = [s for s in staged if s.table == name]
        if not staged:
            return None
        predicate = sql_predicate(where) if where else None
        schema = self.full_schema(name)
        actions = [AddAction(s.path, s.size, s.partition_values, s.modification_time, True,
                             f'{{"numRecords":{s.rows}}}') for s in staged]
        parts = list(PARTITIONS.get(name, ())) or None

        def commit():
            existing = self.delta_latest(name)
            if existing is None:
                create_table_with_add_actions(self.table_uri(name), DeltaSchema.from_arrow(schema), actions, mode="append", partition_by=parts,
                                              configuration=TABLE_CONFIGURATION,
                                              description=table_description(name),
                                              storage_options=self.storage_options or None)
                return "added"
            if predicate is not None and predicate != "false" and self._matches(name, where):
                files = [self.path(name, s.path) for s in staged]
                tables = []
                for s, frag in zip(staged, files, strict=True):
                    t = ds.dataset(frag, format="parquet", filesystem=self.fs).to_table()
                    for c in parts or ():
                        t = t.append_column(c, pa.array([s.partition_values[c]] * t.num_rows, pa.string()))
                    tables.append(t.select(schema.names).cast(schema))
                write_deltalake(existing, pa.concat_tables(tables), mode="overwrite", predicate=predicate,
                                post_commithook_properties=commit_hooks())
                return "rewritten"
            existing.create_write_transaction(actions, mode="append", schema=DeltaSchema.from_arrow(schema), partition_by=parts,
                                              post_commithook_properties=commit_hooks())
            return "added"

        how = self.with_retries(name, commit)
        if how == "rewritten":
            for s in staged:
                self.fs.delete_file(self.path(name, s.path))
        return self.version(name)

    def _matches(self, name: str, where: dict) -> bool:
        """Whether any row of table ``name``'s latest version matches ``where``."""
        data = self.at({}).dataset(name) if self._pins else self.dataset(name)
        return data is not None and data.count_rows(filter=_expression(where)) > 0

    def with_retries(self, name: str, fn):
        """Run one commit ``fn``, retried against the new state where a concurrent commit won
        (including two jobs creating the same table at once: the loser commits on top).

        Raises:
            LakeError: the commit kept losing, or failed otherwise (the message names the table).
        """
        from deltalake.exceptions import CommitFailedError, DeltaError

        last = None
        for attempt in range(COMMIT_RETRIES):
            existed = self.exists(name, "_delta_log")
            try:
                return fn()
            except CommitFailedError as exc:
                last = exc
            except DeltaError as exc:
                if existed or not self.exists(name, "_delta_log"):
                    raise LakeError(f"cannot commit to the lake table {name} of {self.uri}: {flat(exc)}") from None
                last = exc  # another job created the table first: commit on top of it
            except OSError as exc:
                self._refuse_file_root()
                raise LakeError(f"cannot commit to the lake table {name} of {self.uri}: {flat(exc)}") from None
            time.sleep(random.uniform(0.05, 0.2) * (attempt + 1))
        raise LakeError(f"the lake table {name} of {self.uri} kept changing under this job: {COMMIT_RETRIES} "
                        f"commits lost to concurrent writers (last: {flat(last)}); nothing of this commit is "
                        f"visible, re-run the job to write it") from None

    def _prepare_write(self) -> None:
        self._refuse_file_root()
        if self.local_root is not None:
            self.local_root.mkdir(parents=True, exist_ok=True)
        else:
            self.fs.create_dir(self.base, recursive=True)

    # -- reads ----------------------------------------------------------------------------
    def files(self, name: str) -> list[str]:
        """The data files of table ``name``'s current (or pinned) version, as paths inside the
        lake's filesystem."""
        table = self.delta(name)
        if table is None:
            return []
        return sorted(_fs_path(u) for u in table.file_uris())

    def dataset(self, name: str) -> ds.Dataset | None:
        """Table ``name``'s current (or pinned) version as an Arrow dataset over its data files,
        partition columns included; None where it has no commit yet.

        Built with pyarrow from the files the Delta log lists (hive-style folders give the
        partition values), not with delta-rs's own ``to_pyarrow_dataset``, whose file system
        handler aborts the interpreter at exit in this version."""
        files = self.files(name)
        if not files and self.delta(name) is None:
            return None
        schema = self.full_schema(name)
        parts = PARTITIONS.get(name, ())
        partitioning = None
        if parts:
            partitioning = ds.partitioning(pa.schema([schema.field(c) for c in parts]), flavor="hive")
        return ds.dataset(files, schema=schema, format="parquet", filesystem=self.fs,
                          partitioning=partitioning, partition_base_dir=self.path(name))

    def partition_files(self, name: str, where: dict | None = None) -> list[str]:
        """The data files of table ``name`` (current or pinned version) in the partitions of
        ``where`` (``{"split": "train"}``, or a list of values per partition column)."""
        parts = PARTITIONS.get(name, ())
        unknown = sorted(set(where or ()) - set(parts))
        if unknown:
            raise ValueError(f"table {name} is not partitioned by {unknown} (its partitions: {list(parts)})")
        wanted = {k: {v} if isinstance(v, str) else set(v) for k, v in (where or {}).items()}
        return [f for f in self.files(name) if all(partition_values(f).get(k) in vs for k, vs in wanted.items())]

    def ray_dataset(self, name: str, columns: list[str] | None = None, where: dict | None = None, filter=None,
                    block_bytes: int | None = None):
        """Table ``name``'s current (or pinned) version as a Ray Dataset: the cluster's workers read
        its data files (one Ray Data task of no CPU per file), the driver only lists them.

        ``where``: partition values to keep (``{"split": "train"}``, or a list of values), chosen by
        the files' hive-style folders, which also give the partition columns. ``columns``: what to
        read (all by default; partition columns included). ``filter``: a pyarrow expression on the
        rows, applied as each file is read. ``block_bytes``: Ray Data's target block size (an
        actor takes a block whole; blocks of about one batch spread a large file over a pool).

        Not ``ray.data.read_parquet``: in Ray 2.60 its file listing is a task of one CPU, which
        waits for ever where actors or Ray Train workers hold every CPU, and it imports fsspec's
        HTTP support (``aiohttp``); the read tasks here take no CPU, since they only feed the
        actors that hold them."""
        import ray.data

        parts = PARTITIONS.get(name, ())
        files = self.partition_files(name, where)
        schema = self.full_schema(name)
        columns = list(columns or schema.names)
        if not files:
            return ray.data.from_arrow(schema.empty_table().select(columns))
        ds = ray.data.from_items([{"path": f} for f in files], override_num_blocks=len(files))
        if block_bytes:
            ds.context.target_max_block_size = int(block_bytes)
        return ds.map_batches(read_data_files, batch_size=1, batch_format="pyarrow", num_cpus=0,
                              fn_kwargs={"fs": self.fs, "columns": columns, "partitions": list(parts),
                                         "schema": schema, "filter": filter})

    def read(self, name: str, columns: list[str] | None = None, filter=None) -> pa.Table:
        """The whole table (or ``columns``, rows matching ``filter``) at its current (or pinned)
        version, cast to its schema; empty with its schema if it has no commit yet."""
        data = self.dataset(name)
        schema = self.full_schema(name)
        if data is None:
            empty = schema.empty_table()
            return empty.select(columns) if columns else empty
        t = data.to_table(columns=columns, filter=filter)
        return t.cast(pa.schema([schema.field(c) for c in t.column_names]))

    def _refuse_unfinished_migration(self) -> None:
        """LakeError where a ``gbmmet lake migrate`` stopped half-way (its backup folder still holds
        its marker): some tables' old files are moved but not committed yet, so they would read as
        empty."""
        if self._migrating or self.fs.get_file_info(self.base).type != pafs.FileType.Directory:
            return
        for info in self.fs.get_file_info(pafs.FileSelector(self.base)):
            if info.base_name.startswith(MIGRATION_BACKUP_PREFIX) and \
                    self.fs.get_file_info(posixpath.join(info.path, MIGRATION_MARKER)).type == pafs.FileType.File:
                raise LakeError(f"the lake {self.uri} is half-way through a migration ({info.base_name} holds "
                                f"{MIGRATION_MARKER}): finish it with `gbmmet lake migrate --lake {self.uri}`")

    def _refuse_old_layout(self, name: str) -> None:
        """LakeError where table ``name``'s folder holds Parquet files but no Delta log: a lake
        written by gbmmet before its tables were Delta tables. (Files named ``part-*`` are data
        files staged by a job that never committed: not a table yet.)"""
        self._refuse_unfinished_migration()
        root = self.path(name)
        if self.fs.get_file_info(root).type != pafs.FileType.Directory:
            self._refuse_file_root()
            return
        infos = self.fs.get_file_info(pafs.FileSelector(root, recursive=True))
        if any(i.base_name.endswith(".parquet") and not i.base_name.startswith((".", "_", "part-")) for i in infos):
            raise LakeError(f"the lake {self.uri} is in the old file-per-patient layout (table {name} has Parquet "
                            f"files and no Delta log): convert it once with `gbmmet lake migrate --lake {self.uri}`")

    # -- checks ---------------------------------------------------------------------------
    def _refuse_file_root(self) -> None:
        """LakeError if the lake's root is a file (a lake is a folder, or an object prefix)."""
        if self._root_is_dir:
            return
        kind = self.fs.get_file_info(self.base).type
        self._root_is_dir = kind == pafs.FileType.Directory  # then never asked again (object storage)
        if kind == pafs.FileType.File:
            raise LakeError(f"the lake {self.uri} is a file, not a folder: give --lake a folder "
                            f"(an empty or missing one starts a new lake)")

    def check_writable(self) -> Lake:
        """Check, before any work, that a job can write to this lake; return ``self``.

        The root must be a folder (created if missing), writable (a hidden probe file is created
        and removed, locally or on object storage), and its pseudonym key usable (``secret``: an
        empty lake gets its key here).

        Raises:
            LakeError: naming the lake and what to do.
        """
        self._refuse_file_root()
        try:
            self.fs.create_dir(self.base, recursive=True)
        except OSError as exc:
            raise LakeError(f"cannot create the lake folder {self.uri}: {exc}") from None
        probe = self.path(f".gbmmet-probe-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            with self.fs.open_output_stream(probe) as fh:
                fh.write(b"probe")
            self.fs.delete_file(probe)
        except OSError as exc:
            raise LakeError(f"the lake {self.uri} is not writable ({exc}): make it writable for this user, "
                            f"or give --lake a folder this job may write to") from None
        self.secret()
        return self

    # -- secret ---------------------------------------------------------------------------
    def _holds_patients(self) -> bool:
        return any(self.files(name) for name in KEYED_TABLES)

    def secret(self) -> bytes:
        """The lake's pseudonymisation key (32 random bytes), created for a new lake only.

        It lives beside the tables (``.gbmmet/pseudonym.key``, hidden from every reader) and never
        in them; keep it with the site: whoever holds it and a raw id can recompute the pseudonym.

        Raises:
            LakeError: the key is unreadable or damaged, or missing from a lake that already holds
                patients (a new key would store every patient again under new pseudonyms). It is
                never recreated: copy ``.gbmmet/pseudonym.key`` from the original lake.
        """
        self._refuse_file_root()
        path = self.path(SECRET_DIR, SECRET_FILE)
        restore = (f"copy {SECRET_DIR}/{SECRET_FILE} from the lake these patients were first written to "
                   f"into {self.child_uri(SECRET_DIR)}; the key is never recreated, or every patient "
                   f"would be stored again under new pseudonyms")
        kind = self.fs.get_file_info(path).type
        if kind == pafs.FileType.File:
            try:
                with self.fs.open_input_stream(path) as fh:
                    key = fh.read()
            except OSError as exc:
                raise LakeError(f"the lake's pseudonym key {path} cannot be read ({exc}): make it readable "
                                f"for this user, or {restore}") from None
            if len(key) != KEY_BYTES:
                raise LakeError(f"the lake's pseudonym key {path} is damaged ({len(key)} bytes, not "
                                f"{KEY_BYTES}): {restore}")
            return key
        if kind != pafs.FileType.NotFound:
            raise LakeError(f"the lake's pseudonym key {path} is not a file: {restore}")
        if self._holds_patients():
            raise LakeError(f"the lake {self.uri} holds patients but no pseudonym key ({path} is missing): "
                            f"{restore}")
        key = os.urandom(KEY_BYTES)
        tmp = self.path(SECRET_DIR, f".{SECRET_FILE}.{os.getpid()}.tmp")
        try:
            self.fs.create_dir(self.path(SECRET_DIR), recursive=True)
            with self.fs.open_output_stream(tmp) as fh:
                fh.write(key)
        except OSError as exc:
            raise LakeError(f"cannot create the pseudonym key of the new lake {self.uri} ({exc}): "
                            f"make the lake writable for this user") from None
        if self.local_root is not None:
            os.chmod(tmp, 0o600)
            try:  # never replace a key another process created meanwhile
                os.link(tmp, path)
            except FileExistsError:
                pass
            os.unlink(tmp)
            return self.secret()
        self.fs.move(tmp, path)
        return key


def _fs_path(uri: str) -> str:
    """A data file URI of delta-rs (``file:///x``, ``s3://b/x``, or a plain path) as a path for
    the lake's pyarrow filesystem."""
    if uri.startswith("file://"):
        return uri.removeprefix("file://")
    if "://" in uri:
        return uri.split("://", 1)[1]
    return uri
