import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from gbmmet.ood import OodDetector, OodSettings

WIDTH, SLICES = 16, 3


def _cohort(rng, n_patients: int, mean) -> tuple[np.ndarray, list[str]]:
    """Non-negative-ish features around ``mean`` (as pooled backbone features are), 3 slices each."""
    x = rng.normal(size=(n_patients * SLICES, WIDTH)) + mean
    ids = [f"p{i}" for i in range(n_patients) for _ in range(SLICES)]
    return x, ids


IN_MEAN = np.full(WIDTH, 3.0)
# the shifted cluster points elsewhere (knn works on directions): half the features off, half up
SHIFT_MEAN = np.where(np.arange(WIDTH) % 2 == 0, 0.0, 5.0)


@pytest.mark.parametrize("method", ["knn", "mahalanobis"])
def test_both_methods_separate_a_shifted_cluster(rng, method):
    train, _ = _cohort(rng, 100, IN_MEAN)
    ref, ref_ids = _cohort(rng, 40, IN_MEAN)
    det = OodDetector(OodSettings(method=method)).fit(train, ref, ref_ids)
    fresh, fresh_ids = _cohort(rng, 50, IN_MEAN)
    shifted, shifted_ids = _cohort(rng, 50, SHIFT_MEAN)
    s_in = list(det.patient_scores(fresh, fresh_ids).values())
    s_out = list(det.patient_scores(shifted, shifted_ids).values())
    auroc = roc_auc_score([0] * len(s_in) + [1] * len(s_out), s_in + s_out)
    assert auroc > 0.95


@pytest.mark.parametrize("method", ["knn", "mahalanobis"])
def test_the_threshold_flags_about_five_percent_of_fresh_in_distribution_patients(rng, method):
    # 2,000 reference patients, 4,000 fresh ones, same distribution. With numpy "higher" the threshold
    # is the 1901st of 2000 reference scores: P(fresh > it) = 100 / 2001 on average. The flagged share
    # varies with the threshold (Beta tail, sd ~ sqrt(p q / m_ref)) and with the fresh draw (binomial,
    # sd ~ sqrt(p q / n_fresh)): 4 sd of both, a bound missed with probability < 1e-4.
    n_ref, n_fresh = 2000, 4000
    train, _ = _cohort(rng, 200, IN_MEAN)
    ref, ref_ids = _cohort(rng, n_ref, IN_MEAN)
    det = OodDetector(OodSettings(method=method, quantile=0.95)).fit(train, ref, ref_ids)
    fresh, fresh_ids = _cohort(rng, n_fresh, IN_MEAN)
    flagged = np.mean([det.flag(s) for s in det.patient_scores(fresh, fresh_ids).values()])
    p = 100 / 2001
    tolerance = 4 * np.sqrt(p * (1 - p) * (1 / n_ref + 1 / n_fresh))
    assert abs(flagged - p) < tolerance


def test_knn_score_is_the_distance_to_the_kth_nearest_normalised_training_slice():
    train = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    det = OodDetector(OodSettings(k=2)).fit(train, train[:1], ["r"])
    # query (2, 0) normalises to (1, 0): distances 0, |(1,0)-(0.707,0.707)| = 0.765, sqrt 2
    assert det.slice_scores([[2.0, 0.0]])[0] == pytest.approx(np.sqrt((1 - 2 ** -0.5) ** 2 + 0.5))


def test_k_is_capped_at_the_number_of_training_slices():
    train = np.array([[1.0, 0.0], [0.0, 1.0]])
    det = OodDetector(OodSettings(k=10)).fit(train, train, ["a", "b"])
    assert det.summary()["k"] == 2
    assert det.slice_scores([[1.0, 0.0]])[0] == pytest.approx(np.sqrt(2))


def test_patient_score_is_the_mean_of_its_slices():
    train = np.array([[1.0, 0.0], [0.0, 1.0]])
    det = OodDetector(OodSettings(k=1)).fit(train, train, ["a", "b"])
    x = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    scores = det.slice_scores(x)
    out = det.patient_scores(x, ["q", "q", "w"])
    assert out == pytest.approx({"q": scores[:2].mean(), "w": scores[2]})


def test_threshold_is_the_higher_quantile_of_reference_patients_and_flag_is_strictly_above(rng):
    train, _ = _cohort(rng, 20, IN_MEAN)
    ref, ref_ids = _cohort(rng, 10, IN_MEAN)
    det = OodDetector(OodSettings(quantile=0.95)).fit(train, ref, ref_ids)
    ref_scores = sorted(det.patient_scores(ref, ref_ids).values())
    assert det.threshold_ == ref_scores[-1]  # ceil(0.95 * 9) = 9: the largest of ten
    assert not det.flag(det.threshold_) and det.flag(det.threshold_ + 1e-9)


def test_summary_is_json_able(rng):
    train, _ = _cohort(rng, 10, IN_MEAN)
    ref, ref_ids = _cohort(rng, 4, IN_MEAN)
    summary = OodDetector(OodSettings(method="mahalanobis")).fit(train, ref, ref_ids).summary()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["n_train_slices"] == 30 and summary["n_reference_patients"] == 4
    assert summary["method"] == "mahalanobis"


@pytest.mark.parametrize("kwargs", [{"method": "lof"}, {"k": 0}, {"quantile": 1.0}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        OodSettings(**kwargs)


def test_no_training_rows_are_refused():
    with pytest.raises(ValueError, match="training slice"):
        OodDetector().fit(np.zeros((0, 4)), np.ones((2, 4)), ["a", "b"])


def test_mismatched_widths_are_refused():
    det = OodDetector()
    with pytest.raises(ValueError, match="fitted on 4"):
        det.fit(np.ones((3, 4)), np.ones((2, 5)), ["a", "b"])
    det.fit(np.eye(4), np.eye(4)[:2], ["a", "b"])
    with pytest.raises(ValueError, match="fitted on 4"):
        det.slice_scores(np.ones((1, 3)))


def test_using_the_detector_before_fit_says_so():
    with pytest.raises(ValueError, match="not fitted yet"):
        OodDetector().patient_scores(np.ones((1, 3)), ["a"])
    with pytest.raises(ValueError, match="not fitted yet"):
        OodDetector().slice_scores(np.ones((1, 3)))
