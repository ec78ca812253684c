"""Lake maintenance (``gbmmet lake``): what each table holds, compaction of small data files,
vacuum of files and log entries no version needs, erasure of one patient, and the one-time
conversion of a lake written in the old file-per-patient layout.

- ``stats``: per table its version, data files, bytes and rows (from the Delta log's add actions,
  no data file opened) and log entries.
- ``compact``: delta-rs's ``optimize.compact`` per table, one commit each, rows unchanged.
  ``COMPACT_TARGET_BYTES`` (256 MB) keeps a 2,000-patient lake under 50 data files per table:
  its ``slices`` (about 30 slices of 150 KB each per patient, 9 GB) become about 35 full files,
  plus one part-filled file per (site, split) partition. ``compact_small`` (what jobs call after
  their commits) compacts only the tables with more than ``SMALL_FILES`` small files.
- ``vacuum``: removes the data files no version younger than ``retain_hours`` reads (those that
  deletes, replaces and compaction removed, and those a killed job staged and never committed;
  nothing else in a table's folder, such as the training checkpoints under ``runs/``), then the
  log entries older than ``retain_hours``, and old-layout backups (``migrate``) as old.
  It ends time travel: a version older than ``retain_hours`` can no longer be read
  (``gbmmet query --as-of`` a run that read it fails, naming the version). ``retain_hours 0``
  keeps only the latest version of every table: run it when no job is running, as a job's
  staged files and pinned versions are younger than any other bound.
- ``forget``: deletes one patient's rows (by the pseudonym of site and raw id under the lake's
  key) from every table with a patient column, one commit per table. The rows stay in older
  versions' files, and the pseudonym in the log entries whose predicates named it (this delete's,
  earlier replaces'), until a ``vacuum`` with ``retain_hours`` 0 (or once they are older than its
  bound); the log holds no other trace of it, as the lake collects no column statistics
  (``storage.lake``).
- ``migrate``: converts a lake of the old layout (plain Parquet files per patient, attempt or run;
  hive folders for partitions; no Delta log) table by table, one commit each, and moves the old
  files into ``<lake>/.migrated-<UTC time>/`` (kept for checking; a ``vacuum`` removes the folder
  once it is older than ``retain_hours``). An interrupted migration resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import posixpath
import time
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from gbmmet import constants as C
from gbmmet.errors import ConfigError, LakeError
from gbmmet.pseudonym import pseudonymise
from storage.lake import (
    KEYED_TABLES,
    MIGRATION_BACKUP_PREFIX,
    MIGRATION_MARKER,
    SECRET_DIR,
    SECRET_FILE,
    TABLE_CONFIGURATION,
    Lake,
    commit_hooks,
)
from storage.schemas import PARTITIONS, SCHEMAS

#: Data file size compaction aims at (see the module docstring for a 2,000-patient lake).
COMPACT_TARGET_BYTES = 256 * 1024 * 1024
#: ``compact_small`` compacts a table with more small files (under half the target) than this.
SMALL_FILES = 16
#: How long the lake keeps removed files and log entries by default (its tables' properties).
DEFAULT_RETAIN_HOURS = 7 * 24
#: Folder (at the lake's root) of the old-layout files ``migrate`` moved away: prefix + UTC time.
BACKUP_PREFIX = MIGRATION_BACKUP_PREFIX
BACKUP_TIME = "%Y%m%dT%H%M%SZ"
#: File inside a backup folder while its migration is unfinished (``migrate`` resumes it).
MIGRATING = MIGRATION_MARKER
LOG_DIR = "_delta_log"
LOG_RETENTION = "delta.logRetentionDuration"


@dataclasses.dataclass(frozen=True)
class TableStats:
    """One table of the lake: its latest version (None: no commit yet) and what that holds."""

    name: str
    version: int | None
    files: int
    bytes: int
    rows: int
    log_entries: int


@dataclasses.dataclass(frozen=True)
class ForgetReport:
    """What ``forget`` removed: rows per table (tables with a patient column), under which
    pseudonym, and the old-layout backups that may still hold the patient until a vacuum."""

    site: str
    pseudonym: str
    removed: dict[str, int]
    catalog: str | None
    backups: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Migration:
    """What ``migrate`` did: per table converted, its old files and the rows committed; where the
    old files went (None: nothing to do); whether it finished an interrupted migration."""

    tables: dict[str, dict]
    backup: str | None
    resumed: bool


def _names(names) -> list[str]:
    """``names`` (default: every table), checked, in the lake's order."""
    if names is None:
        return list(SCHEMAS)
    unknown = sorted(set(names) - set(SCHEMAS))
    if unknown:
        raise ConfigError(f"unknown lake table(s) {', '.join(unknown)}; the tables are {', '.join(SCHEMAS)}")
    return [n for n in SCHEMAS if n in set(names)]


def _add_actions(table) -> pa.Table:
    """The data files of a DeltaTable's version: path, size_bytes, num_records, ..."""
    return pa.table(table.get_add_actions(flatten=True))


def _total(adds: pa.Table, column: str) -> int:
    """The sum of an add-actions column (``size_bytes``, ``num_records``); 0 for no file."""
    return int(pc.sum(adds[column]).as_py() or 0)


def _listing(lake: Lake, *parts: str, recursive: bool = False) -> list[pafs.FileInfo]:
    """The files (and folders) under a place of the lake; empty where it is missing."""
    where = lake.path(*parts)
    if lake.fs.get_file_info(where).type != pafs.FileType.Directory:
        return []
    return lake.fs.get_file_info(pafs.FileSelector(where, recursive=recursive))


def _log_entries(lake: Lake, name: str) -> list[str]:
    """The commit files (``NNN.json``) of table ``name``'s log."""
    return [i.base_name for i in _listing(lake, name, LOG_DIR) if i.base_name.endswith(".json")]


def _refresh_catalog(lake: Lake) -> str | None:
    """Rebuild the DuckDB catalog of a local lake (its views list the current files); None for a
    lake on object storage, which has none."""
    if lake.local_root is None:
        return None
    from storage import catalog

    return str(catalog.refresh(lake))


# -- stats ----------------------------------------------------------------------------------------
def stats(lake: Lake) -> list[TableStats]:
    """Every table's latest version, data files, bytes, rows and log entries (from the log).

    Raises:
        LakeError: a table is in the old layout (``gbmmet lake migrate``).
    """
    out = []
    for name in SCHEMAS:
        table = lake.delta_latest(name)
        if table is None:
            out.append(TableStats(name, None, 0, 0, 0, len(_log_entries(lake, name))))
            continue
        adds = _add_actions(table)
        out.append(TableStats(name, table.version(), adds.num_rows, _total(adds, "size_bytes"),
                              _total(adds, "num_records"), len(_log_entries(lake, name))))
    return out


# -- compaction -----------------------------------------------------------------------------------
def compact(lake: Lake, names=None, target_size: int = COMPACT_TARGET_BYTES) -> dict[str, dict]:
    """Rewrite each table's small data files into files of about ``target_size`` bytes, one
    commit per table that changes (rows and their order within a partition unchanged); rebuild a
    local lake's catalog. Returns table -> files and bytes before and after, for every table of
    ``names`` that has a commit.

    The removed files stay on disk, for versions before the compaction, until ``vacuum``.
    """
    from deltalake import WriterProperties

    if target_size < 1:
        raise ConfigError(f"the compaction target must be a positive number of bytes; got {target_size}")
    out = {}
    for name in _names(names):
        table = lake.delta_latest(name)
        if table is None:
            continue
        before = _add_actions(table)

        def run(name=name):
            lake.delta_latest(name).optimize.compact(target_size=target_size, post_commithook_properties=commit_hooks(),
                                                     writer_properties=WriterProperties(compression="ZSTD"))

        lake.with_retries(name, run)
        after = _add_actions(lake.delta_latest(name))
        out[name] = {"files_before": before.num_rows, "files_after": after.num_rows,
                     "bytes_before": _total(before, "size_bytes"), "bytes_after": _total(after, "size_bytes")}
    if any(r["files_before"] != r["files_after"] for r in out.values()):
        _refresh_catalog(lake)
    return out


def compact_small(lake: Lake, names=None, max_files: int = SMALL_FILES,
                  target_size: int = COMPACT_TARGET_BYTES) -> dict[str, dict]:
    """``compact`` the tables (of ``names``) holding more than ``max_files`` data files smaller
    than half of ``target_size`` (files near the target gain nothing from a rewrite): what a job
    calls after its commits, so that a lake written patient by patient stays a few files a table."""
    due = []
    for name in _names(names):
        table = lake.delta_latest(name)
        if table is not None:
            sizes = _add_actions(table)["size_bytes"].to_pylist()
            if sum(1 for s in sizes if s < target_size // 2) > max_files:
                due.append(name)
    return compact(lake, due, target_size) if due else {}


def compact_small_on_cluster(lake: Lake, names=None, max_files: int = SMALL_FILES) -> dict[str, dict]:
    """``compact_small``, run in a Ray task where this process is a Ray driver (here otherwise):
    a compaction rewrites the tables' data (every slice image of a partition, in bins up to the
    target size, several at once), which would make the driver's memory grow with the cohort. The
    task takes no CPU: it is short, and waiting behind the job's own tasks would stall the job."""
    import ray

    if not ray.is_initialized():
        return compact_small(lake, names, max_files)
    task = ray.remote(num_cpus=0, max_retries=0)(_compact_small_task)
    return ray.get(task.remote(lake.uri, None if names is None else list(names), max_files))


def _compact_small_task(lake_uri: str, names, max_files: int) -> dict[str, dict]:
    return compact_small(Lake(lake_uri), names, max_files)


# -- vacuum ---------------------------------------------------------------------------------------
def vacuum(lake: Lake, retain_hours: int = DEFAULT_RETAIN_HOURS) -> dict[str, dict]:
    """Remove what no version younger than ``retain_hours`` needs; return place (table, or an
    old-layout backup folder) -> files and log entries removed. Rebuilds a local lake's catalog.

    Per table: delta-rs's vacuum deletes the data files that deletes, replaces and compaction
    removed longer ago than ``retain_hours``; then the data files no version references at all
    (staged by a job that was killed before its commit) and older than that go, found by
    delta-rs's full vacuum (dry run) but deleted only where they lie as data files do (a
    ``part-*.parquet`` file in the table's folder or its partition folders): the ``runs`` folder
    also holds Ray Train's checkpoints, which a full vacuum would delete. Then the log
    (``_expire_log``). Time travel to versions older than ``retain_hours`` ends here; with 0 only
    each table's latest version stays readable.
    """
    if retain_hours < 0:
        raise ConfigError(f"--retain-hours must be 0 or more; got {retain_hours}")
    cutoff = time.time() - retain_hours * 3600
    out = {}
    for name in SCHEMAS:
        if lake.delta_latest(name) is None:
            stray = [posixpath.relpath(i.path, lake.path(name)) for i in _listing(lake, name, recursive=True)
                     if i.type == pafs.FileType.File and i.mtime.timestamp() < cutoff]
            out[name] = {"files_removed": delete_data_files(lake, name, stray), "log_entries_removed": 0}
            continue

        def run(name=name, full=False):
            return lake.delta_latest(name).vacuum(retention_hours=retain_hours, dry_run=full, full=full,
                                                  enforce_retention_duration=False,
                                                  post_commithook_properties=commit_hooks())

        removed = len(lake.with_retries(name, run))
        removed += delete_data_files(lake, name, run(full=True))
        out[name] = {"files_removed": removed, "log_entries_removed": _expire_log(lake, name, retain_hours)}
    for backup, born in _backups(lake):
        if born < cutoff and not lake.exists(backup, MIGRATING):
            files = sum(1 for i in _listing(lake, backup, recursive=True) if i.type == pafs.FileType.File)
            lake.fs.delete_dir(lake.path(backup))
            out[backup] = {"files_removed": files, "log_entries_removed": 0}
    _refresh_catalog(lake)
    return out


def _is_data_file(name: str, rel: str) -> bool:
    """Whether ``rel`` (inside table ``name``'s folder) is where a Delta data file of the table
    lies: ``part-*.parquet`` at the top, or in its partition folders (``site=A/split=train/``)."""
    *folders, base = rel.split("/")
    parts = PARTITIONS.get(name, ())
    return (base.startswith("part-") and base.endswith(".parquet") and len(folders) == len(parts)
            and all(f.startswith(f"{c}=") for f, c in zip(folders, parts, strict=True)))


def delete_data_files(lake: Lake, name: str, rels: list[str]) -> int:
    """Delete those of ``rels`` (paths inside table ``name``'s folder) that are data files; return
    how many."""
    n = 0
    for rel in rels:
        if _is_data_file(name, rel):
            try:
                lake.fs.delete_file(lake.path(name, rel))
            except FileNotFoundError:  # a file the vacuum before had deleted
                continue
            n += 1
    return n


def _expire_log(lake: Lake, name: str, retain_hours: int) -> int:
    """Delete table ``name``'s log entries older than ``retain_hours`` (all but the latest two
    with 0); return how many went. Nothing is done where no entry is that old.

    delta-rs cleans the log up to a checkpoint by the table's ``delta.logRetentionDuration``, so
    the property is set to ``retain_hours``, a checkpoint made, the log cleaned, and the
    property set back to the lake's week (``TABLE_CONFIGURATION``): another Delta engine, which
    cleans by it at its own checkpoints, never cuts time travel shorter than that by itself.
    """
    cutoff = time.time() - retain_hours * 3600
    table = lake.delta_latest(name)
    infos = [i for i in _listing(lake, name, LOG_DIR) if i.base_name.endswith(".json")]
    if not any(int(i.base_name.split(".")[0]) < table.version() and i.mtime.timestamp() < cutoff for i in infos):
        return 0
    before = set(_log_entries(lake, name))

    def set_retention(value: str):
        lake.delta_latest(name).alter.set_table_properties({LOG_RETENTION: value}, post_commithook_properties=commit_hooks())

    lake.with_retries(name, lambda: set_retention(f"interval {retain_hours} hours"))
    table = lake.delta_latest(name)
    table.create_checkpoint()
    table.cleanup_metadata()
    lake.with_retries(name, lambda: set_retention(TABLE_CONFIGURATION[LOG_RETENTION]))
    return len(before - set(_log_entries(lake, name)))


def _backups(lake: Lake) -> list[tuple[str, float]]:
    """The old-layout backup folders at the lake's root and when ``migrate`` made them (epoch s)."""
    out = []
    for info in _listing(lake):
        if info.type == pafs.FileType.Directory and info.base_name.startswith(BACKUP_PREFIX):
            stamp = info.base_name.removeprefix(BACKUP_PREFIX)[: len("20260101T000000Z")]
            try:
                born = dt.datetime.strptime(stamp, BACKUP_TIME).replace(tzinfo=dt.UTC).timestamp()
            except ValueError:
                born = info.mtime.timestamp()
            out.append((info.base_name, born))
    return sorted(out)


# -- erasure of a patient -------------------------------------------------------------------------
def forget(lake: Lake, site: str, raw_patient_id: str) -> ForgetReport:
    """Delete every row of the patient ``raw_patient_id`` of ``site`` (as the manifest names
    them) from every table with a patient column: one commit per table that holds it. The raw id
    is only hashed (``gbmmet.pseudonym``, with the lake's key), never written anywhere.

    The rows stay readable in older versions until ``vacuum`` (``retain_hours`` 0 at once).

    Raises:
        ConfigError: an empty site or id.
        LakeError: the lake holds no patient, lost its key, or no table holds this patient (a
            wrong site or id: nothing was removed).
    """
    if not site.strip() or not raw_patient_id.strip():
        raise ConfigError("forget needs the patient's site and raw id, as the site's manifest gives them")
    if not lake.exists(SECRET_DIR, SECRET_FILE) and not any(lake.files(n) for n in KEYED_TABLES):
        raise LakeError(f"the lake {lake.uri} holds no patient (and has no pseudonym key): nothing to forget")
    pid = pseudonymise(lake.secret(), site, raw_patient_id)
    removed = {name: lake.delete(name, {C.COL_PATIENT_ID: pid})
               for name in SCHEMAS if C.COL_PATIENT_ID in SCHEMAS[name].names}
    if not any(removed.values()):
        raise LakeError(f"no table of the lake {lake.uri} holds this patient of site {site!r} (the raw id, "
                        f"pseudonymised with this lake's key, is {pid}): check the site and the id as the "
                        f"site's manifest gives them; nothing was removed")
    backups = tuple(b for b, _ in _backups(lake))
    return ForgetReport(site, pid, removed, _refresh_catalog(lake), backups)


# -- migration of an old-layout lake --------------------------------------------------------------
def _old_files(lake: Lake, *parts: str) -> list[pafs.FileInfo]:
    """The Parquet files of the old layout in a table's folder (``parts``: its name, or a backup
    folder and its name): every ``*.parquet`` under it but Delta data files (``part-*``) and
    hidden ones (a name part starting with ``.`` or ``_``)."""
    root = lake.path(*parts)
    out = []
    for info in _listing(lake, *parts, recursive=True):
        rel = posixpath.relpath(info.path, root).split("/")
        if (info.type == pafs.FileType.File and info.base_name.endswith(".parquet")
                and not info.base_name.startswith("part-") and not any(p.startswith((".", "_")) for p in rel)):
            out.append(info)
    return sorted(out, key=lambda i: i.path)


def _pending_backup(lake: Lake) -> str | None:
    """The backup folder of a migration that did not finish (it holds ``MIGRATING``), if any."""
    return next((b for b, _ in _backups(lake) if lake.exists(b, MIGRATING)), None)


def migrate(lake: Lake, batch_bytes: int = COMPACT_TARGET_BYTES) -> Migration:
    """Convert a lake of the old layout into Delta tables, table by table: the old files' rows
    (cast to ``storage.schemas``, columns they lack null) are staged as data files, the old files
    moved into ``<lake>/.migrated-<UTC time>/<table>/``, and the staged files committed: one commit
    per table. Rebuilds a local lake's catalog. A Delta lake has nothing to do.

    The backup folder holds ``MIGRATING`` until every table is done; a migration interrupted
    (killed, or stopped by a bad file) resumes from it: a table with a commit is done, one without
    is converted from its files, wherever they are (its folder or the backup).

    Raises:
        LakeError: the lake is partly Delta tables and partly old files, or an old file cannot be
            converted (named; nothing of its table was committed or moved).
    """
    lake = lake.migrating()
    old = {name: files for name in SCHEMAS if (files := _old_files(lake, name))}
    pending = _pending_backup(lake)
    if not old and pending is None:
        return Migration({}, None, False)
    delta = [name for name in SCHEMAS if lake.exists(name, LOG_DIR)]
    if (pending is None and delta) or set(delta) & set(old):
        raise LakeError(f"the lake {lake.uri} is partly Delta tables ({', '.join(delta)}) and partly old-layout "
                        f"Parquet files ({', '.join(old)}): a newer gbmmet wrote into this lake before it was "
                        f"migrated. Move the Delta tables' folders out of the lake (keep them), run `gbmmet lake "
                        f"migrate --lake {lake.uri}`, then run again the jobs that wrote them")
    backup = pending or _new_backup(lake)
    tables = {}
    for name in SCHEMAS:
        moved = [] if name in delta else _old_files(lake, backup, name)
        here = old.get(name, [])
        if not here and not moved:
            continue
        staged = _stage_old(lake, name, [(f, lake.path(name)) for f in here]
                            + [(f, lake.path(backup, name)) for f in moved], batch_bytes)
        _move(lake, here, lake.path(name), lake.path(backup, name))
        if staged:
            lake.commit(name, staged)
        tables[name] = {"old_files": len(here) + len(moved), "rows": sum(s.rows for s in staged)}
    lake.fs.delete_file(lake.path(backup, MIGRATING))
    _refresh_catalog(lake)
    return Migration(tables, backup, pending is not None)


def _new_backup(lake: Lake) -> str:
    """Create the backup folder of a new migration, marked unfinished; return its name."""
    name = BACKUP_PREFIX + time.strftime(BACKUP_TIME, time.gmtime())
    while lake.exists(name):
        name += "-"
    lake.fs.create_dir(lake.path(name), recursive=True)
    with lake.fs.open_output_stream(lake.path(name, MIGRATING)) as fh:
        fh.write(b"a `gbmmet lake migrate` of this lake is unfinished: run it again to resume\n")
    return name


def _move(lake: Lake, files: list[pafs.FileInfo], root: str, dest: str) -> None:
    """Move ``files`` from under ``root`` to the same relative paths under ``dest``."""
    for info in files:
        target = posixpath.join(dest, posixpath.relpath(info.path, root))
        lake.fs.create_dir(posixpath.dirname(target), recursive=True)
        lake.fs.move(info.path, target)


def _stage_old(lake: Lake, name: str, files: list[tuple[pafs.FileInfo, str]], batch_bytes: int) -> list:
    """Stage the rows of table ``name``'s old ``files`` (each with the folder its hive path starts
    from) as data files of the table, a batch of about ``batch_bytes`` per partition at a time
    (memory bounded by a batch); return the ``Staged`` files, for one commit."""
    groups: dict[tuple, list[pafs.FileInfo]] = {}
    for info, root in files:
        groups.setdefault(_partition_values(name, posixpath.relpath(info.path, root), info.path), []).append(info)
    staged = []
    for values, group in groups.items():
        partition = dict(zip(PARTITIONS.get(name, ()), values, strict=True)) or None
        batch, size = [], 0
        for i, info in enumerate(group):
            batch.append(_old_table(lake, name, info.path))
            size += info.size or 0
            if size >= batch_bytes or i == len(group) - 1:
                data = pa.concat_tables(batch)
                if data.num_rows:
                    staged.append(lake.stage(name, data, partition))
                batch, size = [], 0
    return staged


def _partition_values(name: str, rel: str, path: str) -> tuple[str, ...]:
    """The partition values of an old file from its hive folders (``site=A/split=train/x``)."""
    parts = PARTITIONS.get(name, ())
    folders = dict(seg.split("=", 1) for seg in rel.split("/")[:-1] if "=" in seg)
    missing = [c for c in parts if c not in folders]
    if missing:
        raise LakeError(f"the old file {path} of table {name} is not inside its "
                        f"{'/'.join(f'{c}=...' for c in parts)} folders (missing {', '.join(missing)}): move it "
                        f"into them, or out of the lake, and run `gbmmet lake migrate` again")
    return tuple(unquote(folders[c]) for c in parts)


def _old_table(lake: Lake, name: str, path: str) -> pa.Table:
    """One old file's rows with table ``name``'s schema (without partition columns, which come
    from its folders): columns it lacks are null, others dropped.

    Raises:
        LakeError: the file is unreadable, or lacks a column that may not be null, or holds one
            that does not convert.
    """
    schema = SCHEMAS[name]
    try:
        data = pq.read_table(path, filesystem=lake.fs)
        missing = [f.name for f in schema if f.name not in data.column_names and not f.nullable]
        if missing:
            raise ValueError(f"it lacks the column(s) {', '.join(missing)}, which may not be null")
        columns = [data.column(f.name).cast(f.type) if f.name in data.column_names else pa.nulls(data.num_rows, f.type)
                   for f in schema]
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise LakeError(f"cannot convert the old file {path} of table {name} ({exc}); nothing of {name} was "
                        f"committed: repair or remove the file, then run `gbmmet lake migrate` again") from None
    return pa.Table.from_arrays(columns, schema=schema)
