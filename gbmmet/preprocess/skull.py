"""Is an image already skull-stripped?

The rule (``is_skull_stripped``): the share of voxels outside the head mask (``bias.head_mask``:
Otsu foreground, largest component, holes filled) that are exactly zero is at least
``STRIPPED_ZERO_SHARE`` (0.95). An MR magnitude image as acquired has Rician noise in the air
around the head, so almost none of its background voxels are exactly zero; skull-stripping tools
write exact zeros outside the brain. Measured: the two real BraTS 2018 cases (skull-stripped)
0.989 on CE-T1 and T2 alike (native 1 mm grid), and 0.983 and 0.987 on the N4-corrected T2 block-averaged
2x where preprocessing measures it; the ``tiny`` synthetic preset (skull and scalp, noisy
background) 0.0002 and 0.0001. The head's volume does not separate them: the synthetic heads'
masks hold 1.9-2.8 l, a real brain 1.1-1.6 l.

Preprocessing records the verdict (``qc_panels``' measures, the ``skull_stripped`` flag). Where
WhiteStripe is fit does not change with it: inside the head mask eroded by ``head_erosion_mm``
(on a skull-stripped image the mask is the brain, so the fit region is deep brain), outside the
ROI, and, for both sequences, only voxels above 0 (a skull-stripped image's zeros are no tissue;
the T2's fit lacked that guard). Fitting a skull-stripped brain whole was tried and rejected: on
BraTS case TCIA03_265_1 the CE-T1's white-matter peak then sank into a shoulder of the grey
matter's and the stripe moved onto grey matter (stripe mean 101.2 -> 89.9, the QC histogram panel
showed it); eroded, the stripe sits on the white-matter peak.
"""

from __future__ import annotations

import numpy as np

#: Share of exact zeros outside the head at and above which an image counts as skull-stripped.
STRIPPED_ZERO_SHARE = 0.95


def background_zero_share(data: np.ndarray, head: np.ndarray) -> float:
    """Share of the voxels of ``data`` outside the boolean ``head`` mask that are exactly 0
    (NaN where the head fills the whole image)."""
    outside = ~np.asarray(head, dtype=bool)
    n = int(outside.sum())
    if n == 0:
        return float("nan")
    return float(np.count_nonzero(np.asarray(data)[outside] == 0) / n)


def is_skull_stripped(zero_share: float, threshold: float = STRIPPED_ZERO_SHARE) -> bool:
    """The rule (module docstring); an undefined share (NaN) is not skull-stripped."""
    return bool(np.isfinite(zero_share) and zero_share >= threshold)
