"""``gbmmet.trust``: the settings, a cohort's rows, the plain-language line, and the property the
default calibration set rests on (out-of-fold single-model indices calibrate sets that cover the
5-fold ensemble's patients), by simulation."""

from __future__ import annotations

import numpy as np
import pytest

from gbmmet import constants as C
from gbmmet.conformal import ClassConditionalConformal
from gbmmet.model.ensemble import ensemble_vote
from gbmmet.trust import (
    DEFER,
    DISAGREES,
    ONE_LABEL,
    UNKNOWN,
    TrustSettings,
    cohort_rows,
    explain,
    labels_of,
)

BOTH = C.GBM + C.SET_SEPARATOR + C.MET


def test_settings_refuse_an_unknown_calibration_set_and_a_deferral_level_not_among_the_levels():
    with pytest.raises(ValueError, match="'calibration'"):
        TrustSettings(calibration="test")
    with pytest.raises(ValueError, match="'deferral_level'"):
        TrustSettings(deferral_level=0.8)
    assert TrustSettings.from_dict(TrustSettings().to_dict()) == TrustSettings()


def test_a_stored_set_reads_back_as_its_labels_and_null_as_no_set():
    assert labels_of(BOTH) == (C.GBM, C.MET) and labels_of("") == () and labels_of(None) is None


def test_the_line_defers_for_two_labels_an_empty_set_or_a_patient_outside_the_training_data():
    assert explain(BOTH, 0.9, False)[0] == DEFER
    assert explain("", 0.9, False)[0] == DEFER
    kind, line = explain(C.MET, 0.9, True, 1.8, 1.2)
    assert kind == DEFER and "distance 1.8 > threshold 1.2" in line and "defer to the readers" in line


def test_the_line_names_each_part_of_the_score_that_flagged_the_patient():
    _, both = explain(C.MET, 0.9, True, 2.5, 1.2, distance=1.5, contrast=-30.0)
    assert "swapped or mislabelled" in both and "distance 1.5 > threshold 1.2" in both
    _, far = explain(C.MET, 0.9, True, 1.5, 1.2, distance=1.5, contrast=40.0)
    assert "distance 1.5 > threshold 1.2" in far and "swapped" not in far
    _, sequences = explain(C.MET, 0.9, True, 2.5, 1.2, distance=0.9, contrast=-30.0)
    assert "T2 - CE-T1 -30 < 0" in sequences and "distance" not in sequences
    assert "melanotic" in sequences  # the rule is not specific: the line says so


def test_the_line_keeps_one_label_and_says_when_it_disagrees_with_the_call_or_nothing_was_computed():
    assert explain(C.MET, 0.9, False, call=C.MET) == (ONE_LABEL, "One label at 90 %: MET.")
    assert explain(C.MET, 0.9, False, call=C.GBM)[0] == DISAGREES
    assert explain(None, 0.9, None)[0] == UNKNOWN


def test_a_cohorts_rows_hold_coverage_per_level_deferral_and_a_curve_ending_at_every_patient_kept():
    calls = [C.GBM, C.GBM, C.MET, C.MET]
    y = [1, 0, 0, 1]
    sets = {0.9: [C.GBM, BOTH, C.MET, C.MET], 0.95: [BOTH, BOTH, C.MET, BOTH]}
    rows, curve, defer = cohort_rows(calls, y, sets, [False, False, True, None], [0.1, 0.9, 0.2, 0.3],
                                     TrustSettings())
    by = {r["metric"]: r for r in rows}
    assert by["conformal_coverage_90"]["value"] == pytest.approx(3 / 4)  # the last GBM got {MET}
    assert by["conformal_two_label_95"]["value"] == pytest.approx(3 / 4)
    assert list(defer.deferred) == [False, True, True, False]  # two labels; out of distribution
    assert by["deferred_share"]["value"] == pytest.approx(0.5)
    assert by["accuracy_kept"]["value"] == pytest.approx(1 / 2)  # kept: right GBM, wrong MET
    assert curve[-1]["x"] == pytest.approx(1.0) and curve[-1]["y"] == pytest.approx(2 / 4)
    assert curve[0]["n"] == 1 and curve[0]["y"] == 1.0  # the most certain patient, right


def _indices(rng, n: int, folds: int, slices: int = 8):
    """Patients of a simulated run: a latent logit per patient, slice and fold noise; the index of
    one fold model (out of fold) or the majority vote of ``folds`` models (the ensemble)."""
    y = rng.integers(0, 2, n)
    z = np.where(y == 1, 1.0, -1.0) + rng.normal(0, 1.2, n)
    index = np.empty(n)
    for i in range(n):
        p = 1 / (1 + np.exp(-(z[i] + rng.normal(0, 1.0, slices)[None, :] + rng.normal(0, 0.7, (folds, slices)))))
        index[i] = (p[0] >= 0.5).mean() if folds == 1 else ensemble_vote(p)[2].mean()
    return index, y


def test_out_of_fold_calibration_covers_the_ensembles_patients_of_each_class_at_about_the_level():
    # The default calibration set is not exactly exchangeable with the ensemble's patients (one
    # fold model's index against the vote of five). Simulated, its class-conditional coverage stays
    # within a few points above the level (measured: 0.914 / 0.924 at 90 %, 0.964 / 0.969 at 95 %).
    rng = np.random.default_rng(0)
    covered = {level: {0: [], 1: []} for level in C.CONFORMAL_LEVELS}
    for _ in range(8):
        cal_index, cal_y = _indices(rng, 300, folds=1)
        test_index, test_y = _indices(rng, 400, folds=5)
        sets = ClassConditionalConformal().fit(cal_index, cal_y).predict_sets(test_index)
        for level, column in sets.items():
            hit = np.array([(C.GBM if t else C.MET) in labels_of(s) for s, t in zip(column, test_y, strict=True)])
            for k in (0, 1):
                covered[level][k].append(hit[test_y == k].mean())
    for level, per_class in covered.items():
        for k, values in per_class.items():
            assert level - 0.01 <= np.mean(values) <= level + 0.05, (level, k, np.mean(values))
