import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from gbmmet.ood import FEATURES, SEQUENCES, OodDetector, OodSettings, ood_reasons, sequence_contrast

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


# -- the sequence check -----------------------------------------------------------------------
RANGES = {"t1c": (-160.0, 160.0), "t2": (-110.0, 150.0)}  # the default SliceParams.ws_range


def test_sequence_contrast_is_the_mean_t2_minus_ce_t1_in_whitestripe_units_per_patient():
    # bytes b map to lo + b (hi - lo) / 255: CE-T1 byte 51 = -96, T2 byte 255 = +150, T2 byte 51 = -58
    images = np.full((3, 3, 2, 2), 51, np.uint8)
    images[:2, 1] = 255
    out = sequence_contrast(images, ("t1c", "t2", "t2"), RANGES, ["a", "a", "b"])
    assert out == pytest.approx({"a": 150.0 + 96.0, "b": -58.0 + 96.0})


def test_sequence_contrast_leaves_out_background_pixels_at_the_byte_floor():
    images = np.full((1, 3, 2, 2), 51, np.uint8)
    images[0, 1] = 255  # T2 +150 against CE-T1 -96: 246 where both are inside the head
    images[0, :, 0, :] = 0  # a row of air in both sequences: it would add (-110) - (-160) = +50
    images[0, 0, 1, 0] = 0  # CSF: CE-T1 at the floor (-160), T2 bright (+150): kept, 310
    out = sequence_contrast(images, ("t1c", "t2", "t2"), RANGES, ["a"])
    assert out["a"] == pytest.approx((246.0 + 310.0) / 2)
    assert np.isnan(sequence_contrast(np.zeros((1, 3, 2, 2), np.uint8), ("t1c", "t2", "t2"), RANGES, ["z"])["z"])


def test_sequence_contrast_reads_the_channels_where_the_settings_put_them():
    images = np.full((1, 2, 1, 1), 51, np.uint8)
    images[0, 0] = 255  # T2 here: +150
    out = sequence_contrast(images, ("t2", "t1c"), RANGES, ["a"])  # CE-T1 byte 51: -96
    assert out["a"] == pytest.approx(246.0)


def test_contrast_from_slice_sums_made_in_separate_batches_is_the_contrast_of_all_slices_at_once(rng):
    from gbmmet.ood import contrast_by_patient, contrast_sums

    images = rng.integers(0, 256, (9, 3, 4, 4), dtype=np.uint8)
    images[4, :, :2] = 0  # background in one slice: its pixel count differs from the others'
    pids = ["a", "a", "b", "a", "b", "c", "c", "b", "a"]
    channels = ("t1c", "t2", "t2")
    parts = [contrast_sums(images[i:j], channels, RANGES) for i, j in ((0, 2), (2, 7), (7, 9))]
    sums, pixels = (np.concatenate([p[k] for p in parts]) for k in (0, 1))
    assert pixels[4] == 8 and pixels[0] == 16
    assert contrast_by_patient(sums, pixels, pids) == pytest.approx(sequence_contrast(images, channels, RANGES, pids))


def test_sequence_contrast_refuses_slices_without_both_sequences():
    with pytest.raises(ValueError, match="'t1c' channel"):
        sequence_contrast(np.zeros((1, 2, 1, 1), np.uint8), ("t2", "t2"), RANGES, ["a"])
    with pytest.raises(ValueError, match="shape"):
        sequence_contrast(np.zeros((1, 3, 1), np.uint8), ("t1c", "t2", "t2"), RANGES, ["a"])


def _fitted(contrast=None) -> OodDetector:
    train = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    return OodDetector(OodSettings(k=1)).fit(train, train[:2] + 0.1, ["r1", "r2"], contrast)


def test_the_sequence_part_crosses_the_threshold_exactly_where_the_contrast_turns_negative():
    det = _fitted({"r1": 40.0, "r2": 60.0, "other": -500.0})  # scale: the reference patients' median, 50
    assert det.contrast_scale_ == pytest.approx(50.0)
    t = det.threshold_
    assert det.combine(0.0, 0.0) == pytest.approx(t)
    assert det.combine(0.0, -50.0) == pytest.approx(2 * t)  # as far below 0 as the median is above
    assert det.combine(0.0, 25.0) == pytest.approx(t / 2)
    assert det.combine(3 * t, -50.0) == pytest.approx(3 * t)  # the larger of the two parts
    assert det.flag(det.combine(0.0, -1e-6)) and not det.flag(det.combine(0.0, 1e-6))


def test_without_a_usable_contrast_the_score_is_the_distance():
    for contrast in (None, {"r1": -5.0, "r2": -1.0}):  # no contrast; a median that is not positive
        det = _fitted(contrast)
        assert det.contrast_scale_ is None
        assert det.combine(0.3, -100.0) == 0.3
    assert _fitted({"r1": 40.0, "r2": 60.0}).combine(0.3, float("nan")) == 0.3


def test_patient_scores_combine_each_patients_distance_with_its_contrast():
    det = _fitted({"r1": 40.0, "r2": 60.0})
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    distances = det.patient_distances(x, ["a", "b"])
    scores = det.patient_scores(x, ["a", "b"], {"a": -50.0})
    assert scores == pytest.approx({"a": max(distances["a"], 2 * det.threshold_), "b": distances["b"]})


def test_reasons_name_the_part_that_crossed():
    det = _fitted({"r1": 40.0, "r2": 60.0})
    t = det.threshold_
    assert det.reasons(t + 1, 10.0) == (FEATURES,)
    assert det.reasons(t / 2, -10.0) == (SEQUENCES,)
    assert det.reasons(t + 1, -10.0) == (FEATURES, SEQUENCES)
    assert det.reasons(t, 10.0) == ()


def test_a_scale_recorded_by_an_earlier_fit_can_be_given_as_a_number():
    det = _fitted(50.0)
    assert det.contrast_scale_ == 50.0 and det.reference_contrast_ == {}
    assert det.combine(0.0, -50.0) == pytest.approx(2 * det.threshold_)
    assert _fitted(0.0).contrast_scale_ is None


def test_reference_contrasts_that_are_missing_are_skipped():
    det = _fitted({"r1": None, "r2": 60.0})
    assert det.reference_contrast_ == {"r2": 60.0} and det.contrast_scale_ == 60.0


def test_ood_reasons_ignore_what_is_missing():
    assert ood_reasons(2.0, -1.0, 1.0) == (FEATURES, SEQUENCES)
    assert ood_reasons(None, None, 1.0) == () and ood_reasons(float("nan"), float("nan"), 1.0) == ()
    assert ood_reasons(2.0, None, None) == ()
