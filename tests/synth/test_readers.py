"""Simulated readers: operating points near the paper's, errors on the hard cases."""

from __future__ import annotations

import numpy as np
import pytest

from gbmmet import constants as C
from gbmmet.synth.cohort import build_cohort
from gbmmet.synth.lesion import sample_lesion_params, typicality
from gbmmet.synth.readers import binary_auc, simulate_reads
from gbmmet.synth.render import patient_reads
from gbmmet.synth.sites import get_site


def _population(site: str, n: int, seed: int):
    profile = get_site(site)
    rng = np.random.default_rng(seed)
    rows = []
    for label in C.LABELS:
        for _ in range(n):
            loc = C.INFRA if rng.random() < profile.infra_rate[label] else C.SUPRA
            lesion = sample_lesion_params(rng, label, loc, None)
            t = (1 if label == C.GBM else -1) * typicality(lesion, 0.5)
            for r in simulate_reads(rng, site, label, lesion, 0.5):
                rows.append({**r, "label": label, "toward_truth": t})
    return rows


def _sens_spec(rows, reader, assisted):
    sel = [r for r in rows if r["reader_id"] == reader and r["assisted"] == assisted]
    gbm = [r["call"] == C.GBM for r in sel if r["label"] == C.GBM]
    met = [r["call"] == C.MET for r in sel if r["label"] == C.MET]
    return float(np.mean(gbm)), float(np.mean(met))


@pytest.mark.parametrize("site", [C.SITE_INTERNAL, C.SITE_EXTERNAL])
def test_operating_points_match_the_profile(site):
    rows = _population(site, 2500, seed=99)
    for reader, prof in get_site(site).readers.items():
        for assisted, target in ((False, prof.unassisted), (True, prof.assisted)):
            sens, spec = _sens_spec(rows, reader, assisted)
            assert abs(sens - target[0]) < 0.025, (reader, assisted, sens, target)
            assert abs(spec - target[1]) < 0.025, (reader, assisted, spec, target)


def test_paper_reader_aucs_are_reproduced_internally():
    rows = _population(C.SITE_INTERNAL, 2500, seed=7)
    auc = {(r, a): binary_auc(*_sens_spec(rows, r, a)) for r in ("reader1", "reader2") for a in (False, True)}
    assert auc[("reader1", False)] == pytest.approx(0.889, abs=0.02)
    assert auc[("reader2", False)] == pytest.approx(0.768, abs=0.02)
    assert auc[("reader1", True)] == pytest.approx(0.920, abs=0.02)
    assert auc[("reader2", True)] == pytest.approx(0.910, abs=0.02)


def test_errors_fall_on_atypical_cases_not_coin_flips():
    rows = _population(C.SITE_INTERNAL, 1500, seed=3)
    for reader in ("reader1", "reader2"):
        sel = [r for r in rows if r["reader_id"] == reader and not r["assisted"]]
        wrong = np.array([r["toward_truth"] for r in sel if r["call"] != r["label"]])
        right = np.array([r["toward_truth"] for r in sel if r["call"] == r["label"]])
        pooled_sd = np.concatenate([wrong, right]).std()
        # misread patients look much less like their true class than correctly read ones
        assert right.mean() - wrong.mean() > 0.8 * pooled_sd
        # the less typical half of the patients holds most of the errors
        t = np.array([r["toward_truth"] for r in sel])
        err = np.array([r["call"] != r["label"] for r in sel])
        atypical = t < np.median(t)
        assert err[atypical].sum() > 2.5 * err[~atypical].sum()


def test_assistance_only_corrects_errors():
    rows = _population(C.SITE_EXTERNAL, 800, seed=5)
    for reader in ("reader1", "reader2"):
        un = [r for r in rows if r["reader_id"] == reader and not r["assisted"]]
        asst = [r for r in rows if r["reader_id"] == reader and r["assisted"]]
        assert len(un) == len(asst)
        for u, a in zip(un, asst, strict=True):
            if u["call"] == u["label"]:
                assert a["call"] == a["label"]
        assert sum(a["call"] != a["label"] for a in asst) < sum(u["call"] != u["label"] for u in un)


def test_confidence_is_lower_on_errors():
    rows = _population(C.SITE_INTERNAL, 1000, seed=11)
    wrong = np.mean([r["confidence"] for r in rows if r["call"] != r["label"]])
    right = np.mean([r["confidence"] for r in rows if r["call"] == r["label"]])
    assert set(r["confidence"] for r in rows) <= {1, 2, 3, 4, 5}
    assert right > wrong + 0.5


def test_paper_preset_reads_land_near_the_papers_aucs():
    specs = build_cohort("paper", seed=0)
    for cohort, targets in ((C.TEST, (0.889, 0.768)), (C.EXTERNAL, (0.857, 0.708))):
        sel = [s for s in specs if s.split == cohort]
        label = {s.patient_id: s.label for s in sel}
        reads = [r for s in sel for r in patient_reads(s)]
        for reader, target in zip(("reader1", "reader2"), targets, strict=True):
            aucs = {}
            for assisted in (False, True):
                rr = [r for r in reads if r["reader_id"] == reader and r["assisted"] == assisted]
                sens = np.mean([r["call"] == C.GBM for r in rr if label[r["patient_id"]] == C.GBM])
                spec = np.mean([r["call"] == C.MET for r in rr if label[r["patient_id"]] == C.MET])
                aucs[assisted] = binary_auc(sens, spec)
            # 100-143 patients: sampling sd of a binary AUC is about 0.03-0.04
            assert abs(aucs[False] - target) < 0.09, (cohort, reader, aucs)
            assert aucs[True] >= aucs[False]
