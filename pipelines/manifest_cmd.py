"""``gbmmet manifest``: a validated ``manifest.csv`` built from a folder of images.

Layouts: ``brats`` / ``brats-mets`` (a BraTS download, either naming) and ``dicom`` (one folder
per patient, series chosen by their tags under a rules file). Beside the manifest it writes
``<stem>.build.json`` (folder, layout, label, site, the split rule with its seed and counts, the
patients left out and why) and, for DICOM, ``<stem>.series.csv`` (every series of every patient:
chosen, candidate or rejected, and why). Box ROIs given with ``--roi-boxes`` are written one file
per patient in ``<stem>_boxes/``. The manifest is checked with ``gbmmet.manifest.load_manifests``
before the command reports success. Registered in ``pipelines.cli`` by ``register(app)``.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer

#: Same rule as gbmmet.manifest's check of the site column (it names a lake folder).
_SAFE_SITE = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True)
class ManifestRequest:
    """What to build: ``fractions`` is used unless ``split`` puts every patient in one split."""

    folder: Path
    layout: str
    out: Path
    label: str | None = None
    site: str | None = None
    split: str | None = None
    fractions: dict[str, float] | None = None
    seed: int = 0
    rules: Path | None = None
    roi_boxes: Path | None = None
    overwrite: bool = False


@dataclass(frozen=True)
class ManifestResult:
    manifest: Path
    record: Path
    series_report: Path | None
    per_split: dict[str, int]
    left_out: dict[str, str] = field(default_factory=dict)


def _outputs(out: Path) -> tuple[Path, Path, Path]:
    """(build record, series report, box folder) beside the manifest."""
    return (out.with_name(f"{out.stem}.build.json"), out.with_name(f"{out.stem}.series.csv"),
            out.with_name(f"{out.stem}_boxes"))


def _checked(req: ManifestRequest) -> tuple[str, str]:
    """The label and site to use, after checking the request's options.

    Raises:
        ConfigError: a folder that is not one, an unknown layout / label / split, --split with
            --splits, --rules outside --layout dicom, an unsafe site name.
        OutputExistsError: the manifest exists and ``overwrite`` is not set.
    """
    from gbmmet import constants as C
    from gbmmet.errors import ConfigError, OutputExistsError
    from gbmmet.manifest_builder import LAYOUT_BRATS_METS, LAYOUT_DICOM, LAYOUTS

    if not req.folder.is_dir():
        raise ConfigError(f"FOLDER {req.folder} is not a folder; give the folder holding the cases")
    if req.layout not in LAYOUTS:
        raise ConfigError(f"--layout must be one of {list(LAYOUTS)}, not {req.layout!r}")
    if req.layout == LAYOUT_DICOM and req.label is None:
        raise ConfigError("--layout dicom needs --label GBM or --label MET (one label per folder)")
    label = req.label or (C.MET if req.layout == LAYOUT_BRATS_METS else C.GBM)
    if label not in C.LABELS:
        raise ConfigError(f"--label must be one of {list(C.LABELS)}, not {label!r}")
    if req.split is not None and req.fractions is not None:
        raise ConfigError("give --split (every patient in one split) or --splits (a seeded split), not both")
    if req.split is not None and req.split not in C.SPLITS:
        raise ConfigError(f"--split must be one of {list(C.SPLITS)}, not {req.split!r}")
    if req.rules is not None and req.layout != LAYOUT_DICOM:
        raise ConfigError("--rules chooses DICOM series: it applies to --layout dicom only")
    site = req.site if req.site is not None else re.sub(r"[^A-Za-z0-9._-]", "_", req.folder.resolve().name)
    if not _SAFE_SITE.match(site):
        raise ConfigError(f"--site {site!r} must be letters, digits, '.', '_' or '-' (it names a lake folder)")
    taken = [p for p in (req.out, *_outputs(req.out)) if p.exists()]
    if taken and not req.overwrite:
        raise OutputExistsError(f"{taken[0]} already exists; pass --overwrite to replace the manifest and "
                                "what is written beside it")
    return label, site


def _clear_previous(out: Path) -> None:
    """Remove what an earlier build wrote beside ``out`` (its box files, only), so no stale
    report or box file outlives a rebuild with --overwrite."""
    record, series, box_dir = _outputs(out)
    for path in (record, series):
        path.unlink(missing_ok=True)
    if box_dir.is_dir():
        for path in box_dir.glob("*.csv"):
            path.unlink()
        if not any(box_dir.iterdir()):
            box_dir.rmdir()


def _relative(path: Path, base: Path) -> str:
    """``path`` relative to the manifest's folder where it lies inside it, else absolute."""
    path, base = Path(os.path.abspath(path)), Path(os.path.abspath(base))
    return os.path.relpath(path, base) if path.is_relative_to(base) else str(path)


def _discover(req: ManifestRequest, label: str, boxes: dict):
    """(cases, problems, left out, series report rows, rules source) for the request's layout."""
    from gbmmet.manifest_builder import LAYOUT_DICOM
    from gbmmet.manifest_builder.brats import discover_brats
    from gbmmet.manifest_builder.dicom import discover_dicom
    from gbmmet.manifest_builder.rules import load_rules

    boxed = frozenset(boxes)
    if req.layout == LAYOUT_DICOM:
        rules = load_rules(req.rules)
        found = discover_dicom(req.folder, label, rules, boxed)
        names = {c.patient_id for c in found.cases} | set(found.left_out)
        cases, problems, left_out, report, source = (found.cases, list(found.problems), found.left_out,
                                                     found.report, rules.source)
    else:
        cases, problems, names = discover_brats(req.folder, label, boxed)
        left_out, report, source = {}, None, None
    unknown = sorted(set(boxes) - names)
    if unknown:
        problems.append(f"--roi-boxes {req.roi_boxes}: patient(s) {unknown} not found in {req.folder}; check "
                        "the patient_id (it is the case / patient folder's name)")
    return cases, problems, left_out, report, source


def _splits(req: ManifestRequest, cases, site: str) -> tuple[dict[str, str], dict]:
    """(patient_id -> split, the split's record for the build JSON)."""
    from gbmmet.manifest_builder.splits import DEFAULT_FRACTIONS, RULE, assign_splits

    if req.split is not None:
        return {c.patient_id: req.split for c in cases}, {"rule": f"given: every patient in {req.split}"}
    fractions = req.fractions or DEFAULT_FRACTIONS
    split_of, by_stratum = assign_splits(cases, site, fractions, req.seed)
    return split_of, {"rule": RULE, "seed": req.seed, "fractions": fractions, "counts_by_stratum": by_stratum}


def _write_csv(path: Path, columns, rows) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def _rows(cases, split_of: dict[str, str], site: str, out: Path, boxes: dict) -> list[dict]:
    """The manifest's rows; each boxed patient's boxes written to its own file first."""
    from gbmmet import constants as C
    from gbmmet.io import BOX_COLUMNS

    box_dir = _outputs(out)[2]
    rows = []
    for case in cases:
        roi = case.roi
        if case.patient_id in boxes:
            box_dir.mkdir(exist_ok=True)
            roi = box_dir / f"{case.patient_id}.csv"
            _write_csv(roi, BOX_COLUMNS, boxes[case.patient_id])
        rows.append({
            C.COL_PATIENT_ID: case.patient_id, C.COL_SITE: site, C.COL_SPLIT: split_of[case.patient_id],
            C.COL_LABEL: case.label, C.COL_AGE: "" if case.age is None else case.age, C.COL_SEX: case.sex,
            C.COL_LOCATION: "", C.COL_PRIMARY: "", C.COL_T1C_PATH: _relative(case.t1c, out.parent),
            C.COL_T2_PATH: _relative(case.t2, out.parent), C.COL_ROI_PATH: _relative(roi, out.parent),
        })
    return rows


def _validate(out: Path) -> None:
    """Check the written manifest as every job will; a failing one is renamed ``*.invalid.csv``.

    Raises:
        ManifestError: the manifest fails ``gbmmet.manifest.load_manifests``.
    """
    from gbmmet.errors import ManifestError
    from gbmmet.manifest import load_manifests

    try:
        load_manifests([out])
    except ManifestError as exc:
        kept = out.with_name(f"{out.stem}.invalid.csv")
        out.replace(kept)
        raise ManifestError(f"the manifest built fails its own checks (kept as {kept} for inspection): {exc}") from None


def build_manifest(req: ManifestRequest) -> ManifestResult:
    """Discover the cases of ``req.folder``, assign splits, write and validate the manifest.

    Nothing is written while any case has a problem (a missing or doubled file, an unreadable
    DICOM file or folder): the error lists them all, each naming the case and the file. DICOM
    patients whose series cannot be chosen without guessing are left out and listed in the
    series report and the build record.

    Raises:
        ConfigError, OutputExistsError: as ``_checked``; a bad rules file.
        ManifestError: problems found in the folder or the boxes, no patient to write, or a
            manifest failing its own checks.
    """
    from gbmmet import __version__
    from gbmmet import constants as C
    from gbmmet.errors import ManifestError
    from gbmmet.manifest_builder.boxes import read_box_table
    from gbmmet.manifest_builder.dicom import REPORT_COLUMNS

    label, site = _checked(req)
    boxes = read_box_table(req.roi_boxes) if req.roi_boxes is not None else {}
    cases, problems, left_out, report, rules_source = _discover(req, label, boxes)
    if problems:
        raise ManifestError(f"{len(problems)} problem(s) in {req.folder}; nothing was written:\n  "
                            + "\n  ".join(problems))
    record_path, series_path, _ = _outputs(req.out)
    req.out.parent.mkdir(parents=True, exist_ok=True)
    _clear_previous(req.out)
    if report is not None:
        _write_csv(series_path, REPORT_COLUMNS, report)
    if not cases:
        where = f"; why, per patient: {series_path}" if report is not None else ""
        raise ManifestError(f"no patient of {req.folder} could be put in the manifest{where}")
    split_of, split_record = _splits(req, cases, site)
    _write_csv(req.out, C.MANIFEST_COLUMNS, _rows(cases, split_of, site, req.out, boxes))
    per_split = {s: n for s in C.SPLITS if (n := sum(v == s for v in split_of.values()))}
    record = {"gbmmet_version": __version__, "folder": os.path.abspath(req.folder), "layout": req.layout,
              "label": label, "site": site, "patients": len(cases), "per_split": per_split,
              "split": split_record, "roi": "boxes (--roi-boxes) where given, else " + (
                  "the segmentation" if report is None else "the mask pattern of the rules"),
              "rules": rules_source, "series_report": series_path.name if report is not None else None,
              "left_out": left_out}
    record_path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    _validate(req.out)
    return ManifestResult(manifest=req.out, record=record_path,
                          series_report=series_path if report is not None else None,
                          per_split=per_split, left_out=left_out)


def _user_errors(fn):
    """``pipelines.cli``'s handling of gbmmet's errors (one line, exit code 2), imported when the
    command runs: ``pipelines.cli`` imports this module to register the command."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from pipelines.cli import _user_errors as handle

        return handle(fn)(*args, **kwargs)

    return wrapper


@_user_errors
def manifest(
    folder: Annotated[Path, typer.Argument(help="Folder of the cases: a BraTS download, or one folder per "
                                                "patient of DICOM series.")],
    layout: Annotated[str, typer.Option(help="brats (GBM), brats-mets (MET): BraTS 2018-2021 or 2023+ naming; "
                                             "dicom: series chosen by their tags.")],
    out: Annotated[Path, typer.Option("--out", help="The manifest to write.")] = Path("manifest.csv"),
    label: Annotated[str | None, typer.Option(help="GBM or MET for every patient (default: GBM for brats, MET "
                                                   "for brats-mets; required for dicom).")] = None,
    site: Annotated[str | None, typer.Option(help="Site name (default: FOLDER's name).")] = None,
    split: Annotated[str | None, typer.Option(help="Put every patient in this split (train, val, test, "
                                                   "external) instead of --splits.")] = None,
    splits: Annotated[str | None, typer.Option(help="Seeded split stratified by site and label, e.g. "
                                                    "train=0.7,val=0.1,test=0.2 (the default).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of --splits: same seed, same split.")] = 0,
    rules: Annotated[Path | None, typer.Option(help="TOML rules choosing the DICOM series, merged over the "
                                                    "packaged gbmmet/manifest_builder/dicom_rules.toml.")] = None,
    roi_boxes: Annotated[Path | None, typer.Option("--roi-boxes", help="ROI boxes: a CSV of patient_id, "
                                                   "slice_index, i_min, i_max, j_min, j_max, or a folder of "
                                                   "<patient_id>.csv; used instead of the segmentation / mask.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing manifest and its "
                                                                "reports.")] = False,
) -> None:
    """Build a validated manifest.csv from a folder (BraTS or DICOM), with a build record (split
    rule, seed, counts) and, for DICOM, a report of every series chosen or rejected and why."""
    from gbmmet.manifest_builder.splits import parse_fractions

    fractions = parse_fractions(splits) if splits is not None else None
    result = build_manifest(ManifestRequest(folder=folder, layout=layout, out=out, label=label, site=site,
                                            split=split, fractions=fractions, seed=seed, rules=rules,
                                            roi_boxes=roi_boxes, overwrite=overwrite))
    counts = ", ".join(f"{s} {n}" for s, n in result.per_split.items())
    typer.echo(f"manifest: {sum(result.per_split.values())} patients ({counts}) in {result.manifest}")
    typer.echo(f"  build record: {result.record}")
    if result.series_report is not None:
        typer.echo(f"  series report: {result.series_report}")
    if result.left_out:
        typer.echo(f"  {len(result.left_out)} patient(s) left out, series not chosen without guessing: see "
                   "the series report")


def register(app: typer.Typer) -> None:
    """Add ``gbmmet manifest`` to ``app``."""
    app.command("manifest")(manifest)
