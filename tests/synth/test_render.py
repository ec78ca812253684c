"""Rendering helpers (``render``): lesion-part labels, truth maps made on demand."""

from __future__ import annotations

import numpy as np

from gbmmet.constants import T1C, T2
from gbmmet.synth import lesion as L
from gbmmet.synth.render import TruthLabels, _part_labels


def test_part_labels_are_the_largest_part_first_of_equals():
    rng = np.random.default_rng(0)
    shape = (20, 30, 40)
    parts = [np.round(rng.random(shape, dtype=np.float32) * 4) / 8 for _ in range(6)]  # many ties
    tissue = rng.integers(0, 8, shape).astype(np.uint8)
    stack = np.stack(parts)
    codes = np.array([L.LABEL_CSF, L.LABEL_GM, L.LABEL_WM, L.LABEL_EDEMA, L.LABEL_ENHANCING,
                      L.LABEL_NECROSIS], np.uint8)
    expected = np.where(stack.sum(0) >= 0.5, codes[stack.argmax(0)], tissue)
    np.testing.assert_array_equal(_part_labels(*parts, tissue), expected)


def test_truth_labels_are_made_once_on_first_use_and_swap_with_the_sequences():
    made = []
    truth = TruthLabels(lambda seq: made.append(seq) or seq)
    assert made == []
    assert truth(T2) == T2 and truth(T2) == T2
    assert made == [T2]
    assert truth.swapped()(T1C) == T2 and made == [T2]
