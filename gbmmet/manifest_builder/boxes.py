"""ROI boxes of many patients in one CSV: ``patient_id`` and ``gbmmet.io.BOX_COLUMNS`` per row.

``gbmmet manifest --roi-boxes`` takes such a file (or a folder of ``<patient_id>.csv`` files, each
with ``BOX_COLUMNS``) and writes one box file per patient beside the manifest, which the
manifest's ``roi_path`` names.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from gbmmet import constants as C
from gbmmet.errors import ManifestError
from gbmmet.io import BOX_COLUMNS
from gbmmet.manifest import read_csv

COLUMNS = (C.COL_PATIENT_ID, *BOX_COLUMNS)


def read_box_table(path: Path) -> dict[str, list[dict[str, str]]]:
    """The boxes of each patient (patient_id -> rows of ``BOX_COLUMNS``), from a CSV file or a
    folder of ``<patient_id>.csv`` files.

    The values are checked where the boxes are read (``gbmmet.io.read_roi``); here only the
    file's shape: columns present, every row complete, every patient named.

    Raises:
        ManifestError: a missing path, an unreadable or malformed file, a missing column, an
            empty patient_id, or no box at all.
    """
    if path.is_dir():
        files = {p.stem: p for p in sorted(path.glob("*.csv")) if not p.name.startswith(".")}
        columns = BOX_COLUMNS
    elif path.is_file():
        files, columns = {"": path}, COLUMNS
    else:
        raise ManifestError(f"--roi-boxes {path} does not exist; give a CSV file ({', '.join(COLUMNS)}) or a "
                            "folder of <patient_id>.csv files")
    boxes: dict[str, list[dict[str, str]]] = defaultdict(list)
    problems: list[str] = []
    for pid, file in files.items():
        table = read_csv(file, columns, "box")
        problems.extend(table.problems)
        absent = [c for c in columns if table.header and c not in table.header]
        if absent:
            problems.append(f"{file}: missing columns {absent} (has {table.header}); expected {list(columns)}")
            continue
        for line, row in table.rows:
            who = row.get(C.COL_PATIENT_ID, pid)
            if not who:
                problems.append(f"{file} line {line}: empty patient_id")
                continue
            empty = [c for c in BOX_COLUMNS if not row[c]]
            if empty:
                problems.append(f"{file} line {line} (patient {who}): empty {empty}")
                continue
            boxes[who].append({c: row[c] for c in BOX_COLUMNS})
    if not boxes and not problems:
        problems.append(f"--roi-boxes {path}: no boxes found")
    if problems:
        raise ManifestError(f"{len(problems)} problem(s) in the boxes; nothing was written:\n  "
                            + "\n  ".join(problems))
    return dict(boxes)
