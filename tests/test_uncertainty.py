import math

import numpy as np
import pytest

from gbmmet.uncertainty import PatientUncertainty, patient_uncertainty, slice_entropies


def test_entropies_of_a_hand_worked_slice_pair():
    # slice 0: folds say 0.5 and 0.5 -> total 1 bit, aleatoric 1 bit, MI 0
    # slice 1: folds say 0 and 1 -> total H(0.5) = 1 bit, aleatoric 0, MI 1 bit (pure disagreement)
    total, aleatoric, mi = slice_entropies([[0.5, 0.0], [0.5, 1.0]])
    np.testing.assert_allclose(total, [1.0, 1.0])
    np.testing.assert_allclose(aleatoric, [1.0, 0.0])
    np.testing.assert_allclose(mi, [0.0, 1.0])


def test_entropy_of_a_non_trivial_probability_matches_the_formula():
    p = np.array([[0.2], [0.6]])
    h = lambda q: -q * math.log2(q) - (1 - q) * math.log2(1 - q)  # noqa: E731
    total, aleatoric, mi = slice_entropies(p)
    assert total[0] == pytest.approx(h(0.4))
    assert aleatoric[0] == pytest.approx((h(0.2) + h(0.6)) / 2)
    assert mi[0] == pytest.approx(h(0.4) - (h(0.2) + h(0.6)) / 2)


def test_certain_probabilities_give_zero_entropy_without_nan():
    total, aleatoric, mi = slice_entropies(np.array([[0.0, 1.0], [0.0, 1.0]]))
    assert np.all(total == 0) and np.all(aleatoric == 0) and np.all(mi == 0)


def test_mutual_information_is_never_negative(rng):
    # identical folds: MI is 0 up to rounding, clipped to exactly >= 0
    p = np.repeat(rng.uniform(size=(1, 500)), 5, axis=0)
    assert np.all(slice_entropies(p)[2] >= 0)


@pytest.mark.parametrize("bad", [[0.5, 0.2], [[1.2, 0.3]], [[np.nan]]])
def test_malformed_probabilities_are_refused(bad):
    with pytest.raises(ValueError, match="probs"):
        slice_entropies(bad)


def test_patient_uncertainty_by_hand():
    # patient a: 2 slices; fold 0 calls both GBM (index 1), fold 1 one (0.5), fold 2 none (0)
    # -> sd ddof 0 of (1, 0.5, 0) = sqrt(1/6); patient b: one slice all folds agree
    probs = np.array([[0.9, 0.8, 0.1],
                      [0.9, 0.2, 0.1],
                      [0.3, 0.2, 0.1]])
    out = patient_uncertainty(["a", "a", "b"], probs)
    assert list(out) == ["a", "b"]
    assert out["a"].index_fold_sd == pytest.approx(math.sqrt(1 / 6))
    assert out["a"].n_slices == 2
    total, aleatoric, mi = slice_entropies(probs)
    assert out["a"].entropy_total == pytest.approx(total[:2].mean())
    assert out["a"].entropy_aleatoric == pytest.approx(aleatoric[:2].mean())
    assert out["a"].mutual_information == pytest.approx(mi[:2].mean())
    assert out["b"] == PatientUncertainty(0.0, total[2], aleatoric[2], mi[2], 1)


def test_patients_keep_the_order_of_their_first_slice():
    out = patient_uncertainty(["z", "a", "z", "m"], np.full((2, 4), 0.7))
    assert list(out) == ["z", "a", "m"]


def test_patient_ids_must_be_one_per_slice():
    with pytest.raises(ValueError, match="patient_ids"):
        patient_uncertainty(["a"], np.full((2, 3), 0.5))
