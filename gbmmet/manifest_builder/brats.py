"""Cases of a BraTS download, in either naming.

- BraTS 2018-2021: ``<case>/<case>_t1ce.nii.gz``, ``<case>_t2.nii.gz``, ``<case>_seg.nii.gz``
  (``Brats18_2013_3_1``, ``BraTS20_Training_001``, ``BraTS2021_00000``);
- BraTS 2023 and later: ``BraTS-<cohort>-<subject>-<timepoint>-t1c.nii.gz``, ``-t2w``, ``-seg``
  with cohort ``GLI`` (adult glioma), ``SSA`` (sub-Saharan adult glioma) or ``MET``
  (metastases); a subject's time points share a split.

Files may sit at any depth under the folder (``HGG/<case>/...``); ``.nii`` or ``.nii.gz``; hidden
files (``._*`` left by macOS) are skipped. The patient ID is the case name as the files give it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from gbmmet import constants as C
from gbmmet.manifest_builder import Case

_NEW = re.compile(r"^(?P<case>BraTS-(?P<cohort>[A-Za-z]+)-(?P<subject>\d+)-\d+)-(?P<seq>t1c|t1n|t2w|t2f|seg)"
                  r"\.nii(?:\.gz)?$", re.IGNORECASE)
_OLD = re.compile(r"^(?P<case>.+)_(?P<seq>t1ce|t1|t2|flair|seg)\.nii(?:\.gz)?$", re.IGNORECASE)
#: Sequence suffixes of either naming -> the manifest's role (other sequences are not used).
ROLES = {"t1ce": C.T1C, "t1c": C.T1C, "t2": C.T2, "t2w": C.T2, "seg": "roi"}
#: Expected file names per role, for messages: (old naming, new naming).
EXPECTED = {C.T1C: ("_t1ce", "-t1c"), C.T2: ("_t2", "-t2w"), "roi": ("_seg", "-seg")}
#: 2023+ cohort tags and the label their cases carry; other cohorts (MEN, PED, ...) are refused.
COHORT_LABELS = {"GLI": C.GBM, "SSA": C.GBM, "MET": C.MET}
#: Folders of the 2018-2020 downloads holding low-grade gliomas: not GBM.
LOW_GRADE_FOLDERS = ("LGG",)


def _match(name: str) -> tuple[str, str, str | None, str] | None:
    """(case, role, cohort or None, group) of a BraTS file name, or None for any other file."""
    m = _NEW.match(name)
    if m:
        role = ROLES.get(m["seq"].lower())
        group = f"BraTS-{m['cohort']}-{m['subject']}"
        return (m["case"], role, m["cohort"].upper(), group) if role else None
    m = _OLD.match(name)
    if m:
        role = ROLES.get(m["seq"].lower())
        return (m["case"], role, None, m["case"]) if role else None
    return None


def _files(folder: Path) -> dict[str, dict]:
    """Per case: its files by role, its cohort tag, group and folders (unused sequences dropped)."""
    found: dict[str, dict] = defaultdict(lambda: {"files": defaultdict(list), "cohort": None, "group": None,
                                                  "dirs": set()})
    for path in sorted(folder.rglob("*")):
        if path.name.startswith(".") or not path.is_file():
            continue
        hit = _match(path.name)
        if hit is None:
            continue
        case, role, cohort, group = hit
        entry = found[case]
        entry["files"][role].append(path)
        entry["cohort"], entry["group"] = cohort, group
        entry["dirs"].add(path.parent)
    return found


def _case_problems(case: str, entry: dict, label: str, need_roi: bool) -> list[str]:
    """What keeps one case out: a missing or doubled file, a cohort that contradicts the label."""
    problems = []
    where = " or ".join(str(d) for d in sorted(entry["dirs"]))
    roles = (C.T1C, C.T2, "roi") if need_roi else (C.T1C, C.T2)
    for role in roles:
        paths = entry["files"].get(role, [])
        if not paths:
            names = " / ".join(f"{case}{suffix}.nii.gz" for suffix in EXPECTED[role])
            extra = " (or give its ROI in --roi-boxes)" if role == "roi" else ""
            problems.append(f"case {case}: no {role} file {names} in {where}{extra}")
        elif len(paths) > 1:
            problems.append(f"case {case}: {len(paths)} {role} files ({', '.join(map(str, paths))}); keep one")
    cohort = entry["cohort"]
    if cohort is not None and cohort not in COHORT_LABELS:
        problems.append(f"case {case}: BraTS cohort {cohort} is neither GBM nor MET "
                        f"(known: {', '.join(COHORT_LABELS)}); move it out of the folder")
    elif cohort is not None and COHORT_LABELS[cohort] != label:
        problems.append(f"case {case}: a BraTS-{cohort} case is {COHORT_LABELS[cohort]}, but the label is "
                        f"{label}: use --layout {'brats-mets' if COHORT_LABELS[cohort] == C.MET else 'brats'} "
                        "or move it out of the folder")
    low = [d for d in entry["dirs"] if any(p.name.upper() in LOW_GRADE_FOLDERS for p in (d, *d.parents))]
    if low and label == C.GBM:
        problems.append(f"case {case}: it lies under a low-grade glioma folder ({low[0]}), not GBM; "
                        "point FOLDER at the HGG folder")
    return problems


def discover_brats(folder: Path, label: str, has_boxes: frozenset[str] = frozenset()
                   ) -> tuple[list[Case], list[str], set[str]]:
    """The BraTS cases under ``folder``, every problem found, and the names of all cases seen.

    ``has_boxes`` names the cases whose ROI comes from a box file: they need no ``seg`` file.
    A case is returned only when it has no problem; the caller refuses to write a manifest
    while any problem is left (a problem names the case and the file expected or doubled).
    """
    cases, problems = [], []
    found = _files(folder)
    for case, entry in sorted(found.items()):
        wrong = _case_problems(case, entry, label, need_roi=case not in has_boxes)
        if wrong:
            problems.extend(wrong)
            continue
        files = entry["files"]
        roi = files["roi"][0] if files.get("roi") and case not in has_boxes else None
        cases.append(Case(patient_id=case, label=label, t1c=files[C.T1C][0], t2=files[C.T2][0], roi=roi,
                          group=entry["group"]))
    if not cases and not problems:
        problems.append(f"{folder}: no BraTS case found (expected files such as <case>/<case>_t1ce.nii.gz or "
                        "BraTS-GLI-00000-000-t1c.nii.gz); check FOLDER and --layout")
    return cases, problems, set(found)
