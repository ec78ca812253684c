"""The ensemble's slice call (the paper): majority vote of the fold models, a tie going to the
mean probability; and the patient's predictive index, the share of slices called GBM."""

from __future__ import annotations

import numpy as np


def ensemble_vote(probs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``probs`` (folds, slices) P(GBM) -> (share of folds voting GBM, mean P(GBM), GBM call)."""
    p = np.asarray(probs)
    share = (p >= 0.5).mean(axis=0)
    mean_p = p.mean(axis=0)
    return share, mean_p, np.where(share == 0.5, mean_p >= 0.5, share > 0.5)
