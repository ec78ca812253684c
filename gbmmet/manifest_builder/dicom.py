"""Choosing each patient's CE-T1 and T2 among the DICOM series of its folder.

One folder per patient under the site's folder (the folder's name is the patient ID); any
nesting of series below it, each series in a folder of its own (the manifest names a series by
its folder). Headers are read with pydicom (no pixel data); files that are not DICOM are skipped.

Each series is weighed for each role under the rules (``gbmmet.manifest_builder.rules``); the
highest score wins a role. A patient is left out, with the reason, when a role has no candidate
or two equally good, when one series wins both roles, when the winner shares its folder with
another series, or when no ROI is found: the report says so, and nothing is guessed.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gbmmet import constants as C
from gbmmet.manifest import AGE_RANGE
from gbmmet.manifest_builder import Case
from gbmmet.manifest_builder.rules import (
    CONTRAST_FORBIDDEN,
    CONTRAST_REQUIRED,
    PREFER_AXIAL,
    PREFER_NO_CONTRAST,
    PREFER_ORIGINAL,
    Rules,
)

_TAGS = ["SeriesInstanceUID", "SeriesDescription", "ProtocolName", "SeriesNumber", "Modality", "ImageType",
         "ScanningSequence", "SequenceName", "EchoTime", "RepetitionTime", "InversionTime",
         "ContrastBolusAgent", "ImageOrientationPatient", "NumberOfFrames", "PatientAge", "PatientSex"]
#: Below this share of its length along one axis, a slice normal is called oblique.
_AXIS_COSINE = 0.8
#: Columns of the series report, one row per series (and one per patient without any series).
REPORT_COLUMNS = ("patient_id", "series_number", "series_description", "folder", "images", "decision",
                  "t1c", "t2", "patient_status")
IN_MANIFEST = "in manifest"
LEFT_OUT = "left out: "


@dataclass(frozen=True)
class Series:
    """One DICOM series of a patient, as its headers describe it (times in ms, None if absent)."""

    uid: str
    folder: Path
    images: int
    shared_folder: bool
    number: str
    description: str
    modality: str
    image_type: tuple[str, ...]
    scanning_sequence: tuple[str, ...]
    sequence_name: str
    echo_time: float | None
    repetition_time: float | None
    inversion_time: float | None
    contrast_agent: str
    orientation: str
    age: str
    sex: str


def _multi(value) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    items = [value] if isinstance(value, str | bytes) else list(value)
    return tuple(p.strip().upper() for v in items for p in str(v).split("\\") if p.strip())


def _number(value) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _orientation(iop) -> str:
    """axial, coronal, sagittal or oblique, from ImageOrientationPatient ("" if absent)."""
    try:
        v = np.asarray([float(x) for x in iop], dtype=float)
    except (TypeError, ValueError):
        return ""
    if v.size != 6:
        return ""
    normal = np.cross(v[:3], v[3:])
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) < _AXIS_COSINE * np.linalg.norm(normal):
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def _read_headers(folder: Path) -> tuple[list[tuple[Path, object]], list[str]]:
    """(file, pydicom dataset) for every DICOM file under ``folder``, and the unreadable files."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    out, problems = [], []
    try:
        paths = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    except OSError as exc:
        return [], [f"folder {folder} cannot be read ({exc.strerror or exc})"]
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
        except InvalidDicomError:
            if path.suffix.lower() in (".dcm", ".ima", ".dicom"):
                problems.append(f"file {path} is named as DICOM but is not DICOM; re-export it from PACS")
            continue
        except (OSError, ValueError, EOFError) as exc:
            problems.append(f"file {path} cannot be read as DICOM ({exc}); re-export it from PACS")
            continue
        if getattr(ds, "SeriesInstanceUID", ""):
            out.append((path, ds))
    return out, problems


def _series_of(files: list[tuple[Path, object]]) -> list[Series]:
    by_uid: dict[str, list[tuple[Path, object]]] = defaultdict(list)
    for path, ds in files:
        by_uid[str(ds.SeriesInstanceUID)].append((path, ds))
    uids_in: dict[Path, set[str]] = defaultdict(set)
    for uid, members in by_uid.items():
        for path, _ in members:
            uids_in[path.parent].add(uid)
    series = []
    for uid, members in by_uid.items():
        ds = members[0][1]
        folders = {p.parent for p, _ in members}
        orientations = {_orientation(getattr(d, "ImageOrientationPatient", None)) for _, d in members}
        images = sum(int(_number(getattr(d, "NumberOfFrames", None)) or 1) for _, d in members)
        series.append(Series(
            uid=uid, folder=min(folders), images=images,
            shared_folder=len(folders) > 1 or any(len(uids_in[f]) > 1 for f in folders),
            number=str(getattr(ds, "SeriesNumber", "") or ""),
            description=str(getattr(ds, "SeriesDescription", "") or getattr(ds, "ProtocolName", "") or ""),
            modality=str(getattr(ds, "Modality", "") or ""), image_type=_multi(getattr(ds, "ImageType", None)),
            scanning_sequence=_multi(getattr(ds, "ScanningSequence", None)),
            sequence_name=str(getattr(ds, "SequenceName", "") or ""),
            echo_time=_number(getattr(ds, "EchoTime", None)),
            repetition_time=_number(getattr(ds, "RepetitionTime", None)),
            inversion_time=_number(getattr(ds, "InversionTime", None)),
            contrast_agent=str(getattr(ds, "ContrastBolusAgent", "") or "").strip(),
            orientation=orientations.pop() if len(orientations) == 1 else "mixed",
            age=str(getattr(ds, "PatientAge", "") or ""), sex=str(getattr(ds, "PatientSex", "") or ""),
        ))
    return sorted(series, key=lambda s: (s.folder, s.number.zfill(6), s.uid))


def scan_patient(folder: Path) -> tuple[list[Series], list[str]]:
    """The DICOM series under a patient's folder, and the files that could not be read."""
    files, problems = _read_headers(folder)
    return _series_of(files), problems


def _search(patterns: tuple[str, ...], text: str) -> str | None:
    """The first pattern found in ``text`` (case-insensitive), or None."""
    return next((p for p in patterns if re.search(p, text, re.IGNORECASE)), None)


def contrast_state(s: Series, rules: Rules) -> tuple[bool | None, str]:
    """(True: post-contrast, False: pre-contrast, None: unknown, and why)."""
    pre = _search(rules.contrast_pre, s.description)
    if s.contrast_agent and pre:
        return None, (f"ContrastBolusAgent {s.contrast_agent!r} but the description {s.description!r} says "
                      f"pre-contrast ({pre!r})")
    if s.contrast_agent:
        return True, f"ContrastBolusAgent {s.contrast_agent!r}"
    if pre:
        return False, f"description says pre-contrast ({pre!r})"
    post = _search(rules.contrast_post, s.description)
    if post:
        return True, f"description says post-contrast ({post!r})"
    return None, "no ContrastBolusAgent and no contrast word in the description"


def _excluded(s: Series, rules: Rules) -> str | None:
    """Why ``s`` is refused for every role, or None."""
    if s.modality and s.modality.upper() != "MR":
        return f"modality {s.modality}, not MR"
    kinds = sorted(set(s.image_type) & set(rules.exclude_image_type))
    if kinds:
        return f"ImageType {'/'.join(kinds)}"
    why = _matches("description", s.description, rules.exclude_description, "exclude")
    if why:
        return why
    if s.images < rules.min_images:
        return f"{s.images} image(s), fewer than min_images {rules.min_images}"
    if s.orientation == "mixed":
        return "slices in several orientations (a localizer?)"
    return None


def _matches(field: str, text, patterns, kind: str) -> str | None:
    """Why ``text`` (tag ``field``) is refused: the first of ``patterns`` it matches, or None."""
    hit = _search(patterns, text)
    return f"{field} {text!r} matches {kind} pattern {hit!r}" if hit else None


def _out_of(name: str, value: float | None, bounds: tuple[float, float]) -> str | None:
    if value is not None and not bounds[0] <= value <= bounds[1]:
        return f"{name} {value:g} ms outside {bounds[0]:g}-{bounds[1]:g}"
    return None


def _refused(s: Series, role: str, rules: Rules, contrast: tuple[bool | None, str]) -> str | None:
    """Why ``s`` cannot be ``role``, or None."""
    rule = rules.roles[role]
    seq = sorted(set(s.scanning_sequence) & set(rule.reject_scanning_sequence))
    tags = (_matches("description", s.description, rule.reject_description, "reject")
              or (f"ScanningSequence {'/'.join(seq)}" if seq else None)
              or _matches("SequenceName", s.sequence_name, rule.reject_sequence_name, "reject")
              or _out_of("EchoTime", s.echo_time, rule.echo_time_ms)
              or _out_of("RepetitionTime", s.repetition_time, rule.repetition_time_ms)
              or _out_of("InversionTime", s.inversion_time, rule.inversion_time_ms))
    if tags:
        return tags
    state, why = contrast
    if rule.contrast == CONTRAST_REQUIRED and state is not True:
        return f"contrast required: {why}"
    if rule.contrast == CONTRAST_FORBIDDEN and state is True:
        return f"contrast forbidden: {why}"
    return None


def assess(s: Series, role: str, rules: Rules) -> tuple[int | None, str]:
    """(score, the evidence) of ``s`` as ``role``, or (None, why it is refused)."""
    rule = rules.roles[role]
    contrast = contrast_state(s, rules)
    refused = _excluded(s, rules) or _refused(s, role, rules, contrast)
    if refused:
        return None, refused
    evidence = []
    hit = _search(rule.description, s.description)
    if hit:
        evidence.append(f"description matches {hit!r}")
    if s.echo_time is not None:
        evidence.append(f"EchoTime {s.echo_time:g} ms")
    if not evidence:
        return None, (f"no sign of {role} weighting: description {s.description!r} matches none of "
                      f"{list(rule.description)} and there is no EchoTime")
    if s.repetition_time is not None:
        evidence.append(f"RepetitionTime {s.repetition_time:g} ms")
    if rule.contrast == CONTRAST_REQUIRED:
        evidence.append(contrast[1])
    met = {PREFER_AXIAL: s.orientation == "axial", PREFER_ORIGINAL: "ORIGINAL" in s.image_type[:1],
           PREFER_NO_CONTRAST: contrast[0] is not True}
    evidence.extend(f"{p}" for p in rule.prefer if met[p])
    return len(evidence), "; ".join(evidence)


def _name(s: Series) -> str:
    return f"series {s.number or '?'} {s.description!r}".rstrip()


@dataclass(frozen=True)
class Choice:
    """A patient's chosen series (None where a role was not decided) and why it is left out."""

    t1c: Series | None
    t2: Series | None
    left_out: str | None
    verdicts: dict[str, dict[str, tuple[int | None, str]]]  # series uid -> role -> assess()


def choose(series: list[Series], rules: Rules) -> Choice:
    """The CE-T1 and T2 among a patient's series: the highest score of each role, unless tied."""
    verdicts = {s.uid: {role: assess(s, role, rules) for role in (C.T1C, C.T2)} for s in series}
    chosen: dict[str, Series | None] = {}
    reasons = []
    for role in (C.T1C, C.T2):
        scored = [(verdicts[s.uid][role][0], s) for s in series if verdicts[s.uid][role][0] is not None]
        best = max((score for score, _ in scored), default=None)
        top = [s for score, s in scored if score == best]
        chosen[role] = top[0] if len(top) == 1 else None
        if not top:
            reasons.append(f"no {role} candidate")
        elif len(top) > 1:
            reasons.append(f"{len(top)} {role} candidates equally good (score {best}): "
                           + ", ".join(_name(s) for s in top))
    t1c, t2 = chosen[C.T1C], chosen[C.T2]
    if t1c is not None and t1c is t2:
        reasons.append(f"{_name(t1c)} wins both t1c and t2")
    for s in {id(s): s for s in (t1c, t2) if s is not None}.values():
        if s.shared_folder:
            reasons.append(f"{_name(s)} shares its folder {s.folder} with other series: put each series "
                           "in a folder of its own")
    return Choice(t1c=t1c, t2=t2, left_out="; ".join(reasons) or None, verdicts=verdicts)


def find_roi(folder: Path, patterns: tuple[str, ...]) -> tuple[Path | None, str]:
    """The patient's ROI file: the first pattern that matches anything decides; (None, why) when
    nothing matches or the deciding pattern matches several files."""
    for pattern in patterns:
        hits = sorted({p for p in folder.glob(pattern) if p.is_file() and not p.name.startswith(".")})
        if len(hits) == 1:
            return hits[0], pattern
        if len(hits) > 1:
            return None, (f"{len(hits)} files match ROI pattern {pattern!r}: "
                          + ", ".join(str(h.relative_to(folder)) for h in hits))
    return None, f"no ROI: no boxes in --roi-boxes and no file matches the ROI patterns {list(patterns)}"


def age_years(text: str) -> int | None:
    """Whole years from a DICOM age string (``063Y``, ``018M``, ``002W``, ``005D``), None if not one."""
    m = re.fullmatch(r"\s*(\d{1,3})\s*([YMWD])\s*", text or "", re.IGNORECASE)
    if not m:
        return None
    years = int(m[1]) // {"Y": 1, "M": 12, "W": 52, "D": 365}[m[2].upper()]
    return years if AGE_RANGE[0] <= years <= AGE_RANGE[1] else None


@dataclass(frozen=True)
class DicomDiscovery:
    """What ``discover_dicom`` found: the cases for the manifest, the patients left out (with
    why), one report row per series (``REPORT_COLUMNS``) and the unreadable files and folders."""

    cases: list[Case]
    left_out: dict[str, str]
    report: list[dict[str, str]]
    problems: list[str]


def _verdict_text(verdict: tuple[int | None, str]) -> str:
    score, why = verdict
    return f"refused: {why}" if score is None else f"score {score}: {why}"


def report_rows(patient_id: str, root: Path, series: list[Series], choice: Choice | None,
                status: str) -> list[dict[str, str]]:
    """One row per series of a patient (one empty-series row when it has none)."""
    if not series:
        return [dict.fromkeys(REPORT_COLUMNS, "") | {"patient_id": patient_id, "decision": "no series",
                                                      "patient_status": status}]
    rows = []
    for s in series:
        verdict = choice.verdicts[s.uid]
        decision = next((role for role in (C.T1C, C.T2) if getattr(choice, role) is s), None)
        if decision is None:
            candidate = any(verdict[role][0] is not None for role in (C.T1C, C.T2))
            decision = "candidate, not chosen" if candidate else "rejected"
        rows.append({"patient_id": patient_id, "series_number": s.number, "series_description": s.description,
                     "folder": str(s.folder.relative_to(root)), "images": str(s.images), "decision": decision,
                     C.T1C: _verdict_text(verdict[C.T1C]), C.T2: _verdict_text(verdict[C.T2]),
                     "patient_status": status})
    return rows


def _patient(folder: Path, label: str, rules: Rules, boxed: bool
             ) -> tuple[Case | None, str | None, list[Series], Choice | None, list[str]]:
    """(case or None, why left out, its series, the choice, unreadable files) of one patient."""
    series, problems = scan_patient(folder)
    if not series:
        return None, "no DICOM series found", series, None, problems
    choice = choose(series, rules)
    if choice.left_out:
        return None, choice.left_out, series, choice, problems
    roi = None
    if not boxed:
        roi, why = find_roi(folder, rules.roi_mask)
        if roi is None:
            return None, why, series, choice, problems
    sex = choice.t2.sex.strip().upper()
    case = Case(patient_id=folder.name, label=label, t1c=choice.t1c.folder, t2=choice.t2.folder, roi=roi,
                group=folder.name, age=age_years(choice.t2.age), sex=sex if sex in C.SEXES else "")
    return case, None, series, choice, problems


def discover_dicom(root: Path, label: str, rules: Rules, has_boxes: frozenset[str] = frozenset()
                   ) -> DicomDiscovery:
    """Every patient folder under ``root`` (one level; hidden folders skipped): its chosen
    series or why it is left out. A file named as DICOM that cannot be read, or a folder that
    cannot be listed, is a problem (the caller writes nothing while any is left)."""
    cases, left_out, report, problems = [], {}, [], []
    try:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        return DicomDiscovery([], {}, [], [f"{root}: cannot be read ({exc.strerror or exc})"])
    for folder in folders:
        pid = folder.name
        case, why, series, choice, unreadable = _patient(folder, label, rules, pid in has_boxes)
        problems.extend(f"patient {pid}: {p}" for p in unreadable)
        if case is not None:
            cases.append(case)
        else:
            left_out[pid] = why
        report.extend(report_rows(pid, root, series, choice, IN_MANIFEST if case else LEFT_OUT + why))
    if not folders:
        problems.append(f"{root}: no patient folder (expected one folder per patient holding its DICOM series)")
    return DicomDiscovery(cases, left_out, report, problems)
