"""A small real lake for the dashboard, built by the pipeline once per session: the tiny cohort
preprocessed (plus one patient whose CE-T1 file is damaged, so a real failure is recorded),
features, a 3-fold run ``dash``, both sites' reads, and its evaluation."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from gbmmet import constants as C

RUN = "dash"
BROKEN = "A9999"
#: Tables holding nothing but a run's evaluation (its rows keyed by ``run_id``).
EVALUATION_TABLES = (C.TABLE_PATIENT_PREDICTIONS, C.TABLE_METRICS, C.TABLE_DIFFERENCES, C.TABLE_CALIBRATION,
                     C.TABLE_FLOW, C.TABLE_CAMS)


def unevaluated_copy(lake: Path, dest: Path, *leave_out: str) -> Path:
    """A copy of ``lake`` (less the folders ``leave_out``) as if run ``RUN`` had been trained and
    never evaluated: its scoring and evaluation records, rows and simulated reads deleted (one
    commit per table), the catalog rebuilt. Returns ``dest``."""
    from pipelines.evaluate import EVAL_SPLITS
    from storage import catalog
    from storage.lake import Lake

    shutil.copytree(lake, dest, ignore=shutil.ignore_patterns("catalog.duckdb", *leave_out))
    copy = Lake(dest)
    copy.delete(C.TABLE_RUNS, {"run_id": RUN, "kind": ["score", "evaluate"]})
    copy.delete(C.TABLE_SLICE_PREDICTIONS, {"run_id": RUN, C.COL_SPLIT: list(EVAL_SPLITS)})
    for table in EVALUATION_TABLES:
        copy.delete(table, {"run_id": RUN})
    copy.delete(C.TABLE_READS, {C.COL_READ_SOURCE: C.READ_SOURCE_SIMULATED + RUN})
    catalog.refresh(copy)
    return dest


@pytest.fixture(scope="session")
def dash_lake(tiny_lake, tmp_path_factory, ray_local, fast_params) -> Path:
    from gbmmet.evaluation import EvaluationSettings
    from gbmmet.model.backbones import RANDOM18
    from gbmmet.model.train import HeadConfig
    from pipelines.features import run_features
    from pipelines.preprocess import run_preprocess
    from pipelines.readers import import_reads
    from pipelines.run import evaluate_synthetic
    from pipelines.train import run_train

    src, _, cohort = tiny_lake
    root = tmp_path_factory.mktemp("dash")
    lake = root / "lake"
    shutil.copytree(src, lake, ignore=shutil.ignore_patterns("runs", "catalog.duckdb"))
    # one more patient whose CE-T1 is not an image: its failure is what Overview must show
    manifest = cohort / "siteA" / C.MANIFEST_FILE
    rows = list(csv.DictReader(manifest.open()))
    damaged = root / "damaged_t1c.nii.gz"
    damaged.write_bytes(b"this is not a NIfTI file")
    broken = dict(rows[0], **{C.COL_PATIENT_ID: BROKEN, C.COL_T1C_PATH: str(damaged)})
    for key in (C.COL_T2_PATH, C.COL_ROI_PATH):
        broken[key] = str((manifest.parent / broken[key]).resolve())
    extra = root / "broken" / C.MANIFEST_FILE
    extra.parent.mkdir()
    with extra.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerow(broken)
    summary = run_preprocess([extra], lake, params=fast_params, keep_going=True, show_progress=False)
    assert list(summary.failed) == [BROKEN], summary
    assert not run_features(str(lake), backbone=RANDOM18, show_progress=False).failed
    run_train(str(lake), RUN, folds=3, head=HeadConfig(hidden=16, epochs=6, checkpoint_every=3),
              show_progress=False, echo=lambda *_: None)
    for site in ("siteA", "siteB"):
        import_reads(cohort / site / C.READS_FILE, str(lake))
    evaluate_synthetic(str(lake), RUN, settings=EvaluationSettings(n_resamples=200), show_progress=False,
                       echo=lambda *_: None)
    return lake
