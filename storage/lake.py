"""The lake's files: atomic Parquet writes and reads, on a local folder or any pyarrow
filesystem URI (``s3://bucket/prefix``...).

Every file is written under a hidden temporary name (``.name.tmp``), then moved into place:
readers (pyarrow datasets, DuckDB globs on ``*.parquet``) never see a half-written file. On a
local disk the move is an atomic rename; on object storage it is a copy then delete of one object,
still invisible until complete.
"""

from __future__ import annotations

import os
import posixpath
import secrets
from pathlib import Path

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
    def table_dir(self, name: str, partition: dict[str, str] | None = None) -> str:
        if name not in SCHEMAS:
            raise ValueError(f"unknown lake table {name!r}; expected one of {sorted(SCHEMAS)}")
        parts = [name]
        for col in PARTITIONS.get(name, ()):
            if not partition or col not in partition:
                raise ValueError(f"table {name!r} is partitioned by {PARTITIONS[name]}; got {partition}")
            parts.append(f"{col}={partition[col]}")
        return self.path(*parts)

    def write(self, name: str, table: pa.Table, filename: str, partition: dict[str, str] | None = None) -> str:
        """Write ``table`` (cast to the table's schema) as ``filename`` atomically; return its path."""
        if not filename.endswith(".parquet") or "/" in filename or filename.startswith((".", "_")):
            raise ValueError(f"bad lake file name {filename!r}")
        schema = SCHEMAS[name]
        folder = self.table_dir(name, partition)
        try:
            self.fs.create_dir(folder, recursive=True)
        except OSError:
            self._refuse_file_root()  # the usual cause, said clearly; otherwise the OS's own error
            raise
        final = posixpath.join(folder, filename)
        tmp = posixpath.join(folder, f".{filename}.tmp")
        pq.write_table(table.select(schema.names).cast(schema), tmp, filesystem=self.fs, compression="zstd")
        self.fs.move(tmp, final)
        return final

    def delete(self, name: str, filename: str, partition: dict[str, str] | None = None) -> None:
        path = posixpath.join(self.table_dir(name, partition), filename)
        if self.fs.get_file_info(path).type == pafs.FileType.File:
            self.fs.delete_file(path)

    def files(self, name: str) -> list[str]:
        """Visible Parquet files of a table (hidden temporaries excluded)."""
        root = self.path(name)
        if self.fs.get_file_info(root).type != pafs.FileType.Directory:
            self._refuse_file_root()  # a file given as the lake is an error, not an empty lake
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(root, recursive=True))
        return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
                      and not i.base_name.startswith((".", "_")))

    def dataset(self, name: str) -> ds.Dataset | None:
        files = self.files(name)
        if not files:
            return None
        schema = SCHEMAS[name]
        partitioning = None
        if name in PARTITIONS:
            part_schema = pa.schema([pa.field(c, pa.string()) for c in PARTITIONS[name]])
            partitioning = ds.partitioning(part_schema, flavor="hive")
            schema = pa.unify_schemas([schema, part_schema])
        return ds.dataset(files, schema=schema, format="parquet", filesystem=self.fs,
                          partitioning=partitioning, partition_base_dir=self.path(name))

    def read(self, name: str, columns: list[str] | None = None, filter=None) -> pa.Table:
        """The whole table (or ``columns``, rows matching ``filter``); empty with its schema if none."""
        data = self.dataset(name)
        if data is None:
            empty = SCHEMAS[name].empty_table()
            for col in PARTITIONS.get(name, ()):
                empty = empty.append_column(col, pa.array([], pa.string()))
            return empty.select(columns) if columns else empty
        return data.to_table(columns=columns, filter=filter)

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
