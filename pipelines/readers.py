"""``gbmmet readers import``: radiologists' reads into the lake's ``reads`` table.

The CSV (UTF-8) has ``reader_id, patient_id, assisted, call[, confidence]`` and no other column,
with the site's own patient ids; they are pseudonymised with the lake's key (the site is found by
matching the lake's patients). Every row is checked first and every problem listed at once (line,
column, value, what to do); with any problem nothing is written.

Each file's reads carry its source (``import:<file name>@<digest of its full path>``): importing
the same file again replaces its rows, and two sites' ``reads.csv`` stay apart. A read (reader,
patient, assisted flag) already in the lake from another file is a conflict when its call or
confidence differs, or when it was simulated: the import is refused, listing them, unless
``replace`` is asked for, which removes the older reads. An identical read already imported from
another file is not stored twice: it is skipped (and listed in the summary), or with ``replace``
moved to this file. Every import is one commit of the ``reads`` table.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from gbmmet import constants as C
from gbmmet.errors import ConfigError, GbmmetError

_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


class ReadsError(GbmmetError, ValueError):
    """The reads file is unusable; the message lists every offending row. Nothing was written."""


def import_source(path: Path) -> str:
    """The ``source`` of the reads imported from file ``path``: its name and a digest of its full
    path, ``import:reads.csv@3f2a9c1b7d4e`` (what a lake file's name held before the lake was a
    Delta lake): importing the same file again replaces exactly its reads."""
    digest = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:12]
    return f"{C.READ_SOURCE_IMPORT}{Path(path).name}@{digest}"


def source_name(source: str | None) -> str:
    """The file name of an import's ``source`` (``import:reads.csv@3f2a...`` -> ``reads.csv``)."""
    name = (source or "").removeprefix(C.READ_SOURCE_IMPORT)
    head, at, digest = name.rpartition("@")
    return head if at and len(digest) == 12 else name


@dataclass(frozen=True)
class ReadClash:
    """A read of the imported file (``file`` line ``line``) that the lake already holds from
    another source: ``old_*`` are the lake's (``old_source``: another import, or a simulation),
    ``new_*`` this file's. ``patient`` is the patient id as the file gives it, never the pseudonym."""

    file: str
    line: int
    reader_id: str
    patient: str
    assisted: bool
    old_call: str
    old_confidence: int | None
    old_source: str | None
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
            return f"the assisted reads simulated for run {src.removeprefix(C.READ_SOURCE_SIMULATED)!r}"
        if src.startswith(C.READ_SOURCE_IMPORT):
            return f"the import of {source_name(src)!r}"
        return "an earlier import"

    def __str__(self) -> str:
        def call(c, conf):
            return c + (f" (confidence {conf})" if conf is not None else "")

        kind = "assisted" if self.assisted else "unassisted"
        return (f"{self.file} line {self.line}: reader {self.reader_id}, patient {self.patient!r}, {kind}: "
                f"{call(self.new_call, self.new_confidence)} here, {call(self.old_call, self.old_confidence)} "
                f"in {self.origin()}")


@dataclass
class ReadsSummary:
    """What an import or simulation wrote: ``rows`` reads by ``readers``, all of source ``source``
    (``import:<file>@<digest>`` or ``simulated:<run>``); for an import, the older reads it
    ``replaced`` and the identical reads it ``skipped``."""

    rows: int
    readers: list[str]
    source: str
    replaced: list[ReadClash] = field(default_factory=list)
    skipped: list[ReadClash] = field(default_factory=list)


def _key(read: dict) -> tuple:
    return read[C.COL_READER_ID], read[C.COL_PATIENT_ID], read[C.COL_ASSISTED]


def _older_reads(reads: list[dict], source: str) -> dict[tuple, list[dict]]:
    """The lake's ``reads`` by (reader, patient, assisted), those of ``source`` left out."""
    out: dict[tuple, list[dict]] = {}
    for r in reads:
        if r[C.COL_READ_SOURCE] != source:
            out.setdefault(_key(r), []).append(r)
    return out


def _store(lake, reads: list[dict], source: str, rows: list[dict], drop: set[tuple]) -> None:
    """One commit of the ``reads`` table: ``rows`` become the reads of ``source`` (its earlier
    ones go), and the reads of other sources with a key (reader, patient, assisted) in ``drop``
    go. ``reads``: the table's rows now. The commit replaces the rows of every reader, patient and
    assisted flag among those that go; the others among them are written again. No commit where
    nothing goes and nothing comes."""
    import pyarrow as pa

    from storage.schemas import READS

    gone = [r for r in reads if r[C.COL_READ_SOURCE] == source or _key(r) in drop]
    if not gone:
        if rows:
            lake.append(C.TABLE_READS, pa.Table.from_pylist(rows, schema=READS))
        return
    keys = {_key(r) for r in gone}
    where = {col: sorted({k[i] for k in keys}) for i, col in enumerate((C.COL_READER_ID, C.COL_PATIENT_ID,
                                                                          C.COL_ASSISTED))}
    inside = [r for r in reads if all(r[col] in values for col, values in where.items())]
    kept = [r for r in inside if not (r[C.COL_READ_SOURCE] == source or _key(r) in drop)]
    lake.replace(C.TABLE_READS, pa.Table.from_pylist(kept + rows, schema=READS), where)


def import_reads(path: str | Path, lake_root: str, *, replace: bool = False) -> ReadsSummary:
    """Check the reads file ``path`` and store it in the lake at ``lake_root``.

    With ``replace``, reads this file gives that the lake holds from other files (imported or
    simulated) are removed there: this file's read is the one kept. Returns the rows written, the
    readers, the source, the reads replaced and the identical reads skipped.

    Raises:
        ReadsError: listing every problem (file, line, what to do): not UTF-8, a row with more or
            fewer fields than the header, missing or unknown columns, bad values, unknown
            patients, duplicates within the file, and reads conflicting with the lake's (without
            ``replace``). Nothing was written.
    """
    from gbmmet.manifest import read_csv
    from gbmmet.pseudonym import pseudonymise
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
    source = import_source(path)

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
                C.COL_CALL: call, C.COL_CONFIDENCE: confidence, C.COL_READ_SOURCE: source}))

    # This file's earlier reads (same source) are replaced; other sources' reads may clash.
    reads = lake.read(C.TABLE_READS).to_pylist() if parsed else []
    older = _older_reads(reads, source)
    conflicts, identical = [], []
    for line, raw, row in parsed:
        for old in older.get(_key(row), []):
            clash = ReadClash(path.name, line, row[C.COL_READER_ID], raw, row[C.COL_ASSISTED], old[C.COL_CALL],
                              old[C.COL_CONFIDENCE], old[C.COL_READ_SOURCE], row[C.COL_CALL], row[C.COL_CONFIDENCE])
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
    # one commit: this file's reads in, its earlier ones and the replaced older ones out
    _store(lake, reads, source, out, {(c.reader_id, pseudonym[c.line], c.assisted) for c in replaced})
    _after_commits(lake)
    return ReadsSummary(len(out), sorted({r[C.COL_READER_ID] for r in out}), source, replaced, skipped)


def _after_commits(lake) -> None:
    """A local lake's catalog rebuilt, then the reads table compacted where small commits piled up."""
    from storage import catalog, maintenance

    if lake.local_root is not None:
        catalog.refresh(lake)
    maintenance.compact_small(lake, [C.TABLE_READS])


def simulate_assisted(lake_root: str, run: str, *, cutoff_kind: str, seed: int = 0) -> ReadsSummary:
    """Simulated assisted reads of a synthetic cohort, from run ``run``'s model calls.

    Reads the lake's unassisted reads, the patients' sites and the run's patient calls at
    ``cutoff_kind``; makes each reader's assisted read with
    ``gbmmet.synth.readers.simulate_assisted_reads`` (readers follow the actual model, so a poor
    model makes them worse); writes them to the reads table with source ``simulated:<run>``,
    replacing that run's earlier simulation in the same commit, and refreshes a local lake's
    catalog. Returns the rows written, the readers and the source.

    Raises ``ConfigError`` if the run has no patient predictions at ``cutoff_kind`` or none of its
    patients has an unassisted read; ``ValueError`` for a reader without a simulated profile at a patient's site.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from gbmmet.synth.readers import simulate_assisted_reads
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
    source = C.READ_SOURCE_SIMULATED + run
    lake.replace(C.TABLE_READS, table, {C.COL_READ_SOURCE: source})
    _after_commits(lake)
    return ReadsSummary(len(rows), sorted({r[C.COL_READER_ID] for r in rows}), source)
