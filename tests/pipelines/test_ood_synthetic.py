"""The out-of-distribution score on synthetic cases that are neither GBM nor MET (issue: know
when not to trust a call): meningiomas, ROIs on normal brain, and patients whose CE-T1 and T2
files are swapped, each against the in-distribution internal test and external patients, with
the detector evaluation fits (training slices; threshold on validation patients) on the backbone
users get offline (EfficientNet-Lite0, ImageNet weights)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from gbmmet import constants as C
from gbmmet.ood import sequence_contrast
from gbmmet.preprocess.patient import preprocess_patient
from gbmmet.synth.ood import OOD_KINDS
from gbmmet.trust import TrustSettings
from pipelines.features import embed, run_features
from pipelines.synth import SynthConfig, run_synth
from pipelines.train import load_feature_matrix
from pipelines.trust import fit_ood, sequence_contrasts
from storage.lake import Lake

pytestmark = pytest.mark.slow
PER_KIND = 8  # the tiny preset's test + external hold 8 patients: as many swapped as it allows, and 8 of each other kind


@pytest.fixture(scope="module")
def scored(tiny_cohort, tiny_lake, tmp_path_factory, fast_params):
    """Patient OOD scores: in-distribution (test + external) and each OOD kind, and the threshold."""
    src, _, _ = tiny_lake
    lake_dir = tmp_path_factory.mktemp("ood") / "lake"
    shutil.copytree(src, lake_dir, ignore=shutil.ignore_patterns("runs", "catalog.duckdb"))
    features = run_features(str(lake_dir), show_progress=False)
    assert not features.failed
    lake = Lake(lake_dir)
    backbone_id = lake.read(C.TABLE_FEATURES, columns=["backbone"]).column("backbone")[0].as_py()
    detector = fit_ood(lake, backbone_id, TrustSettings())
    sp = fast_params.slices
    inside, contrasts = {}, {"in distribution": []}
    for split in (C.TEST, C.EXTERNAL):
        meta, X = load_feature_matrix(lake, backbone_id, split)
        contrast = sequence_contrasts(lake, (split,))
        inside[split] = list(detector.patient_scores(X, meta.column(C.COL_PATIENT_ID).to_numpy(), contrast).values())
        contrasts["in distribution"] += list(contrast.values())
    cohort = tmp_path_factory.mktemp("ood-cohort") / "cohort"
    shutil.copytree(tiny_cohort, cohort)
    result = run_synth(SynthConfig(preset="tiny", out=cohort, seed=0, truth=True, ood=OOD_KINDS, ood_count=PER_KIND),
                       workers=0, show_progress=False)
    assert not result.failed and set(result.ood_manifests) == set(OOD_KINDS)
    outside = {}
    for kind, manifest in result.ood_manifests.items():
        manifest = Path(manifest)
        rows = list(csv.DictReader(manifest.open()))
        assert len(rows) == PER_KIND
        for r in rows:
            out = preprocess_patient(*(str(manifest.parent / r[c]) for c in (C.COL_T1C_PATH, C.COL_T2_PATH,
                                                                              C.COL_ROI_PATH)),
                                     fast_params, patient_id=r[C.COL_PATIENT_ID])
            X, _ = embed(out.images, backbone_id.split("@")[0])
            contrast = sequence_contrast(out.images, sp.channels, sp.ws_range, ["new"] * len(X))
            outside.setdefault(kind, []).append(detector.patient_scores(X, ["new"] * len(X), contrast)["new"])
            contrasts.setdefault(kind, []).append(contrast["new"])
    return inside, outside, detector.threshold_, contrasts


@pytest.mark.parametrize("kind", OOD_KINDS)
def test_the_ood_score_separates_each_synthetic_kind_from_in_distribution_test_patients(scored, kind):
    inside, outside, threshold, _ = scored
    auroc = {}
    for split, scores in inside.items():
        y = np.r_[np.zeros(len(scores)), np.ones(len(outside[kind]))]
        auroc[split] = roc_auc_score(y, np.r_[scores, outside[kind]])
    flagged = np.mean(np.asarray(outside[kind]) > threshold)
    print(f"\nOOD {kind}: AUROC {auroc[C.TEST]:.3f} against the internal test, {auroc[C.EXTERNAL]:.3f} against "
          f"the external site; {flagged:.0%} of {len(outside[kind])} flagged (threshold {threshold:.3f})")
    # The tiny preset trains on 10 patients and tests on 4, too few for the feature distance to reach
    # the bar (AUROC 0.9), which bench/ood.py measures at the demo's scale (meningioma 0.92,
    # no lesion 0.96, swapped 1.00). Here the sequence check must catch every swapped patient, and
    # each other kind rank above most test patients and be flagged more often than they are.
    assert auroc[C.TEST] >= (0.9 if kind == "swapped" else 0.7)  # measured here: 0.78, 0.75, 1.0
    assert flagged > np.mean(np.asarray(inside[C.TEST]) > threshold)
    if kind == "swapped":
        assert flagged == 1.0


def test_the_contrast_is_positive_in_distribution_and_mostly_negative_when_swapped(scored):
    contrasts = scored[3]
    print(f"\nT2 - CE-T1 contrast: in distribution {min(contrasts['in distribution']):.1f} to "
          f"{max(contrasts['in distribution']):.1f}; swapped {sorted(round(c, 1) for c in contrasts['swapped'])}")
    assert min(contrasts["in distribution"]) > 0
    # On the tiny preset's 2 mm grid one swapped patient of 8 stays positive (+12; WhiteStripe looks
    # for white matter in the wrong sequence and can land anywhere): the demo's 10 swapped patients
    # are all negative (-153 to -23) and so are the two real BraTS cases swapped (bench/ood.py, the
    # manual). Here the majority must be, and the test above shows every one is flagged.
    assert np.median(contrasts["swapped"]) < 0
