"""Site manifests: one row per patient, checked before any work starts.

Required columns: patient_id, site, split, label, t1c_path, t2_path, roi_path. Optional: age,
sex, location, primary_tumor. Paths are absolute or relative to the manifest's folder; an image
path may name a NIfTI file or a folder holding one DICOM series; roi_path a mask image or a CSV of
per-slice boxes (``gbmmet.io.BOX_COLUMNS``).

Every problem of every row of every manifest is collected and raised together as one
``ManifestError``, so a site fixes its manifest in one pass.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from gbmmet import constants as C
from gbmmet.errors import ManifestError

REQUIRED = (C.COL_PATIENT_ID, C.COL_SITE, C.COL_SPLIT, C.COL_LABEL, C.COL_T1C_PATH, C.COL_T2_PATH,
            C.COL_ROI_PATH)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
PATH_COLUMNS = (C.COL_T1C_PATH, C.COL_T2_PATH, C.COL_ROI_PATH)


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


def load_manifests(paths: list[str | Path], *, allow_missing_files: bool = False
                   ) -> tuple[list[PatientEntry], dict[str, str]]:
    """Read and check manifests.

    Returns the entries and, with ``allow_missing_files``, the patients whose files are missing
    (patient_id -> message) instead of counting those as manifest errors; such patients are
    still in the entries, so callers can record them as failed.

    Raises:
        ManifestError: listing every problem found (nothing should run).
    """
    if not paths:
        raise ManifestError("no manifest given: pass --manifest M.csv (one per site, repeatable)")
    problems: list[str] = []
    entries: list[PatientEntry] = []
    missing: dict[str, str] = {}
    for mpath in paths:
        mpath = Path(mpath)
        if not mpath.is_file():
            problems.append(f"{mpath}: manifest file not found")
            continue
        with mpath.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            absent = [c for c in REQUIRED if c not in header]
            if absent:
                problems.append(f"{mpath}: missing columns {absent} (has {header})")
                continue
            base = mpath.parent.resolve()
            for line, raw in enumerate(reader, start=2):
                row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
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
                    try:
                        age = int(float(row[C.COL_AGE]))
                    except ValueError:
                        bad.append(f"age {row[C.COL_AGE]!r} is not a number")
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
