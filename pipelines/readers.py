"""``gbmmet readers import``: radiologists' reads into the lake's ``reads`` table.

The CSV has ``reader_id, patient_id, assisted, call[, confidence]``, with the site's own patient
ids; they are pseudonymised with the lake's key (the site is found by matching the lake's
patients). Every row is checked first and every problem listed at once (row number, column,
value); with any problem nothing is written. Importing the same file again replaces its rows.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

from gbmmet import constants as C
from gbmmet.errors import ConfigError, GbmmetError

_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


class ReadsError(GbmmetError, ValueError):
    """The reads file is unusable; the message lists every offending row. Nothing was written."""


@dataclass
class ReadsSummary:
    rows: int
    readers: list[str]
    file: str


def import_reads(path: str | Path, lake_root: str) -> ReadsSummary:
    import pyarrow as pa

    from gbmmet.pseudonym import pseudonymise
    from storage import catalog
    from storage.lake import Lake

    path = Path(path)
    if not path.is_file():
        raise ReadsError(f"reads file not found: {path}")
    lake = Lake(lake_root)
    patients = lake.read(C.TABLE_PATIENTS, columns=[C.COL_PATIENT_ID, C.COL_SITE])
    if patients.num_rows == 0:
        raise ReadsError(f"the lake at {lake.uri} has no patients: run `gbmmet preprocess` first")
    known = set(patients.column(C.COL_PATIENT_ID).to_pylist())
    sites = sorted(set(patients.column(C.COL_SITE).to_pylist()))
    key = lake.secret()

    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        need = [c for c in C.READS_COLUMNS if c != C.COL_CONFIDENCE]
        missing = [c for c in need if c not in header]
        if missing:
            raise ReadsError(f"{path}: missing column(s) {missing}; expected {list(C.READS_COLUMNS)} "
                             f"(confidence optional); found {header}")
        rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in reader]

    problems, out, seen = [], [], {}
    for line, r in enumerate(rows, start=2):
        where = f"{path.name} line {line}"
        reader_id = r[C.COL_READER_ID]
        if not reader_id:
            problems.append(f"{where}: empty reader_id")
        raw = r[C.COL_PATIENT_ID]
        matches = [p for p in (pseudonymise(key, s, raw) for s in sites) if p in known] if raw else []
        if not raw:
            problems.append(f"{where}: empty patient_id")
        elif not matches:
            problems.append(f"{where}: unknown patient {raw!r} (not in the lake)")
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
                problems.append(f"{where}: confidence must be an integer from 1 to 5, got {conf!r}")
        if len(matches) == 1 and reader_id and flag in _TRUE | _FALSE:
            k = (reader_id, matches[0], flag in _TRUE)
            if k in seen:
                problems.append(f"{where}: duplicate read of patient {raw!r} by {reader_id} "
                                f"(assisted={flag in _TRUE}), first on line {seen[k]}")
            seen[k] = line
            out.append({C.COL_READER_ID: reader_id, C.COL_PATIENT_ID: matches[0], C.COL_ASSISTED: flag in _TRUE,
                        C.COL_CALL: call, C.COL_CONFIDENCE: confidence,
                        C.COL_READ_SOURCE: C.READ_SOURCE_IMPORT + path.name})
    if not rows:
        problems.append(f"{path}: no reads")
    if problems:
        raise ReadsError(f"{len(problems)} problem(s) in {path}; nothing was imported:\n  " + "\n  ".join(problems))
    filename = f"reads-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}.parquet"
    lake.write(C.TABLE_READS, pa.Table.from_pylist(out), filename)
    if lake.local_root is not None:
        catalog.refresh(lake)
    return ReadsSummary(len(out), sorted({r[C.COL_READER_ID] for r in out}), filename)


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
                          f"at {lake.uri} (cutoff kinds: {list(C.CUTOFF_KINDS)}); run `gbmmet predict` first")
    patients = lake.read(C.TABLE_PATIENTS, columns=[C.COL_PATIENT_ID, C.COL_SITE])
    sites = dict(zip(patients.column(C.COL_PATIENT_ID).to_pylist(), patients.column(C.COL_SITE).to_pylist(),
                     strict=True))
    unassisted = lake.read(C.TABLE_READS, columns=[C.COL_READER_ID, C.COL_PATIENT_ID, C.COL_CALL, C.COL_CONFIDENCE],
                           filter=~pc.field(C.COL_ASSISTED))
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
