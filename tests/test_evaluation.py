"""The evaluation's rules (gbmmet.evaluation) on small arrays with hand-worked answers."""

from __future__ import annotations

import datetime as dt
import warnings

import numpy as np
import pytest

from gbmmet import constants as C
from gbmmet import evaluation as E
from gbmmet.stats import youden_cutoff

FAST = E.EvaluationSettings(n_resamples=200)


def test_predictive_index_is_the_share_of_slices_called_gbm():
    s = E.patient_scores(["a", "a", "a", "a", "b", "b"], [1, 1, 0, 1, 0, 0], [0.9, 0.8, 0.3, 0.6, 0.2, 0.4])
    assert s["a"] == E.PatientScore(4, 0.75, pytest.approx(0.65))
    assert s["b"].index == 0.0 and s["b"].soft_index == pytest.approx(0.3) and s["b"].n_slices == 2


def test_patient_scores_refuse_misaligned_inputs():
    with pytest.raises(ValueError, match="differ in length"):
        E.patient_scores(["a", "b"], [1], [0.5, 0.5])


def test_cutoffs_are_chosen_on_test_for_the_paper_and_on_validation_otherwise():
    test = (np.array([1, 1, 0, 0]), np.array([0.9, 0.6, 0.5, 0.1]))
    val = (np.array([1, 0, 1, 0]), np.array([0.8, 0.7, 0.75, 0.2]))
    cuts, notes = E.choose_cutoffs({C.TEST: test, C.VAL: val})
    assert cuts[C.CUTOFF_PAPER].value == 0.6 and cuts[C.CUTOFF_PAPER].chosen_on == C.TEST
    assert cuts[C.CUTOFF_VAL].value == youden_cutoff(*val) and cuts[C.CUTOFF_VAL].chosen_on == C.VAL
    assert cuts[C.CUTOFF_VAL].n == 4 and cuts[C.CUTOFF_VAL].n_gbm == 2 and not notes


def test_a_validation_split_with_one_class_skips_the_leakage_free_cutoff_with_a_note():
    cuts, notes = E.choose_cutoffs({C.TEST: (np.array([1, 0]), np.array([0.9, 0.1])),
                                    C.VAL: (np.array([1, 1]), np.array([0.9, 0.8]))})
    assert set(cuts) == {C.CUTOFF_PAPER}
    assert "val cohort has 2 GBM and 0 MET" in notes[0]


def test_no_internal_test_of_both_classes_is_an_error():
    with pytest.raises(ValueError, match="test cohort has 1 GBM and 0 MET"):
        E.choose_cutoffs({C.TEST: (np.array([1]), np.array([0.5]))})


def test_the_paper_cutoff_is_rechosen_only_where_it_was_chosen():
    assert E.recut_applies(C.CUTOFF_PAPER, C.TEST, "all")
    assert not E.recut_applies(C.CUTOFF_PAPER, C.EXTERNAL, "all")
    assert not E.recut_applies(C.CUTOFF_PAPER, C.TEST, "location=supra")
    assert not E.recut_applies(C.CUTOFF_VAL, C.TEST, "all")


INFO = {
    "g1": {C.COL_LABEL: C.GBM, C.COL_LOCATION: C.SUPRA, C.COL_PRIMARY: None},
    "g2": {C.COL_LABEL: C.GBM, C.COL_LOCATION: C.INFRA, C.COL_PRIMARY: ""},
    "m1": {C.COL_LABEL: C.MET, C.COL_LOCATION: C.SUPRA, C.COL_PRIMARY: "lung"},
    "m2": {C.COL_LABEL: C.MET, C.COL_LOCATION: C.INFRA, C.COL_PRIMARY: "lung"},
    "m3": {C.COL_LABEL: C.MET, C.COL_LOCATION: C.SUPRA, C.COL_PRIMARY: "breast"},
}


def test_primary_tumour_subgroups_hold_only_that_primarys_mets_and_report_specificity():
    groups = {g.name: g for g in E.subgroups(C.TEST, INFO, INFO)}
    assert groups["primary=lung"].patients == ("m1", "m2")
    assert groups["primary=lung"].metrics == ("specificity",)
    assert groups["primary=breast"].patients == ("m3",)


def test_location_subgroups_keep_every_metric_and_all_patients_of_that_location():
    groups = {g.name: g for g in E.subgroups(C.TEST, INFO, INFO)}
    assert groups["location=supra"].patients == ("g1", "m1", "m3")
    assert groups["location=infra"].patients == ("g2", "m2")
    assert groups["location=supra"].metrics == E.ALL_METRICS
    assert groups["all"].patients == tuple(sorted(INFO))


def test_a_one_class_group_shows_only_the_metrics_defined_on_it():
    assert E.defined_metrics(np.array([0, 0]), E.ALL_METRICS) == ("accuracy", "specificity")
    assert E.defined_metrics(np.array([1, 1]), E.ALL_METRICS) == ("accuracy", "recall")
    assert E.defined_metrics(np.array([1, 0]), E.ALL_METRICS) == E.ALL_METRICS


def test_a_zero_denominator_warns_naming_the_metric_and_the_group():
    y, call = np.array([1, 1, 0, 0]), np.array([0, 0, 0, 0])  # no GBM call: precision is 0/0
    with pytest.warns(RuntimeWarning, match=r"test location=supra \(model\).*precision"):
        rows = E.metric_rows({"subgroup": "location=supra", "rater": "model"}, y, call, None, FAST,
                             where="test location=supra (model)")
    assert all(np.isnan(r["value"]) for r in rows if r["metric"] == "precision")


def test_metric_rows_hold_each_ci_method_and_delong_for_auc_with_the_confusion_counts():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(20, int), np.zeros(20, int)]
    score = np.clip(y * 0.3 + rng.uniform(0, 0.7, 40), 0, 1)
    rows = E.metric_rows({"rater": "model"}, y, score >= 0.5, score, FAST)
    acc = [r for r in rows if r["metric"] == "accuracy"]
    assert {r["ci_choice"] for r in acc} == set(C.CI_METHODS)
    assert {r["ci_choice"] for r in rows if r["metric"] == "auc"} == set(C.CI_METHODS) | {C.CI_DELONG}
    want = np.mean((score >= 0.5) == y)
    assert all(r["value"] == pytest.approx(want) and r["ci_low"] <= want <= r["ci_high"] for r in acc)
    assert acc[0]["tp"] + acc[0]["fn"] == 20 and acc[0]["n"] == 40 and acc[0]["n_gbm"] == 20


def test_rechoosing_the_cutoff_computes_calls_from_the_score_at_youdens_optimum():
    y = np.array([1, 1, 1, 0, 0, 0])
    score = np.array([0.9, 0.7, 0.4, 0.5, 0.2, 0.1])
    rows = E.metric_rows({}, y, np.zeros(6, int), score, FAST, names=("accuracy",), choose_cutoff=youden_cutoff)
    cut = youden_cutoff(y, score)
    assert rows[0]["value"] == pytest.approx(np.mean((score >= cut) == y))


def test_signed_confidence_needs_a_confidence_on_every_read():
    np.testing.assert_array_equal(E.signed_confidence([C.GBM, C.MET], [5, 2]), [5.0, -2.0])
    assert E.signed_confidence([C.GBM, C.MET], [5, None]) is None


def test_intention_to_diagnose_counts_unprocessed_patients_as_wrong():
    y, call = E.intention_to_diagnose([1, 0], [1, 0], [1, 0])
    np.testing.assert_array_equal(y, [1, 0, 1, 0])
    np.testing.assert_array_equal(call, [1, 0, 0, 1])  # the GBM missed, the MET called GBM


def _rater(name, patients, call, score=None, signed=None):
    return E.Rater(name, tuple(patients), np.asarray(call), None if score is None else np.asarray(score), signed)


def test_paired_differences_equal_the_metric_differences_and_name_their_tests():
    ps = [f"p{i}" for i in range(8)]
    labels = dict(zip(ps, [1, 1, 1, 1, 0, 0, 0, 0], strict=True))
    model = _rater("model@x", ps, [1, 1, 1, 0, 0, 0, 0, 1], [0.9, 0.8, 0.7, 0.4, 0.3, 0.2, 0.1, 0.6])
    reader = _rater("reader1", ps, [1, 0, 1, 0, 0, 1, 0, 0])
    rows = {r["metric"]: r for r in E.paired_differences(C.TEST, model, reader, labels, FAST)}
    assert rows["accuracy"]["diff"] == pytest.approx(6 / 8 - 5 / 8)
    assert rows["recall"]["diff"] == pytest.approx(3 / 4 - 2 / 4)
    assert rows["specificity"]["diff"] == pytest.approx(3 / 4 - 3 / 4)
    assert rows["recall"]["note"].startswith("McNemar on GBMs")
    assert rows["specificity"]["note"].startswith("McNemar on METs")
    assert rows["auc"]["test"] == "delong" and "reader1: binary calls" in rows["auc"]["note"]
    assert C.AUC_CONFIDENCE not in rows  # the reader gave no confidences


def test_paired_differences_use_only_patients_both_raters_read():
    ps = [f"p{i}" for i in range(6)]
    labels = dict(zip(ps, [1, 1, 1, 0, 0, 0], strict=True))
    model = _rater("m", ps, [1, 1, 0, 0, 0, 1], [0.9, 0.8, 0.4, 0.3, 0.2, 0.6])
    reader = _rater("r", ps[:5], [1, 1, 1, 0, 1])
    rows = E.paired_differences(C.TEST, model, reader, labels, FAST)
    assert {r["n"] for r in rows} == {5}


def test_auc_confidence_difference_says_it_used_the_signed_calls():
    ps = [f"p{i}" for i in range(6)]
    labels = dict(zip(ps, [1, 1, 1, 0, 0, 0], strict=True))
    model = _rater("m", ps, [1, 1, 0, 0, 0, 1], [0.9, 0.8, 0.4, 0.3, 0.2, 0.6])
    reader = _rater("r", ps, [1, 1, 0, 0, 1, 0], signed=np.array([5.0, 3, -2, -4, 2, -5]))
    row = [r for r in E.paired_differences(C.TEST, model, reader, labels, FAST) if r["metric"] == C.AUC_CONFIDENCE][0]
    assert "calls signed by confidence" in row["note"]


def test_paired_differences_report_only_the_metrics_asked_for():
    ps = [f"p{i}" for i in range(6)]
    labels = dict(zip(ps, [1, 1, 1, 0, 0, 0], strict=True))
    model = _rater("model", ps, [1, 1, 0, 0, 0, 1], [0.9, 0.8, 0.4, 0.3, 0.2, 0.6])
    reader = _rater("r", ps, [1, 1, 0, 0, 1, 0], signed=np.array([5.0, 3, -2, -4, 2, -5]))
    assert [r["metric"] for r in E.paired_differences(C.TEST, model, reader, labels, FAST, names=("auc",))] == \
        ["auc", C.AUC_CONFIDENCE]
    assert [r["metric"] for r in E.paired_differences(C.TEST, model, reader, labels, FAST, names=("recall",))] == \
        ["recall"]


def test_holm_adjustment_over_a_family_flags_the_primary_comparison():
    rows = [{"a": "model@x", "b": "reader1", "metric": "accuracy", "p": 0.01},
            {"a": "model@x", "b": "reader1", "metric": "recall", "p": 0.04},
            {"a": "model@x", "b": "reader2", "metric": "accuracy", "p": 0.03},
            {"a": "model@x", "b": "reader2", "metric": "auc", "p": None}]
    E.adjust_family(rows, E.PrimaryComparison("model@x", "reader1", "accuracy"))
    # Holm by hand: sorted 0.01, 0.03, 0.04 -> 3 x 0.01, max(0.03, 2 x 0.03), max(0.06, 1 x 0.04)
    assert [r["p_holm"] for r in rows[:3]] == pytest.approx([0.03, 0.06, 0.06])
    assert rows[3]["p_holm"] is None and rows[0]["family_size"] == 3
    assert [r["is_primary"] for r in rows] == [True, False, False, False]


ATTEMPTS = [
    {C.COL_PATIENT_ID: "a", C.COL_SITE: "s1", C.COL_SPLIT: C.TEST, C.COL_LABEL: C.GBM, "status": "failed",
     "error_kind": "ImageReadError", "started_at": dt.datetime(2026, 1, 1)},
    {C.COL_PATIENT_ID: "a", C.COL_SITE: "s1", C.COL_SPLIT: C.TEST, C.COL_LABEL: C.GBM, "status": "ok",
     "error_kind": None, "started_at": dt.datetime(2026, 1, 2)},
    {C.COL_PATIENT_ID: "b", C.COL_SITE: "s1", C.COL_SPLIT: C.TEST, C.COL_LABEL: C.MET, "status": "failed",
     "error_kind": "ImageReadError", "started_at": dt.datetime(2026, 1, 2)},
    {C.COL_PATIENT_ID: "c", C.COL_SITE: "s1", C.COL_SPLIT: C.TEST, C.COL_LABEL: C.MET, "status": "ok",
     "error_kind": None, "started_at": None},
]


def test_patient_flow_counts_each_patient_once_by_its_latest_attempt():
    rows = E.patient_flow(ATTEMPTS, {"a", "c"}, {"reader1": {"a"}})
    got = {(r["stage"], r["detail"]): r["n"] for r in rows}
    assert got == {("in_manifest", ""): 3, ("preprocessed", ""): 2, ("failed", "ImageReadError"): 1,
                   ("evaluated", ""): 2, ("read", "reader1"): 1}


def test_unprocessed_labels_are_those_of_patients_whose_latest_attempt_failed():
    np.testing.assert_array_equal(E.unprocessed_labels(ATTEMPTS, C.TEST), [0])
    assert len(E.unprocessed_labels(ATTEMPTS, C.EXTERNAL)) == 0


def test_calibration_rows_give_reliability_and_decision_curves_and_a_summary():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 0.95, 200)
    y = (rng.uniform(size=200) < p).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows, summary = E.calibration_rows(C.TEST, y, p, FAST)
    assert sum(r["n"] for r in rows if r["curve"] == "reliability") == 200
    decision = [r for r in rows if r["curve"] == "decision"]
    assert [r["x"] for r in decision] == list(FAST.decision_thresholds)
    assert summary["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert abs(summary["calibration_slope"] - 1) < 0.5


def test_settings_round_trip_and_reject_bad_values():
    s = E.EvaluationSettings(n_resamples=500, primary=E.PrimaryComparison("model@a", "reader2", "auc"))
    assert E.EvaluationSettings.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="'n_resamples' parameter"):
        E.EvaluationSettings(n_resamples=10)
    with pytest.raises(ValueError, match="primary comparison's metric"):
        E.EvaluationSettings(primary=E.PrimaryComparison(metric="f1"))
