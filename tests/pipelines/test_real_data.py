"""Two real BraTS 2018 glioblastoma cases, end to end (files from ../shared/data)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from gbmmet import constants as C
from pipelines.preprocess import run_preprocess
from storage import catalog
from storage.lake import Lake
from tests.conftest import SHARED

BRATS = SHARED / "data" / "brats2018"
CASES = ("Brats18_2013_3_1", "Brats18_TCIA03_265_1")


@pytest.mark.skipif(not BRATS.is_dir(), reason=f"real cases not found at {BRATS} (../shared is absent)")
def test_real_brats_cases_preprocess_end_to_end(tmp_path):
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(C.MANIFEST_COLUMNS))
        w.writeheader()
        for case in CASES:
            d = BRATS / case
            w.writerow({C.COL_PATIENT_ID: case, C.COL_SITE: "brats", C.COL_SPLIT: C.EXTERNAL, C.COL_LABEL: C.GBM,
                        C.COL_T1C_PATH: d / f"{case}_t1ce.nii.gz", C.COL_T2_PATH: d / f"{case}_t2.nii.gz",
                        C.COL_ROI_PATH: d / f"{case}_seg.nii.gz"})
    summary = run_preprocess([manifest], tmp_path / "lake", workers=0, show_progress=False)
    assert sorted(summary.ok) == sorted(CASES) and not summary.failed
    lake = Lake(tmp_path / "lake")
    t = catalog.query(lake, "select patient_id, count(*) n, min(crop_mm) c from slices group by patient_id")
    # BraTS volumes are 1 mm: every axial slice that holds tumour labels becomes an ROI slice
    assert sorted(t.column("n").to_pylist()) == [50, 60]
    runs = catalog.query(lake, "select registration_metric, ws_t1c_sd, ws_t2_sd from preprocess_runs")
    assert all(m < -0.3 for m in runs.column("registration_metric").to_pylist())
    imgs = catalog.query(lake, "select image from slices").column("image").to_pylist()
    arr = np.stack([np.frombuffer(b, np.uint8).reshape(3, 224, 224) for b in imgs])
    # real intensities land inside the fixed WhiteStripe -> uint8 mapping, not piled at its ends
    for ch in (0, 1):
        assert np.mean(arr[:, ch] == 255) < 0.2 and arr[:, ch].std() > 20
