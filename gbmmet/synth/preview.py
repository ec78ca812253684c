"""A PNG montage of a synthetic cohort, to check by eye that it looks like MR.

For a few GBM and MET patients of each site: the CE-T1 (sampled on the T2 slice, so the
misalignment between the sequences is left as it is), the T2, and the T2 with the ROI rectangle,
all on the T2 slice where the ROI is largest.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from gbmmet import constants as C


def _window(a: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(a, [1.0, 99.5])
    return np.clip((a - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def _rows(site_dir: Path) -> list[dict]:
    with (site_dir / C.MANIFEST_FILE).open() as fh:
        return list(csv.DictReader(fh))


def _largest_roi_slice(folder: Path, r: dict):
    """The T2 slice where the ROI of manifest row ``r`` is largest: (CE-T1 resampled onto it, T2,
    the ROI volume, the slice index, the slice's extent in mm for imshow)."""
    t2 = sitk.ReadImage(str(folder / r[C.COL_T2_PATH]), sitk.sitkFloat32)
    t1 = sitk.ReadImage(str(folder / r[C.COL_T1C_PATH]), sitk.sitkFloat32)
    roi = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / r[C.COL_ROI_PATH])))
    k = int(np.argmax(roi.reshape(roi.shape[0], -1).sum(1)))
    a1 = sitk.GetArrayFromImage(sitk.Resample(t1, t2, sitk.Transform(), sitk.sitkLinear, 0.0))[k]
    a2 = sitk.GetArrayFromImage(t2)[k]
    sx, sy = t2.GetSpacing()[:2]
    return a1, a2, roi, k, (0, a2.shape[1] * sx, a2.shape[0] * sy, 0)


def write_preview(out_dir: Path, path: Path, per_label: int = 2) -> Path:
    """Write the montage of the cohort under ``out_dir`` to ``path``; return ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = []
    for manifest in sorted(Path(out_dir).glob(f"*/{C.MANIFEST_FILE}")):
        rows = _rows(manifest.parent)
        for label in C.LABELS:
            picked = [r for r in rows if r[C.COL_LABEL] == label][:per_label]
            chosen += [(manifest.parent, r) for r in picked]
    if not chosen:
        raise FileNotFoundError(f"no {C.MANIFEST_FILE} under {out_dir}")
    fig, axes = plt.subplots(len(chosen), 3, figsize=(7.5, 2.6 * len(chosen)), squeeze=False)
    fig.patch.set_facecolor("black")
    for row, (site_dir, r) in enumerate(chosen):
        a1, a2, roi, k, extent = _largest_roi_slice(site_dir, r)
        title = f"{r[C.COL_SITE]} {r[C.COL_PATIENT_ID]} {r[C.COL_LABEL]} ({r[C.COL_LOCATION]})"
        for col, (img, name) in enumerate(((a1, "CE-T1"), (a2, "T2"), (a2, "T2 + ROI"))):
            ax = axes[row, col]
            ax.imshow(_window(img), cmap="gray", extent=extent, interpolation="bilinear")
            if col == 2:
                ax.contour(np.linspace(0, extent[1], roi.shape[2]), np.linspace(0, extent[2], roi.shape[1]),
                           roi[k], levels=[0.5], colors="yellow", linewidths=0.8)
            ax.set_title(f"{title}\n{name}, slice {k}" if col == 0 else name, color="white", fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110, facecolor=fig.get_facecolor())
    plt.close(fig)
    return path


def write_ood_preview(manifests: list[Path], path: Path, per_kind: int = 1) -> Path:
    """A montage of OOD patients: CE-T1 (on the T2 slice) and T2 with the ROI outline, one row per
    patient, the first ``per_kind`` of each manifest (``gbmmet.synth.ood`` folders); returns ``path``.

    The slice is the T2 slice where the ROI is largest (swapped: the file named T2 holds the CE-T1).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [(Path(m).parent, r) for m in manifests for r in _rows(Path(m).parent)[:per_kind]]
    if not chosen:
        raise FileNotFoundError(f"no patients in {[str(m) for m in manifests]}")
    fig, axes = plt.subplots(len(chosen), 2, figsize=(5.2, 2.6 * len(chosen)), squeeze=False)
    fig.patch.set_facecolor("black")
    for row, (folder, r) in enumerate(chosen):
        a1, a2, roi, k, extent = _largest_roi_slice(folder, r)
        kind = r.get("ood_kind", "")
        for col, (img, name) in enumerate(((a1, "file t1c"), (a2, "file t2 + ROI"))):
            ax = axes[row, col]
            ax.imshow(_window(img), cmap="gray", extent=extent, interpolation="bilinear")
            if col == 1:
                ax.contour(np.linspace(0, extent[1], roi.shape[2]), np.linspace(0, extent[2], roi.shape[1]),
                           roi[k], levels=[0.5], colors="yellow", linewidths=0.8)
            ax.set_title(f"{kind} {r[C.COL_PATIENT_ID]}: {name}, slice {k}", color="white", fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110, facecolor=fig.get_facecolor())
    plt.close(fig)
    return path
