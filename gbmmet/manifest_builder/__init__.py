"""Building a site's manifest from a folder of images (``gbmmet manifest``).

Pure discovery and selection, no writing:

- ``brats``: cases of a BraTS download in the 2018-2021 naming (``<case>/<case>_t1ce.nii.gz``,
  ``_t2``, ``_seg``) or the 2023+ naming (``BraTS-GLI-00000-000-t1c.nii.gz``, ``-t2w``, ``-seg``;
  ``BraTS-MET-...`` for metastases);
- ``dicom``: one folder per patient holding several series; the CE-T1 and the T2 are chosen by
  their DICOM tags under a rules file (``dicom_rules.toml`` ships the defaults), every series'
  fate and reason kept for the report, an ambiguous patient left out;
- ``splits``: a seeded split stratified by site and label, subjects kept whole;
- ``boxes``: ROI boxes for many patients in one CSV (``patient_id`` + ``gbmmet.io.BOX_COLUMNS``).

The command itself (writing the manifest, the reports, validating) is ``pipelines.manifest_cmd``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: Layouts ``gbmmet manifest --layout`` knows.
LAYOUT_BRATS = "brats"
LAYOUT_BRATS_METS = "brats-mets"
LAYOUT_DICOM = "dicom"
LAYOUTS = (LAYOUT_BRATS, LAYOUT_BRATS_METS, LAYOUT_DICOM)


@dataclass(frozen=True)
class Case:
    """One patient found in a folder, ready to become a manifest row.

    ``group`` is what a split keeps together (a subject's several time points); ``roi`` is None
    where the ROI must come from a box file. ``age`` and ``sex`` are empty unless the images
    carry them (DICOM).
    """

    patient_id: str
    label: str
    t1c: Path
    t2: Path
    roi: Path | None
    group: str
    age: int | None = None
    sex: str = ""
