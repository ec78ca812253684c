"""``gbmmet readers import``: radiologists' reads into the lake's ``reads`` table.

The CSV (UTF-8) has ``reader_id, patient_id, assisted, call[, confidence]`` and no other column,
with the site's own patient ids; they are pseudonymised with the lake's key (the site is found by
matching the lake's patients). Every row is checked first and every problem listed at once (line,
column, value, what to do); with any problem nothing is written.

Each file is kept in the lake as one file of its own: importing the same file again replaces its
rows. A read (reader, patient, assisted flag) already in the lake from another file is a
conflict when its call or confidence differs, or when it was simulated: the import is refused,
listing them, unless ``replace`` is asked for, which removes the older reads. An identical read
already imported from another file is not stored twice: it is skipped (and listed in the
summary), or with ``replace`` moved to this file.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from gbmmet import constants as C
from gbmmet.errors import ConfigError, GbmmetError

_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


class ReadsError(GbmmetError, ValueError):
    """The reads file is unusable; the message lists every offending row. Nothing was written."""


@dataclass(frozen=True)
class ReadClash:
    """A read of the imported file (``file`` line ``line``) that the lake already holds from
    another file: ``old_*`` are the lake's (its source and lake file), ``new_*`` this file's.
    ``patient`` is the patient id as the file gives it, never the pseudonym."""

    file: str
    line: int
    reader_id: str
    patient: str
    assisted: bool
    old_call: str
    old_confidence: int | None
    old_source: str | None
    old_file: str
    new_call: str
    new_confidence: int | None

    @property
    def simulated(self) -> bool:
        return (self.old_source or "").startswith(C.READ_SOURCE_SIMULATED)

    @property
    def identical(self) -> bool:
        return (self.old_call, self.old_confidence) == (self.new_call, self.new_confidence)

    def origin(self) -> str:
        src = self.old_source or ""
        if src.startswith(C.READ_SOURCE_SIMULATED):
            what = f"the assisted reads simulated for run {src.removeprefix(C.READ_SOURCE_SIMULATED)!r}"
        elif src.startswith(C.READ_SOURCE_IMPORT):
            what = f"the import of {src.removeprefix(C.READ_SOURCE_IMPORT)!r}"
        else:
            what = "an earlier import"
        return f"{what} (lake file {self.old_file})"

    def __str__(self) -> str:
        def call(c, conf):
            return c + (f" (confidence {conf})" if conf is not None else "")

        kind = "assisted" if self.assisted else "unassisted"
        return (f"{self.file} line {self.line}: reader {self.reader_id}, patient {self.patient!r}, {kind}: "
                f"{call(self.new_call, self.new_confidence)} here, {call(self.old_call, self.old_confidence)} "
                f"in {self.origin()}")


@dataclass
class ReadsSummary:
    """What an import or simulation wrote: ``rows`` reads by ``readers`` into lake file ``file``;
    for an import, the older reads it ``replaced`` and the identical reads it ``skipped``."""

    rows: int
    readers: list[str]
    file: str
    replaced: list[ReadClash] = field(default_factory=list)
    skipped: list[ReadClash] = field(default_factory=list)


def _lake_reads(lake, but: str) -> dict[tuple, list[tuple[str, dict]]]:
    """The lake's reads by (reader, patient, assisted), with their lake file; ``but`` left out."""
    import pyarrow.parquet as pq

    out: dict[tuple, list[tuple[str, dict]]] = {}
    for path in lake.files(C.TABLE_READS):
        name = posixpath.basename(path)
        if name == but:
            continue
        for r in pq.read_table(path, filesystem=lake.fs).to_pylist():
            k = (r[C.COL_READER_ID], r[C.COL_PATIENT_ID], r[C.COL_ASSISTED])
            out.setdefault(k, []).append((name, r))
    return out


def _drop_from(lake, name: str, keys: set[tuple]) -> None:
    """Rewrite lake file ``name`` of the reads table without the reads of ``keys`` (atomically),
    or delete it when none is left."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(posixpath.join(lake.table_dir(C.TABLE_READS), name), filesystem=lake.fs)
    if C.COL_READ_SOURCE not in table.column_names:  # older lakes: imported
        table = table.append_column(C.COL_READ_SOURCE, pa.nulls(table.num_rows, pa.string()))
    keep = [(r[C.COL_READER_ID], r[C.COL_PATIENT_ID], r[C.COL_ASSISTED]) not in keys for r in
            table.select([C.COL_READER_ID, C.COL_PATIENT_ID, C.COL_ASSISTED]).to_pylist()]
    if any(keep):
        lake.write(C.TABLE_READS, table.filter(pa.array(keep)), name)
    else:
        lake.delete(C.TABLE_READS, name)


def import_reads(path: str | Path, lake_root: str, *, replace: bool = False) -> ReadsSummary:
    """Check the reads file ``path`` and store it in the lake at ``lake_root``.

    With ``replace``, reads this file gives that the lake holds from other files (imported or
    simulated) are removed there: this file's read is the one kept. Returns the rows written, the
    readers, the lake file, the reads replaced and the identical reads skipped.

    Raises:
        ReadsError: listing every problem (file, line, what to do): not UTF-8, a row with more or
            fewer fields than the header, missing or unknown columns, bad values, unknown
            patients, duplicates within the file, and reads conflicting with the lake's (without
            ``replace``). Nothing was written.
    """
    import pyarrow as pa

    from gbmmet.manifest import read_csv
    from gbmmet.pseudonym import pseudonymise
    from storage import catalog
    from storage.lake import Lake

    path = Path(path)
    if not path.is_file():
        raise ReadsError(f"reads file not found: {path}; check the path")
    lake = Lake(lake_root)
    patients = lake.read(C.TABLE_PATIENTS, columns=[C.COL_PATIENT_ID, C.COL_SITE])
    if patients.num_rows == 0:
        raise ReadsError(f"the lake at {lake.uri} has no patients: run `gbmmet preprocess` first")
    known = set(patients.column(C.COL_PATIENT_ID).to_pylist())
    sites = sorted(set(patients.column(C.COL_SITE).to_pylist()))

    def fail(problems: list[str]):
        raise ReadsError(f"{len(problems)} problem(s) in {path}; nothing was imported:\n  " + "\n  ".join(problems))

    table = read_csv(path, C.READS_COLUMNS, "read")
    problems = list(table.problems)
    if table.header:
        expected = f"expected {list(C.READS_COLUMNS)} (confidence optional)"
        missing = [c for c in C.READS_COLUMNS if c != C.COL_CONFIDENCE and c not in table.header]
        if missing:
            problems.append(f"{path} line {table.header_line}: missing column(s) {missing}; {expected}; found "
                            f"{[h for h in table.header if h]}")
        unknown = [h for h in table.header if h and h not in C.READS_COLUMNS]
        if unknown:  # a misspelt "confidence" would otherwise be dropped unseen
            problems.append(f"{path} line {table.header_line}: unknown column(s) {unknown}; {expected}: rename or "
                            "remove them")
        if missing or unknown:
            fail(problems)
    if table.header and not table.rows and not problems:
        problems.append(f"{path}: no reads (only a header); add one row per read")
    key = lake.secret()

    parsed, seen = [], {}  # (line, the file's patient id, row)
    for line, r in table.rows:
        where = f"{path.name} line {line}"
        reader_id = r[C.COL_READER_ID]
        if not reader_id:
            problems.append(f"{where}: empty reader_id")
        raw = r[C.COL_PATIENT_ID]
        matches = [p for p in (pseudonymise(key, s, raw) for s in sites) if p in known] if raw else []
        if not raw:
            problems.append(f"{where}: empty patient_id")
        elif not matches:
            problems.append(f"{where}: unknown patient {raw!r} (not in the lake): check the id, or preprocess "
                            "the patient's manifest first")
        elif len(matches) > 1:
            problems.append(f"{where}: patient {raw!r} exists at several sites")
        flag = r[C.COL_ASSISTED].lower()
        if flag not in _TRUE | _FALSE:
            problems.append(f"{where}: assisted must be true or false, got {r[C.COL_ASSISTED]!r}")
        call = r[C.COL_CALL].upper()
        if call not in (C.GBM, C.MET):
            problems.append(f"{where}: call must be {C.GBM} or {C.MET}, got {r[C.COL_CALL]!r}")
        conf = r.get(C.COL_CONFIDENCE, "")
        confidence = None
        if conf:
            try:
                confidence = int(conf)
                if not 1 <= confidence <= 5:
                    raise ValueError
            except ValueError:
                problems.append(f"{where}: confidence must be an integer from 1 to 5 (or empty), got {conf!r}")
        if len(matches) == 1 and reader_id and flag in _TRUE | _FALSE:
            k = (reader_id, matches[0], flag in _TRUE)
            if k in seen:
                problems.append(f"{where}: duplicate read of patient {raw!r} by {reader_id} "
                                f"(assisted={flag in _TRUE}), first on line {seen[k]}; keep one of them")
            seen[k] = line
            parsed.append((line, raw, {
                C.COL_READER_ID: reader_id, C.COL_PATIENT_ID: matches[0], C.COL_ASSISTED: flag in _TRUE,
                C.COL_CALL: call, C.COL_CONFIDENCE: confidence, C.COL_READ_SOURCE: C.READ_SOURCE_IMPORT + path.name}))

    # The file's own lake file (named by its path) is replaced; other files' reads may clash.
    filename = f"reads-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}.parquet"
    older = _lake_reads(lake, filename) if parsed else {}
    conflicts, identical = [], []
    for line, raw, row in parsed:
        k = (row[C.COL_READER_ID], row[C.COL_PATIENT_ID], row[C.COL_ASSISTED])
        for name, old in older.get(k, []):
            clash = ReadClash(path.name, line, row[C.COL_READER_ID], raw, row[C.COL_ASSISTED], old[C.COL_CALL],
                              old[C.COL_CONFIDENCE], old.get(C.COL_READ_SOURCE), name, row[C.COL_CALL],
                              row[C.COL_CONFIDENCE])
            # an imported read never stands beside a simulated one, even an equal one
            (identical if clash.identical and not clash.simulated else conflicts).append(clash)
    if conflicts and not replace:
        problems.extend(f"{c}; import with --replace (replace=True) to keep this file's read and remove the "
                        "older one" for c in conflicts)
    if problems:
        fail(problems)

    replaced, skipped = (conflicts + identical, []) if replace else ([], identical)
    pseudonym = {line: row[C.COL_PATIENT_ID] for line, _, row in parsed}
    gone = {c.line for c in skipped}
    out = [row for line, _, row in parsed if line not in gone]
    # This file first, then the older files: an interruption leaves a clash, never a lost read.
    if out:
        lake.write(C.TABLE_READS, pa.Table.from_pylist(out), filename)
    else:
        lake.delete(C.TABLE_READS, filename)
    by_file: dict[str, set[tuple]] = {}
    for c in replaced:
        by_file.setdefault(c.old_file, set()).add((c.reader_id, pseudonym[c.line], c.assisted))
    for name, keys in sorted(by_file.items()):
        _drop_from(lake, name, keys)
    if lake.local_root is not None:
        catalog.refresh(lake)
    return ReadsSummary(len(out), sorted({r[C.COL_READER_ID] for r in out}), filename, replaced, skipped)


def simulate_assisted(lake_root: str, run: str, *, cutoff_kind: str, seed: int = 0) -> ReadsSummary:
    """Simulated assisted reads of a synthetic cohort, from run ``run``'s model calls.

    Reads the lake's unassisted reads, the patients' sites and the run's patient calls at
    ``cutoff_kind``; makes each reader's assisted read with
    ``gbmmet.synth.readers.simulate_assisted_reads`` (readers follow the actual model, so a poor
    model makes them worse); writes them to the reads table as ``reads-simulated-<run>.parquet``
    with source ``simulated:<run>``, replacing that run's earlier simulation, and refreshes a
    local lake's catalog. Returns the rows written, the readers and the file name.

    Raises ``ConfigError`` if the run has no patient predictions at ``cutoff_kind`` or none of its
    patients has an unassisted read; ``ValueError`` for a reader without a simulated profile at a patient's site.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from gbmmet.synth.readers import simulate_assisted_reads
    from storage import catalog
    from storage.lake import Lake

    lake = Lake(lake_root)
    preds = lake.read(C.TABLE_PATIENT_PREDICTIONS, columns=[C.COL_PATIENT_ID, C.COL_CALL],
                      filter=(pc.field("run_id") == run) & (pc.field("cutoff_kind") == cutoff_kind))
    model_calls = {p: c for p, c in zip(preds.column(C.COL_PATIENT_ID).to_pylist(),
                                        preds.column(C.COL_CALL).to_pylist(), strict=True) if c is not None}
    if not model_calls:
        raise ConfigError(f"run {run!r} has no patient predictions with cutoff_kind {cutoff_kind!r} in the lake "
                          f"at {lake.uri} (cutoff kinds: {list(C.CUTOFF_KINDS)}); run `gbmmet evaluate` first")
    patients = lake.read(C.TABLE_PATIENTS, columns=[C.COL_PATIENT_ID, C.COL_SITE])
    sites = dict(zip(patients.column(C.COL_PATIENT_ID).to_pylist(), patients.column(C.COL_SITE).to_pylist(),
                     strict=True))
    unassisted = lake.read(C.TABLE_READS, columns=[C.COL_READER_ID, C.COL_PATIENT_ID, C.COL_CALL, C.COL_CONFIDENCE],
                           filter=~pc.field(C.COL_ASSISTED))
    imported = lake.read(C.TABLE_READS, columns=[C.COL_READER_ID, C.COL_PATIENT_ID, C.COL_READ_SOURCE],
                         filter=pc.field(C.COL_ASSISTED)).to_pylist()
    clash = sorted({(r[C.COL_READER_ID], r[C.COL_READ_SOURCE] or "import") for r in imported
                    if not (r[C.COL_READ_SOURCE] or "").startswith(C.READ_SOURCE_SIMULATED)
                    and r[C.COL_PATIENT_ID] in model_calls})
    if clash:
        raise ConfigError(f"the lake at {lake.uri} already holds imported assisted reads of run {run!r}'s patients "
                          f"({', '.join(f'{r} from {src}' for r, src in clash[:5])}): simulated assisted reads would "
                          "mix with real ones; simulate only for synthetic cohorts without assisted reads")
    rows = simulate_assisted_reads(unassisted.to_pylist(), model_calls, sites, seed)
    if not rows:
        raise ConfigError(f"no unassisted reads of run {run!r}'s patients in the lake at {lake.uri}: "
                          "import the cohort's reads first (`gbmmet readers import`)")
    table = pa.Table.from_pylist(rows).append_column(
        C.COL_READ_SOURCE, pa.array([C.READ_SOURCE_SIMULATED + run] * len(rows), pa.string()))
    filename = f"reads-simulated-{run}.parquet"
    lake.write(C.TABLE_READS, table, filename)
    if lake.local_root is not None:
        catalog.refresh(lake)
    return ReadsSummary(len(rows), sorted({r[C.COL_READER_ID] for r in rows}), filename)
