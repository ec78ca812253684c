"""Presets, splits and demographics, computed without drawing a single image."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from gbmmet import constants as C
from gbmmet.errors import ConfigError
from gbmmet.synth.cohort import PRESETS, Preset, SiteCohort, build_cohort, get_preset, patient_rng
from gbmmet.synth.render import patient_lesion


def _counts(specs):
    return Counter((s.site, s.split, s.label) for s in specs)


def test_paper_preset_has_the_papers_cohorts():
    specs = build_cohort("paper", seed=0)
    n = _counts(specs)
    internal = [s for s in specs if s.site == C.SITE_INTERNAL]
    external = [s for s in specs if s.site == C.SITE_EXTERNAL]
    assert len(internal) == 598 and len(external) == 143
    assert sum(s.label == C.GBM for s in internal) == 382
    assert sum(s.label == C.MET for s in internal) == 216
    assert (n[(C.SITE_INTERNAL, C.TRAIN, C.GBM)], n[(C.SITE_INTERNAL, C.TRAIN, C.MET)]) == (300, 150)
    assert (n[(C.SITE_INTERNAL, C.VAL, C.GBM)], n[(C.SITE_INTERNAL, C.VAL, C.MET)]) == (32, 16)
    assert (n[(C.SITE_INTERNAL, C.TEST, C.GBM)], n[(C.SITE_INTERNAL, C.TEST, C.MET)]) == (50, 50)
    assert (n[(C.SITE_EXTERNAL, C.EXTERNAL, C.GBM)], n[(C.SITE_EXTERNAL, C.EXTERNAL, C.MET)]) == (100, 43)
    assert len({s.patient_id for s in specs}) == len(specs)


def test_paper_preset_demographics_match_the_paper():
    specs = build_cohort("paper", seed=0)
    ages = np.array([s.age for s in specs])
    # Paper: 57.4 +- 14.7 years, 60 % male (internal); external close to it.
    assert 55.0 < ages.mean() < 60.0
    assert 11.0 < ages.std() < 17.0
    male = np.mean([s.sex == "M" for s in specs])
    assert 0.54 < male < 0.66
    internal = [s for s in specs if s.site == C.SITE_INTERNAL]
    mets = [s for s in internal if s.label == C.MET]
    gbms = [s for s in internal if s.label == C.GBM]
    assert all(s.primary_tumor == "" for s in gbms)
    primaries = Counter(s.primary_tumor for s in mets)
    expected = {"lung": 0.42, "breast": 0.12, "gi": 0.21, "gu": 0.07, "other": 0.18}
    for name, share in expected.items():
        # binomial sd on 216 patients is at most 0.034
        assert abs(primaries[name] / len(mets) - share) < 0.08, (name, primaries)
    infra_gbm = np.mean([s.location == C.INFRA for s in gbms])
    infra_met = np.mean([s.location == C.INFRA for s in mets])
    assert infra_gbm < 0.08  # paper 3.4 %
    assert 0.15 < infra_met < 0.31  # paper 22.7 %


def test_demo_preset_leaves_30_patients_in_each_test_cohort():
    specs = build_cohort("demo", seed=0)
    n = Counter(s.split for s in specs)
    assert n[C.TEST] >= 30 and n[C.EXTERNAL] >= 30
    assert {s.label for s in specs if s.split == C.TEST} == set(C.LABELS)


def test_tiny_preset_is_small_and_covers_every_split():
    specs = build_cohort("tiny", seed=0)
    assert 12 <= len(specs) <= 24
    assert {s.split for s in specs} == set(C.SPLITS)
    # 5-fold CV by patient needs at least 5 training patients of each class.
    train = Counter(s.label for s in specs if s.split == C.TRAIN)
    assert min(train.values()) >= 5


def test_same_seed_same_cohort_other_seed_other_cohort():
    a, b, c = build_cohort("demo", 7), build_cohort("demo", 7), build_cohort("demo", 8)
    assert a == b
    assert a != c


def test_a_patient_depends_only_on_seed_site_and_index():
    specs = build_cohort("demo", seed=3)
    spec = specs[17]
    # Lesion drawn alone, and after drawing every other patient in another order: identical.
    alone = patient_lesion(spec, 0.5)
    for other in reversed(specs):
        patient_lesion(other, 0.5)
    assert patient_lesion(spec, 0.5) == alone
    r1 = patient_rng(3, spec.site, spec.index).random(4)
    r2 = patient_rng(3, spec.site, spec.index).random(4)
    np.testing.assert_array_equal(r1, r2)


def test_growing_a_site_keeps_its_earlier_patients():
    base = get_preset("tiny")
    bigger_counts = tuple((sp, lab, n + 3 if sp == C.TRAIN else n) for sp, lab, n in base.sites[1].counts)
    grown = Preset(name="grown", sites=(base.sites[0], SiteCohort(C.SITE_EXTERNAL, bigger_counts)),
                   template_mm=2.0, voxel_factor=2.0, description="")
    a = {s.patient_id: s for s in build_cohort(base, 0) if s.site == C.SITE_INTERNAL}
    b = {s.patient_id: s for s in build_cohort(grown, 0) if s.site == C.SITE_INTERNAL}
    assert a == b


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ConfigError, match="'preset' parameter must be one of .*Got 'huge'"):
        build_cohort("huge")


@pytest.mark.parametrize(
    "counts, message",
    [
        (((C.TRAIN, C.GBM, -1),), "count must be a whole number >= 0"),
        ((("training", C.GBM, 3),), "split must be one of"),
        (((C.TRAIN, "GLIOMA", 3),), "label must be one of"),
    ],
)
def test_impossible_preset_is_rejected(counts, message):
    preset = Preset(name="bad", sites=(SiteCohort(C.SITE_INTERNAL, counts),), template_mm=2.0,
                    voxel_factor=2.0, description="")
    with pytest.raises(ConfigError, match=message):
        build_cohort(preset)


def test_negative_seed_is_rejected():
    with pytest.raises(ConfigError, match="'seed'"):
        build_cohort("tiny", seed=-1)


def test_every_preset_is_valid():
    for name in PRESETS:
        assert build_cohort(name, 0)
