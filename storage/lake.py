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
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from storage.schemas import PARTITIONS, SCHEMAS

SECRET_DIR = ".gbmmet"
SECRET_FILE = "pseudonym.key"


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

    def child_uri(self, *parts: str) -> str:
        """The URI (or local path) of a place inside the lake, e.g. its ``runs`` folder."""
        return uri_join(self.uri, *parts)

    def __repr__(self) -> str:
        return f"Lake({self.uri!r})"

    def path(self, *parts: str) -> str:
        return posixpath.join(self.base, *parts)

    def ensure(self) -> Lake:
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
        self.fs.create_dir(folder, recursive=True)
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

    # -- secret ---------------------------------------------------------------------------
    def secret(self) -> bytes:
        """The lake's pseudonymisation key (32 random bytes), created on first use.

        It lives beside the tables (``.gbmmet/pseudonym.key``, hidden from every reader) and never
        in them; keep it with the site: whoever holds it and a raw id can recompute the pseudonym.
        """
        path = self.path(SECRET_DIR, SECRET_FILE)
        if self.fs.get_file_info(path).type == pafs.FileType.File:
            with self.fs.open_input_stream(path) as fh:
                key = fh.read()
            if len(key) < 16:
                raise ValueError(f"the lake's pseudonym key {path} is damaged ({len(key)} bytes)")
            return key
        self.fs.create_dir(self.path(SECRET_DIR), recursive=True)
        key = os.urandom(32)
        tmp = self.path(SECRET_DIR, f".{SECRET_FILE}.tmp")
        with self.fs.open_output_stream(tmp) as fh:
            fh.write(key)
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
