"""Preprocessing parameters: typed, frozen, recorded with every run and hashed.

The hash (``params_hash``) keys what is done in the lake: re-running with the same inputs and the
same hash skips a patient, changing any parameter reprocesses it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

#: Bumped when the preprocessing code changes what it writes for the same parameters.
PREPROCESS_VERSION = "2"


@dataclass(frozen=True)
class N4Params:
    backend: str = "sitk"  # "sitk" (default: 3-6x faster here, see README) or "ants"
    # 6: N4 2.0 s instead of 3.9 s per demo patient; the stored slices move by 0.4-3.4 uint8 levels
    # on average against shrink 4, no more than shrink 8 moves them (N4's own spread across
    # shrink factors); measured on 4 demo patients (README, issue 5 note).
    shrink: int = 6
    # Two fitting levels; (20, 20) was 3x faster than (50, 40, 30), same field to 0.5 %. (15, 15):
    # 0.25 s less per demo patient; with the other issue 15 changes the stored slices move by
    # 0.6-2.4 uint8 levels on average (99th percentile 2-7) against (20, 20), less than N4 shrink
    # 4 -> 6 moved the same 6 patients (0.4-3.4, 99th percentile 2-10).
    iterations: tuple[int, ...] = (15, 15)
    convergence: float = 1e-4
    # The Otsu head mask N4 fits inside, computed on a copy block-averaged to about this spacing
    # (mm) rather than on the full image (0): 0.1 s instead of 0.5 s per demo patient (issue 15).
    mask_mm: float = 2.0
    # The fitted log field evaluated on a grid of about this spacing (mm) and interpolated linearly
    # onto the image, instead of evaluating the B-spline at every voxel (0: at every voxel): 0.1 s
    # instead of 0.33 s per demo patient; the field differs by under 0.01 % (issue 15).
    field_mm: float = 3.0


@dataclass(frozen=True)
class RegistrationParams:
    # Registered on block-averaged copies at this resolution: as accurate as on the 1 mm grid
    # here (mean residual 0.2-0.3 mm on synthetic truth) at a third of the time.
    resolution_mm: float = 2.0
    shrink: tuple[int, ...] = (2, 1)  # multi-resolution pyramid on that grid: 4 mm, then 2 mm
    smoothing_mm: tuple[float, ...] = (2.0, 1.0)
    # Share of voxels sampled by the metric (seeded). 5 % would save another 0.3 s per demo patient
    # at the same residual, but it moved the final Mattes value of one same-patient pair of the tiny
    # preset to a robust z of 3.5, the registration QC's cut-off (3.1 before): too little margin.
    sampling: float = 0.10
    # "regular": the samples on a regular grid, each moved at random within its voxel (seeded);
    # "random": anywhere. Regular: 0.15 s less per demo patient (fewer interpolations of the fixed
    # image), the same residual, and the tiny preset's same-patient pairs at robust z 2.7 at most.
    sampling_strategy: str = "regular"
    bins: int = 32  # Mattes mutual information histogram bins
    iterations: int = 200
    # The optimizer stops when its step falls under this (mm, by the physical-shift scales): 0.01
    # mm is far below the 1 mm the registration must reach and stops it 5-10 iterations sooner.
    min_step: float = 0.01
    # Mattes' gradients from gradient images of the whole images (True) or at the sampled points
    # only (False: with 10 % sampling, most of the gradient images would go unused). With the
    # minimum step and the regular sampling: the step 0.65 s instead of 1.1 s per demo patient
    # (issue 15).
    gradient_filter: bool = False
    seed: int = 42
    threads: int = 1  # fixed, so the result does not depend on the machine's core count


@dataclass(frozen=True)
class WhiteStripeParams:
    width: float = 0.05  # quantile half-width of the stripe (intensity-normalization's default)
    head_erosion_mm: float = 12.0  # fit inside the head eroded by this: no scalp fat or skull
    roi_margin_mm: float = 5.0  # the lesion ROI grown by this is excluded from the fit
    kde_samples: int = 200_000  # voxels used for the KDE mode search (strided, deterministic)
    # The KDE evaluated from a histogram of this many bins over the samples' range instead of from
    # every sample (None: from every sample, as intensity-normalization does): 0.01 s instead of
    # 0.2 s per sequence; the density differs by under 1e-4 of its peak, the mode found is the
    # same (``whitestripe.tissue_mode``).
    kde_bins: int | None = 16_384


@dataclass(frozen=True)
class SliceParams:
    size: int = 224
    channels: tuple[str, ...] = ("t1c", "t2", "t2")  # the paper: CE-T1, T2, T2
    # Fixed mapping from WhiteStripe units to uint8: v = round(255 * (ws - lo) / (hi - lo)),
    # clipped. WhiteStripe's unit is the sd of a narrow stripe of white matter (0.6-1 % of its
    # mean on real BraTS images and on the synthetic cohorts alike), so tissues spread over
    # hundreds of units: measured 1st-99th percentiles inside the ROI crops, BraTS CE-T1 -155 to
    # +146 and T2 -99 to +115; synthetic CE-T1 -171 to +71, T2 -96 to +130. The ranges keep
    # those at about 1.2 units per step.
    ws_range: dict[str, tuple[float, float]] = field(
        default_factory=lambda: {"t1c": (-160.0, 160.0), "t2": (-110.0, 150.0)})


#: Parameters added after version 1, with the values that do what was done before they existed
#: (``PreprocessParams.from_dict`` of an older record).
_BEFORE_ADDED = {
    "n4": {"mask_mm": 0.0, "field_mm": 0.0},
    "registration": {"min_step": 1e-3, "gradient_filter": True, "sampling_strategy": "random"},
    "whitestripe": {"kde_bins": None},
}


@dataclass(frozen=True)
class PreprocessParams:
    iso_mm: float = 1.0
    n4: N4Params = field(default_factory=N4Params)
    registration: RegistrationParams = field(default_factory=RegistrationParams)
    whitestripe: WhiteStripeParams = field(default_factory=WhiteStripeParams)
    slices: SliceParams = field(default_factory=SliceParams)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["version"] = PREPROCESS_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessParams:
        """The parameters recorded by ``to_dict`` (e.g. ``preprocess_runs.params``); a parameter
        added since the record was made takes the value that reproduces what was done then
        (``_BEFORE_ADDED``)."""
        def tup(x):
            return tuple(x) if isinstance(x, list) else x

        def group(name):
            return {**_BEFORE_ADDED.get(name, {}), **{k: tup(v) for k, v in d[name].items()}}

        s = d["slices"]
        return cls(
            iso_mm=d["iso_mm"],
            n4=N4Params(**group("n4")),
            registration=RegistrationParams(**group("registration")),
            whitestripe=WhiteStripeParams(**group("whitestripe")),
            slices=SliceParams(size=s["size"], channels=tuple(s["channels"]),
                               ws_range={k: tuple(v) for k, v in s["ws_range"].items()}),
        )

    def hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def check(self) -> PreprocessParams:
        """Raise ``ValueError`` naming an impossible parameter."""
        if self.n4.backend not in ("sitk", "ants"):
            raise ValueError(f"The 'n4.backend' parameter must be 'sitk' or 'ants'. Got {self.n4.backend!r} instead.")
        if self.iso_mm <= 0:
            raise ValueError(f"The 'iso_mm' parameter must be > 0. Got {self.iso_mm!r} instead.")
        for name in ("mask_mm", "field_mm"):
            if getattr(self.n4, name) < 0:
                raise ValueError(f"The 'n4.{name}' parameter must be >= 0. Got {getattr(self.n4, name)!r} instead.")
        if self.registration.sampling_strategy not in ("regular", "random"):
            raise ValueError("The 'registration.sampling_strategy' parameter must be 'regular' or 'random'. "
                             f"Got {self.registration.sampling_strategy!r} instead.")
        if self.registration.min_step <= 0:
            raise ValueError(f"The 'registration.min_step' parameter must be > 0. Got {self.registration.min_step!r} instead.")
        if self.whitestripe.kde_bins is not None and self.whitestripe.kde_bins < 80:
            raise ValueError(f"The 'whitestripe.kde_bins' parameter must be None or >= 80. Got {self.whitestripe.kde_bins!r} instead.")
        if not 0 < self.registration.sampling <= 1:
            raise ValueError(f"The 'registration.sampling' parameter must be in (0, 1]. Got {self.registration.sampling!r} instead.")
        if self.slices.size < 8:
            raise ValueError(f"The 'slices.size' parameter must be >= 8. Got {self.slices.size!r} instead.")
        for ch in self.slices.channels:
            if ch not in self.slices.ws_range:
                raise ValueError(f"slice channel {ch!r} has no intensity range; expected one of {sorted(self.slices.ws_range)}")
        return self
