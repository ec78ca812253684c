"""Site manifests: one row per patient, checked before any work starts.

Required columns: patient_id, site, split, label, t1c_path, t2_path, roi_path. Optional: age,
sex, location, primary_tumor; other named columns are ignored. Paths are absolute or relative to
the manifest's folder; an image path may name a NIfTI file or a folder holding one DICOM series;
roi_path a mask image or a CSV of per-slice boxes (``gbmmet.io.BOX_COLUMNS``).

The file must be UTF-8 (a byte-order mark is accepted), with as many fields in every row as in
the header. Every problem of every row of every manifest is collected and raised together as one
``ManifestError``, so a site fixes its manifest in one pass.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gbmmet import constants as C
from gbmmet.errors import ManifestError

REQUIRED = (C.COL_PATIENT_ID, C.COL_SITE, C.COL_SPLIT, C.COL_LABEL, C.COL_T1C_PATH, C.COL_T2_PATH,
            C.COL_ROI_PATH)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
PATH_COLUMNS = (C.COL_T1C_PATH, C.COL_T2_PATH, C.COL_ROI_PATH)
#: Ages (whole years) a manifest may give; anything else is a typo or a date.
AGE_RANGE = (0, 120)

SAVE_AS_UTF8 = ("save it as UTF-8 (Excel: 'CSV UTF-8 (Comma delimited)'; LibreOffice: character set "
                "'Unicode (UTF-8)')")
_BAD_LINES_SHOWN = 5


@dataclass(frozen=True)
class CsvFile:
    """A CSV file read for checking.

    ``rows`` holds ``(line, {column: stripped value})`` for each row that has as many fields as the
    header (blank rows are skipped); ``problems`` says what kept other rows, or the whole file, out:
    each names the file and the line, what is wrong and what to do. ``header_line`` is the line of
    the header (0 when there is none).
    """

    header: list[str]
    header_line: int
    rows: list[tuple[int, dict[str, str]]]
    problems: list[str]


def _decode(path: Path, data: bytes) -> tuple[str | None, str | None]:
    """(text, None) for UTF-8 (with or without a byte-order mark), else (None, the problem)."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return None, f"{path} line 1: the file is UTF-16 (it starts with a UTF-16 byte-order mark); {SAVE_AS_UTF8}"
    if b"\x00" in data:
        line = data.count(b"\n", 0, data.index(b"\x00")) + 1
        return None, f"{path} line {line}: NUL bytes (the file is probably UTF-16); {SAVE_AS_UTF8}"
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError:
        pass
    bad = []
    for i, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.removeprefix(codecs.BOM_UTF8) if i == 1 else raw
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad.append((i, raw[exc.start], exc.start + 1))
    (line, byte, pos), rest = bad[0], [b[0] for b in bad[1:]]
    also = ""
    if rest:
        also = "; also line(s) " + ", ".join(map(str, rest[:_BAD_LINES_SHOWN]))
        also += f" and {len(rest) - _BAD_LINES_SHOWN} more" if len(rest) > _BAD_LINES_SHOWN else ""
    return None, (f"{path} line {line}: not UTF-8 (byte 0x{byte:02x} at byte {pos} of the line, e.g. an accented "
                  f"letter saved as Latin-1 / Windows-1252){also}; {SAVE_AS_UTF8}")


def read_csv(path: Path, columns: Sequence[str], what: str) -> CsvFile:
    """Read a comma-separated file for checking; never raises for its content.

    ``columns`` and ``what`` (e.g. "patient") only word the message for an empty file. Line
    numbers are the file's own (a value with a line break inside quotes spans several lines; a row
    is named by its first). A column with an empty name is allowed as long as no row has a value
    under it (a trailing comma), so nothing is dropped unseen.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        return CsvFile([], 0, [], [f"{path}: cannot be read ({exc.strerror or exc}); check the path and permissions"])
    text, problem = _decode(path, data)
    if problem:
        return CsvFile([], 0, [], [problem])
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    header_line, end, rows, problems = 0, 0, [], []
    try:
        for fields in reader:
            line, end = end + 1, reader.line_num
            if not any(f.strip() for f in fields):
                continue
            if header is None:
                header, header_line = [f.strip() for f in fields], line
                named = [h for h in header if h]
                dups = sorted({h for h in named if named.count(h) > 1})
                if dups:
                    return CsvFile(header, line, [], [f"{path} line {line}: column(s) {dups} appear more than once "
                                                      "in the header; keep one of each"])
                continue
            if len(fields) != len(header):
                hint = ("quote values that contain commas (\"Smith, J\") or remove the extra commas"
                        if len(fields) > len(header) else
                        "add the missing values (an empty one as two commas in a row)")
                if any("\n" in f or "\r" in f for f in fields):
                    hint = "a quoted value spans several lines: check for an unclosed quote (\")"
                problems.append(f"{path} line {line}: {len(fields)} field(s) but the header (line {header_line}) has "
                                f"{len(header)}; {hint}")
                continue
            stray = [(i + 1, v) for i, (h, v) in enumerate(zip(header, fields, strict=True)) if not h and v.strip()]
            if stray:
                problems.append(f"{path} line {line}: value(s) under a column with no name in the header "
                                + ", ".join(f"{v.strip()!r} (column {i})" for i, v in stray)
                                + "; name the column in the header or remove the value(s)")
                continue
            rows.append((line, {h: v.strip() for h, v in zip(header, fields, strict=True) if h}))
    except csv.Error as exc:
        problems.append(f"{path} line {reader.line_num}: unreadable CSV ({exc}); check the quotes on that line")
    if header is None and not problems:
        problems.append(f"{path}: the file is empty; it needs a header line ({','.join(columns)}) and one row per "
                        f"{what}")
    return CsvFile(header or [], header_line, rows, problems)


@dataclass(frozen=True)
class PatientEntry:
    """One validated manifest row, paths resolved to absolute."""

    patient_id: str
    site: str
    split: str
    label: str
    age: int | None
    sex: str
    location: str
    primary_tumor: str
    t1c_path: str
    t2_path: str
    roi_path: str
    manifest: str
    line: int

    def clinical(self) -> dict:
        return {
            C.COL_SITE: self.site,
            C.COL_SPLIT: self.split,
            C.COL_LABEL: self.label,
            C.COL_AGE: self.age,
            C.COL_SEX: self.sex,
            C.COL_LOCATION: self.location,
            C.COL_PRIMARY: self.primary_tumor,
        }


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def _age(text: str) -> tuple[int | None, str | None]:
    """(age, None) for whole years within ``AGE_RANGE`` (``60.0`` counts as 60), else (None, problem)."""
    lo, hi = AGE_RANGE
    todo = f"give whole years from {lo} to {hi}, or leave it empty"
    try:
        value = float(text)
    except ValueError:
        return None, f"age {text!r} is not a number: {todo}"
    if not value.is_integer():  # also NaN and infinity
        return None, f"age {text!r} is not a whole number of years: {todo}"
    if not lo <= value <= hi:
        return None, f"age {text!r} is outside {lo} to {hi}: check it and {todo}"
    return int(value), None


def load_manifests(paths: list[str | Path], *, allow_missing_files: bool = False
                   ) -> tuple[list[PatientEntry], dict[str, str]]:
    """Read and check manifests.

    Returns the entries and, with ``allow_missing_files``, the patients whose files are missing
    (patient_id -> message) instead of counting those as manifest errors; such patients are
    still in the entries, so callers can record them as failed.

    Raises:
        ManifestError: listing every problem found (nothing should run): an unreadable or non-UTF-8
            file, a row with more or fewer fields than the header, a manifest without patients,
            bad values (label, split, site, age, sex, location), missing files, duplicates.
    """
    if not paths:
        raise ManifestError("no manifest given: pass --manifest M.csv (one per site, repeatable)")
    problems: list[str] = []
    entries: list[PatientEntry] = []
    missing: dict[str, str] = {}
    for mpath in paths:
        mpath = Path(mpath)
        if not mpath.is_file():
            problems.append(f"{mpath}: manifest file not found; check the path")
            continue
        table = read_csv(mpath, REQUIRED, "patient")
        problems.extend(table.problems)
        if not table.header:
            continue
        absent = [c for c in REQUIRED if c not in table.header]
        if absent:
            problems.append(f"{mpath}: missing columns {absent} (has {table.header}); add them to the header "
                            f"(line {table.header_line})")
            continue
        if not table.rows and not table.problems:
            problems.append(f"{mpath}: no patients (only a header); add one row per patient")
            continue
        base = mpath.parent.resolve()
        for line, row in table.rows:
            pid = row[C.COL_PATIENT_ID]
            where = f"{mpath} line {line}" + (f" (patient {pid})" if pid else "")
            bad = []
            if not pid:
                bad.append("empty patient_id")
            if not _SAFE_NAME.match(row[C.COL_SITE]):
                bad.append(f"site {row[C.COL_SITE]!r} must be letters, digits, '.', '_' or '-' "
                           "(it names a lake folder)")
            if row[C.COL_LABEL] not in C.LABELS:
                bad.append(f"unknown label {row[C.COL_LABEL]!r}; expected one of {list(C.LABELS)}")
            if row[C.COL_SPLIT] not in C.SPLITS:
                bad.append(f"unknown split {row[C.COL_SPLIT]!r}; expected one of {list(C.SPLITS)}")
            age = None
            if row.get(C.COL_AGE):
                age, problem = _age(row[C.COL_AGE])
                if problem:
                    bad.append(problem)
            sex = row.get(C.COL_SEX, "")
            if sex and sex not in C.SEXES:
                bad.append(f"sex {sex!r}; expected one of {list(C.SEXES)} or empty")
            location = row.get(C.COL_LOCATION, "")
            if location and location not in C.LOCATIONS:
                bad.append(f"location {location!r}; expected one of {list(C.LOCATIONS)} or empty")
            resolved = {}
            absent_files = []
            for col in PATH_COLUMNS:
                if not row[col]:
                    bad.append(f"empty {col}")
                    continue
                resolved[col] = _resolve(base, row[col])
                if not resolved[col].exists():
                    absent_files.append(f"{col} {resolved[col]} does not exist")
            if absent_files:
                if allow_missing_files and pid:
                    missing[pid] = f"patient {pid}: " + "; ".join(absent_files)
                else:
                    bad.extend(absent_files)
            if bad:
                problems.append(f"{where}: " + "; ".join(bad))
                continue
            entries.append(PatientEntry(
                patient_id=pid, site=row[C.COL_SITE], split=row[C.COL_SPLIT], label=row[C.COL_LABEL],
                age=age, sex=sex, location=location, primary_tumor=row.get(C.COL_PRIMARY, ""),
                t1c_path=str(resolved[C.COL_T1C_PATH]), t2_path=str(resolved[C.COL_T2_PATH]),
                roi_path=str(resolved[C.COL_ROI_PATH]), manifest=str(mpath), line=line,
            ))
    seen: dict[str, PatientEntry] = {}
    for e in entries:
        first = seen.get(e.patient_id)
        if first is None:
            seen[e.patient_id] = e
        elif first.split != e.split:
            problems.append(f"{e.manifest} line {e.line} (patient {e.patient_id}): patient in two splits, "
                            f"{first.split!r} ({first.manifest} line {first.line}) and {e.split!r}")
        else:
            problems.append(f"{e.manifest} line {e.line} (patient {e.patient_id}): duplicate patient_id "
                            f"(first at {first.manifest} line {first.line})")
    if problems:
        raise ManifestError(f"{len(problems)} problem(s) in the manifest(s); nothing was run:\n  "
                            + "\n  ".join(problems))
    return entries, missing
